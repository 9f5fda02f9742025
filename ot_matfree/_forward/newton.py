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

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._core.weights import support
from .._linear.base import project_range
from .._linear.cg import conjugate_gradient
from .._linear.operators import HOperator
from .._linear.schur import NormalisedSchur
from .._stream.engine import marginals
from .dual import DualProblem, settle_zero_mass

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


class DualPoint(eqx.Module):
    """Potentials `(f, g)` with their coupling's marginals `row = P 1`,
    `col = P^T 1` and L1 marginal error `err`."""

    f: Float[Array, " n"]
    g: Float[Array, " m"]
    row: Float[Array, " n"]
    col: Float[Array, " m"]
    err: Float[Array, ""]


class NewtonState(eqx.Module):
    """The carry of the Newton phase: the current point, the streaming passes
    so far, and whether the next step is a Newton step (`False` after a
    failed line search: Sinkhorn iterations from then on)."""

    point: DualPoint
    passes: Int[Array, ""]
    use_newton: Bool[Array, ""]


class NewtonPhase(eqx.Module):
    """Newton steps on the dual of `problem` at its target epsilon.

    `it0`, `passes0`: iterations and passes before the phase; `max_iters`
    bounds `iterations(passes)`; `progress(it_before, it_after, err)` reports.
    """

    problem: DualProblem
    tol: float
    max_iters: int
    it0: Int[Array, ""]
    passes0: Int[Array, ""]
    progress: Callable = eqx.field(static=True)

    def iterations(self, passes):
        """Iterations in units of a Sinkhorn iteration: half the phase's
        passes, rounded up, after those before it."""
        return self.it0 + (passes - self.passes0 + 1) // 2

    def point(self, f, g) -> DualPoint:
        """`(f, g)` with its marginals (one pass), the potentials of zero-weight
        points settled at their c-transforms (`dual.settle_zero_mass`)."""
        p = self.problem
        row, col = marginals(p.coupling(f, g))
        f, row = settle_zero_mass(f, row, p.a, p.log_a, p.epsilon)
        g, col = settle_zero_mass(g, col, p.b, p.log_b, p.epsilon)
        return DualPoint(f, g, row, col, self.problem.marginal_error(row, col))

    def dual(self, f, g, row):
        """`D(f, g) = <a, f> + <b, g> - eps sum P` (`row = P 1`)."""
        p = self.problem
        return jnp.dot(p.a, f) + jnp.dot(p.b, g) - p.epsilon * jnp.sum(row)

    def direction(self, x: DualPoint, max_steps):
        """The inexact Newton step `(df, dg)` by CG on the normalised Schur
        complement, and the passes it took (CG steps + 2)."""
        p = self.problem
        r, s = project_range(p.epsilon * (p.a - x.row), p.epsilon * (p.b - x.col),
                             (support(p.a), support(p.b)))
        schur = NormalisedSchur.from_h(HOperator(p.coupling(x.f, x.g), x.row, x.col))
        z, stats, image = conjugate_gradient(
            schur.mv, schur.reduce(r, s), rtol=forcing_term(x.err, self.tol),
            atol=schur.rounding_level(r, s), max_steps=max_steps,
            final_product=schur.mv_and_image,
        )
        df, dg = schur.recover(z, r, s, image)
        # Zero-weight points are settled by `point`, not moved by the step
        # (their linearised moves are meaningless and would cap `t_max`).
        df, dg = jnp.where(support(p.a), df, 0.0), jnp.where(support(p.b), dg, 0.0)
        return df, dg, stats["num_steps"] + 2

    def trial(self, x: DualPoint, df, dg, t, value, slope, noise):
        """The point `x + t (df, dg)`, re-centred, and whether it is accepted."""
        ft, gt = x.f + t * df, x.g + t * dg
        # Re-centre the free constant (f + c, g - c): potentials stay of the
        # size of the costs, and rounding of f_i + g_j with them.
        shift = jnp.mean(ft)
        y = self.point(ft - shift, gt + shift)
        gain = self.dual(y.f, y.g, y.row) - value
        armijo = gain >= ARMIJO * t * slope
        at_rounding = (jnp.abs(gain) <= noise) & (y.err < x.err)
        ok = jnp.isfinite(y.err) & jnp.isfinite(gain) & (armijo | at_rounding)
        return ok, y

    def line_search(self, x: DualPoint, df, dg):
        """Backtracking from `t_max <= 1` (moves of at most `MAX_MOVE` eps),
        halving at most `MAX_BACKTRACKS` times. **Returns:** `(accepted, last
        trial point, number of trials)`."""
        a, b, epsilon = self.problem.a, self.problem.b, self.problem.epsilon
        value = self.dual(x.f, x.g, x.row)
        slope = jnp.dot(a - x.row, df) + jnp.dot(b - x.col, dg)
        # Rounding level of the dual: below it, gains and losses are noise.
        noise = 8 * jnp.finfo(x.f.dtype).eps * (
            jnp.dot(a, jnp.abs(x.f)) + jnp.dot(b, jnp.abs(x.g)) + epsilon * jnp.sum(x.row)
        )
        # The quadratic model of exp is meaningless for moves of many epsilons.
        size = jnp.maximum(jnp.max(jnp.abs(df)), jnp.max(jnp.abs(dg)))
        tiny = jnp.finfo(x.f.dtype).tiny
        t_max = jnp.minimum(1.0, MAX_MOVE * epsilon / jnp.maximum(size, tiny))

        def cond(carry):
            k, ok, _ = carry
            return ~ok & (k <= MAX_BACKTRACKS)

        def body(carry):
            k, _, _ = carry
            t = t_max * 0.5 ** k.astype(x.f.dtype)
            ok, y = self.trial(x, df, dg, t, value, slope, noise)
            return k + 1, ok, y

        tries, ok, y = jax.lax.while_loop(cond, body, (jnp.asarray(0), jnp.asarray(False), x))
        return ok, y, tries

    def sinkhorn_iteration(self, f, g) -> DualPoint:
        """A `g` and an `f` update, then the marginals: three passes."""
        p = self.problem
        g = p.update_g(p.coupling(f, g), f, p.epsilon)
        f = p.update_f(p.coupling(f, g), g, p.epsilon)
        return self.point(f, g)

    def newton_step(self, state: NewtonState):
        """A Newton step from `state.point`: `(accepted, next point, passes)`;
        a failed search stays where it started, not at its last trial."""
        x = state.point
        # CG may use what is left of the budget, less the step's other passes.
        budget = 2 * (self.max_iters - self.iterations(state.passes)) - 3
        df, dg, cg_passes = self.direction(x, jnp.clip(budget, 1, CG_MAX_STEPS))
        ok, y, tries = self.line_search(x, df, dg)
        y = jax.lax.cond(ok, lambda: y, lambda: x)
        return ok, y, cg_passes + tries

    def step(self, state: NewtonState) -> NewtonState:
        """A Newton step, or a Sinkhorn iteration where no step length was
        accepted (now or earlier: the Newton model is not to be trusted
        there)."""

        def skip(state):
            return jnp.asarray(False), state.point, jnp.zeros_like(state.passes)

        ok, y, cost = jax.lax.cond(state.use_newton, lambda s: self.newton_step(s), skip, state)
        y = jax.lax.cond(ok, lambda: y, lambda: self.sinkhorn_iteration(y.f, y.g))
        passes = state.passes + (cost + jnp.where(ok, 0, 3)).astype(state.passes.dtype)
        self.progress(self.iterations(state.passes), self.iterations(passes), y.err)
        return NewtonState(y, passes, ok)

    def run(self, f, g) -> NewtonState:
        """Steps from `(f, g)` until the error is `<= tol`, the budget is spent
        or the error is NaN."""

        def cond(state):
            err = state.point.err
            going = (self.iterations(state.passes) < self.max_iters) & ~(err <= self.tol)
            return going & ~jnp.isnan(err)

        start = NewtonState(self.point(f, g), self.passes0 + 1, jnp.asarray(True))
        # (Closures, not bound methods: JAX hashes the functions it is given.)
        return jax.lax.while_loop(cond, lambda s: self.step(s), start)


def newton_phase(problem: DualProblem, f, g, it, passes, max_iters, tol, progress):
    """Newton steps from `(f, g)` until the marginal error is `<= tol` or the
    iteration count reaches `max_iters`.

    Iterations are counted in units of a Sinkhorn iteration (two streaming
    passes): a Newton step adds half its passes, rounded up, so `max_iters`
    bounds the work whatever the variant. `it`, `passes`: iterations and
    passes before this phase. `problem` gives the coupling at the target
    epsilon; `progress(it_before, it_after, err)` reports.

    **Returns:** `(f, g, row marginal, err, iterations, passes)` of the last
    potentials.
    """
    phase = NewtonPhase(problem, tol, max_iters, it, passes, progress)
    state = phase.run(f, g)
    x = state.point
    return x.f, x.g, x.row, x.err, phase.iterations(state.passes), state.passes
