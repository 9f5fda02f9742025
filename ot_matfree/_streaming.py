"""Streaming reductions over the coupling `P_ij = exp((f_i + g_j - C_ij) / eps)`.

This is the only layer that touches the n x m structure. Rows are processed in
blocks of `block_size` rows inside a `lax.scan`; a block holds at most
`block_size x m` entries (times a small per-pair width), so memory is
O((n + m)(d + k) + block_size * m) and no n x m array is ever formed.
Per-row results are stacked; per-column results are accumulated in the scan
carry, so one pass yields both `P @ V` and `P^T @ U`.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from ._coupling import Coupling


def stream(
    block_fn: Callable,
    rows: PyTree[Array],
    col_init: PyTree[Array],
    block: int,
) -> tuple[PyTree[Array], PyTree[Array]]:
    """Scan `block_fn` over row blocks.

    `block_fn(rows_block, valid) -> (row_out, col_out)`: `rows_block` has the
    leaves of `rows` cut to `block` rows (the last block zero-padded), `valid`
    marks real rows; `row_out` leaves have leading dimension `block`, `col_out`
    has the structure of `col_init` and is summed over blocks (padded rows must
    contribute zero).
    """
    n = jax.tree_util.tree_leaves(rows)[0].shape[0]
    num_blocks = math.ceil(n / block)
    pad = num_blocks * block - n

    def cut(leaf):
        widths = [(0, pad)] + [(0, 0)] * (leaf.ndim - 1)
        return jnp.pad(leaf, widths).reshape(num_blocks, block, *leaf.shape[1:])

    blocked = jax.tree_util.tree_map(cut, rows)
    valid = (jnp.arange(num_blocks * block) < n).reshape(num_blocks, block)

    def body(acc, blk):
        rows_block, valid_block = blk
        row_out, col_out = block_fn(rows_block, valid_block)
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


def row_logsumexp(coupling: Coupling, g_weights: Float[Array, " m"]) -> Float[Array, " n"]:
    """`LSE_j (w_j - C_ij) / eps` for every row i: the Sinkhorn row update."""

    def block_fn(rows, valid):
        xb, = rows
        z = (g_weights[None, :] - coupling.cost.matrix(xb, coupling.y)) / coupling.epsilon
        return jax.nn.logsumexp(z, axis=1), ()

    out, _ = stream(block_fn, (coupling.x,), (), coupling.block(2))
    return out


def apply(
    coupling: Coupling, v: Float[Array, " m *k"] | None = None, u: Float[Array, " n *k"] | None = None
) -> tuple[Float[Array, " n *k"] | None, Float[Array, " m *k"] | None]:
    """`(P @ v, P^T @ u)` in one pass; either input may be `None`."""
    n, m = coupling.shape
    dtype = coupling.x.dtype
    col_init = () if u is None else jnp.zeros((m, *u.shape[1:]), dtype)
    rows = (coupling.x, coupling.f) if u is None else (coupling.x, coupling.f, u)

    def block_fn(rows, valid):
        p = coupling.probs(rows[0], rows[1], valid)
        row_out = () if v is None else jnp.tensordot(p, v, axes=1)
        col_out = () if u is None else jnp.tensordot(p, rows[2], axes=((0,), (0,)))
        return row_out, col_out

    row_out, col_out = stream(block_fn, rows, col_init, coupling.block(2))
    return (None if v is None else row_out), (None if u is None else col_out)


def marginals(coupling: Coupling) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """Row and column sums `(P 1, P^T 1)` in one pass."""
    n, m = coupling.shape
    dtype = coupling.x.dtype
    return apply(coupling, jnp.ones((m,), dtype), jnp.ones((n,), dtype))
