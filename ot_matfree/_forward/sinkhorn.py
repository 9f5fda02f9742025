"""Forward solver: log-domain Sinkhorn on streaming log-sum-exp reductions.

Why not ott-jax's solver: ott-jax's online `PointCloud(batch_size=...)`
crashes on jax 0.10, and differentiating its Sinkhorn in reverse mode keeps
O(nm) residuals. Here the forward solve only needs row log-sum-exps, which
stream in O((n + m) d + block * m) memory; derivatives never go through the
iterations (they use the implicit-function rules of `_hvp.py`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.checks import check_block_size, check_problem, error_if, error_if_failed
from .._core.costs import AbstractCost, SqEuclidean, as_cost
from .._core.coupling import Coupling
from .._core.results import RESULTS
from .._core.sharding import RowSharding, auto_partitioned, row_sharding
from .accel import adapt_momentum, anderson_mix, anderson_push
from .newton import NEWTON_MIN_BUDGET, newton_phase
from .._stream.engine import row_logsumexp


class _Unset:
    """Default of `Sinkhorn`'s iteration options: "not given"."""

    def __repr__(self):
        return "UNSET"


UNSET = _Unset()
#: The options that choose the iteration.
ITERATION_OPTIONS = ("momentum", "anderson", "epsilon_scaling", "newton")
#: The iteration of `Sinkhorn()` when none of `ITERATION_OPTIONS` is given:
#: adaptive momentum, the fastest at tolerance 1e-6 on the grid of
#: `benchmarks/sinkhorn_speed.py` after Newton steps (which compile longer and
#: were measured on that grid only); see docs/forward_solvers.md.
DEFAULT_ITERATION = dict(momentum="adaptive", anderson=None, epsilon_scaling=None, newton=None)


class Sinkhorn(eqx.Module):
    """Log-domain Sinkhorn iterations (ott-jax's potential convention), plain or
    accelerated.

    Each iteration updates `g` (making the column marginals exact) and then
    `f`; the marginal error of the coupling `(f, g)` comes for free from the
    `f` update, so convergence is checked at every iteration. Whatever the
    acceleration, convergence is declared only on the true L1 marginal error
    `|P 1 - a|_1 + |P^T 1 - b|_1` of the returned potentials at the target
    `epsilon`.

    **Arguments:**

    - `tol`: stop when the marginal error of the returned coupling is
      `<= tol` (for plain Sinkhorn the columns are exact up to rounding, so
      this is `|P 1 - a|_1`). Float32 cannot go much below `1e-6`.
    - `max_iters`: iteration cap (annealing iterations included); reaching it
      is a failure (`RESULTS.sinkhorn_max_iters_reached`: raised with
      `throw=True`).
    - `momentum`: `None` (plain Sinkhorn), a fixed over-relaxation weight `w`
      in (0, 2) (`g <- g + w (T_g(f) - g)`, then `f` likewise; Thibault et
      al. 2021), or `"adaptive"`: plain for 20 iterations, then `w` set from
      the measured contraction `rho` as `2 / (1 + sqrt(1 - rho))` (Lehmann
      et al. 2021) and re-estimated every 10 iterations; `w - 1` is halved
      whenever the error grew over such a window (the safe step), and `w`
      set to exactly 1 (plain Sinkhorn, columns exact) once `w - 1` would
      fall below 0.2.
    - `anderson`: `None`, or the memory (number of past iterates, >= 2) of
      Anderson acceleration of the map `f -> T_f(T_g(f))`; restarted when
      the error grows. Cannot be combined with `momentum`.
    - `epsilon_scaling`: `None`, or a factor `q` in (0, 1): annealing as
      GeomLoss's `scaling` and ott-jax's `Epsilon` scheduler do, one
      iteration per value `eps_k = max(eps_0 q^k, epsilon)` from
      `eps_0 = c(lo, hi)`, the cost between the corners of the clouds'
      bounding box (the squared diameter for `SqEuclidean`). Momentum and
      Anderson act once the target is reached. Not useful with a warm start.
    - `newton`: `None`, or a marginal error (e.g. `0.1`) below which the
      iterations above hand over to Newton steps on the dual: each solves
      the H-system of the current coupling by CG (one streaming pass per CG
      step, inexact with a forcing term) and takes a backtracking line
      search on the dual (`_sinkhorn_newton.py`). A Newton step counts in
      `num_iters` (and towards `max_iters`) as half its streaming passes,
      rounded up: iterations are in units of a Sinkhorn iteration's two
      passes (`Coupling.num_passes` is the exact count). The hand-over
      needs at least 10 iterations of the budget left.

    With none of `momentum`, `anderson`, `epsilon_scaling`, `newton` given,
    the iteration is `DEFAULT_ITERATION` (adaptive momentum); with any of
    them given, exactly those (the others off: `Sinkhorn(momentum=None)` is
    plain Sinkhorn, `Sinkhorn(anderson=5)` Anderson alone). In float64 a
    `tol` near 1e-14 is at the rounding floor of the marginal error (about
    1e-14 at n = 12); which side of it an iteration stops on is luck, so
    ask for 1e-13 or more.
    - `progress`: optional callable `progress(iteration, marginal_error)`
      called from inside the jitted loop every `progress_every` iterations
      (through `jax.debug.callback`), e.g. to drive a tqdm bar. During
      annealing the error is that at the current epsilon.
    - `progress_every`: how often `progress` is called.

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
        # No option of the iteration given: the default iteration. Any given:
        # exactly those, the others off.
        given = {k: getattr(self, k) for k in ITERATION_OPTIONS if getattr(self, k) is not UNSET}
        chosen = DEFAULT_ITERATION if not given else {**dict.fromkeys(ITERATION_OPTIONS), **given}
        for k in ITERATION_OPTIONS:
            setattr(self, k, chosen[k])

    def __check_init__(self):
        if not self.tol > 0:
            raise ValueError(f"`tol` must be > 0, got {self.tol}.")
        if self.max_iters < 1:
            raise ValueError(f"`max_iters` must be >= 1, got {self.max_iters}.")
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
            raise ValueError("`anderson` and `momentum` cannot be combined; pick one.")
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


def sinkhorn_status(err, solver: Sinkhorn) -> RESULTS:
    return RESULTS.where(err <= solver.tol, RESULTS.successful, RESULTS.sinkhorn_max_iters_reached)


def initial_epsilon(x, y, cost: AbstractCost, epsilon):
    """`eps_0` of the annealing: the cost between the corners of the bounding
    box of both clouds (GeomLoss's `diameter ** p`), at least `epsilon`."""
    lo = jnp.minimum(jnp.min(x, axis=0), jnp.min(y, axis=0))
    hi = jnp.maximum(jnp.max(x, axis=0), jnp.max(y, axis=0))
    return jnp.maximum(jnp.asarray(cost(lo, hi), x.dtype), epsilon)


@eqx.filter_jit
@auto_partitioned
def _solve(
    x, y, a, b, epsilon, cost, solver: Sinkhorn, f_init, g_init, block_size, sharding, throw
) -> Coupling:
    # The gauge (f + c, g - c) is free: centre the start so that potentials stay
    # of the size of the costs. A start like `full(n, 1e16)` otherwise makes
    # f - f_next round to 0, and the marginal error with it (false convergence).
    shift = jnp.mean(f_init)
    f_init = f_init - shift
    g_init = jnp.zeros(y.shape[0], x.dtype) if g_init is None else g_init + shift
    if sharding is not None:
        x, y, a, b, f_init, g_init = sharding.place((x, y, a, b, f_init, g_init), sharding.rows)
    log_a, log_b = jnp.log(a), jnp.log(b)
    dtype = x.dtype
    momentum, anderson, scaling = solver.momentum, solver.anderson, solver.epsilon_scaling

    def geometries(eps):
        geom = Coupling(x, y, a, b, f_init, g_init, eps, cost, block_size=block_size,
                        sharding=sharding)
        return geom, geom.transpose()

    def potential(geom, log_w, other, eps):
        """`eps log w_i - eps LSE_j (other_j - C_ij) / eps`."""
        return eps * (log_w - row_logsumexp(geom, other))

    def row_error(f, f_hat, eps):
        # Row sums of the coupling (f, g) are a_i exp((f_i - T_f(g)_i) / eps).
        return jnp.sum(jnp.abs(a * jnp.expm1((f - f_hat) / eps)))

    if scaling is None:
        def schedule(it):
            return epsilon, jnp.asarray(True)
    else:
        eps0 = initial_epsilon(x, y, cost, epsilon)

        def schedule(it):
            annealed = eps0 * jnp.asarray(scaling, dtype) ** it.astype(dtype)
            return jnp.maximum(annealed, epsilon), annealed <= epsilon

    if solver.newton is None:
        def done(state):
            return state["err_target"] <= solver.tol
    else:
        def done(state):
            # Newton takes over below `solver.newton`, if enough of the
            # iteration budget is left for a Newton step.
            switch = (state["err_target"] <= solver.newton) & (
                state["it"] + NEWTON_MIN_BUDGET <= solver.max_iters
            )
            return (state["err_target"] <= solver.tol) | switch

    def cond(state):
        return (state["it"] < solver.max_iters) & ~done(state)

    def body(state):
        it, f = state["it"], state["f"]
        eps, at_target = schedule(it)
        geometry, geometry_t = geometries(eps)
        new = dict(state)
        g_hat = potential(geometry_t, log_b, f, eps)
        if momentum is None:
            g = g_hat
        else:
            w = jnp.where(at_target, state["w"], 1.0)
            # w = 1 is plain Sinkhorn, exactly: its columns are then exact, so
            # the error reaches plain Sinkhorn's rounding floor.
            plain = w == 1
            g = jnp.where(plain, g_hat, state["g"] + w * (g_hat - state["g"]))
        f_hat = potential(geometry, log_a, g, eps)
        err = row_error(f, f_hat, eps)
        if momentum is not None:
            # Column sums of (f, g) are b_j exp((g_j - T_g(f)_j) / eps).
            # (Zero when w = 1: g is then T_g(f) itself, as in plain Sinkhorn.)
            err = err + jnp.where(plain, 0.0, jnp.sum(jnp.abs(b * jnp.expm1((g - g_hat) / eps))))
            f_next = jnp.where(plain, f_hat, f + w * (f_hat - f))
            if momentum == "adaptive":
                k = state["k"] + at_target.astype(state["k"].dtype)
                w_next, err_ref, settling = adapt_momentum(
                    state["w"], err, state["err_ref"], k, state["settling"]
                )
                new["w"] = jnp.where(at_target, w_next, state["w"])
                new["err_ref"] = jnp.where(at_target, err_ref, state["err_ref"])
                new["settling"] = at_target & settling | ~at_target & state["settling"]
                new["k"] = k
        elif anderson is not None:
            grew = ~(err <= state["err"])
            count = jnp.where(at_target & ~grew, state["count"], 0)
            history, count = anderson_push(state["history"], count, f, f_hat)
            f_next = jnp.where(at_target, anderson_mix(history, count, a), f_hat)
            new["history"], new["count"] = history, count
        else:
            f_next = f_hat
        report_progress(solver, it + 1, err)
        new.update(
            it=it + 1, f=f_next, g=g, f_eval=f, f_hat=f_hat, err=err,
            err_target=jnp.where(at_target, err, jnp.inf), at_target=at_target,
        )
        return new

    inf = jnp.asarray(jnp.inf, dtype)
    state = dict(it=jnp.asarray(0), f=f_init, g=g_init, f_eval=f_init, f_hat=f_init, err=inf,
                 err_target=inf, at_target=jnp.asarray(scaling is None))
    if momentum is not None:
        state["w"] = jnp.asarray(1.0 if momentum == "adaptive" else momentum, dtype)
    if momentum == "adaptive":
        state.update(err_ref=inf, k=jnp.asarray(0), settling=jnp.asarray(False))
    if anderson is not None:
        empty = jnp.zeros((x.shape[0], anderson), dtype)
        if sharding is not None:
            empty = sharding.place(empty, sharding.rows)
        state.update(history=(empty, empty), count=jnp.asarray(0))
    state = jax.lax.while_loop(cond, body, state)
    it, f, g, f_hat, err = (state[k] for k in ("it", "f_eval", "g", "f_hat", "err_target"))
    passes = 2 * it
    if scaling is not None:
        # Stopped during the annealing (`max_iters` too small): report the
        # error of the last potentials at the target epsilon, not at eps_k.
        def at_target(f, g, f_hat, err):
            geometry, geometry_t = geometries(epsilon)
            g = potential(geometry_t, log_b, f, epsilon)
            f_hat = potential(geometry, log_a, g, epsilon)
            return f, g, f_hat, row_error(f, f_hat, epsilon)

        f, g, f_hat, err = jax.lax.cond(
            state["at_target"], lambda *args: args, at_target, f, g, f_hat, err
        )
        passes = passes + jnp.where(state["at_target"], 0, 2)
    if sharding is not None:
        f, g, f_hat = sharding.place((f, g, f_hat), sharding.rows)
    if solver.newton is None:
        total_mass = jnp.sum(a * jnp.exp((f - f_hat) / epsilon))
    else:
        def make_coupling(f, g):
            return Coupling(x, y, a, b, f, g, epsilon, cost, block_size=block_size,
                            sharding=sharding)

        def newton(f, g, f_hat, err, it, passes):
            return newton_phase(
                make_coupling, a, b, epsilon, f, g, it, passes, solver.max_iters, solver.tol,
                lambda start, stop, e: report_progress_between(solver, start, stop, e),
            )

        def no_newton(f, g, f_hat, err, it, passes):
            return f, g, a * jnp.exp((f - f_hat) / epsilon), err, it, passes

        # From the potentials whose error the Sinkhorn loop measured (at the
        # target epsilon), unless that loop ended at `tol` or at `max_iters`.
        handover = (err > solver.tol) & (it < solver.max_iters)
        f, g, row, err, it, passes = jax.lax.cond(
            handover, newton, no_newton, f, g, f_hat, err, it, passes
        )
        total_mass = jnp.sum(row)
    reg_ot_cost = (
        jnp.sum(a * (f - epsilon * log_a))
        + jnp.sum(b * (g - epsilon * log_b))
        + epsilon * (1 - total_mass)
    )
    coupling = Coupling(
        x, y, a, b, f, g, epsilon, cost, num_iters=it, marginal_error=err,
        reg_ot_cost=reg_ot_cost, result=sinkhorn_status(err, solver), block_size=block_size,
        sharding=sharding, num_passes=passes,
    )
    return finish(coupling, throw)


def solve(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn = Sinkhorn(),
    block_size: int | None = None,
    init: Float[Array, " n"] | tuple[Float[Array, " n"], Float[Array, " m"]] | Coupling
    | None = None,
    throw: bool = True,
) -> Coupling:
    """Solve balanced entropic OT between two weighted point clouds.

    `min_{P in U(a, b)} <P, C> + epsilon KL(P | a b^T)`, with potentials in
    ott-jax's convention, so `Coupling.reg_ot_cost` equals ott-jax's
    `reg_ot_cost`. Memory is O((n + m) d + block_size * m).

    **Arguments:**

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform if `None`.
    - `epsilon`: absolute entropic regularisation (> 0).
    - `cost`: an `AbstractCost`, or any callable `c(x_i, y_j) -> scalar`
      (e.g. an ott-jax `CostFn`).
    - `solver`: a `Sinkhorn` instance (tolerance, iteration cap, acceleration,
      annealing, progress).
    - `block_size`: rows per streaming block; `None` picks it from a memory
      budget (`ot_matfree._coupling.DEFAULT_BLOCK_BYTES`).
    - `init`: warm start: an initial `f` potential, shape (n,), a pair
      `(f, g)`, or a previous `Coupling` of the same sizes (its `f` and `g`;
      for instance the solution before a small move of the points). Only
      differences matter (the start is centred, which removes the free gauge
      constant), and it must be finite. Plain Sinkhorn starts with a `g`
      update, so it only uses `f`; momentum also starts from `g`.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, also under `jit`) when
      Sinkhorn stops at `max_iters`. With `throw=False` the coupling is
      returned with `converged=False` and
      `result = RESULTS.sinkhorn_max_iters_reached`.

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
        block_size=block_size, init=init, throw=throw,
    )


def solve_placed(
    sharding: RowSharding | None, x, y, a, b, *, epsilon, cost, solver, block_size, init, throw
) -> Coupling:
    """`solve` with the clouds' placement given: the losses read it before their
    `jit`, where an `Auto`-axis placement is still visible (`_sharding.py`)."""
    x, y, a, b, epsilon = check_problem(x, y, a, b, epsilon)
    if not isinstance(solver, Sinkhorn):
        raise TypeError(f"`solver` must be an ot_matfree.Sinkhorn, got {type(solver).__name__}.")
    f_init, g_init = initial_potentials(init, x, y)
    block_size = check_block_size(block_size)
    return _solve(
        x, y, a, b, epsilon, as_cost(cost), solver, f_init, g_init, block_size, sharding,
        bool(throw),
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
