"""Forward solver: log-domain Sinkhorn on streaming log-sum-exp reductions.

Why not ott-jax's solver: ott-jax's online `PointCloud(batch_size=...)`
crashes on jax 0.10, and differentiating its Sinkhorn in reverse mode keeps
O(nm) residuals. Here the forward solve only needs row log-sum-exps, which
stream in O((n + m) d + block * m) memory; derivatives never go through the
iterations (they use the implicit-function rules of `_derivatives/`).

The solve has two phases: the Sinkhorn loop (`steps.py`: a typed state, the
epsilon schedule and one step object per variant) and, with `newton=`,
Newton steps on the dual (`newton.py`). `Sinkhorn` holds the options and
says how they compose; `_solve` chains the phases.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.checks import (
    check_block_size, check_counts, check_problem, check_tolerance, error_if, error_if_failed,
)
from .._core.costs import AbstractCost, SqEuclidean, as_cost, is_matrix
from .._core.coupling import BlockSize, Coupling
from .._core.relaxation import check_tau, is_balanced
from .._core.scale import check_relative, scale_problem
from .._core.results import RESULTS
from .._core.sharding import RowSharding, auto_partitioned, check_split_like_clouds, row_sharding
from .confirm import confirm, needs_confirmation
from .dual import DualProblem
from .lbfgs import LBFGS, lbfgs_phase
from .newton import NEWTON_MIN_BUDGET, newton_phase
from .steps import (
    AbstractStep,
    AdaptiveMomentum,
    AndersonStep,
    FixedMomentum,
    PlainStep,
    Schedule,
    SinkhornState,
    initial_state,
    sinkhorn_loop,
)


class _Unset:
    """Default of `Sinkhorn`'s iteration options: "not given"."""

    def __repr__(self):
        return "UNSET"


UNSET = _Unset()
#: The options that choose the iteration.
ITERATION_OPTIONS = ("momentum", "anderson", "epsilon_scaling", "newton")
#: The value each of `ITERATION_OPTIONS` takes when it is not given (with
#: `anderson` given, `momentum` is off instead: they do not combine). Adaptive
#: momentum is the fastest at tolerance 1e-6 on the grid of
#: `benchmarks/sinkhorn_speed.py` after Newton steps (which compile longer);
#: see docs/forward_solvers.md.
DEFAULT_ITERATION = dict(momentum="adaptive", anderson=None, epsilon_scaling=None, newton=None)


class Sinkhorn(eqx.Module):
    """Log-domain Sinkhorn iterations (ott-jax's potential convention), plain or
    accelerated, optionally followed by Newton steps.

    Each iteration updates `g` (making the column marginals exact) and then
    `f`; the marginal error of the coupling `(f, g)` comes for free from the
    `f` update, so convergence is checked at every iteration. Whatever the
    acceleration, convergence is declared only on the true L1 marginal error
    `|P 1 - a|_1 + |P^T 1 - b|_1` of the returned potentials at the target
    `epsilon`, as the iteration estimates it; in float32, where that estimate
    can sit below the error the same potentials have, a claim is confirmed
    by summing the marginals directly (in float64 when `jax_enable_x64` is
    on), and the loop goes on to a lower target or reports
    `RESULTS.sinkhorn_precision_floor` when they disagree (docs/failures.md).
    A NaN error stops the loop at once (`RESULTS.sinkhorn_nonfinite`).

    **Arguments:**

    - `tol`: a finite number > 0; stop when the marginal error of the
      returned coupling is `<= tol`. What a dtype resolves depends on the
      problem: about its unit roundoff times `(|f| + |g| + |C|) / epsilon`
      per unit of mass, so float32 reaches 1e-6 with potentials and costs
      of size 1 at epsilon 0.1, but only about 4e-5 with size 10 at epsilon
      0.05. In float64 a `tol` near 1e-14 is at the rounding floor of the
      marginal error (about 1e-14 at n = 12), so ask for 1e-13 or more.
    - `max_iters`: iteration cap, an integer >= 1 (annealing iterations and
      Newton steps included); reaching it is a failure
      (`RESULTS.sinkhorn_max_iters_reached`: raised with `throw=True`).
    - `momentum`: `"adaptive"` (the default), `None` (plain Sinkhorn), or a
      fixed over-relaxation weight `w` in (0, 2) (`g <- g + w (T_g(f) - g)`,
      then `f` likewise; Thibault et al. 2021). `"adaptive"`: plain for 20
      iterations, then `w` set from the measured contraction `rho` as
      `2 / (1 + sqrt(1 - rho))` (Lehmann et al. 2021) and re-estimated
      every 10 iterations; `w - 1` is halved whenever the error grew over
      such a window (the safe step), and `w` set to exactly 1 (plain
      Sinkhorn, columns exact) once `w - 1` would fall below 0.2.
    - `anderson`: `None` (the default), or the memory (number of past
      iterates, >= 2) of Anderson acceleration of the map
      `f -> T_f(T_g(f))`, restarted when the error grows. It replaces
      momentum: given, `momentum` defaults to `None`, and giving both
      raises `ValueError`.
    - `epsilon_scaling`: `None` (the default), or a factor `q` in (0, 1):
      annealing as GeomLoss's `scaling` and ott-jax's `Epsilon` scheduler
      do, one iteration per value `eps_k = max(eps_0 q^k, epsilon)` from
      `eps_0 = c(lo, hi)`, the cost between the corners of the clouds'
      bounding box (the squared diameter for `SqEuclidean`). Momentum and
      Anderson act once the target is reached. Not useful with a warm start.
    - `newton`: `None` (the default), or a marginal error (e.g. `0.1`) below
      which the iteration above hands over to Newton steps on the dual:
      each solves the H-system of the current coupling by CG (one streaming
      pass per CG step, inexact with a forcing term) and takes a
      backtracking line search on the dual (`_forward/newton.py`). A Newton
      step counts in `num_iters` (and towards `max_iters`) as half its
      streaming passes, rounded up: iterations are in units of a Sinkhorn
      iteration's two passes (`Coupling.num_passes` is the exact count).
      The hand-over needs at least `NEWTON_MIN_BUDGET` (10) iterations of
      the budget left.
    - `progress`: optional callable `progress(iteration, marginal_error)`
      called from inside the jitted loop every `progress_every` iterations
      (through `jax.debug.callback`), e.g. to drive a tqdm bar. During
      annealing the error is that at the current epsilon.
    - `progress_every`: how often `progress` is called (an integer >= 1).

    **How the options compose.** Each option not given takes its default
    (`DEFAULT_ITERATION`): `momentum="adaptive"` (or `None` when `anderson`
    is given), no Anderson, no annealing, no Newton steps. `momentum` or
    `anderson` chooses the iteration; `epsilon_scaling` adds annealing before
    it and `newton` Newton steps after it. So `Sinkhorn(newton=0.1)` is
    adaptive momentum, then Newton steps (the same as
    `Sinkhorn(momentum="adaptive", newton=0.1)`), `Sinkhorn(anderson=5)` is
    Anderson alone, and `Sinkhorn(momentum=None)` plain Sinkhorn; write
    `momentum=None` for plain Sinkhorn before annealing or Newton steps
    (`Sinkhorn(momentum=None, newton=0.1)`). In 0.2 naming any of these
    options turned the others off, so `Sinkhorn(newton=0.1)` and
    `Sinkhorn(epsilon_scaling=q)` then started from plain Sinkhorn.

    See the "Forward solver" guide for which to choose.
    """

    tol: float = 1e-6
    max_iters: int = 10_000
    momentum: float | str | None = eqx.field(static=True, default=UNSET)
    anderson: int | None = eqx.field(static=True, default=UNSET)
    epsilon_scaling: float | None = eqx.field(static=True, default=UNSET)
    newton: float | None = eqx.field(static=True, default=UNSET)
    progress: Callable[[Array, Array], None] | None = eqx.field(static=True, default=None)
    progress_every: int = eqx.field(static=True, default=10)

    def __post_init__(self):
        # Integral floats (`max_iters=1e4`, accepted by 0.2) become ints.
        for k in ("max_iters", "progress_every"):
            v = getattr(self, k)
            if isinstance(v, float) and v.is_integer():
                setattr(self, k, int(v))
        # Every option not given takes its default; momentum's is off next to
        # Anderson, which replaces it.
        anderson_given = self.anderson is not UNSET and self.anderson is not None
        for k in ITERATION_OPTIONS:
            if getattr(self, k) is UNSET:
                off = k == "momentum" and anderson_given
                setattr(self, k, None if off else DEFAULT_ITERATION[k])

    def __check_init__(self):
        check_tolerance(self.tol)
        check_counts(self, ("max_iters", "progress_every"))
        m = self.momentum
        if not (m is None or m == "adaptive" or (
            isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 2
        )):
            raise ValueError(
                f"`momentum` must be None, a float in (0, 2) or 'adaptive', got {m!r}."
            )
        if self.anderson is not None and (
            isinstance(self.anderson, bool) or not isinstance(self.anderson, int)
            or self.anderson < 2
        ):
            raise ValueError(f"`anderson` must be None or an integer >= 2, got {self.anderson!r}.")
        if self.anderson is not None and m is not None:
            raise ValueError(
                "`anderson` and `momentum` cannot be combined; pick one (with `anderson` "
                "given, `momentum` defaults to None)."
            )
        q = self.epsilon_scaling
        if q is not None and not (isinstance(q, (int, float)) and 0 < q < 1):
            raise ValueError(f"`epsilon_scaling` must be None or a float in (0, 1), got {q!r}.")
        s = self.newton
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0):
            raise ValueError(
                f"`newton` must be None or a marginal error > 0 (e.g. 0.1), got {s!r}."
            )

    @property
    def is_plain(self) -> bool:
        """No acceleration and no annealing: the plain iteration."""
        return (self.momentum is None and self.anderson is None and self.epsilon_scaling is None
                and self.newton is None)

    @property
    def step(self) -> AbstractStep:
        """The step object of the iteration (`steps.py`) these options choose."""
        if self.anderson is not None:
            return AndersonStep(self.anderson)
        if self.momentum == "adaptive":
            return AdaptiveMomentum()
        if self.momentum is not None:
            return FixedMomentum(self.momentum)
        return PlainStep()


def report_progress(solver: Sinkhorn, iteration, error) -> None:
    """Call `solver.progress` from inside a jitted loop every `progress_every` iterations."""
    if solver.progress is not None:
        jax.lax.cond(
            iteration % solver.progress_every == 0,
            lambda: jax.debug.callback(solver.progress, iteration, error),
            lambda: None,
        )


def report_progress_between(solver: Sinkhorn, start, stop, error) -> None:
    """`report_progress` for a step that took the iteration count from `start`
    to `stop`: one call per multiple of `progress_every` in `(start, stop]`."""
    if solver.progress is not None:
        every = solver.progress_every
        first = (start // every + 1) * every
        count = jnp.maximum(0, (stop - first) // every + 1)

        def call(i, carry):
            jax.debug.callback(solver.progress, first + i * every, error)
            return carry

        jax.lax.fori_loop(0, count, call, 0)


def finish(coupling: Coupling, throw: bool) -> Coupling:
    """With `throw`, attach the status check to every array of `coupling`.

    Every output a caller may use (potentials, cost, gradients computed from
    them) then carries the check, so it also runs under `jit(grad(...))`,
    where JAX drops unused values.
    """
    if not throw:
        return coupling
    return error_if_failed(coupling, coupling.result)


def sinkhorn_status(err, solver: Sinkhorn, floor=False) -> RESULTS:
    """`successful` when the marginal error `err` is `<= solver.tol`;
    `sinkhorn_nonfinite` when it is NaN (non-finite potentials stop the loop
    at once); `sinkhorn_precision_floor` when `floor` (a float32 claim the
    direct pass did not confirm, `confirm.confirm`); else
    `sinkhorn_max_iters_reached`."""
    failed = RESULTS.where(
        jnp.isnan(err), RESULTS.sinkhorn_nonfinite,
        RESULTS.where(floor, RESULTS.sinkhorn_precision_floor,
                      RESULTS.sinkhorn_max_iters_reached),
    )
    return RESULTS.where(err <= solver.tol, RESULTS.successful, failed)


#: Sample of points (per cloud) whose largest finite cost is the annealing's
#: start when the bounding box's corners give none.
EPS0_SAMPLE = 16


def initial_epsilon(x, y, cost: AbstractCost, epsilon):
    """`eps_0` of the annealing: the cost between the corners of the bounding
    box of both clouds (GeomLoss's `diameter ** p`), at least `epsilon`.

    A cost need not be defined at the corners (an angle is NaN at a corner
    at the origin, which non-negative features with zeros have): then the
    largest finite cost between the first `EPS0_SAMPLE` points of each
    cloud, and `epsilon` (no annealing) if there is none. For a cost matrix
    (`x` is `C`): its largest finite entry.
    """
    if is_matrix(cost):
        return jnp.maximum(jnp.max(jnp.where(jnp.isfinite(x), x, -jnp.inf)), epsilon)
    lo = jnp.minimum(jnp.min(x, axis=0), jnp.min(y, axis=0))
    hi = jnp.maximum(jnp.max(x, axis=0), jnp.max(y, axis=0))
    corner = jnp.asarray(cost(lo, hi), x.dtype)
    sample = cost.matrix(x[:EPS0_SAMPLE], y[:EPS0_SAMPLE])
    largest = jnp.max(jnp.where(jnp.isfinite(sample), sample, -jnp.inf))
    eps0 = jnp.where(jnp.isfinite(corner), corner, largest)
    eps0 = jnp.where(jnp.isfinite(eps0), eps0, epsilon)
    return jnp.maximum(eps0, epsilon)


def centred_start(f, g, m: int):
    """The start `(f - c, g + c)`, `c = mean(f)`; `g` zeros when not given.

    The gauge `(f + c, g - c)` is free: centring keeps the potentials of the
    size of the costs. A start like `full(n, 1e16)` otherwise makes
    `f - f_next` round to 0, and the marginal error with it (false
    convergence). Where the sum in `mean(f)` overflows (`full(n, 1e308)`),
    `c = max(f)`, exact for a constant start.
    """
    shift = jnp.mean(f)
    shift = jnp.where(jnp.isfinite(shift), shift, jnp.max(f))
    g = jnp.zeros((m,), f.dtype) if g is None else g + shift
    return f - shift, g


def _schedule(problem: DualProblem, solver: Sinkhorn) -> Schedule:
    q = solver.epsilon_scaling
    if q is None:
        return Schedule(problem.epsilon)
    eps0 = initial_epsilon(problem.x, problem.y, problem.cost, problem.epsilon)
    return Schedule(problem.epsilon, eps0, q)


def sinkhorn_phase(problem: DualProblem, solver: Sinkhorn, f, g) -> SinkhornState:
    """The Sinkhorn loop from `(f, g)`: until the error at the target epsilon
    is `<= tol`, or below `solver.newton` with the budget for Newton steps
    left, or `max_iters` (or a NaN error)."""
    state = initial_state(problem, solver.step, solver.epsilon_scaling is not None, f, g)
    return continue_phase(problem, solver, state, solver.tol)


def continue_phase(problem: DualProblem, solver: Sinkhorn, state: SinkhornState,
                   target, limit=None) -> SinkhornState:
    """The Sinkhorn loop from `state` until the error at the target epsilon is
    `<= target` (or Newton's hand-over, `limit` iterations, by default
    `max_iters`, a NaN error)."""

    def done(state: SinkhornState):
        converged = state.err_target <= target
        if solver.newton is None:
            return converged
        switch = (state.err_target <= solver.newton) & (
            state.it + NEWTON_MIN_BUDGET <= solver.max_iters
        )
        return converged | switch

    limit = solver.max_iters if limit is None else limit
    return sinkhorn_loop(problem, _schedule(problem, solver), solver.step, state, done,
                         limit, lambda it, err: report_progress(solver, it, err))


def verified_phase(problem: DualProblem, solver: Sinkhorn, f, g):
    """`sinkhorn_phase` and `at_target` with the claim confirmed
    (`confirm.confirm`, for float32). **Returns:** `(it, f, g, f_hat, err,
    passes, floor)`."""
    state = sinkhorn_phase(problem, solver, f, g)

    def read(state):
        f, g, f_hat, err, _ = at_target(problem, solver, state)
        return f, g, f_hat, err

    state, checks, f, g, f_hat, err, floor = confirm(
        problem, state, tol=solver.tol, max_iters=solver.max_iters,
        run=lambda state, target, limit: continue_phase(problem, solver, state, target, limit),
        read=read, iterations=lambda state: state.it,
    )
    # The passes up to the last state and the direct checks.
    return state.it, f, g, f_hat, err, loop_passes(solver, state) + checks, floor


def at_target(problem: DualProblem, solver: Sinkhorn, state: SinkhornState):
    """`(f, g, T_f(g), err, passes)` of the loop's last coupling at the target.

    A loop stopped during the annealing (`max_iters` too small) reports the
    error of its last `f` at the target epsilon, not at `eps_k`: one more
    `g` and `f` update there (two passes).
    """
    f, g, f_hat, err = state.f_eval, state.g, state.f_hat, state.err_target
    passes = loop_passes(solver, state)
    if solver.epsilon_scaling is None:
        return f, g, f_hat, err, passes

    def settle(f, g, f_hat, err):
        eps = problem.epsilon
        geometry = problem.coupling(f, g)
        g = problem.update_g(geometry, f, eps)
        f_hat = problem.update_f(geometry, g, eps)
        return f, g, f_hat, problem.row_error(f, f_hat, eps)

    f, g, f_hat, err = jax.lax.cond(state.at_target, lambda *args: args, settle, f, g, f_hat, err)
    return f, g, f_hat, err, passes


def loop_passes(solver: Sinkhorn, state: SinkhornState):
    """The streaming passes of the loop up to `state`, two per iteration, and
    the two of `at_target`'s settling step when the loop stopped annealing."""
    if solver.epsilon_scaling is None:
        return 2 * state.it
    return 2 * state.it + jnp.where(state.at_target, 0, 2)


def newton_or_not(problem: DualProblem, solver: Sinkhorn, f, g, f_hat, err, it, passes):
    """With `solver.newton`, Newton steps from the loop's last coupling unless
    the loop ended at `tol`, at `max_iters` or at a NaN error.

    **Returns:** `(f, g, row sums P 1, err, iterations, passes)`.
    """

    def no_newton(f, g, f_hat, err, it, passes):
        return f, g, problem.row_sums(f, f_hat), err, it, passes

    if solver.newton is None:
        return no_newton(f, g, f_hat, err, it, passes)

    def newton(f, g, f_hat, err, it, passes):
        return newton_phase(
            problem, f, g, it, passes, solver.max_iters, solver.tol,
            lambda start, stop, e: report_progress_between(solver, start, stop, e),
        )

    handover = (err > solver.tol) & (it < solver.max_iters)  # False on NaN
    return jax.lax.cond(handover, newton, no_newton, f, g, f_hat, err, it, passes)


@eqx.filter_jit
@auto_partitioned
def _solve(
    x, y, a, b, epsilon, cost, solver: Sinkhorn | LBFGS, f_init, g_init, block_size, sharding,
    throw, tau_a=1.0, tau_b=1.0,
) -> Coupling:
    """The jitted solve behind `solve`: from the centred start, Sinkhorn
    (`_sinkhorn_solution`) or L-BFGS (`_lbfgs_solution`), then the `Coupling`
    with its diagnostics (and, with `throw`, its check)."""
    cold_g = g_init is None
    f_init, g_init = centred_start(f_init, g_init, y.shape[0])
    if sharding is not None:
        x, y, a, b, f_init, g_init = sharding.place((x, y, a, b, f_init, g_init), sharding.rows)
    problem = DualProblem.create(x, y, a, b, epsilon, cost, block_size, sharding, tau_a, tau_b)
    phase = _lbfgs_solution if isinstance(solver, LBFGS) else _sinkhorn_solution
    f, g, row, err, it, passes, result = phase(problem, solver, f_init, g_init, cold_g)
    f, g = problem.zero_mass_potentials(f, g)
    coupling = problem.coupling(
        f, g, num_iters=it, marginal_error=err, reg_ot_cost=problem.reg_ot_cost(f, g, jnp.sum(row)),
        result=result, num_passes=passes,
    )
    return finish(coupling, throw)


def _sinkhorn_solution(problem: DualProblem, solver: Sinkhorn, f_init, g_init, cold_g):
    """The Sinkhorn loop, its last coupling at the target, Newton steps if
    asked: `(f, g, row sums, err, iterations, passes, result)`."""
    floor = jnp.asarray(False)
    if needs_confirmation(problem) and solver.newton is None:
        # Newton steps measure with a pass of their own already.
        it, f, g, f_hat, err, passes, floor = verified_phase(problem, solver, f_init, g_init)
    else:
        state = sinkhorn_phase(problem, solver, f_init, g_init)
        f, g, f_hat, err, passes = at_target(problem, solver, state)
        it = state.it
    if problem.sharding is not None:
        f, g, f_hat = problem.sharding.place((f, g, f_hat), problem.sharding.rows)
    f, g, row, err, it, passes = newton_or_not(problem, solver, f, g, f_hat, err, it, passes)
    return f, g, row, err, it, passes, sinkhorn_status(err, solver, floor)


def _lbfgs_solution(problem: DualProblem, solver: LBFGS, f_init, g_init, cold_g):
    """L-BFGS from `g_init`, or without a given `g` from `T_g(f)` (one pass, a
    Sinkhorn half-step), in `_sinkhorn_solution`'s output form."""
    if cold_g:
        g_init = problem.update_g(problem.coupling(f_init, g_init), f_init, problem.epsilon)
    f, g, row, err, it, passes, result = lbfgs_phase(
        problem, solver, g_init, lambda it, err: report_progress(solver, it, err)
    )
    return f, g, row, err, it, passes + int(cold_g), result


def solve(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    block_size: BlockSize = None,
    init: Float[Array, " n"] | tuple[Float[Array, " n"], Float[Array, " m"]] | Coupling
    | None = None,
    throw: bool = True,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Coupling:
    """Solve entropic OT between two weighted point clouds, balanced or unbalanced.

    `min_{P in U(a, b)} <P, C> + epsilon KL(P | a b^T)`, with potentials in
    ott-jax's convention, so `Coupling.reg_ot_cost` equals ott-jax's
    `reg_ot_cost`. With `tau_a` or `tau_b` below 1, the unbalanced problem
    `min_P <P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)`
    (docs/unbalanced.md). Memory is O((n + m) d + block_size * m).

    **Arguments:**

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one (any positive masses when
      unbalanced); uniform if `None`.
    - `epsilon`: absolute entropic regularisation (> 0).
    - `cost`: an `AbstractCost`, or any callable `c(x_i, y_j) -> scalar`
      (e.g. an ott-jax `CostFn`).
    - `solver`: a `Sinkhorn` (tolerance, iteration cap, acceleration,
      annealing, progress), or an `LBFGS` (L-BFGS on the semi-dual;
      balanced only, as are `Sinkhorn(newton=...)`'s Newton steps).
    - `block_size`: rows per streaming block; `None` picks it from a memory
      budget (`ot_matfree._core.coupling.DEFAULT_BLOCK_BYTES`), `"auto"`
      measures it once per shape (`ot_matfree._stream.engine.autotune`).
    - `init`: warm start: an initial `f` potential, shape (n,), a pair
      `(f, g)`, or a previous `Coupling` of the same sizes (its `f` and `g`;
      for instance the solution before a small move of the points). Only
      differences matter (the start is centred, which removes the free gauge
      constant), and it must be finite. Plain Sinkhorn starts with a `g`
      update, so it only uses `f`; momentum also starts from `g`.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, also under `jit`) when
      Sinkhorn fails: stops at `max_iters`, or on non-finite potentials (a
      NaN marginal error). With `throw=False` the coupling is
      returned with `converged=False` and the status in `result` (e.g.
      `RESULTS.sinkhorn_max_iters_reached`).
    - `tau_a`, `tau_b`: marginal relaxations in (0, 1], ott-jax's convention
      (`tau = rho / (rho + epsilon)`; 1, the default: the marginal is a hard
      constraint). Static Python floats. Unbalanced, the marginal error is
      that to the optimal marginals, `|P 1 - a exp(-(f - eps log a) / rho_a)|_1
      + ...`, the norm of the dual's gradient (docs/unbalanced.md).
    - `relative_epsilon`: `None` (`epsilon` is absolute) or `"mean"`:
      `epsilon` times the mean cost over all pairs (unweighted, ott-jax's
      `relative_epsilon="mean"`), for the squared Euclidean cost or a cost
      matrix; the returned coupling's `epsilon` is the absolute value used.

    Sharded inputs: when `x` or `y` has its rows split over a mesh axis
    (`jax.device_put(x, NamedSharding(mesh, P("points")))`), every device
    streams its own rows and the coupling records the placement
    (`Coupling.sharding`), so its derivatives run sharded too
    (docs/sharding.md).

    **Returns:** a `Coupling` with potentials and diagnostics
    (`num_iters`, `converged`, `result`, `marginal_error`, `reg_ot_cost`).
    """
    return solve_placed(
        row_sharding(x=x, y=y), x, y, a, b, epsilon=epsilon, cost=cost, solver=solver,
        block_size=block_size, init=init, throw=throw, tau_a=tau_a, tau_b=tau_b,
        relative_epsilon=relative_epsilon,
    )


def solve_placed(
    sharding: RowSharding | None, x, y, a, b, *, epsilon, cost, solver, block_size, init, throw,
    tau_a=1.0, tau_b=1.0, relative_epsilon=None,
) -> Coupling:
    """`solve` with the clouds' placement given: the losses read it before their
    `jit`, where an `Auto`-axis placement is still visible (`_core/sharding.py`)."""
    tau_a, tau_b = check_taus(tau_a, tau_b)
    balanced = is_balanced(tau_a, tau_b)
    relative = check_relative(relative_epsilon, as_cost(cost))
    check_split_like_clouds(sharding, a=a, b=b)
    x, y, a, b, epsilon = check_problem(x, y, a, b, epsilon, as_cost(cost), balanced=balanced)
    if relative:
        epsilon = epsilon * scale_problem(x, y, as_cost(cost))[2]
    check_forward_solver(solver, balanced)
    f_init, g_init = initial_potentials(init, x, y)
    check_split_like_clouds(sharding, init=f_init, init_g=g_init)
    block_size = check_block_size(block_size)
    return _solve(
        x, y, a, b, epsilon, as_cost(cost), solver, f_init, g_init, block_size, sharding,
        bool(throw), tau_a, tau_b,
    )


def check_taus(tau_a, tau_b) -> tuple[float, float]:
    """Both relaxations as Python floats in (0, 1] (`relaxation.check_tau`)."""
    return check_tau("tau_a", tau_a), check_tau("tau_b", tau_b)


def check_forward_solver(solver, balanced: bool = True) -> None:
    """A `Sinkhorn` or `LBFGS`; unbalanced (`balanced=False`), no L-BFGS and
    no Newton steps (both are written for the balanced dual)."""
    if not isinstance(solver, (Sinkhorn, LBFGS)):
        raise TypeError(
            f"`solver` must be an ot_matfree.Sinkhorn or ot_matfree.LBFGS, got "
            f"{type(solver).__name__}."
        )
    if balanced:
        return
    if isinstance(solver, LBFGS):
        raise ValueError(
            "`LBFGS` minimises the balanced semi-dual; for unbalanced OT (`tau_a` or `tau_b` "
            "< 1) use `Sinkhorn()` (momentum, Anderson and annealing all apply)."
        )
    if solver.newton is not None:
        raise ValueError(
            "`Sinkhorn(newton=...)`'s Newton steps are written for the balanced dual; for "
            "unbalanced OT (`tau_a` or `tau_b` < 1) leave `newton=None` (momentum, Anderson "
            "and annealing all apply)."
        )


def initial_potentials(init, x, y) -> tuple[Array, Array | None]:
    """`(f, g)` to start from: zeros, a given `f`, a pair `(f, g)` or a `Coupling`'s."""
    n, m = x.shape[0], y.shape[0]
    if init is None:
        return jnp.zeros((n,), x.dtype), None
    if isinstance(init, Coupling):
        f, g = init.f, init.g
    elif isinstance(init, (tuple, list)):
        if len(init) != 2:
            raise ValueError(f"`init` as a sequence must be a pair `(f, g)`, got {len(init)} items.")
        f, g = init
    else:
        f, g = init, None
    f = jnp.asarray(f, x.dtype)
    if f.shape != (n,):
        raise ValueError(f"`init`'s f must have shape ({n},), got {f.shape}.")
    f = error_if(f, ~jnp.all(jnp.isfinite(f)), "`init` contains NaN or inf.")
    if g is not None:
        g = jnp.asarray(g, x.dtype)
        if g.shape != (m,):
            raise ValueError(f"`init`'s g must have shape ({m},), got {g.shape}.")
        g = error_if(g, ~jnp.all(jnp.isfinite(g)), "`init` contains NaN or inf.")
    return f, g
