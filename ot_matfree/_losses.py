"""Differentiable losses: entropic OT cost, Sinkhorn divergence, sharp Sinkhorn distance.

Layer: differentiable losses (imports only from the layers below). Each loss
is a scalar JAX function of `(x, y, a, b)` whose derivatives are given by
custom JVP rules, so that JAX's own transformations compose with it:

- `jax.grad` (reverse mode) transposes the loss's tangent `<G, t>`, where `G`
  is the gradient map evaluated at the primal point: one Sinkhorn solve plus
  one streaming pass (plus one H-solve for `sinkhorn_distance`); nothing is
  backpropagated through the Sinkhorn iterations, and memory is
  O((n + m) d + block * m).
- Forward over reverse (`jax.jvp(jax.grad(f))`, `jax.jacfwd(jax.grad(f))`,
  `jax.hessian(f)`) pushes the outer tangent through `G`, whose own JVP rule
  is the matrix-free Hessian-vector product (MATH.md).
- Reverse over reverse (`jax.grad(jax.grad(f))`, `jax.jacrev(jax.grad(f))`)
  raises a clear error: the HVP contains a CG `while_loop`, which JAX cannot
  transpose. Use forward over reverse (same cost).

`jit`, `vmap` (equal shapes) and chain rules through code producing `x`, `y`,
`a`, `b` from parameters work as for any JAX function.
"""

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import check_problem
from ._costs import AbstractCost, SqEuclidean, as_cost
from ._hvp import grad as _danskin_grad
from ._hvp import hvp as _hvp
from ._implicit import (
    Config,
    check_linear_solve,
    check_no_epsilon_tangent,
    check_sinkhorn,
    forward_only,
    h_solve,
    potentials,
    solve_coupling,
)
from ._sharp_reductions import cost_marginals, sharp_gradients
from ._sinkhorn import Sinkhorn
from ._sinkhorn_symmetric import solve_symmetric
from ._solver._base import AbstractLinearSolver
from ._solver.cg import CG
from ._streaming import Kernel


def _pairing(grads, tangents) -> Array:
    """`sum_k <G_k, t_k>` over the non-zero (non-`None`) tangents."""
    terms = [jnp.vdot(g, t) for g, t in zip(grads, tangents) if t is not None]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((), grads[0].dtype)


# --- Regularised OT cost (ott-jax's reg_ot_cost) ----------------------------


@eqx.filter_custom_jvp
def _ot_value_and_grad(x, y, a, b, epsilon, *, config: Config):
    """`(reg_ot_cost, (grad_x, grad_y, grad_a, grad_b))`; JVP of the gradient = HVP."""
    coupling, _ = solve_coupling(x, y, a, b, epsilon, config)
    value = check_sinkhorn(coupling.reg_ot_cost, coupling.converged, config)
    return value, _danskin_grad(coupling)


@_ot_value_and_grad.def_jvp
def _ot_value_and_grad_jvp(primals, tangents, *, config: Config):
    x, y, a, b, epsilon = primals
    check_no_epsilon_tangent(tangents[4])
    coupling, _ = solve_coupling(x, y, a, b, epsilon, config)
    value = check_sinkhorn(coupling.reg_ot_cost, coupling.converged, config)
    grads = _danskin_grad(coupling)
    d_grads, stats = _hvp(
        coupling, *tangents[:4], linear_solver=config.linear_solver, return_stats=True
    )
    d_grads = check_linear_solve(d_grads, stats, config)
    return (value, grads), (_pairing(grads, tangents[:4]), forward_only(d_grads))


@eqx.filter_custom_jvp
def _ot_value(x, y, a, b, epsilon, *, config: Config):
    return _ot_value_and_grad(x, y, a, b, epsilon, config=config)[0]


@_ot_value.def_jvp
def _ot_value_jvp(primals, tangents, *, config: Config):
    check_no_epsilon_tangent(tangents[4])
    # The gradient map is evaluated on the primals: reverse mode only has to
    # transpose the pairing (linear in the tangents); forward over reverse
    # pushes its tangent through the gradient map's own rule (the HVP).
    value, grads = _ot_value_and_grad(*primals, config=config)
    return value, _pairing(grads, tangents[:4])


# --- Self-transport term OT(x, x, a, a) of the divergence ---------------------


def _solve_self(x, a, epsilon, config: Config):
    coupling = solve_symmetric(
        x, a, epsilon=epsilon, cost=config.cost, solver=config.solver,
        block_size=config.block_size,
    )
    return coupling, check_sinkhorn(coupling.reg_ot_cost, coupling.converged, config)


def _fold(grads):
    """Both arguments are `x` (and both weights `a`): add their derivatives."""
    gx, gy, ga, gb = grads
    return gx + gy, ga + gb


@eqx.filter_custom_jvp
def _self_value_and_grad(x, a, epsilon, *, config: Config):
    """`(OT(x, x, a, a), (grad_x, grad_a))`; the gradient's JVP is the joint HVP
    in the tangent `(dx, dx, da, da)`."""
    coupling, value = _solve_self(x, a, epsilon, config)
    return value, _fold(_danskin_grad(coupling))


@_self_value_and_grad.def_jvp
def _self_value_and_grad_jvp(primals, tangents, *, config: Config):
    x, a, epsilon = primals
    tx, ta, t_eps = tangents
    check_no_epsilon_tangent(t_eps)
    coupling, value = _solve_self(x, a, epsilon, config)
    grads = _fold(_danskin_grad(coupling))
    d_grads, stats = _hvp(
        coupling, tx, tx, ta, ta, linear_solver=config.linear_solver, return_stats=True
    )
    d_grads = check_linear_solve(_fold(d_grads), stats, config)
    return (value, grads), (_pairing(grads, (tx, ta)), forward_only(d_grads))


@eqx.filter_custom_jvp
def _self_value(x, a, epsilon, *, config: Config):
    return _self_value_and_grad(x, a, epsilon, config=config)[0]


@_self_value.def_jvp
def _self_value_jvp(primals, tangents, *, config: Config):
    check_no_epsilon_tangent(tangents[2])
    value, grads = _self_value_and_grad(*primals, config=config)
    return value, _pairing(grads, tangents[:2])


# --- Sharp Sinkhorn distance <P*, C> ------------------------------------------


def _sharp_value_and_grad(x, y, a, b, epsilon, config: Config):
    """`(<P, C>, (grad_x, grad_y, grad_a, grad_b))` with one H-solve (MATH.md).

    Written with `potentials` and `h_solve`, whose JVP rules are the
    implicit-function tangents, so JAX's forward mode through this function
    is the exact HVP (three H-solves per direction).
    """
    f, g = potentials(x, y, a, b, epsilon, config=config)
    kernel = Kernel(x, y, f, g, epsilon, config.cost, config.block_size)
    pc_rows, pc_cols = cost_marginals(kernel)
    u, v = h_solve(x, y, f, g, epsilon, pc_rows, pc_cols, config=config)
    gx, gy = sharp_gradients(kernel, u, v)
    return jnp.sum(pc_rows), (gx, gy, u, v)


@eqx.filter_custom_jvp
def _sharp_value(x, y, a, b, epsilon, *, config: Config):
    f, g = potentials(x, y, a, b, epsilon, config=config)
    pc_rows, _ = cost_marginals(Kernel(x, y, f, g, epsilon, config.cost, config.block_size))
    return jnp.sum(pc_rows)


@_sharp_value.def_jvp
def _sharp_value_jvp(primals, tangents, *, config: Config):
    check_no_epsilon_tangent(tangents[4])
    value, grads = _sharp_value_and_grad(*primals, config)
    return value, _pairing(grads, tangents[:4])


# --- Public entry points -----------------------------------------------------


def _prepare(x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw):
    # `None` weights become uniform constants: never differentiated.
    x, y, a, b, epsilon = check_problem(x, y, a, b, epsilon)
    if not isinstance(solver, Sinkhorn):
        raise TypeError(f"`solver` must be an ot_matfree.Sinkhorn, got {type(solver).__name__}.")
    if not isinstance(linear_solver, AbstractLinearSolver):
        raise TypeError(
            "`linear_solver` must be an ot_matfree linear solver (e.g. `CG()`), "
            f"got {type(linear_solver).__name__}."
        )
    if block_size is not None and (not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"`block_size` must be a positive integer or None, got {block_size!r}.")
    config = Config(as_cost(cost), solver, linear_solver, block_size, bool(throw))
    return x, y, a, b, epsilon, config


_SHARED_ARGS = """
    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform (and not differentiated)
      if `None`.
    - `epsilon`: absolute entropic regularisation (> 0). Not differentiable:
      a tangent on `epsilon` raises `ValueError`.
    - `cost`: an `AbstractCost` or any twice-differentiable callable
      `c(x_i, y_j) -> scalar` (e.g. an ott-jax `CostFn`).
    - `solver`: the `Sinkhorn` forward solver (tolerance, iteration cap).
    - `linear_solver`: how H-systems of derivatives are solved (`CG()`, ...).
    - `block_size`: rows per streaming block; `None` picks it from a memory budget.
    - `throw`: raise (through `eqx.error_if`, also under `jit`) when Sinkhorn or
      a derivative's linear solve does not converge. With `throw=False`
      failures are silent; check `ot_matfree.solve(...)` diagnostics yourself.
"""


def _document(fn):
    fn.__doc__ = fn.__doc__.replace("    ARGS\n", _SHARED_ARGS)
    return fn


@eqx.filter_jit
@_document
def ot_cost(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn = Sinkhorn(),
    linear_solver: AbstractLinearSolver = CG(),
    block_size: int | None = None,
    throw: bool = True,
) -> Float[Array, ""]:
    """The regularised OT cost (ott-jax's `reg_ot_cost`), differentiable matrix-free.

    `OT_eps = min_{P in U(a, b)} <P, C> + eps KL(P | a b^T)`.

    Derivatives:

    - `jax.grad`: the Danskin gradient (`sum_j P_ij grad_1 c_ij`, ...,
      `f - eps log a`, `g - eps log b`): one Sinkhorn solve and one streaming
      pass, O((n + m) d + block * m) memory, no backpropagation through Sinkhorn.
    - `jax.jvp(jax.grad(...))` / `jax.jacfwd(jax.grad(...))`: the joint
      Hessian-vector product in `(x, y, a, b)`, one H-solve per direction.
    - `jax.hessian`: works (it is `jacfwd(jacrev)`), but is dense by nature:
      one HVP per input coordinate (`n d` for `x`), batched by `vmap`, so time
      and memory grow with `n d` times an HVP; use HVPs beyond small problems.
    - Reverse over reverse (`jax.grad(jax.grad(...))`, `jax.jacrev` of a
      gradient) raises an error naming the forward-over-reverse alternative.

    Weights: derivatives w.r.t. `a`, `b` follow ott-jax's convention
    (gradient `f - eps log a`, Hessian from the least-squares H-solve). On the
    simplex only the part orthogonal to `1` is meaningful: compare gradients
    after removing their mean, Hessians after projecting with `I - 11^T / n`
    (tangents with `sum(da) = sum(db) = 0` give exact directional derivatives).

    **Arguments:**
    ARGS
    **Returns:** the scalar `reg_ot_cost`.
    """
    x, y, a, b, epsilon, config = _prepare(
        x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw
    )
    return _ot_value(x, y, a, b, epsilon, config=config)


@eqx.filter_jit
@_document
def sinkhorn_divergence(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn = Sinkhorn(),
    linear_solver: AbstractLinearSolver = CG(),
    block_size: int | None = None,
    throw: bool = True,
) -> Float[Array, ""]:
    """The Sinkhorn divergence `OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2`.

    Three Sinkhorn solves; the self terms `OT(x, x)`, `OT(y, y)` use
    symmetric Sinkhorn updates (Feydy et al. 2019, eq. 25; alternating
    updates can take 10^5+ iterations there at small epsilon) when the cost
    is `SqEuclidean`. In the self terms both arguments move together, so
    their derivatives add the two arguments' parts and their second
    derivatives use the joint HVP with tangent `(dx, dx, da, da)`: Hessians
    are exact by construction (unlike ott-jax's default `use_danskin=True`, which freezes
    the potentials). Same derivative support and weight convention as `ot_cost`.

    **Arguments:**
    ARGS
    **Returns:** the scalar divergence.
    """
    x, y, a, b, epsilon, config = _prepare(
        x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw
    )
    xy = _ot_value(x, y, a, b, epsilon, config=config)
    xx = _self_value(x, a, epsilon, config=config)
    yy = _self_value(y, b, epsilon, config=config)
    return xy - 0.5 * (xx + yy)


@eqx.filter_jit
@_document
def sinkhorn_distance(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn = Sinkhorn(),
    linear_solver: AbstractLinearSolver = CG(),
    block_size: int | None = None,
    throw: bool = True,
) -> Float[Array, ""]:
    """The sharp Sinkhorn distance `<P*, C>` (entropic plan, no entropy term).

    Derivatives:

    - `jax.grad`: one Sinkhorn solve and one H-solve (Li et al., Prop. 2):
      with `[u; v] = H^+ [(P o C) 1; (P o C)^T 1]`,
      `grad_x W_k = sum_j P_kj grad_1 c_kj (1 + (u_k + v_j - C_kj) / eps)`,
      `grad_a W = u`, `grad_b W = v` (MATH.md).
    - `jax.jvp(jax.grad(...))` / `jax.hessian`: exact, three H-solves per
      direction (the potentials' tangent, the adjoint `[u; v]`'s primal and
      its tangent `H^+ (d mu - dH [u; v])`), everything else by JAX's forward
      mode through the streaming passes.
    - Reverse over reverse raises, as for `ot_cost`.

    Weight derivatives: only the part orthogonal to `1` is meaningful, as for
    `ot_cost`.

    **Arguments:**
    ARGS
    **Returns:** the scalar `<P*, C>`.
    """
    x, y, a, b, epsilon, config = _prepare(
        x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw
    )
    return _sharp_value(x, y, a, b, epsilon, config=config)

