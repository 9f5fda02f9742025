"""Matrix-free derivative rules: Danskin gradients and Hessian-vector products.

Formulas: `design/MATH.md`. The HVP is the JVP of the gradient map
`(x, y, a, b) -> (grad_x, grad_y, grad_a, grad_b)` of ott-jax's `reg_ot_cost`
at fixed, converged potentials: two streaming passes (right-hand side and
output) around one H-matrix solve by `linear_solver`.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import check_tangent
from ._coupling import Coupling
from ._operators import h_operator
from ._pair_reductions import gradients, tangent_gradients, tangent_marginals
from ._solver._base import AbstractLinearSolver
from ._solver.cg import CG


@eqx.filter_jit
def grad(coupling: Coupling) -> tuple[Array, Array, Array, Array]:
    """Gradients of `reg_ot_cost` w.r.t. `(x, y, a, b)` (Danskin), one pass.

    `grad_x_i = sum_j P_ij grad_1 c(x_i, y_j)`, `grad_y_j = sum_i P_ij grad_2 c`,
    `grad_a = f - eps log a`, `grad_b = g - eps log b` (ott-jax's convention;
    on the simplex only the part orthogonal to 1 is meaningful).
    """
    gx, gy = gradients(coupling.kernel)
    eps = coupling.epsilon
    return gx, gy, coupling.f - eps * jnp.log(coupling.a), coupling.g - eps * jnp.log(coupling.b)


@eqx.filter_jit
def grad_x(coupling: Coupling) -> Float[Array, "n d"]:
    """Gradient of `reg_ot_cost` w.r.t. the source points `x`, shape (n, d)."""
    return grad(coupling)[0]


@eqx.filter_jit
def hvp(
    coupling: Coupling,
    dx: Float[Array, "n d"] | None = None,
    dy: Float[Array, "m d"] | None = None,
    da: Float[Array, " n"] | None = None,
    db: Float[Array, " m"] | None = None,
    *,
    linear_solver: AbstractLinearSolver = CG(),
    return_stats: bool = False,
):
    """Joint Hessian-vector product of `reg_ot_cost` in `(x, y, a, b)`.

    Returns the JVP of `grad` in the tangent `(dx, dy, da, db)` (a `None`
    tangent is zero): `(d grad_x, d grad_y, d grad_a, d grad_b)`. Memory is
    O((n + m) d + block * m). When `sum(da) != sum(db)` the H-system is
    inconsistent and its least-squares solution is used (MATH.md, step 3);
    only the part of the weight outputs orthogonal to 1 is then meaningful.

    **Arguments:**

    - `coupling`: a solved `Coupling`.
    - `dx`, `dy`, `da`, `db`: tangents, shapes (n, d), (m, d), (n,), (m,).
    - `linear_solver`: how H is solved (`CG()`, or any `AbstractLinearSolver`).
    - `return_stats`: also return the solver's stats dict
      (`num_steps`, `residual`, `converged`, ...).
    """
    (n, d), m = coupling.x.shape, coupling.y.shape[0]
    dtype = coupling.x.dtype

    # Zero tangents stay `None` so the reductions skip their terms.
    dx = None if dx is None else check_tangent("dx", dx, (n, d), dtype)
    dy = None if dy is None else check_tangent("dy", dy, (m, d), dtype)
    da = None if da is None else check_tangent("da", da, (n,), dtype)
    db = None if db is None else check_tangent("db", db, (m,), dtype)
    eps = coupling.epsilon
    kernel = coupling.kernel
    r, s = tangent_marginals(kernel, dx, dy)
    if da is not None:
        r = r + eps * da
    if db is not None:
        s = s + eps * db
    df, dg, stats = linear_solver.solve(h_operator(coupling), r, s)
    out_x, out_y = tangent_gradients(kernel, dx, dy, df, dg)
    out_a = df if da is None else df - eps * da / coupling.a
    out_b = dg if db is None else dg - eps * db / coupling.b
    out = (out_x, out_y, out_a, out_b)
    return (out, stats) if return_stats else out


def hvp_x(
    coupling: Coupling,
    v: Float[Array, "n d"],
    *,
    linear_solver: AbstractLinearSolver = CG(),
    return_stats: bool = False,
):
    """Hessian-vector product of `reg_ot_cost` w.r.t. the source points.

    `H_xx v`, shape (n, d), matrix-free. With `return_stats=True` returns
    `(hv, stats)`; `stats["num_steps"]` counts solver iterations and
    `stats["residual"]` is the final relative residual.
    """
    out = hvp(coupling, dx=v, linear_solver=linear_solver, return_stats=return_stats)
    if return_stats:
        (hv, *_), stats = out
        return hv, stats
    return out[0]
