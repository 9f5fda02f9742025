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
  is the matrix-free Hessian-vector product (docs/math.md).
- Reverse over reverse (`jax.grad(jax.grad(f))`, `jax.jacrev(jax.grad(f))`)
  raises a clear error: the HVP contains a CG `while_loop`, which JAX cannot
  transpose. Use forward over reverse (same cost).

`jit`, `vmap` (equal shapes) and chain rules through code producing `x`, `y`,
`a`, `b` from parameters work as for any JAX function.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._core.checks import (
    check_block_size, check_cost_matrix, check_problem, check_symmetric, cost_matrix_and_ids,
)
from ._core.costs import AbstractCost, MatrixCost, SqEuclidean, as_cost, column_ids
from ._core.coupling import BlockSize, Coupling
from ._core.relaxation import is_balanced
from ._core.scale import check_relative, scale_problem
from ._core.sharding import auto_partitioned, row_sharding
from ._derivatives.hvp import (
    check_finite, check_linear_solver, check_zero_mass_tangents, grad, hvp, weight_factors,
)
from ._derivatives.implicit import check_no_epsilon_tangent, forward_only, h_solve, potentials
from ._forward.config import Config
from ._forward.lbfgs import LBFGS
from ._forward.sinkhorn import Sinkhorn, check_forward_solver, check_taus
from ._linear.base import AbstractHSolver
from ._linear.cg import CG
from ._stream.sharp import cost_marginals, sharp_gradients


def _pairing(grads, tangents) -> Array:
    """`sum_k <G_k, t_k>` over the non-zero (non-`None`) tangents."""
    terms = [jnp.vdot(g, t) for g, t in zip(grads, tangents) if t is not None]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((), grads[0].dtype)


def _zero_tangents(potentials):
    """Tangents of returned potentials: zero (a warm start, never differentiated)."""
    return jax.tree_util.tree_map(jnp.zeros_like, potentials)


def _with_gradient(value_and_grad, value_only=None):
    """`(L, potentials) = loss(*args, epsilon, config)` whose JVP is `(<G, t>, 0)`.

    `value_and_grad(*args, epsilon, config=) -> (L, G, potentials)` with `G`
    a tuple matching the arguments before `epsilon` and `potentials` the
    transport solve's `(f, g)` (or `None`), returned for warm starts with zero
    tangents. Reverse mode only has to transpose the pairing (linear in the
    tangents); forward over reverse pushes its tangent through
    `value_and_grad`, whose own JVP is the HVP (a custom rule, or JAX's
    forward mode through `potentials` / `h_solve`). `value_only` computes
    `(L, potentials)` alone when that is cheaper.
    """
    if value_only is None:
        def value_only(*args, config):
            value, _, potentials = value_and_grad(*args, config=config)
            return value, potentials

    @eqx.filter_custom_jvp
    def loss(*args, config: Config):
        return value_only(*args, config=config)

    @loss.def_jvp
    def _loss_jvp(primals, tangents, *, config: Config):
        check_no_epsilon_tangent(tangents[-1])
        value, grads, potentials = value_and_grad(*primals, config=config)
        pairing = _pairing(grads, tangents[:-1])
        return (value, potentials), (pairing, _zero_tangents(potentials))

    return loss


def _transport_value_and_grad(solve, expand, fold, self_term=False):
    """`(reg_ot_cost, G)` of the coupling `solve(*args, config)`, with the
    matrix-free HVP as the JVP rule of the gradient `G`.

    `expand` maps the arguments' tangents to `(dx, dy, da, db)` and `fold`
    maps `(x, y, a, b)` derivatives back to the arguments (both the identity
    for `OT(x, y, a, b)`; for a self term `OT(x, x, a, a)` both arguments
    move together, so tangents are duplicated and derivatives added).
    `self_term`: refuse weight tangents at zero weights (`check_zero_mass_tangents`:
    a zero weight there is zero on both sides of the same entry of `P`).
    """

    @eqx.filter_custom_jvp
    def value_and_grad(*args, config: Config):
        coupling = solve(*args, config)
        grads = fold(grad(coupling, throw=config.throw))
        return coupling.reg_ot_cost, grads, (coupling.f, coupling.g)

    @value_and_grad.def_jvp
    def _value_and_grad_jvp(primals, tangents, *, config: Config):
        check_no_epsilon_tangent(tangents[-1])
        coupling = solve(*primals, config)
        grads = fold(grad(coupling, throw=config.throw))
        dx, dy, da, db = expand(tangents[:-1])
        if self_term:
            da, db = check_zero_mass_tangents(coupling, da, db, "`sinkhorn_divergence`'s HVP")
        d_grads = hvp(coupling, dx, dy, da, db, linear_solver=config.linear_solver,
                      throw=config.throw)
        pairing = _pairing(grads, tangents[:-1])
        potentials = (coupling.f, coupling.g)
        return (coupling.reg_ot_cost, grads, potentials), (
            pairing, forward_only(fold(d_grads)), _zero_tangents(potentials)
        )

    return value_and_grad


def _fold_self(grads):
    gx, gy, ga, gb = grads
    return gx + gy, ga + gb


_ot_value = _with_gradient(
    _transport_value_and_grad(
        lambda x, y, a, b, epsilon, config: config.solve(x, y, a, b, epsilon),
        expand=lambda t: t,
        fold=lambda g: g,
    )
)
_self_value = _with_gradient(
    _transport_value_and_grad(
        lambda x, a, epsilon, config: config.solve_self(x, a, epsilon),
        expand=lambda t: (t[0], t[0], t[1], t[1]),
        fold=_fold_self,
        self_term=True,
    )
)


def _sharp_coupling(x, y, a, b, epsilon, config: Config) -> Coupling:
    f, g = potentials(x, y, a, b, epsilon, config=config)
    return config.coupling(x, y, a, b, f, g, epsilon)


def _sharp_value_and_grad(x, y, a, b, epsilon, *, config: Config):
    """`(<P, C>, (grad_x, grad_y, grad_a, grad_b))` with one H-solve (docs/math.md).

    Written with `potentials` and `h_solve`, whose JVP rules are the
    implicit-function tangents, so JAX's forward mode through this function
    is the exact HVP (three H-solves per direction).
    """
    coupling = _sharp_coupling(x, y, a, b, epsilon, config)
    pc_rows, pc_cols = cost_marginals(coupling)
    u, v = h_solve(x, y, coupling.f, coupling.g, a, b, epsilon, pc_rows, pc_cols, config=config)
    gx, gy = check_finite(sharp_gradients(coupling, u, v), coupling, config.throw)
    # A weight tangent moves the potentials `(f, g)` as a right-hand side
    # `eps (s / tau) da` would (docs/unbalanced.md; the factors are 1 when
    # balanced), so `grad_a = (s_a / tau_a) u`. At a zero weight `u_i` is
    # finite: its row of H (`P_i`, its diagonal, `pc_rows_i`) scales with `a_i`.
    factor_a, factor_b = weight_factors(coupling)
    return jnp.sum(pc_rows), (gx, gy, factor_a * u, factor_b * v), (coupling.f, coupling.g)


def _sharp_value_only(x, y, a, b, epsilon, *, config: Config):
    coupling = _sharp_coupling(x, y, a, b, epsilon, config)
    return jnp.sum(cost_marginals(coupling)[0]), (coupling.f, coupling.g)


_sharp_value = _with_gradient(_sharp_value_and_grad, _sharp_value_only)


def _mass_term(a, b, epsilon, config: Config):
    """The unbalanced divergence's `eps / 2 (sum a - sum b)^2` (Sejourne et al.
    2019, Thm. 1; ott-jax's `sinkhorn_divergence`); 0 when balanced."""
    if config.balanced:
        return 0.0
    return 0.5 * epsilon * (jnp.sum(a) - jnp.sum(b)) ** 2


def _divergence_value(x, y, a, b, epsilon, *, config: Config):
    xy, potentials = _ot_value(x, y, a, b, epsilon, config=config)
    xx, _ = _self_value(x, a, epsilon, config=config)
    yy, _ = _self_value(y, b, epsilon, config=config)
    return xy - 0.5 * (xx + yy) + _mass_term(a, b, epsilon, config), potentials


# A cost matrix's self term `OT(C, a, a)`: `C` is the coupling's `x` (its
# column points `ids` have no tangent) and `a` both weights, so the weight
# tangent is duplicated and the weight derivatives added.
_matrix_self_value = _with_gradient(
    _transport_value_and_grad(
        lambda C, ids, a, epsilon, config: config.solve_self(C, a, epsilon, y=ids),
        expand=lambda t: (t[0], None, t[2], t[2]),
        fold=lambda g: (g[0], g[1], g[2] + g[3]),
        self_term=True,
    )
)


def _matrix_divergence_value(C_xy, C_xx, C_yy, ids_n, ids_m, a, b, epsilon, *, config: Config):
    xy, potentials = _ot_value(C_xy, ids_m, a, b, epsilon, config=config)
    xx, _ = _matrix_self_value(C_xx, ids_n, a, epsilon, config=config)
    yy, _ = _matrix_self_value(C_yy, ids_m, b, epsilon, config=config)
    return xy - 0.5 * (xx + yy) + _mass_term(a, b, epsilon, config), potentials


# --- Public entry points -----------------------------------------------------


def _evaluate(loss, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw,
              init=None, return_potentials=False, tau_a=1.0, tau_b=1.0,
              relative_epsilon=None):
    """`loss(x, y, a, b, epsilon, config=)` on checked inputs, compiled.

    The clouds' placement is read here, outside `jit`: inside, a cloud on a
    mesh with `Auto` axes is a tracer whose type does not show it. So are the
    static options normalised (`block_size` to a Python `int`, `throw` to a
    `bool`): `filter_jit` would trace a NumPy scalar such as `np.int64(16)`.
    """
    block_size = check_block_size(block_size)
    throw = bool(throw)
    tau_a, tau_b = check_taus(tau_a, tau_b)
    if loss is _divergence_value:
        check_divergence_taus(tau_a, tau_b)
    relative = check_relative(relative_epsilon, as_cost(cost))
    sharding = row_sharding(x=x, y=y)
    if isinstance(init, Coupling):
        init = (init.f, init.g)
    elif isinstance(init, list):
        init = tuple(init)
    return _evaluate_jit(
        loss, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, sharding, throw,
        init, bool(return_potentials), tau_a, tau_b, relative,
    )


@eqx.filter_jit
@auto_partitioned
def _evaluate_jit(loss, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, sharding,
                  throw, init, return_potentials, tau_a, tau_b, relative):
    # `None` weights become uniform constants: never differentiated.
    cost = as_cost(cost)
    balanced = is_balanced(tau_a, tau_b)
    x, y, a, b, epsilon = check_problem(x, y, a, b, epsilon, cost, balanced=balanced)
    if relative:
        # `OT_{s m}(C) = m OT_s(C / m)` (`_core/scale.py`): JAX differentiates `m`.
        x, y, scale = scale_problem(x, y, cost)
        if init is not None:
            init = tuple(p / jax.lax.stop_gradient(scale) for p in init)
    config = _config(cost, solver, linear_solver, block_size, sharding, throw, init, tau_a, tau_b)
    value, potentials = loss(x, y, a, b, epsilon, config=config)
    if relative:
        value, potentials = scale * value, tuple(scale * p for p in potentials)
    return (value, jax.lax.stop_gradient(potentials)) if return_potentials else value


def _config(cost, solver, linear_solver, block_size, sharding, throw, init=None, tau_a=1.0,
            tau_b=1.0) -> Config:
    """The losses' `Config`, its solvers checked."""
    check_forward_solver(solver, is_balanced(tau_a, tau_b))
    check_linear_solver(linear_solver)
    return Config(
        cost, solver, linear_solver, block_size, sharding, throw, jax.lax.stop_gradient(init),
        tau_a, tau_b,
    )


def check_divergence_taus(tau_a: float, tau_b: float) -> None:
    """The unbalanced divergence is defined with one relaxation for all three
    terms (Sejourne et al. 2019): `tau_a == tau_b`."""
    if tau_a != tau_b:
        raise ValueError(
            "`sinkhorn_divergence` needs `tau_a == tau_b`: the unbalanced Sinkhorn divergence "
            "(Sejourne et al. 2019) relaxes both marginals of all three terms alike; got "
            f"tau_a={tau_a}, tau_b={tau_b}."
        )


def matrix_divergence(C_xy, C_xx, C_yy, a, b, *, epsilon, solver, linear_solver, block_size,
                      throw, tau_a=1.0, tau_b=1.0, relative_epsilon=None):
    """`ot_matfree.matrix.sinkhorn_divergence` (its docstring): the divergence
    of three cost matrices, checked and compiled."""
    block_size = check_block_size(block_size)
    tau_a, tau_b = check_taus(tau_a, tau_b)
    check_divergence_taus(tau_a, tau_b)
    relative = check_relative(relative_epsilon, MatrixCost())
    sharding = row_sharding(C_xy=C_xy, C_xx=C_xx, C_yy=C_yy)
    return _matrix_divergence_jit(
        C_xy, C_xx, C_yy, a, b, epsilon, solver, linear_solver, block_size, sharding, bool(throw),
        tau_a, tau_b, relative,
    )


@eqx.filter_jit
@auto_partitioned
def _matrix_divergence_jit(C_xy, C_xx, C_yy, a, b, epsilon, solver, linear_solver, block_size,
                           sharding, throw, tau_a, tau_b, relative):
    C_xy, ids_m = cost_matrix_and_ids("C_xy", C_xy)
    n, m = C_xy.shape
    for name, C, size in (("C_xx", C_xx, n), ("C_yy", C_yy, m)):
        if jnp.shape(C) != (size, size):
            raise ValueError(
                f"`{name}` must have shape ({size}, {size}) to match `C_xy` {C_xy.shape}, "
                f"got {jnp.shape(C)}."
            )
    C_xy, ids_m, a, b, epsilon = check_problem(
        C_xy, ids_m, a, b, epsilon, MatrixCost(), "C_xy", balanced=tau_a == 1.0
    )
    C_xx = check_symmetric("C_xx", check_cost_matrix("C_xx", jnp.asarray(C_xx, C_xy.dtype)))
    C_yy = check_symmetric("C_yy", check_cost_matrix("C_yy", jnp.asarray(C_yy, C_xy.dtype)))
    config = _config(MatrixCost(), solver, linear_solver, block_size, sharding, throw,
                     tau_a=tau_a, tau_b=tau_b)
    ids_n = column_ids(n, C_xy.dtype)
    scale = 1.0
    if relative:  # one scale, the mean of C_xy, for all three terms
        C_xy, _, scale = scale_problem(C_xy, ids_m, MatrixCost())
        C_xx, C_yy = C_xx / scale, C_yy / scale
    value, _ = _matrix_divergence_value(
        C_xy, C_xx, C_yy, ids_n, ids_m, a, b, epsilon, config=config
    )
    return scale * value


def ot_cost(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    init: Coupling | tuple[Array, Array] | None = None,
    return_potentials: bool = False,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""] | tuple[Float[Array, ""], tuple[Array, Array]]:
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

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform (and not differentiated)
      if `None`.
    - `epsilon`: absolute entropic regularisation (> 0). Not differentiable:
      a tangent on `epsilon` raises `ValueError`.
    - `cost`: an `AbstractCost` or any twice-differentiable callable
      `c(x_i, y_j) -> scalar` (e.g. an ott-jax `CostFn`).
    - `solver`: the forward solver, `Sinkhorn` (tolerance, iteration cap,
      acceleration) or `LBFGS`.
    - `linear_solver`: how H-systems of derivatives are solved (`CG()`, ...).
    - `block_size`: rows per streaming block; `None` picks it from a memory budget.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, eagerly and under `jit`)
      when Sinkhorn or a derivative's H-solve does not converge, whichever
      output is used: the value, the gradient (also `jit(grad(f))`, where the
      value is dropped) or an HVP. With `throw=False` nothing is checked: a
      scalar loss cannot carry a status, so check `ot_matfree.solve(...)`'s
      `result` and `hvp_solution(...).result` yourself.
    - `init`: warm start of the Sinkhorn solve: a previous `Coupling` of the
      same shapes or its potentials `(f, g)` (e.g. those returned with
      `return_potentials=True` at a nearby point). It changes the number of
      iterations, not the value or the derivatives (all taken at the
      converged solution); never differentiated.
    - `return_potentials`: also return the solve's potentials `(f, g)`
      (not differentiated), to warm-start the next evaluation; see
      `NewtonCG(warm_start=...)`.

    - `tau_a`, `tau_b`: marginal relaxations in (0, 1] (ott-jax's
      convention; 1, the default: balanced). Below 1 the loss is that of
      unbalanced OT (`solve`), the masses of `a`, `b` are free and their
      gradients exact (docs/unbalanced.md). Not with `LBFGS` or Newton steps.
    - `relative_epsilon`: `None` (the default: `epsilon` is absolute) or
      `"mean"`: `epsilon` times the mean cost over all pairs (unweighted, as
      ott-jax's `relative_epsilon="mean"`), for the squared Euclidean cost or
      a cost matrix. The scale depends on the points and is differentiated
      (docs/unbalanced.md, "Relative epsilon").

    **Returns:** the scalar `reg_ot_cost`, or `(reg_ot_cost, (f, g))` with
    `return_potentials=True`.
    """
    return _evaluate(
        _ot_value, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw, init,
        return_potentials, tau_a, tau_b, relative_epsilon,
    )


def sinkhorn_divergence(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""]:
    """The Sinkhorn divergence `OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2`.

    Three Sinkhorn solves; the self terms `OT(x, x)`, `OT(y, y)` use
    symmetric Sinkhorn updates (Feydy et al. 2019, eq. 25; alternating
    updates can take 10^5+ iterations there at small epsilon) when the cost
    is `SqEuclidean`. In the self terms both arguments move together, so
    their derivatives add the two arguments' parts and their second
    derivatives use the joint HVP with tangent `(dx, dx, da, da)`: Hessians
    are exact by construction (unlike ott-jax's default `use_danskin=True`,
    which freezes the potentials). Same derivative support and weight
    convention as `ot_cost`.

    **Arguments:**

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform (and not differentiated)
      if `None`.
    - `epsilon`: absolute entropic regularisation (> 0). Not differentiable:
      a tangent on `epsilon` raises `ValueError`.
    - `cost`: an `AbstractCost` or any twice-differentiable callable
      `c(x_i, y_j) -> scalar` (e.g. an ott-jax `CostFn`).
    - `solver`: the forward solver, `Sinkhorn` (tolerance, iteration cap,
      acceleration) or `LBFGS`.
    - `linear_solver`: how H-systems of derivatives are solved (`CG()`, ...).
    - `block_size`: rows per streaming block; `None` picks it from a memory budget.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, eagerly and under `jit`)
      when Sinkhorn or a derivative's H-solve does not converge, whichever
      output is used: the value, the gradient (also `jit(grad(f))`, where the
      value is dropped) or an HVP. With `throw=False` nothing is checked: a
      scalar loss cannot carry a status, so check `ot_matfree.solve(...)`'s
      `result` and `hvp_solution(...).result` yourself.

    - `tau_a`, `tau_b`: marginal relaxations in (0, 1], equal (the
      unbalanced divergence relaxes all three terms alike): then
      `OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2 + eps (sum a - sum b)^2 / 2`
      (Sejourne et al. 2019, Thm. 1; ott-jax's `sinkhorn_divergence`).
    - `relative_epsilon`: `None` (the default: `epsilon` is absolute) or
      `"mean"`: `epsilon` times the mean cost over all pairs (unweighted, as
      ott-jax's `relative_epsilon="mean"`), for the squared Euclidean cost or
      a cost matrix. The scale depends on the points and is differentiated
      (docs/unbalanced.md, "Relative epsilon"); the divergence uses one scale, that of `c(x, y)`, for its three terms.

    **Returns:** the scalar divergence.
    """
    return _evaluate(
        _divergence_value, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw,
        tau_a=tau_a, tau_b=tau_b, relative_epsilon=relative_epsilon,
    )


def sinkhorn_distance(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    init: Coupling | tuple[Array, Array] | None = None,
    return_potentials: bool = False,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""] | tuple[Float[Array, ""], tuple[Array, Array]]:
    """The sharp Sinkhorn distance `<P*, C>` (entropic plan, no entropy term).

    Derivatives:

    - `jax.grad`: one Sinkhorn solve and one H-solve (Li et al., Prop. 2):
      with `[u; v] = H^+ [(P o C) 1; (P o C)^T 1]`,
      `grad_x W_k = sum_j P_kj grad_1 c_kj (1 + (u_k + v_j - C_kj) / eps)`,
      `grad_a W = u`, `grad_b W = v` (docs/math.md).
    - `jax.jvp(jax.grad(...))` / `jax.hessian`: exact, three H-solves per
      direction (the potentials' tangent, the adjoint `[u; v]`'s primal and
      its tangent `H^+ (d mu - dH [u; v])`), everything else by JAX's forward
      mode through the streaming passes.
    - Reverse over reverse raises, as for `ot_cost`.

    Weight derivatives: only the part orthogonal to `1` is meaningful, as for
    `ot_cost`.

    **Arguments:**

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform (and not differentiated)
      if `None`.
    - `epsilon`: absolute entropic regularisation (> 0). Not differentiable:
      a tangent on `epsilon` raises `ValueError`.
    - `cost`: an `AbstractCost` or any twice-differentiable callable
      `c(x_i, y_j) -> scalar` (e.g. an ott-jax `CostFn`).
    - `solver`: the forward solver, `Sinkhorn` (tolerance, iteration cap,
      acceleration) or `LBFGS`.
    - `linear_solver`: how H-systems of derivatives are solved (`CG()`, ...).
    - `block_size`: rows per streaming block; `None` picks it from a memory budget.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, eagerly and under `jit`)
      when Sinkhorn or a derivative's H-solve does not converge, whichever
      output is used: the value, the gradient (also `jit(grad(f))`, where the
      value is dropped) or an HVP. With `throw=False` nothing is checked: a
      scalar loss cannot carry a status, so check `ot_matfree.solve(...)`'s
      `result` and `hvp_solution(...).result` yourself.
    - `init`: warm start of the Sinkhorn solve: a previous `Coupling` of the
      same shapes or its potentials `(f, g)` (e.g. those returned with
      `return_potentials=True` at a nearby point). It changes the number of
      iterations, not the value or the derivatives (all taken at the
      converged solution); never differentiated.
    - `return_potentials`: also return the solve's potentials `(f, g)`
      (not differentiated), to warm-start the next evaluation; see
      `NewtonCG(warm_start=...)`.

    - `tau_a`, `tau_b`: marginal relaxations in (0, 1] (ott-jax's
      convention; 1, the default: balanced). Below 1 the loss is that of
      unbalanced OT (`solve`), the masses of `a`, `b` are free and their
      gradients exact (docs/unbalanced.md). Not with `LBFGS` or Newton steps.
    - `relative_epsilon`: `None` (the default: `epsilon` is absolute) or
      `"mean"`: `epsilon` times the mean cost over all pairs (unweighted, as
      ott-jax's `relative_epsilon="mean"`), for the squared Euclidean cost or
      a cost matrix. The scale depends on the points and is differentiated
      (docs/unbalanced.md, "Relative epsilon").

    **Returns:** the scalar `<P*, C>`, or `(<P*, C>, (f, g))` with
    `return_potentials=True`.
    """
    return _evaluate(
        _sharp_value, x, y, a, b, epsilon, cost, solver, linear_solver, block_size, throw, init,
        return_potentials, tau_a, tau_b, relative_epsilon,
    )
