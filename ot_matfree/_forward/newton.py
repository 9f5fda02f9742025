"""Newton steps on the dual of entropic OT, after Sinkhorn (forward-solve layer).

The dual in ott-jax's convention (log-weights inside the potentials) is

    D(f, g) = <a, f> + <b, g> - eps sum_ij P_ij,   P_ij = exp((f_i + g_j - C_ij) / eps),

concave, with gradient `(a - P 1, b - P^T 1)` and Hessian `-(1/eps) H`, where
`H = [[diag(P 1), P], [P^T, diag(P^T 1)]]` is the H-matrix of the *current*
coupling (`HOperator` with the current marginals, not `a`, `b`). Newton's
step solves `H [df; dg] = eps [a - P 1; b - P^T 1]`; both halves of the
right-hand side sum to `1 - sum(P)`, so it is orthogonal to the null vector
`(1_n, -1_m)` and the minimum-norm solution is a step (Brauer, Clason, Lorenz
and Wirth 2017, "A Sinkhorn-Newton method for entropic optimal transport").

- Inexact: CG on the normalised Schur complement (as the `CG` H-solver, one
  streaming pass per step) to the relative residual
  `eta = min(0.1, sqrt(err))` (forcing term of Eisenstat and Walker: fast
  local convergence without over-solving far out), raised to
  `tol / (2 err)` on the last step so that it does not solve far below `tol`.
  CG from zero gives an ascent direction at every step, so a CG run cut by
  `CG_MAX_STEPS` still gives a usable (inexact) direction.
- Line search: backtracking on the dual, `t = t_max, t_max / 2, ...`, at
  most `MAX_BACKTRACKS` halvings; `t_max <= 1` keeps every potential's move
  within `MAX_MOVE * eps` (far from the optimum, a row with little mass gets
  a step of `eps (a_i - r_i) / r_i`, where the exact correction is
  `eps log(a_i / r_i)`). A trial is one marginals pass (`sum P = sum P 1`),
  and it is accepted when it raises the dual by Armijo's fraction of the
  predicted gain, or, where the dual's change is below its rounding (near
  the optimum the gain is `O(err^2)`), when it lowers the marginal error.
  The accepted trial's marginals are the next step's gradient and error.
  Every trial re-centres the free constant `(f + c, g - c)`.
- If no trial is accepted, the step is one Sinkhorn iteration instead (a
  `g` and an `f` update, which always raise the dual), and so are all later
  steps: the loop keeps making progress and ends at `tol` or at `max_iters`
  like any other variant.

A Newton step with a full step length costs `CG steps + 3` passes: the
reduced right-hand side, the CG products, the final product (shared with the
recovery of `df`, `dg`) and the trial's marginals.
"""

import jax
import jax.numpy as jnp

from .._core.coupling import Coupling
from .._linear.operators import HOperator
from .._linear.base import project_range
from .._linear.schur import NormalisedSchur
from .._linear.cg import conjugate_gradient
from .._stream.engine import marginals, row_logsumexp

#: CG steps per Newton step at most.
CG_MAX_STEPS = 1000
#: Step-length halvings before the Newton step is replaced by a Sinkhorn iteration.
MAX_BACKTRACKS = 10
#: Armijo's fraction of the predicted gain.
ARMIJO = 1e-4
#: Largest move of a potential in one Newton step, in units of epsilon.
MAX_MOVE = 10.0
#: Largest CG forcing term.
ETA_MAX = 0.1
#: Iterations of the budget (`max_iters`) that must be left for the Sinkhorn
#: loop to hand over to Newton steps.
NEWTON_MIN_BUDGET = 10


def forcing_term(err, tol):
    """CG's relative tolerance for a Newton step from marginal error `err`."""
    eta = jnp.minimum(ETA_MAX, jnp.sqrt(err))
    return jnp.minimum(jnp.maximum(eta, 0.5 * tol / err), 0.5)


def newton_phase(make_coupling, a, b, epsilon, f, g, it, passes, max_iters, tol, progress):
    """Newton steps from `(f, g)` until the marginal error is `<= tol` or the
    iteration count reaches `max_iters`.

    Iterations are counted in units of a Sinkhorn iteration (two streaming
    passes): a Newton step adds half its passes, rounded up, so `max_iters`
    bounds the work whatever the variant. `it`, `passes`: iterations and
    passes before this phase. `make_coupling(f, g)` is the `Coupling` at the
    target epsilon; `progress(it_before, it_after, err)` reports.

    **Returns:** `(f, g, row marginal, err, iterations, passes)` of the last
    potentials.
    """
    log_a, log_b = jnp.log(a), jnp.log(b)
    it0, passes0 = it, passes

    def error(row, col):
        return jnp.sum(jnp.abs(row - a)) + jnp.sum(jnp.abs(col - b))

    def dual(f, g, row):
        return jnp.dot(a, f) + jnp.dot(b, g) - epsilon * jnp.sum(row)

    def iterations(passes):
        return it0 + (passes - passes0 + 1) // 2  # rounded up

    def direction(f, g, row, col, err, max_steps):
        r, s = project_range(epsilon * (a - row), epsilon * (b - col))
        schur = NormalisedSchur.from_h(HOperator(make_coupling(f, g), row, col))
        z, stats, image = conjugate_gradient(
            schur.mv, schur.reduce(r, s), rtol=forcing_term(err, tol),
            atol=schur.rounding_level(r, s), max_steps=max_steps,
            final_product=schur.mv_and_image,
        )
        df, dg = schur.recover(z, r, s, image)
        return df, dg, stats["num_steps"] + 2

    def line_search(f, g, row, col, err, df, dg):
        value = dual(f, g, row)
        slope = jnp.dot(a - row, df) + jnp.dot(b - col, dg)
        # Rounding level of the dual: below it, gains and losses are noise.
        noise = 8 * jnp.finfo(f.dtype).eps * (
            jnp.dot(a, jnp.abs(f)) + jnp.dot(b, jnp.abs(g)) + epsilon * jnp.sum(row)
        )
        # The quadratic model of exp is meaningless for moves of many epsilons.
        size = jnp.maximum(jnp.max(jnp.abs(df)), jnp.max(jnp.abs(dg)))
        t_max = jnp.minimum(1.0, MAX_MOVE * epsilon / jnp.maximum(size, jnp.finfo(f.dtype).tiny))

        def trial(t):
            ft, gt = f + t * df, g + t * dg
            # Re-centre the free constant (f + c, g - c): potentials stay of the
            # size of the costs, and rounding of f_i + g_j with them.
            shift = jnp.mean(ft)
            ft, gt = ft - shift, gt + shift
            row_t, col_t = marginals(make_coupling(ft, gt))
            err_t = error(row_t, col_t)
            gain = dual(ft, gt, row_t) - value
            armijo = gain >= ARMIJO * t * slope
            at_rounding = (jnp.abs(gain) <= noise) & (err_t < err)
            ok = jnp.isfinite(err_t) & jnp.isfinite(gain) & (armijo | at_rounding)
            return ok, (ft, gt, row_t, col_t, err_t)

        def cond(state):
            k, ok, _ = state
            return ~ok & (k <= MAX_BACKTRACKS)

        def body(state):
            k, _, _ = state
            ok, point = trial(t_max * 0.5 ** k.astype(f.dtype))
            return k + 1, ok, point

        start = (jnp.asarray(0), jnp.asarray(False), (f, g, row, col, err))
        tries, ok, point = jax.lax.while_loop(cond, body, start)
        return ok, point, tries

    def sinkhorn_iteration(f, g):
        g = epsilon * (log_b - row_logsumexp(make_coupling(f, g).transpose(), f))
        f = epsilon * (log_a - row_logsumexp(make_coupling(f, g), g))
        row, col = marginals(make_coupling(f, g))
        return f, g, row, col, error(row, col)

    def newton_step(state):
        f, g, row, col, err = (state[k] for k in ("f", "g", "row", "col", "err"))
        # CG may use what is left of the budget, less the step's other passes.
        budget = 2 * (max_iters - iterations(state["passes"])) - 3
        df, dg, cg_passes = direction(f, g, row, col, err, jnp.clip(budget, 1, CG_MAX_STEPS))
        ok, point, tries = line_search(f, g, row, col, err, df, dg)
        # A failed search falls back from where it started, not its last trial.
        point = jax.lax.cond(ok, lambda: point, lambda: (f, g, row, col, err))
        return ok, point, cg_passes + tries

    def skip(state):
        point = tuple(state[k] for k in ("f", "g", "row", "col", "err"))
        return jnp.asarray(False), point, jnp.zeros_like(state["passes"])

    def cond(state):
        return (iterations(state["passes"]) < max_iters) & ~(state["err"] <= tol)

    def body(state):
        ok, point, cost = jax.lax.cond(state["use_newton"], newton_step, skip, state)
        # No step length accepted: a Sinkhorn iteration instead, and from then
        # on only those (the Newton model is not to be trusted here).
        point = jax.lax.cond(ok, lambda: point, lambda: sinkhorn_iteration(*point[:2]))
        passes = state["passes"] + (cost + jnp.where(ok, 0, 3)).astype(state["passes"].dtype)
        f, g, row, col, err = point
        progress(iterations(state["passes"]), iterations(passes), err)
        return dict(f=f, g=g, row=row, col=col, err=err, passes=passes, use_newton=ok)

    row, col = marginals(make_coupling(f, g))
    state = dict(f=f, g=g, row=row, col=col, err=error(row, col), passes=passes + 1,
                 use_newton=jnp.asarray(True))
    state = jax.lax.while_loop(cond, body, state)
    passes = state["passes"]
    return state["f"], state["g"], state["row"], state["err"], iterations(passes), passes
