"""Per-pair streaming reductions for gradients and Hessian-vector products.

The cost's derivatives are evaluated per pair inside a block with `vmap` of
`jax.grad` / `jax.jvp`, so any twice-differentiable cost works; for the
squared Euclidean cost XLA fuses these into a few elementwise operations.
Formulas: `design/MATH.md`, "Gradient" and "Joint Hessian-vector product".
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._streaming import Kernel, stream


def _pair_grads(cost, xb, y):
    grads = jax.grad(cost, argnums=(0, 1))
    return jax.vmap(lambda xi: jax.vmap(lambda yj: grads(xi, yj))(y))(xb)


def _pair_tangents(cost, xb, y, dxb, dy):
    """Per pair: `grad_1 c`, `grad_2 c`, `dC` and the second-order terms
    `grad_11 c dx_i + grad_12 c dy_j`, `grad_21 c dx_i + grad_22 c dy_j`."""
    grads = jax.grad(cost, argnums=(0, 1))

    def one(xi, yj, dxi, dyj):
        (g1, g2), (t1, t2) = jax.jvp(grads, (xi, yj), (dxi, dyj))
        return g1, g2, jnp.vdot(g1, dxi) + jnp.vdot(g2, dyj), t1, t2

    return jax.vmap(lambda xi, dxi: jax.vmap(lambda yj, dyj: one(xi, yj, dxi, dyj))(y, dy))(
        xb, dxb
    )


def _width(d: int) -> int:
    return 4 * d + 4


def gradients(kernel: Kernel) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """Danskin gradients `(sum_j P_ij grad_1 c_ij, sum_i P_ij grad_2 c_ij)`."""
    m, d = kernel.y.shape

    def block_fn(rows, valid):
        xb, fb = rows
        p = kernel.probs(xb, fb, valid)
        g1, g2 = _pair_grads(kernel.cost, xb, kernel.y)
        return jnp.einsum("km,kmd->kd", p, g1), jnp.einsum("km,kmd->md", p, g2)

    col_init = jnp.zeros((m, d), kernel.x.dtype)
    return stream(block_fn, (kernel.x, kernel.f), col_init, kernel.block(_width(d)))


def tangent_marginals(
    kernel: Kernel, dx: Float[Array, "n d"], dy: Float[Array, "m d"]
) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """`(sum_j P_ij dC_ij, sum_i P_ij dC_ij)`, the point part of the HVP's
    right-hand side, with `dC_ij = <grad_1 c_ij, dx_i> + <grad_2 c_ij, dy_j>`."""
    m, d = kernel.y.shape

    def block_fn(rows, valid):
        xb, fb, dxb = rows
        p = kernel.probs(xb, fb, valid)
        _, _, dc, _, _ = _pair_tangents(kernel.cost, xb, kernel.y, dxb, dy)
        pdc = p * dc
        return jnp.sum(pdc, axis=1), jnp.sum(pdc, axis=0)

    col_init = jnp.zeros((m,), kernel.x.dtype)
    return stream(block_fn, (kernel.x, kernel.f, dx), col_init, kernel.block(_width(d)))


def tangent_gradients(
    kernel: Kernel,
    dx: Float[Array, "n d"],
    dy: Float[Array, "m d"],
    df: Float[Array, " n"],
    dg: Float[Array, " m"],
) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """The point part of the HVP's output: with
    `dP_ij = P_ij (df_i + dg_j - dC_ij) / eps`,
    `(sum_j dP_ij grad_1 c_ij + P_ij (grad_11 c dx_i + grad_12 c dy_j),
      sum_i dP_ij grad_2 c_ij + P_ij (grad_21 c dx_i + grad_22 c dy_j))`."""
    m, d = kernel.y.shape

    def block_fn(rows, valid):
        xb, fb, dxb, dfb = rows
        p = kernel.probs(xb, fb, valid)
        g1, g2, dc, t1, t2 = _pair_tangents(kernel.cost, xb, kernel.y, dxb, dy)
        dp = p * (dfb[:, None] + dg[None, :] - dc) / kernel.epsilon
        out_x = jnp.einsum("km,kmd->kd", dp, g1) + jnp.einsum("km,kmd->kd", p, t1)
        out_y = jnp.einsum("km,kmd->md", dp, g2) + jnp.einsum("km,kmd->md", p, t2)
        return out_x, out_y

    col_init = jnp.zeros((m, d), kernel.x.dtype)
    return stream(block_fn, (kernel.x, kernel.f, dx, df), col_init, kernel.block(_width(d)))
