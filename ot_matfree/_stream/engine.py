"""Streaming reductions over the coupling `P_ij = exp((f_i + g_j - C_ij) / eps)`.

This is the only layer that touches the n x m structure. Rows are processed in
blocks of `block` rows inside a `lax.scan`; a block holds `block x m` entries
(times a small per-pair width), so memory is O((n + m)(d + k) + block * m) and
no n x m array is ever formed. Per-row results are stacked; per-column results
are accumulated in the scan carry, so one pass yields both `P @ V` and `P^T @ U`.

Sharded clouds (`Coupling.sharding`, see `_core/sharding.py`): inside
`jax.shard_map`, each of the `D` devices streams its own `n / D` rows against
the other cloud, which travels round the ring of devices in `D` chunks of
`m / D` points (`jax.lax.ppermute`). With every chunk travels its per-column
accumulator, so after `D` steps each device holds the finished column results
of its own chunk; each row's results for the `D` chunks merge on the device
that holds the row. Per-device memory is O((n + m)(d + k) / D + block * m / D).
Why a ring and not an all-gather of the other cloud: the all-gather holds the
whole other cloud and its column accumulators on every device, O(m (d + k)),
which for high-dimensional points is more than everything else together. The
data each device receives per pass is the same (the other cloud, once), and
the next chunk is sent while the current one is processed.
"""

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, PyTree

from .._core.costs import AbstractCost, SqEuclidean
from .._core.coupling import TUNED_BYTES, Coupling
from .._core.sharding import RowSharding

#: How the per-row results of two column chunks combine (sharded streams), with
#: the identity of the operation: `stream(..., merge=SUM)` for sums over columns,
#: `merge=LOGSUMEXP` for log-sum-exps over columns.
SUM = (jnp.add, 0.0)
LOGSUMEXP = (jnp.logaddexp, -jnp.inf)


class Block(eqx.Module):
    """One block of a coupling, as `stream` hands it to a reduction's `block_fn`:
    rows `x`, `f` against columns `y`, `g` (all of them, or one chunk of them
    on a sharded coupling).

    **Fields:**

    - `x`, `f`: the block's rows (points and potential), `k` of them; the
      last block is padded with copies of the last real row (so the cost is
      only ever evaluated at real points).
    - `y`, `g`: the columns.
    - `valid`: `False` on the padded rows; the methods below give them zero
      mass, and a reduction must keep their contributions to per-column
      results at zero.
    - `cost`, `epsilon`: the coupling's ground cost and regularisation.

    `probs()` is the block of `P` (one `exp` per entry: call it once per block
    and reuse it), `probs_and_cost()` also returns the cost block, `logits()`
    the exponents.
    """

    x: Float[Array, "k d"]
    f: Float[Array, " k"]
    y: Float[Array, "c d"]
    g: Float[Array, " c"]
    valid: Bool[Array, " k"]  # False on the padding of the last block
    cost: AbstractCost
    epsilon: Float[Array, ""]

    def cost_matrix(self) -> Float[Array, "k c"]:
        """The cost block `C_ij = c(x_i, y_j)`."""
        return self.cost.matrix(self.x, self.y)

    def logits(self) -> Float[Array, "k c"]:
        """`(f_i + g_j - C_ij) / eps` on the block (see `logits`)."""
        return logits(self.cost, self.x, self.f, self.y, self.g, self.epsilon)

    def probs_and_cost(self) -> tuple[Float[Array, "k c"], Float[Array, "k c"]]:
        """The blocks of `P` (zero on padded rows) and `C`."""
        c = self.cost_matrix()
        logits = (self.f[:, None] + self.g[None, :] - c) / self.epsilon
        return jnp.where(self.valid[:, None], jnp.exp(logits), 0.0), c

    def probs(self) -> Float[Array, "k c"]:
        """The block of `P`, zero on padded rows."""
        return jnp.where(self.valid[:, None], jnp.exp(self.logits()), 0.0)


def logits(
    cost: AbstractCost, x: Float[Array, "k d"], f: Float[Array, " k"], y: Float[Array, "c d"],
    g: Float[Array, " c"], epsilon: Float[Array, ""],
) -> Float[Array, "k c"]:
    """The exponents `(f_i + g_j - c(x_i, y_j)) / eps` of a block of `P`.

    For the squared Euclidean cost, as
    `(f_i - |x_i|^2) / eps + (g_j - |y_j|^2) / eps + <2 x_i / eps, y_j>`
    (centred points, `SqEuclidean.centre`): the block is one matrix product
    plus a row and a column term, which XLA fuses with the `exp` into one
    loop. Forming `C` first and then `(f + g - C) / eps` costs a second
    elementwise sweep over the block with more broadcast operands, which
    makes `P @ v` slower by a factor that depends on the dtype and the load:
    `benchmarks/block_sizes.py` measures both forms (its `apply k=1 (C
    first)` row). Same value up to rounding; the row and column terms are
    formed once per block and once per pass (loop invariant).
    """
    if isinstance(cost, SqEuclidean):
        x, y = SqEuclidean.centre(x, y)
        row = (f - jnp.sum(x**2, axis=1)) / epsilon
        col = (g - jnp.sum(y**2, axis=1)) / epsilon
        return row[:, None] + col[None, :] + (x * (2 / epsilon)) @ y.T
    return (f[:, None] + g[None, :] - cost.matrix(x, y)) / epsilon


def _scan_blocks(block_fn, consts, rows, cols, col_init, block):
    """One device's pass: `block_fn` scanned over row blocks against all of `cols`."""
    cost, epsilon = consts
    x, f, extra_rows = rows
    y, g, extra_cols = cols
    n = x.shape[0]
    num_blocks = math.ceil(n / block)
    pad = num_blocks * block - n

    def cut(leaf, mode="constant"):
        widths = [(0, pad)] + [(0, 0)] * (leaf.ndim - 1)
        return jnp.pad(leaf, widths, mode=mode).reshape(num_blocks, block, *leaf.shape[1:])

    # The padded rows repeat the last real point and potential, not zeros: the
    # cost and its derivatives are then evaluated only at real points, so a
    # cost that is NaN or not differentiable at the origin (an angular cost, a
    # norm) cannot put `NaN * 0 = NaN` into a column sum, and the masked
    # `P` of those rows (`Block.valid`) is an exact zero times finite values,
    # also in JAX's derivatives of the pass. Other per-row inputs (tangents,
    # weights) are zero-padded: they only ever meet the zero rows of `P`.
    blocked = (cut(x, "edge"), cut(f, "edge"), jax.tree_util.tree_map(cut, extra_rows))
    valid = (jnp.arange(num_blocks * block) < n).reshape(num_blocks, block)

    def body(acc, blk):
        (xb, fb, rows_block), valid_block = blk
        row_out, col_out = block_fn(
            Block(xb, fb, y, g, valid_block, cost, epsilon), rows_block, extra_cols
        )
        return jax.tree_util.tree_map(jnp.add, acc, col_out), row_out

    # Rematerialise blocks under partial evaluation (`jax.linearize`, reverse
    # mode): saving each block's intermediates for the tangent pass would stack
    # them into n x m residuals. Plain evaluation and `jax.jvp` are unaffected.
    body = jax.checkpoint(body, prevent_cse=False)
    col_total, row_out = jax.lax.scan(body, col_init, (blocked, valid))
    row_out = jax.tree_util.tree_map(
        lambda o: o.reshape(num_blocks * block, *o.shape[2:])[:n], row_out
    )
    return row_out, col_total


def _ring(scan, sharding: RowSharding, consts, rows, cols, col_init, merge):
    """`scan` on every device's rows, the columns passed round the ring of devices."""
    axis, size = sharding.axis, sharding.size
    shift = [(i, (i + 1) % size) for i in range(size)]
    combine, identity = merge
    # shard_map takes arrays as arguments only (it cannot close over arrays
    # on an `Explicit` mesh): the cost's arrays go in, the rest stays static.
    dynamic, static = eqx.partition(consts, eqx.is_array)

    def local(dynamic, rows, cols, col_acc):
        consts = eqx.combine(dynamic, static)
        row_shapes = jax.eval_shape(lambda: scan(consts, rows, cols, col_acc)[0])
        row_acc = jax.tree_util.tree_map(
            lambda s: jax.lax.pcast(jnp.full(s.shape, identity, s.dtype), axis, to="varying"),
            row_shapes,
        )

        def step(carry, _):
            cols, col_acc, row_acc = carry
            # Independent of this step's work, so the transfer overlaps it.
            next_cols = jax.lax.ppermute(cols, axis, shift)
            row_out, col_acc = scan(consts, rows, cols, col_acc)
            row_acc = jax.tree_util.tree_map(combine, row_acc, row_out)
            # The accumulator follows its chunk; after `size` steps both are home.
            return (next_cols, jax.lax.ppermute(col_acc, axis, shift), row_acc), None

        (_, col_acc, row_acc), _ = jax.lax.scan(step, (cols, col_acc, row_acc), length=size)
        return row_acc, col_acc

    spec = sharding.rows
    dynamic = sharding.place(dynamic, P())
    rows, cols, col_init = sharding.place((rows, cols, col_init), spec)
    return jax.shard_map(
        local, mesh=sharding.current_mesh, in_specs=(P(), spec, spec, spec), out_specs=spec,
        axis_names={axis},
    )(dynamic, rows, cols, col_init)


def stream(
    coupling: Coupling,
    block_fn: Callable,
    rows: PyTree[Array] = (),
    cols: PyTree[Array] = (),
    col_init: PyTree[Array] = (),
    *,
    width: int,
    kind: str = "pairs",
    merge=SUM,
) -> tuple[PyTree[Array], PyTree[Array]]:
    """One streaming pass over the row blocks of `coupling`.

    `block_fn(blk, rows_block, cols_block) -> (row_out, col_out)`: `blk` is a
    `Block` of rows (the last block padded with copies of the last real row,
    `blk.valid` marks real rows; per-row inputs `rows` are zero-padded)
    against columns `blk.y`, `blk.g`; `rows_block` has the leaves of `rows`
    (per-row arrays, leading dimension n; `None` leaves stay `None`) cut to the
    block, `cols_block` the leaves of `cols` (per-column arrays, leading
    dimension m) for the columns of `blk`. `row_out` leaves have leading
    dimension `blk.x.shape[0]` and are stacked to `(n, ...)`; `col_out` has the
    structure of `col_init`, leading dimension `blk.y.shape[0]`, and is summed
    over blocks onto `col_init` (padded rows must contribute zero). `width` is
    the number of `block x m` arrays a block keeps alive and `kind` the
    reduction's kind (`"logsumexp"`, `"apply"`, `"schur"`, `"pairs"`), which
    picks its default block size (`Coupling.block`).

    On a sharded coupling `blk` holds one chunk of the columns at a time and a
    row's results for the chunks combine by `merge`: `SUM` for sums over
    columns, `LOGSUMEXP` for log-sum-exps over columns.
    """
    if coupling.block_size == "auto" and coupling.sharding is None:
        autotune(coupling, kind)
    block = coupling.block(width, kind)

    def scan(consts, rows, cols, col_init):
        return _scan_blocks(block_fn, consts, rows, cols, col_init, block)

    consts = (coupling.cost, coupling.epsilon)
    rows = (coupling.x, coupling.f, rows)
    cols = (coupling.y, coupling.g, cols)
    if coupling.sharding is None:
        return scan(consts, rows, cols, col_init)
    return _ring(scan, coupling.sharding, consts, rows, cols, col_init, merge)


def row_logsumexp(coupling: Coupling, g_weights: Float[Array, " m"]) -> Float[Array, " n"]:
    """`LSE_j (w_j - C_ij) / eps` for every row i: the Sinkhorn row update."""

    def block_fn(blk, rows, cols):
        (w,) = cols
        # `C` first, not `logits`: Sinkhorn's reported marginal error is checked
        # against a dense one to 1e-15 (tests/unit/test_forward_accel.py), and the
        # folded exponent rounds differently at small epsilon.
        z = (w[None, :] - blk.cost_matrix()) / blk.epsilon
        return jax.nn.logsumexp(z, axis=1), ()

    out, _ = stream(
        coupling, block_fn, cols=(g_weights,), width=2, kind="logsumexp", merge=LOGSUMEXP
    )
    return out


def apply(
    coupling: Coupling, v: Float[Array, " m *k"] | None = None, u: Float[Array, " n *k"] | None = None
) -> tuple[Float[Array, " n *k"] | None, Float[Array, " m *k"] | None]:
    """`(P @ v, P^T @ u)` in one pass; either input may be `None`."""
    m = coupling.shape[1]
    col_init = () if u is None else jnp.zeros((m, *u.shape[1:]), coupling.x.dtype)

    def block_fn(blk, rows, cols):
        (ub,), (vc,) = rows, cols
        p = blk.probs()
        row_out = () if v is None else jnp.tensordot(p, vc, axes=1)
        col_out = () if u is None else jnp.tensordot(p, ub, axes=((0,), (0,)))
        return row_out, col_out

    row_out, col_out = stream(coupling, block_fn, (u,), (v,), col_init, width=2, kind="apply")
    return (None if v is None else row_out), (None if u is None else col_out)


def schur_apply(
    coupling: Coupling, z: Float[Array, " m *k"], w: Float[Array, " n"]
) -> tuple[Float[Array, " n *k"], Float[Array, " m *k"]]:
    """`(P z, P^T ((P z) * w))`, each block of `P` formed once.

    The Schur-complement product of the H-solvers (`_linear/schur.py`) on the
    coupling oriented (larger side) x (smaller side): a row block's `P_b z`
    is complete within the block (it sums over all columns), so
    `P_b^T ((P_b z) * w_b)` accumulates over the column side in the same
    scan step, and every exp is computed once per product, where
    `P^T (w * (P z))` as two `apply` passes computes each twice.

    On a sharded coupling a block holds one chunk of the columns at a time,
    and `P_b z` is complete only after the whole ring: there the product is
    two passes (`apply` twice), with the same result up to rounding.
    """
    if coupling.sharding is not None:
        pz, _ = apply(coupling, v=z)
        _, out = apply(coupling, u=pz * w.reshape(w.shape + (1,) * (pz.ndim - 1)))
        return pz, out
    m = coupling.shape[1]
    col_init = jnp.zeros((m, *z.shape[1:]), coupling.x.dtype)

    def block_fn(blk, rows, cols):
        (wb,), (zc,) = rows, cols
        p = blk.probs()
        pz = jnp.tensordot(p, zc, axes=1)
        scaled = pz * wb.reshape(wb.shape + (1,) * (pz.ndim - 1))
        return pz, jnp.tensordot(p, scaled, axes=((0,), (0,)))

    return stream(coupling, block_fn, (w,), (z,), col_init, width=2, kind="schur")


def marginals(coupling: Coupling) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """Row and column sums `(P 1, P^T 1)` in one pass."""
    n, m = coupling.shape
    dtype = coupling.x.dtype
    return apply(coupling, jnp.ones((m,), dtype), jnp.ones((n,), dtype))


#: Rows per block `autotune` tries (and the budget's own choice).
TUNE_CANDIDATES = (32, 128, 512, 2048)
#: `autotune` times a pass over at most this many rows (the time per element
#: of a block does not depend on how many blocks follow).
TUNE_ROWS = 4096
_TUNED_PASSES = {
    "logsumexp": lambda c, v, w: row_logsumexp(c, v),
    "apply": lambda c, v, w: apply(c, v=v)[0],
    "schur": lambda c, v, w: schur_apply(c, v, w)[1],
}


def autotune(coupling: Coupling, kind: str, *, repeats: int = 3) -> int:
    """Bytes per block for reductions of `kind` on couplings shaped like
    `coupling` (`block_size="auto"`): measured once, then cached in
    `ot_matfree._core.coupling.TUNED_BYTES`.

    Times a pass of `kind` (`"logsumexp"`, `"apply"` or `"schur"`; others
    take the choice for `"apply"`) at each of `TUNE_CANDIDATES` rows per block
    and at the default budget's, on random points of the coupling's shape,
    dtype and cost (at most `TUNE_ROWS` rows: the time per element is the
    same for more), and keeps the fastest. It never looks at the coupling's
    values, so it runs the same inside `jit` (at trace time, once per shape;
    `jax.ensure_compile_time_eval` runs the timing eagerly) as outside.
    """
    if kind not in _TUNED_PASSES:
        kind = "apply"
    key = coupling.tune_key(kind)
    if key in TUNED_BYTES:
        return TUNED_BYTES[key]
    (n, d), m = coupling.x.shape, coupling.shape[1]
    dtype = coupling.x.dtype
    rows = min(n, TUNE_ROWS)
    default = dataclasses.replace(coupling, block_size=None).block(2, kind)
    candidates = sorted({min(c, rows) for c in (*TUNE_CANDIDATES, default)})
    with jax.ensure_compile_time_eval():
        kx, ky, kv = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.uniform(kx, (rows, d), dtype)
        y = jax.random.uniform(ky, (m, d), dtype)
        v = jax.random.normal(kv, (m,), dtype)
        w = jnp.ones((rows,), dtype)
        times = {}
        for block in candidates:
            c = Coupling(x, y, w / rows, v * 0 + 1 / m, w * 0, v * 0, jnp.ones((), dtype),
                         coupling.cost, block_size=block)  # P = exp(-C)
            # `filter_jit`: the coupling's non-array leaves (a `FunctionCost`'s
            # Python callable) are static, not arguments to trace.
            run = eqx.filter_jit(lambda c: _TUNED_PASSES[kind](c, v, w))
            jax.block_until_ready(run(c))  # compile
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(run(c))
                samples.append(time.perf_counter() - t0)
            times[block] = statistics.median(samples)
    best = min(times, key=times.get)
    TUNED_BYTES[key] = best * m * 2 * dtype.itemsize
    return TUNED_BYTES[key]
