"""Per-pair streaming reductions for gradients and Hessian-vector products.

Each block needs two kinds of per-pair quantities (`docs/math.md`,
"Gradient" and "Joint Hessian-vector product"):

- `dC_ij = <grad_1 c_ij, dx_i> + <grad_2 c_ij, dy_j>`, and
- contractions with block weights `W` (and `P`):
  `sum_j W_ij grad_1 c_ij + P_ij (grad_11 c dx_i + grad_12 c dy_j)` per row,
  `sum_i W_ij grad_2 c_ij + P_ij (grad_21 c dx_i + grad_22 c dy_j)` per column.

For a general cost they are evaluated pair by pair with `vmap` (blocks of
`k x m x d`): the first-order terms (`grad_1 c`, `grad_2 c`, `dC`) with
`jax.grad` alone, so that gradients need reverse mode only (a cost with a
`jax.custom_vjp` inside, such as ott-jax's `Bures`, has no forward mode), and
the second-order terms of HVPs with `jax.jvp` of `jax.grad`. For the squared Euclidean
cost, `grad_1 c = 2 (x_i - y_j) = -grad_2 c` and the second-order terms are
`+-2 (dx_i - dy_j)`, so everything reduces to matrix products with thin
matrices: no `k x m x d` array and far fewer flops.

Zero tangents are passed as `None` and their terms skipped, never built as
zero arrays: besides saving work, this avoids an XLA CPU bug (jaxlib 0.10,
float32): a fused `exp(block) @ constant_matrix` (the "ynn" dot fusion) can
return NaN when the constant is a broadcast such as `zeros((m, d))`.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.costs import AbstractCost, MatrixCost, SqEuclidean
from .._core.costs import column_index, is_matrix, select_columns
from .._core.coupling import Coupling
from .engine import marginals, stream


def _grads_per_pair(cost: AbstractCost, xb, y):
    """`grad_1 c` and `grad_2 c` per pair (`k x m x d` each), by reverse mode only.

    First-order reductions (gradients, `dC`) use this and never forward mode:
    a cost with a `jax.custom_vjp` inside (ott-jax's `Bures`,
    `UnbalancedBures`) has no JVP, and they must work for it.
    """
    grads = jax.grad(cost, argnums=(0, 1))
    return jax.vmap(lambda xi: jax.vmap(lambda yj: grads(xi, yj))(y))(xb)


def _per_pair(cost: AbstractCost, xb, y, dxb, dy):
    """`grad_1 c`, `grad_2 c` and the second-order tangent terms
    `(grad_11 c dx_i + grad_12 c dy_j, grad_21 c dx_i + grad_22 c dy_j)`, per
    pair: forward over reverse (`jax.jvp` of `jax.grad`), for HVPs only."""
    grads = jax.grad(cost, argnums=(0, 1))

    def one(xi, yj, dxi, dyj):
        (g1, g2), (t1, t2) = jax.jvp(grads, (xi, yj), (dxi, dyj))
        return g1, g2, t1, t2

    try:
        return jax.vmap(
            lambda xi, dxi: jax.vmap(lambda yj, dyj: one(xi, yj, dxi, dyj))(y, dy)
        )(xb, dxb)
    except TypeError as err:
        if "custom_vjp" not in str(err):
            raise
        raise TypeError(
            f"Hessian-vector products need the cost's second derivatives, which "
            f"ot_matfree takes as forward-over-reverse (`jax.jvp` of `jax.grad`); JAX "
            f"cannot apply forward mode to a `jax.custom_vjp` function, and the cost "
            f"{cost!r} contains one (as ott-jax's `Bures` and `UnbalancedBures` do). "
            f"Gradients of such a cost work (reverse mode only); for HVPs, write the "
            f"cost without `custom_vjp`, or give it a `jax.custom_jvp` rule instead."
        ) from err


def _scatter_columns(w: Float[Array, "k c"], ids, m: int) -> Float[Array, "k m"]:
    """`w` placed at the columns `ids` of a `k x m` zero matrix (the adjoint of
    `select_columns`)."""
    if ids.shape[0] == m:  # all columns, in order
        return w
    return jnp.zeros((w.shape[0], m), w.dtype).at[:, column_index(ids)].add(w)


def _matrix_dc_block(cost, xb, y, dxb, dy) -> Float[Array, "k c"]:
    """`dC` on a block of a cost matrix: the tangent of `C` at the block's
    entries (the index points have no tangent)."""
    if isinstance(cost, MatrixCost):
        tangent = None if dxb is None else select_columns(dxb, y)
    else:  # transposed: rows are column indices, columns are rows of C
        tangent = None if dy is None else select_columns(dy, xb).T
    return jnp.zeros((xb.shape[0], y.shape[0]), xb.dtype) if tangent is None else tangent


def _matrix_contract(cost, xb, y, w) -> tuple[Array, Array]:
    """`contract_block` for a cost matrix: `W` at the block's entries of `C`
    (its second derivatives are zero)."""
    if isinstance(cost, MatrixCost):
        return _scatter_columns(w, y, xb.shape[1]), jnp.zeros_like(y)
    return jnp.zeros_like(xb), _scatter_columns(w.T, xb, y.shape[1])


def _dc_block(cost, xb, y, dxb, dy) -> Float[Array, "k m"]:
    """`dC` on a block; `dxb` or `dy` may be `None` (zero), not both."""
    if is_matrix(cost):
        return _matrix_dc_block(cost, xb, y, dxb, dy)
    if isinstance(cost, SqEuclidean):
        xb, y = SqEuclidean.centre(xb, y)
        dc = 0.0
        if dxb is not None:
            dc = dc + (jnp.sum(xb * dxb, axis=1)[:, None] - dxb @ y.T)
        if dy is not None:
            dc = dc + (jnp.sum(y * dy, axis=1)[None, :] - xb @ dy.T)
        return 2 * dc
    g1, g2 = _grads_per_pair(cost, xb, y)
    dc = 0.0
    if dxb is not None:
        dc = dc + jnp.einsum("kmd,kd->km", g1, dxb)
    if dy is not None:
        dc = dc + jnp.einsum("kmd,md->km", g2, dy)
    return dc


def contract_block(cost, xb, y, w, p=None, dxb=None, dy=None):
    """Row and column contractions of `w` with the cost gradients, plus those
    of `p` with the second-order terms when `p` is given."""
    if is_matrix(cost):
        return _matrix_contract(cost, xb, y, w)
    if isinstance(cost, SqEuclidean):
        xb, y = SqEuclidean.centre(xb, y)
        out_x = 2 * (jnp.sum(w, axis=1)[:, None] * xb - w @ y)
        out_y = 2 * (jnp.sum(w, axis=0)[:, None] * y - w.T @ xb)
        if p is not None and dxb is not None:
            out_x = out_x + 2 * jnp.sum(p, axis=1)[:, None] * dxb
            out_y = out_y - 2 * p.T @ dxb
        if p is not None and dy is not None:
            out_x = out_x - 2 * p @ dy
            out_y = out_y + 2 * jnp.sum(p, axis=0)[:, None] * dy
        return out_x, out_y
    if p is None or (dxb is None and dy is None):
        g1, g2 = _grads_per_pair(cost, xb, y)
        return jnp.einsum("km,kmd->kd", w, g1), jnp.einsum("km,kmd->md", w, g2)
    dxb = jnp.zeros_like(xb) if dxb is None else dxb
    dy = jnp.zeros_like(y) if dy is None else dy
    g1, g2, t1, t2 = _per_pair(cost, xb, y, dxb, dy)
    out_x = jnp.einsum("km,kmd->kd", w, g1) + jnp.einsum("km,kmd->kd", p, t1)
    out_y = jnp.einsum("km,kmd->md", w, g2) + jnp.einsum("km,kmd->md", p, t2)
    return out_x, out_y


def block_width(cost: AbstractCost, d: int) -> int:
    """Block x m arrays alive in a block."""
    if is_matrix(cost):
        return 5  # the blocks of C, P, dC, the weights and their scatter
    return 4 if isinstance(cost, SqEuclidean) else 4 * d + 4


def gradients(coupling: Coupling) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """Danskin gradients `(sum_j P_ij grad_1 c_ij, sum_i P_ij grad_2 c_ij)`."""
    m, d = coupling.y.shape

    def block_fn(blk, rows, cols):
        return contract_block(blk.cost, blk.x, blk.y, blk.probs())

    col_init = jnp.zeros((m, d), coupling.x.dtype)
    return stream(coupling, block_fn, col_init=col_init, width=block_width(coupling.cost, d))


def _rhs_block(blk, p, t_row, t_col, w_row, w_col):
    """A block's row and column sums of `P o dC`, minus `eps P w_col` (rows)
    and `eps P^T w_row` (columns): the H-system's right-hand side in the
    reduced potentials (`tangent_marginals`). `None` terms are zero."""
    k, c = p.shape
    if t_row is None and t_col is None:
        row, col = jnp.zeros((k,), p.dtype), jnp.zeros((c,), p.dtype)
    else:
        pdc = p * _dc_block(blk.cost, blk.x, blk.y, t_row, t_col)
        row, col = jnp.sum(pdc, axis=1), jnp.sum(pdc, axis=0)
    if w_col is not None:
        row = row - blk.epsilon * (p @ w_col)
    if w_row is not None:
        col = col - blk.epsilon * (p.T @ w_row)
    return row, col


def tangent_marginals(
    coupling: Coupling,
    dx: Float[Array, "n d"] | None,
    dy: Float[Array, "m d"] | None,
    wa: Float[Array, " n"] | None = None,
    wb: Float[Array, " m"] | None = None,
    *,
    with_marginals: bool = False,
):
    """The right-hand side of the H-system for the tangent `(dx, dy, da, db)`
    in the reduced potentials (docs/math.md): `r = sum_j P_ij dC_ij - eps P wb`,
    `s = sum_i P_ij dC_ij - eps P^T wa`, with
    `dC_ij = <grad_1 c_ij, dx_i> + <grad_2 c_ij, dy_j>`, `wa = da / a` and
    `wb = db / b`. `None` tangents are zero.

    With `with_marginals`, also `(P 1, P^T 1)` from the same pass (the
    H-matrix's diagonal, which the HVP needs next): returns `(r, s, P 1, P^T 1)`.
    """
    (n, _), (m, d) = coupling.x.shape, coupling.y.shape
    dtype = coupling.x.dtype
    if dx is None and dy is None and wa is None and wb is None:
        zeros = jnp.zeros((n,), dtype), jnp.zeros((m,), dtype)
        return (*zeros, *marginals(coupling)) if with_marginals else zeros

    def block_fn(blk, rows, cols):
        (dxb, wab), (dyc, wbc) = rows, cols
        p = blk.probs()
        row, col = _rhs_block(blk, p, dxb, dyc, wab, wbc)
        if not with_marginals:
            return row, col
        return (row, jnp.sum(p, axis=1)), (col, jnp.sum(p, axis=0))

    col_init = jnp.zeros((m,), dtype)
    if with_marginals:
        col_init = (col_init, col_init)
    rows, cols = stream(
        coupling, block_fn, (dx, wa), (dy, wb), col_init, width=block_width(coupling.cost, d)
    )
    if not with_marginals:
        return rows, cols
    (r, a_hat), (s, b_hat) = rows, cols
    return r, s, a_hat, b_hat


def schur_rhs(
    coupling: Coupling,
    dx: Float[Array, "n d"] | None,
    dy: Float[Array, "m d"] | None,
    wa: Float[Array, " n"] | None = None,
    wb: Float[Array, " m"] | None = None,
    marginal: Float[Array, " big"] | None = None,
):
    """The HVP's right-hand side and the product its Schur reduction needs, in one pass.

    `r`, `s` as `tangent_marginals` (`wa = da / a`, `wb = db / b`; `None`
    terms are zero). With `Q` the coupling
    oriented (larger side) x (smaller side) (`P`, or `P^T` when `m > n`, as
    in `_linear/schur.py`), `big` the part of `[r; s]` on `Q`'s rows and
    `p` `Q`'s row marginal, also `pushed = (Q^T (big / p), Q^T (1_supp / p))`
    (`1_supp` the mask of `Q`'s rows with mass, `Coupling.support`),
    which the reduction of the H-system to the smaller side would otherwise
    compute in a pass of its own (`_linear.schur.reduced_system`). `Q` is
    streamed with its rows as row blocks, so a block's `big` and `p` are
    complete within it and `Q_b^T [big_b / p_b, 1 / p_b]` accumulates over
    the smaller side in the same scan step.

    `marginal`: `p` when the caller has it (a solver state's H-matrix), else
    it is computed in this pass, and so is the other marginal.

    **Returns:** `(r, s, a_hat, b_hat, pushed)`; `a_hat = P 1` and
    `b_hat = P^T 1` are `None` when `marginal` is given. On a sharded
    coupling a block's row sums are complete only after the whole ring:
    there `pushed` is `None` (the reduction takes its own pass).
    """
    (n, _), (m, d) = coupling.x.shape, coupling.y.shape
    dtype = coupling.x.dtype
    if coupling.sharding is not None:
        if marginal is None:
            r, s, a_hat, b_hat = tangent_marginals(coupling, dx, dy, wa, wb, with_marginals=True)
        else:
            (r, s), a_hat, b_hat = tangent_marginals(coupling, dx, dy, wa, wb), None, None
        return r, s, a_hat, b_hat, None
    swapped = m > n
    q = coupling.transpose() if swapped else coupling
    mass = q.support[0].astype(dtype)
    rows = (dy, wb, marginal, mass) if swapped else (dx, wa, marginal, mass)
    cols = (dx, wa) if swapped else (dy, wb)

    def block_fn(blk, rows, cols):
        (t_row, w_row, p_row, mass_row), (t_col, w_col) = rows, cols
        p = blk.probs()
        big, col = _rhs_block(blk, p, t_row, t_col, w_row, w_col)
        row_marginal = jnp.sum(p, axis=1) if p_row is None else p_row
        # Padded rows have no mass: their share is zero, not 0 / 0.
        inv = jnp.where(blk.valid, 1 / jnp.where(blk.valid, row_marginal, 1), 0.0)
        pushed = (p.T @ (big * inv), p.T @ (inv * mass_row))
        if p_row is not None:
            return big, (col, pushed)
        return (big, row_marginal), (col, pushed, jnp.sum(p, axis=0))

    small = m if not swapped else n
    zeros = jnp.zeros((small,), dtype)
    col_init = (zeros, (zeros, zeros)) if marginal is not None else (zeros, (zeros, zeros), zeros)
    width = block_width(coupling.cost, d) + 1
    row_out, col_out = stream(q, block_fn, rows, cols, col_init, width=width)
    if marginal is None:
        (big, big_marginal), (small_rhs, pushed, small_marginal) = row_out, col_out
    else:
        (big, big_marginal), (small_rhs, pushed) = (row_out, None), col_out
        small_marginal = None
    if swapped:
        return small_rhs, big, small_marginal, big_marginal, pushed
    return big, small_rhs, big_marginal, small_marginal, pushed


def tangent_gradients(
    coupling: Coupling,
    dx: Float[Array, "n d"] | None,
    dy: Float[Array, "m d"] | None,
    df: Float[Array, " n"],
    dg: Float[Array, " m"],
) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """The point part of the HVP's output: with
    `dP_ij = P_ij (df_i + dg_j - dC_ij) / eps`,
    `(sum_j dP_ij grad_1 c_ij + P_ij (grad_11 c dx_i + grad_12 c dy_j),
      sum_i dP_ij grad_2 c_ij + P_ij (grad_21 c dx_i + grad_22 c dy_j))`.
    `None` tangents are zero."""
    m, d = coupling.y.shape

    def block_fn(blk, rows, cols):
        (dxb, dfb), (dyc, dgc) = rows, cols
        p = blk.probs()
        shift = dfb[:, None] + dgc[None, :]
        if dxb is not None or dyc is not None:
            shift = shift - _dc_block(blk.cost, blk.x, blk.y, dxb, dyc)
        dp = p * shift / blk.epsilon
        return contract_block(blk.cost, blk.x, blk.y, dp, p, dxb, dyc)

    col_init = jnp.zeros((m, d), coupling.x.dtype)
    return stream(
        coupling, block_fn, (dx, df), (dy, dg), col_init, width=block_width(coupling.cost, d)
    )
