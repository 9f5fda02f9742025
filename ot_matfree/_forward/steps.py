"""The Sinkhorn loop in the optimistix shape: a typed state, the epsilon
schedule, and the iteration variants as small step objects.

One iteration at epsilon `eps` is a `g` half-step and an `f` half-step
(`dual.py`'s c-transforms, one streaming pass each); the variants differ in
what they make of the two updates:

- `PlainStep`: `g <- T_g(f)`, `f <- T_f(g)`;
- `FixedMomentum`, `AdaptiveMomentum`: over-relaxation with a weight `w`
  (`accel.py`: Thibault et al. 2021; adaptive `w`: Lehmann et al. 2021);
- `AndersonStep`: Anderson acceleration of `f -> T_f(T_g(f))`.

A step returns the next `f`, the `g` of the evaluated coupling `(f, g)`,
`T_f(g)` and that coupling's marginal error; `sinkhorn_loop` drives any of
them (with the schedule of `Schedule`) until the error at the target epsilon
is `<= tol` (or, with Newton steps to follow, below their hand-over error).
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from .._core.coupling import Coupling
from .accel import adapt_momentum, anderson_mix, anderson_push
from .dual import DualProblem


class SinkhornState(eqx.Module):
    """The carry of the Sinkhorn loop.

    **Fields:**

    - `it`: iterations done (annealing iterations included).
    - `f`: the potential the next iteration starts from (extrapolated by
      momentum or Anderson, so not necessarily one of a measured coupling).
    - `g`, `f_eval`: the coupling `(f_eval, g)` of the last iteration, the
      one whose marginal error is `err`; `f_hat = T_f(g)`.
    - `err`: that error at the iteration's epsilon; `err_target` the same at
      the target epsilon (`inf` while annealing).
    - `at_target`: whether the last iteration ran at the target epsilon.
    - `step`: the step object's own state (`None` for plain Sinkhorn).
    """

    it: Int[Array, ""]
    f: Float[Array, " n"]
    g: Float[Array, " m"]
    f_eval: Float[Array, " n"]
    f_hat: Float[Array, " n"]
    err: Float[Array, ""]
    err_target: Float[Array, ""]
    at_target: Bool[Array, ""]
    step: PyTree


class Schedule(eqx.Module):
    """The epsilon of each iteration: the target, or annealing
    `eps_k = max(eps_0 q^k, epsilon)` (GeomLoss's `scaling`, ott-jax's
    `Epsilon` scheduler) when `factor` (`q`) is given."""

    epsilon: Float[Array, ""]
    eps0: Float[Array, ""] | None = None
    factor: float | None = eqx.field(static=True, default=None)

    def __call__(self, it: Int[Array, ""]) -> tuple[Float[Array, ""], Bool[Array, ""]]:
        """`(eps_k, whether eps_k is the target)` for iteration `it`."""
        if self.factor is None:
            return self.epsilon, jnp.asarray(True)
        dtype = self.epsilon.dtype
        annealed = self.eps0 * jnp.asarray(self.factor, dtype) ** it.astype(dtype)
        return jnp.maximum(annealed, self.epsilon), annealed <= self.epsilon


class AbstractStep(eqx.Module):
    """One Sinkhorn iteration of a variant.

    `init(problem, f, g)` is the variant's own state; `__call__` runs one
    iteration at `eps` from `state` on `geometry` (a coupling of the problem
    at `eps`) and returns `(f_next, g, f_hat, err, step_state)`: the start of
    the next iteration, the evaluated coupling `(state.f, g)`, `T_f(g)`, and
    that coupling's L1 marginal error at `eps` (columns included where they
    are not exact). `at_target` is `False` during annealing, where the
    accelerations hold back.
    """

    @abc.abstractmethod
    def init(self, problem: DualProblem, f, g) -> PyTree:
        """The step's own state before the first iteration from `(f, g)`."""

    @abc.abstractmethod
    def __call__(self, problem: DualProblem, geometry: Coupling, state: SinkhornState, eps,
                 at_target) -> tuple[Array, Array, Array, Array, PyTree]:
        """One iteration: `(f_next, g, f_hat, err, step_state)`."""


class PlainStep(AbstractStep):
    """Plain Sinkhorn: `g <- T_g(f)`, `f <- T_f(g)`; the columns are exact."""

    def init(self, problem, f, g):
        """No state (`None`)."""

    def __call__(self, problem, geometry, state, eps, at_target):
        g = problem.update_g(geometry, state.f, eps)
        f_hat = problem.update_f(geometry, g, eps)
        return f_hat, g, f_hat, problem.row_error(state.f, f_hat, eps), state.step


def over_relaxed(problem: DualProblem, geometry, state: SinkhornState, w, eps):
    """One over-relaxed iteration with weight `w` (`accel.py`):
    `g <- g + w (T_g(f) - g)`, then `f <- f + w (T_f(g) - f)`.

    At `w = 1` it takes `T_g(f)` and `T_f(g)` themselves: plain Sinkhorn bit
    for bit, its columns exact (no column term), so the error reaches plain
    Sinkhorn's rounding floor. **Returns:** `(f_next, g, f_hat, err)`.
    """
    f = state.f
    g_hat = problem.update_g(geometry, f, eps)
    plain = w == 1
    g = jnp.where(plain, g_hat, state.g + w * (g_hat - state.g))
    f_hat = problem.update_f(geometry, g, eps)
    err = problem.row_error(f, f_hat, eps)
    # Column sums of (f, g) are b_j exp((g_j - T_g(f)_j) / eps).
    err = err + jnp.where(plain, 0.0, problem.column_error(g, g_hat, eps))
    f_next = jnp.where(plain, f_hat, f + w * (f_hat - f))
    return f_next, g, f_hat, err


class FixedMomentum(AbstractStep):
    """Over-relaxation with a fixed weight `weight` in (0, 2), at the target
    epsilon (plain Sinkhorn while annealing). Its state is the weight."""

    weight: float = eqx.field(static=True)

    def init(self, problem, f, g):
        """The weight, as an array of the potentials' dtype."""
        return jnp.asarray(self.weight, f.dtype)

    def __call__(self, problem, geometry, state, eps, at_target):
        w = jnp.where(at_target, state.step, 1.0)
        return *over_relaxed(problem, geometry, state, w, eps), state.step


class AdaptiveState(eqx.Module):
    """The adaptive rule's state (`accel.adapt_momentum`): the weight `w`,
    the error at the start of the current window, the iterations at the
    target, and whether the current window follows a change of `w`."""

    w: Float[Array, ""]
    err_ref: Float[Array, ""]
    k: Int[Array, ""]
    settling: Bool[Array, ""]


class AdaptiveMomentum(AbstractStep):
    """Over-relaxation with the weight set from the measured contraction and
    re-estimated every `accel.WINDOW` iterations at the target epsilon
    (`accel.adapt_momentum`; `w = 1`, plain Sinkhorn, before the first
    estimate and while annealing)."""

    def init(self, problem, f, g):
        """`w = 1` (plain Sinkhorn) until the first estimate."""
        dtype = f.dtype
        return AdaptiveState(jnp.asarray(1.0, dtype), jnp.asarray(jnp.inf, dtype),
                             jnp.asarray(0), jnp.asarray(False))

    def __call__(self, problem, geometry, state, eps, at_target):
        old = state.step
        w = jnp.where(at_target, old.w, 1.0)
        f_next, g, f_hat, err = over_relaxed(problem, geometry, state, w, eps)
        k = old.k + at_target.astype(old.k.dtype)
        w_next, err_ref, settling = adapt_momentum(old.w, err, old.err_ref, k, old.settling)
        new = AdaptiveState(
            w=jnp.where(at_target, w_next, old.w),
            err_ref=jnp.where(at_target, err_ref, old.err_ref),
            k=k,
            settling=at_target & settling | ~at_target & old.settling,
        )
        return f_next, g, f_hat, err, new


class AndersonStep(AbstractStep):
    """Anderson acceleration (`accel.anderson_mix`) of `f -> T_f(T_g(f))`
    with `memory` past iterates, at the target epsilon; the history restarts
    whenever the marginal error grows. Its state is `(history, count)`."""

    memory: int = eqx.field(static=True)

    def init(self, problem, f, g):
        """An empty history, placed as the potentials on a sharded problem."""
        empty = jnp.zeros((f.shape[0], self.memory), f.dtype)
        if problem.sharding is not None:
            empty = problem.sharding.place(empty, problem.sharding.rows)
        return (empty, empty), jnp.asarray(0)

    def __call__(self, problem, geometry, state, eps, at_target):
        f = state.f
        g = problem.update_g(geometry, f, eps)
        f_hat = problem.update_f(geometry, g, eps)
        err = problem.row_error(f, f_hat, eps)
        history, count = state.step
        grew = ~(err <= state.err)
        count = jnp.where(at_target & ~grew, count, 0)
        history, count = anderson_push(history, count, f, f_hat)
        f_next = jnp.where(at_target, anderson_mix(history, count, problem.a), f_hat)
        return f_next, g, f_hat, err, (history, count)


def initial_state(problem: DualProblem, step: AbstractStep, annealed: bool, f, g) -> SinkhornState:
    """The state before the first iteration, from potentials `(f, g)`."""
    inf = jnp.asarray(jnp.inf, f.dtype)
    return SinkhornState(it=jnp.asarray(0), f=f, g=g, f_eval=f, f_hat=f, err=inf, err_target=inf,
                         at_target=jnp.asarray(not annealed), step=step.init(problem, f, g))


def sinkhorn_loop(problem: DualProblem, schedule: Schedule, step: AbstractStep,
                  state: SinkhornState, done, max_iters, progress) -> SinkhornState:
    """Iterate `step` from `state` until `done(state)`, `max_iters`, or a NaN
    marginal error (non-finite potentials: no later iteration recovers from
    them, so the loop stops at once and the solve reports
    `RESULTS.sinkhorn_nonfinite`).

    `progress(iteration, err)` reports after every iteration.
    """

    def cond(state):
        return (state.it < max_iters) & ~done(state) & ~jnp.isnan(state.err)

    def body(state):
        eps, at_target = schedule(state.it)
        geometry = problem.coupling(state.f, state.g, eps)
        f_next, g, f_hat, err, inner = step(problem, geometry, state, eps, at_target)
        progress(state.it + 1, err)
        return SinkhornState(
            it=state.it + 1, f=f_next, g=g, f_eval=state.f, f_hat=f_hat, err=err,
            err_target=jnp.where(at_target, err, jnp.inf), at_target=at_target, step=inner,
        )

    return jax.lax.while_loop(cond, body, state)
