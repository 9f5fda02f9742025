"""Matrix-free derivative rules: Danskin gradients and Hessian-vector products.

Formulas: `docs/math.md`. The HVP is the JVP of the gradient map
`(x, y, a, b) -> (grad_x, grad_y, grad_a, grad_b)` of ott-jax's `reg_ot_cost`
at fixed, converged potentials: a streaming pass for the right-hand side
(which also gives H's marginals when no solver state is given, and the
product that reduces the H-system to its smaller side), one H-matrix solve
by `linear_solver`, and a streaming pass for the output. With CG that is
`K + 3` passes for `K` CG steps (`tests/unit/test_stream_passes.py`).
"""

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._core.checks import check_tangent, error_if, error_if_failed
from .._core.coupling import Coupling, upstream_status
from .._core.relaxation import conjugate, mass_ratio
from .._linear.operators import HOperator, h_operator
from .._core.weights import any_zero
from .._stream.engine import apply
from .._stream.pair import gradients, schur_rhs, tangent_gradients
from .._core.results import RESULTS
from .._core.sharding import auto_partitioned
from .._linear.base import AbstractHSolver, fix_gauge
from .._linear.cg import CG
from .._linear.schur import share_pass


def finite_status(tree) -> RESULTS:
    """`successful` when every array of `tree` is finite, else `nonfinite_derivative`."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in jax.tree_util.tree_leaves(tree)]))
    return RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_derivative)


def check_finite(tree, coupling: Coupling, throw: bool):
    """With `throw`, raise (naming the cost) when a derivative is not finite."""
    if not throw:
        return tree
    return error_if(
        tree, finite_status(tree) != RESULTS.successful,
        f"{RESULTS[RESULTS.nonfinite_derivative]} The cost is {coupling.cost!r}; pass "
        "`throw=False` to get the values as they are.",
    )


@eqx.filter_jit
@auto_partitioned
def grad(coupling: Coupling, *, throw: bool = True) -> tuple[Array, Array, Array, Array]:
    """Gradients of `reg_ot_cost` w.r.t. `(x, y, a, b)` (Danskin), one pass.

    `grad_x_i = sum_j P_ij grad_1 c(x_i, y_j)`, `grad_y_j = sum_i P_ij grad_2 c`,
    `grad_a = f - eps log a`, `grad_b = g - eps log b` (ott-jax's convention;
    on the simplex only the part orthogonal to 1 is meaningful). Unbalanced,
    the masses are free and the weight gradients are exact
    (`weight_gradients`, docs/unbalanced.md). With
    `throw=True` a non-finite gradient (a cost that is not differentiable
    where the coupling has mass) raises `RESULTS.nonfinite_derivative`.
    """
    gx, gy = check_finite(gradients(coupling), coupling, throw)
    return gx, gy, *weight_gradients(coupling)


def _reduced(coupling: Coupling):
    """`(h_f, h_g) = (f - eps log a, g - eps log b)`, the potentials without the log-weights."""
    eps = coupling.epsilon
    return coupling.f - eps * jnp.log(coupling.a), coupling.g - eps * jnp.log(coupling.b)


def weight_gradients(coupling: Coupling):
    """`(grad_a, grad_b)` of `reg_ot_cost` (Danskin, docs/unbalanced.md).

    Balanced: `(f - eps log a, g - eps log b)` (ott-jax's convention). With a
    relaxed marginal: `grad_a = Phi_a(h_f) + eps (sum b - s_a)`,
    `s_a = exp(-h_f / rho_a)` (`s_a = 1` and `Phi_a(h) = h` on a side with
    `tau = 1`), and likewise `grad_b`.
    """
    h_f, h_g = _reduced(coupling)
    if coupling.balanced:
        return h_f, h_g
    eps, a, b = coupling.epsilon, coupling.a, coupling.b
    s_a, s_b = weight_factors(coupling, divide=False)
    grad_a = conjugate(h_f, eps, coupling.tau_a) + eps * (jnp.sum(b) - s_a)
    grad_b = conjugate(h_g, eps, coupling.tau_b) + eps * (jnp.sum(a) - s_b)
    return grad_a, grad_b


def weight_factors(coupling: Coupling, divide: bool = True):
    """`(s_a / tau_a, s_b / tau_b)`, `s_a = (P 1)_i / a_i = exp(-h_f / rho_a)` at the
    optimum (the scalar 1 on a side with `tau = 1`, so on a balanced coupling
    `(1, 1)`): a weight tangent `da` enters the H-system as `eps (s_a / tau_a) da`
    (docs/unbalanced.md). Without `divide`, `(s_a, s_b)`."""
    h_f, h_g = _reduced(coupling)
    eps = coupling.epsilon
    s_a = mass_ratio(h_f, eps, coupling.tau_a)
    s_b = mass_ratio(h_g, eps, coupling.tau_b)
    if not divide:
        return s_a, s_b
    return s_a / coupling.tau_a, s_b / coupling.tau_b


def weight_ratios(coupling: Coupling, da, db):
    """`(da / a, db / b)`, `None` for a `None` tangent: how weight tangents
    enter the H-system.

    In the reduced potentials `h_f = f - eps log a`, `h_g = g - eps log b`
    (whose tangents are `df - eps da / a`, `dg - eps db / b`) the H-system of
    a tangent is `H [dh_f; dh_g] = [r - eps P (db / b); s - eps P^T (da / a)]`,
    `r`, `s` the point tangents' part (`tangent_marginals`; docs/math.md).
    Solved for `(df, dg)` instead, a weight tangent would enter as
    `eps (s_a / tau_a) da` and leave as `df - eps da / a`: a difference of
    two terms of size `eps da / a`, which cancel entirely at a zero weight
    (stored as `zero_weight`, `_core/weights.py`). `P_ij / a_i` is finite
    there (the conditional coupling), so no term is large.
    """
    return (None if da is None else da / coupling.a,
            None if db is None else db / coupling.b)


#: Raised for the second derivatives that cannot move mass onto a zero weight.
ZERO_MASS_TANGENT_MSG = (
    "ot_matfree: this second derivative ({what}) along a weight tangent that is non-zero "
    "at a zero-weight point is not supported: it would need the change of an H-matrix row "
    "of the size of the stored zero weight (`zero_weight`, docs/weights.md), which is lost "
    "in rounding. Tangents that are zero on the zero-weight points (padding) are supported, "
    "and so is `ot_cost` (and `om.hvp`) along any weight tangent."
)


def check_zero_mass_tangents(coupling: Coupling, da, db, what: str):
    """`(da, db)`, raising at run time (`ZERO_MASS_TANGENT_MSG`) when either is
    non-zero at a zero-weight point (`Coupling.support`)."""
    msg = ZERO_MASS_TANGENT_MSG.format(what=what)
    mass_a, mass_b = coupling.support
    if da is not None:
        da = error_if(da, jnp.any((da != 0) & ~mass_a), msg)
    if db is not None:
        db = error_if(db, jnp.any((db != 0) & ~mass_b), msg)
    return da, db


def potential_tangents(coupling: Coupling, dh_f, dh_g, da, db):
    """`(df, dg)` from the reduced potentials' tangents: `dh + eps d / w` per side."""
    eps = coupling.epsilon
    df = dh_f if da is None else dh_f + eps * da / coupling.a
    dg = dh_g if db is None else dh_g + eps * db / coupling.b
    return df, dg


def weight_outputs(coupling: Coupling, dh_f, dh_g, da, db):
    """The JVP of `weight_gradients` given the reduced potentials' tangent
    `(dh_f, dh_g)` (`weight_ratios`).

    Balanced: `(dh_f, dh_g)`. Relaxed:
    `d grad_a = (s_a / tau_a) dh_f + eps sum(db)`, likewise `b`.
    """
    if coupling.balanced:
        return dh_f, dh_g
    eps = coupling.epsilon
    factor_a, factor_b = weight_factors(coupling)
    out_a, out_b = factor_a * dh_f, factor_b * dh_g
    if db is not None:
        out_a = out_a + eps * jnp.sum(db)
    if da is not None:
        out_b = out_b + eps * jnp.sum(da)
    return out_a, out_b


@eqx.filter_jit
def grad_x(coupling: Coupling, *, throw: bool = True) -> Float[Array, "n d"]:
    """Gradient of `reg_ot_cost` w.r.t. the source points `x`, shape (n, d).

    `throw` as for `grad`.
    """
    return grad(coupling, throw=throw)[0]


def check_linear_solver(linear_solver) -> None:
    if not isinstance(linear_solver, AbstractHSolver):
        raise TypeError(
            "`linear_solver` must be an ot_matfree H-solver (`CG()`, `SpectralCG()`, "
            f"`TruncatedSVD()`, `DenseSolver()`), got {type(linear_solver).__name__}."
        )


def _checked_state(coupling: Coupling, linear_solver, state, operator=None):
    """`state` if it was made by `linear_solver`'s kind of solver from
    `coupling`'s H-matrix, else a fresh one (from `operator` when the caller
    already has it).

    The H-matrix depends on the potentials, the points, `epsilon` and the
    cost; a state made from a coupling that differs in any of them raises
    (a `TypeError` for another solver's state, a `ValueError` for another
    shape or cost, an error at run time for other values).
    """
    if state is None:
        operator = h_operator(coupling) if operator is None else operator
        return linear_solver.init(operator, {})
    held = getattr(getattr(state, "operator", None), "coupling", None)
    if not isinstance(held, Coupling) or held.shape != coupling.shape:
        raise ValueError(
            "`solver_state` must be `linear_solver.init(h_operator(coupling), {})` for this "
            "coupling."
        )
    state = linear_solver.check_state(state)
    same_cost = eqx.tree_equal(held.cost, coupling.cost)
    if same_cost is False:
        raise ValueError(
            "`solver_state` was computed for a different coupling (a different cost: "
            f"{held.cost!r} against {coupling.cost!r}); make it with "
            "`linear_solver.init(h_operator(coupling), {})` for the coupling you differentiate."
        )
    same = jnp.array_equal(held.f, coupling.f) & jnp.array_equal(held.g, coupling.g)
    same = same & jnp.array_equal(held.x, coupling.x) & jnp.array_equal(held.y, coupling.y)
    same = same & jnp.array_equal(held.epsilon, coupling.epsilon) & jnp.asarray(same_cost)
    return error_if(
        state, ~same,
        "`solver_state` was computed for a different coupling; make it with "
        "`linear_solver.init(h_operator(coupling), {})` for the coupling you differentiate.",
    )


def _zero_mass_entries(operator: HOperator, r, s, df, dg):
    """`(df, dg)` with the entries of zero-weight points recomputed from their
    own rows of the H-system: `df_i = (r_i - (P dg)_i) / H_ii`, likewise `dg_j`.

    Such a row of H is of the size of `ZERO` (`_core/weights.py`), and so is
    its right-hand side; its solution is of the size of the others. A solver
    resolves it only to its absolute accuracy over `ZERO` (the dense and the
    spectral solvers: not at all), while the other entries are exact: row
    `i` couples to them by `P_i`, of the size of `ZERO`. So they are solved
    for as they are, and these entries recomputed from them, in one pass
    (`apply`) that runs only when there are zero weights.
    """
    mass_a, mass_b = operator.support

    def recompute(df, dg):
        df_m, dg_m = jnp.where(mass_a, df, 0), jnp.where(mass_b, dg, 0)
        p_dg, pt_df = apply(operator.coupling, v=dg_m, u=df_m)
        diag_a, diag_b = operator.diagonal
        df = jnp.where(mass_a, df, (r - p_dg) / diag_a)
        dg = jnp.where(mass_b, dg, (s - pt_df) / diag_b)
        return fix_gauge(df, dg, operator.support) if operator.balanced else (df, dg)

    return jax.lax.cond(any_zero(mass_a, mass_b), recompute, lambda df, dg: (df, dg), df, dg)


def solve_h(
    coupling: Coupling, r, s, *, linear_solver: AbstractHSolver, state=None, throw: bool,
    operator: HOperator | None = None, pushed=None,
):
    """`H^+ [r; s]` for the H-matrix of `coupling`: `(df, dg, stats)`.

    `stats["result"]` is `successful`, `coupling_not_converged` (the
    coupling's own solve failed) or `linear_solve_failed`; with `throw` a
    failure raises through every output. `operator`: the H-matrix of
    `coupling` when the caller has already computed its marginals (used
    only when `state` is `None`). `pushed`: the product reducing `[r; s]`
    to the smaller side, from the caller's pass (`schur_rhs`).
    """
    state = _checked_state(coupling, linear_solver, state, operator)
    df, dg, solve_result, stats = linear_solver.solve_split(state, r, s, share_pass(pushed))
    df, dg = _zero_mass_entries(state.operator, r, s, df, dg)
    upstream = upstream_status(coupling)
    failed = RESULTS.where(
        solve_result == lx.RESULTS.successful, RESULTS.successful, RESULTS.linear_solve_failed
    )
    result = RESULTS.where(upstream == RESULTS.successful, failed, upstream)
    stats = {**stats, "result": result}
    if throw:
        df, dg = error_if_failed((df, dg), result)
    return df, dg, stats


def _batch_size(tangents: dict, shapes: dict) -> int | None:
    """`k` when the given tangents carry a leading batch axis of size `k`, else `None`."""
    given = {name: t for name, t in tangents.items() if t is not None}
    batched = {}
    for name, t in given.items():
        ndim = jnp.ndim(t)
        if ndim == len(shapes[name]) + 1:
            batched[name] = jnp.shape(t)[0]
        elif ndim != len(shapes[name]):
            raise ValueError(
                f"`{name}` must have shape {shapes[name]}, or (k, *{shapes[name]}) for k "
                f"tangents at once, got {jnp.shape(t)}."
            )
    if not batched:
        return None
    if len(set(batched.values())) > 1 or len(batched) < len(given):
        got = {name: jnp.shape(t) for name, t in given.items()}
        raise ValueError(
            "Batched tangents: every given tangent needs the same leading batch axis "
            f"(shapes (k, ...)); got {got}."
        )
    return next(iter(batched.values()))


def _hvp_one(coupling, dx, dy, da, db, linear_solver, solver_state, throw):
    """`hvp` for one tangent (checked, `None` for zero): `(out, result, stats)`."""
    # One pass: the right-hand side, the product reducing it to the smaller
    # side, and (without a solver state) H's marginals. The cost's first
    # derivatives enter here: check them before the H-solve, whose own
    # failure would otherwise be reported first.
    operator, marginal = None, None
    if solver_state is not None:
        solver_state = _checked_state(coupling, linear_solver, solver_state)
        held = solver_state.operator
        marginal = held.b_hat if coupling.shape[1] > coupling.shape[0] else held.a_hat
    r, s, a_hat, b_hat, pushed = schur_rhs(coupling, dx, dy, *weight_ratios(coupling, da, db),
                                           marginal)
    if solver_state is None:
        operator = HOperator(coupling, a_hat, b_hat)
    r, s = check_finite((r, s), coupling, throw)
    dh_f, dh_g, stats = solve_h(
        coupling, r, s, linear_solver=linear_solver, state=solver_state, throw=throw,
        operator=operator, pushed=pushed,
    )
    df, dg = potential_tangents(coupling, dh_f, dh_g, da, db)
    out_x, out_y = check_finite(tangent_gradients(coupling, dx, dy, df, dg), coupling, throw)
    # A non-finite cost derivative is the root cause of any failure it leads to.
    finite = finite_status((r, s, out_x, out_y))
    result = stats.pop("result")
    result = RESULTS.where(finite == RESULTS.successful, result, finite)
    out_a, out_b = weight_outputs(coupling, dh_f, dh_g, da, db)
    return (out_x, out_y, out_a, out_b), result, stats


class HVPSolution(eqx.Module):
    """A Hessian-vector product with its status and the H-solve's statistics,
    as `lineax.Solution` is a linear solve's (`hvp_solution`, `hvp_x_solution`).

    **Fields:**

    - `value`: the product: `(d grad_x, d grad_y, d grad_a, d grad_b)` from
      `hvp_solution`, the array `d grad_x` from `hvp_x_solution`; with the
      tangents' batch axis, if any.
    - `result`: an `ot_matfree.RESULTS`: `successful`,
      `coupling_not_converged` (the coupling's own Sinkhorn solve failed),
      `linear_solve_failed` (the H-solve did not reach its tolerance) or
      `nonfinite_derivative` (the cost's derivatives are not finite where
      the coupling has mass). Shape `(k,)` for `k` tangents at once.
    - `stats`: the H-solver's statistics, a dict of arrays: at least
      `num_steps`, `residual` (relative, of the H-solve) and `converged`
      (the H-solve alone; `result` also covers the coupling and the cost),
      plus the solver's own (`num_deflated`, ...). For `k` tangents at
      once, every entry has a leading axis of size `k`.
    """

    value: Any
    result: RESULTS
    stats: dict[str, Array]


@eqx.filter_jit
@auto_partitioned
def hvp_solution(
    coupling: Coupling, dx: Float[Array, "*k n d"] | None = None,
    dy: Float[Array, "*k m d"] | None = None, da: Float[Array, "*k n"] | None = None,
    db: Float[Array, "*k m"] | None = None, *, linear_solver: AbstractHSolver = CG(),
    solver_state=None, throw: bool = True,
) -> HVPSolution:
    """`hvp`, returned as an `HVPSolution`: the product with its status and stats.

    Arguments as for `hvp`. `HVPSolution.value` is `hvp`'s return value,
    `result` its status (with `throw=False`, check it), `stats` the
    H-solver's statistics (`num_steps`, `residual`, `converged`, ...).

    ```python
    sol = om.hvp_solution(coupling, dx, throw=False)
    hx, hy, ha, hb = sol.value
    ok = sol.result == om.RESULTS.successful
    steps = sol.stats["num_steps"]
    ```
    """
    check_linear_solver(linear_solver)
    (n, d), m = coupling.x.shape, coupling.y.shape[0]
    dtype = coupling.x.dtype
    shapes = {"dx": (n, d), "dy": (m, d), "da": (n,), "db": (m,)}
    given = {"dx": dx, "dy": dy, "da": da, "db": db}
    k = _batch_size(given, shapes)
    # Zero tangents stay `None` so the reductions skip their terms.
    dx, dy, da, db = (
        None if t is None
        else check_tangent(name, t, shapes[name] if k is None else (k, *shapes[name]), dtype)
        for name, t in given.items()
    )

    def one(dx, dy, da, db):
        return _hvp_one(coupling, dx, dy, da, db, linear_solver, solver_state, throw)

    # A batch is `vmap` of the single HVP: everything that does not depend on
    # the tangents (the blocks of P, H's marginals, a solver's set-up) is
    # computed once, and each block's products take all k columns at once.
    out, result, stats = one(dx, dy, da, db) if k is None else jax.vmap(one)(dx, dy, da, db)
    return HVPSolution(out, result, stats)


def hvp_x_solution(
    coupling: Coupling, v: Float[Array, "*k n d"], *,
    linear_solver: AbstractHSolver = CG(), solver_state=None, throw: bool = True,
) -> HVPSolution:
    """`hvp_x`, returned as an `HVPSolution` whose `value` is `H_xx v`.

    Arguments as for `hvp_x`; fields as for `hvp_solution`.

    ```python
    sol = om.hvp_x_solution(coupling, v)
    hv, steps = sol.value, sol.stats["num_steps"]
    ```
    """
    sol = hvp_solution(
        coupling, dx=v, linear_solver=linear_solver, solver_state=solver_state, throw=throw
    )
    return HVPSolution(sol.value[0], sol.result, sol.stats)


def _deprecated_stats(name: str, sol: HVPSolution) -> dict[str, Array]:
    """0.2's `return_stats=True` dict (the status under `"result"`), with a warning."""
    warnings.warn(
        f"`{name}(..., return_stats=True)` is deprecated: use `{name}_solution(...)`, "
        "which returns an `HVPSolution` with `value`, `result` and `stats` "
        f"(`stats[\"result\"]` is now `{name}_solution(...).result`).",
        DeprecationWarning, stacklevel=3,
    )
    return {**sol.stats, "result": sol.result}


def hvp(
    coupling: Coupling,
    dx: Float[Array, "*k n d"] | None = None,
    dy: Float[Array, "*k m d"] | None = None,
    da: Float[Array, "*k n"] | None = None,
    db: Float[Array, "*k m"] | None = None,
    *,
    linear_solver: AbstractHSolver = CG(),
    solver_state=None,
    return_stats: bool = False,
    throw: bool = True,
):
    """Joint Hessian-vector product of `reg_ot_cost` in `(x, y, a, b)`.

    Returns the JVP of `grad` in the tangent `(dx, dy, da, db)` (a `None`
    tangent is zero): `(d grad_x, d grad_y, d grad_a, d grad_b)`. Memory is
    O((n + m) d + block * m). When `sum(da) != sum(db)` the H-system is
    inconsistent and its least-squares solution is used (docs/math.md, step 3);
    only the part of the weight outputs orthogonal to 1 is then meaningful.
    For the status and the H-solve's statistics as well, call
    `hvp_solution` (same arguments).

    **Arguments:**

    - `coupling`: a solved `Coupling`.
    - `dx`, `dy`, `da`, `db`: tangents, shapes (n, d), (m, d), (n,), (m,);
      or `k` tangents at once, each given tangent with a leading batch axis
      (shapes (k, n, d), ...). A batch shares every block of `P` (each exp is
      computed once for all `k`), and the `k` H-solves run together (one CG
      per column, stopping when the last has converged).
    - `linear_solver`: how H is solved (`CG()`, `SpectralCG()`,
      `TruncatedSVD()`, `DenseSolver()`).
    - `solver_state`: `linear_solver.init(h_operator(coupling), {})`,
      computed once and reused for many HVPs with the same coupling (the
      spectral solvers' block Lanczos, `DenseSolver`'s eigendecomposition).
      `None`: set up inside this call.
    - `return_stats`: deprecated (use `hvp_solution`): also return the
      solver's stats dict, with the status under `"result"`.
    - `throw`: raise (also under `jit`) when the H-solve does not converge,
      the coupling's own Sinkhorn solve did not, or a derivative of the cost
      is not finite where the coupling has mass. With `throw=False` the
      status is `hvp_solution(...).result` (an `ot_matfree.RESULTS`).

    **Returns:** the four output tangents (with the batch axis of the
    tangents, if any).
    """
    sol = hvp_solution(
        coupling, dx, dy, da, db, linear_solver=linear_solver, solver_state=solver_state,
        throw=throw,
    )
    if return_stats:
        return sol.value, _deprecated_stats("hvp", sol)
    return sol.value


def hvp_x(
    coupling: Coupling,
    v: Float[Array, "*k n d"],
    *,
    linear_solver: AbstractHSolver = CG(),
    solver_state=None,
    return_stats: bool = False,
    throw: bool = True,
):
    """Hessian-vector product of `reg_ot_cost` w.r.t. the source points.

    `H_xx v`, shape (n, d), matrix-free; for `v` of shape (k, n, d), the `k`
    products, shape (k, n, d), sharing every exp (see `hvp`). Arguments as
    for `hvp` (`return_stats` is deprecated). For the status and the
    H-solve's statistics (`num_steps`, `residual`, `converged`) as well,
    call `hvp_x_solution`.
    """
    sol = hvp_x_solution(
        coupling, v, linear_solver=linear_solver, solver_state=solver_state, throw=throw
    )
    if return_stats:
        return sol.value, _deprecated_stats("hvp_x", sol)
    return sol.value
