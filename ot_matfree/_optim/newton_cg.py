"""`NewtonCG`: an optimistix minimiser with Hessian-vector products only.

Optimiser layer (imports nothing above the losses; works for any scalar JAX
function). Each step evaluates the objective at the trial point `y_eval` as
`jax.linearize(jax.value_and_grad(fn))`: the primal part (for ot_matfree's
losses: the Sinkhorn solves and the gradient pass) runs once, and the
returned linear map is `v -> H v`. Every inner CG step of that outer
iteration calls this map, so it reuses the same couplings: for `ot_cost` and
`sinkhorn_divergence` one inner HVP costs one H-solve, never a Sinkhorn solve
(`_stream.engine.stream` rematerialises its blocks, so the linearisation keeps
O((n + m) d) residuals, not n x m ones).
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from ._tree import check_one_dtype, tree_dot, tree_where
from .steihaug import NewtonCGDescent, NewtonCGDescentState, hessian_operator


def _cauchy_termination(rtol, atol, norm, y, y_diff, f, f_diff) -> Bool[Array, ""]:
    """optimistix's criterion: small change in both `y` and `f` (relative to `rtol`, `atol`)."""
    y_scale = jax.tree.map(lambda leaf: atol + rtol * jnp.abs(leaf), y)
    y_small = norm(jax.tree.map(lambda d, s: jnp.abs(d) / s, y_diff, y_scale)) < 1
    f_small = jnp.abs(f_diff) / (atol + rtol * jnp.abs(f)) < 1
    return y_small & f_small


def _print_verbose(**fields) -> None:
    labels = ", ".join(label + ": {}" for label, _ in fields.values())
    jax.debug.print(labels, *[value for _, value in fields.values()])


def _no_verbose(**fields) -> None:
    del fields


class NewtonCGState(eqx.Module):
    """`NewtonCG`'s state between optimistix steps: the trial point `y_eval`
    and what was known at the last accepted point (`f_info`, `aux`), the
    line search's and the descent's states (`NewtonCGDescentState`), and the
    counters behind `sol.stats`."""

    first_step: Bool[Array, ""]
    y_eval: PyTree[Array]
    search_state: Any
    f_info: optx.FunctionInfo.EvalGrad
    aux: Any
    descent_state: NewtonCGDescentState
    terminate: Bool[Array, ""]
    result: optx.RESULTS
    num_accepted_steps: Int[Array, ""]
    num_evaluations: Int[Array, ""]


class NewtonCG(optx.AbstractMinimiser):
    """Newton-CG minimisation with a line search, using only Hessian-vector products.

    `optimistix.minimise(fn, NewtonCG(rtol, atol), y0, args)` minimises a scalar
    `fn(y, args)` of any pytree `y`. At each accepted point the Newton system
    `H p = -g` is solved inexactly by truncated (Steihaug) CG, where `H v` is
    `jax.jvp(jax.grad(fn))` evaluated through one `jax.linearize` per point
    (see `NewtonCGDescent`); the step length comes from `search`.

    - Globalisation: `optimistix.BacktrackingArmijo()` (the default) backtracks
      from the full Newton step.
    - Relaxed Newton (Li et al.'s second stage): `search=optimistix.LearningRate(0.5)`
      takes the fixed step `0.5 p` every iteration.

    With ot_matfree's `ot_cost` and `sinkhorn_divergence`, every trial point
    costs one set of Sinkhorn solves (value and gradient) and every inner CG
    step one H-solve per OT term; the Sinkhorn solves are not repeated per HVP.
    For `sinkhorn_distance` the linearisation stores n x m residuals (its
    second derivative is JAX's forward mode through the streams): pass
    `linearise=False` there for large n, m, which re-solves per HVP.

    `sol.stats` (besides optimistix's `num_steps`, `max_steps`; `num_steps`
    counts objective evaluations):

    - `num_newton_steps`: accepted (outer) iterations, each one inner CG solve;
    - `num_hvps`: Hessian-vector products, all inner CG solves together;
    - `num_cg_steps`: CG updates (an HVP that detects non-positive curvature
      is counted in `num_hvps` but makes no update);
    - `num_negative_curvature`: inner solves stopped by non-positive curvature;
    - `num_saddle_escapes`: negative-curvature steps out of a stationary
      point that is not a minimum (below);
    - `num_search_steps`: rejected trial points (line-search backtracks).

    Saddles and maxima: where the iteration would stop (two accepted points
    within `rtol`, `atol`), the Hessian is probed by a few Lanczos steps
    (`saddle_probe_steps`, from a random start) instead of the CG solve;
    curvature below `-eps ** (1/4)` times the largest found (a saddle or a
    maximum, which a zero gradient, or one confined to a subspace by
    symmetry, hides from CG), along which a step of length `max(|y|, 1)`
    would lower the quadratic model by more than `atol + rtol |f|`, gives
    such a step (shortened by the line search), and the run goes on.
    So a run started at (or led to) a maximum or a saddle does not stop
    there; where it reports success, the probe saw no clearly negative
    curvature.

    Failures follow optimistix: `max_steps` reached raises with `throw=True`
    (`optimistix.RESULTS.nonlinear_max_steps_reached` with `throw=False`), a
    non-finite gradient or curvature is `RESULTS.nonlinear_divergence`. Errors
    raised inside `fn` (ot_matfree's losses with `throw=True`) propagate.

    Points where `fn` cannot be evaluated: let `fn` return `+inf` (or NaN)
    there, e.g. where a Sinkhorn solve did not converge. At a line-search
    trial point that is a rejected step (Armijo backtracks); at an accepted
    point (the start, or any point under `optimistix.LearningRate`) it is
    `RESULTS.nonlinear_divergence`.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]
    descent: NewtonCGDescent
    search: optx.AbstractSearch
    linearise: bool = eqx.field(static=True)
    warm_start: Callable[[Any, Any], Any] | None = eqx.field(static=True)
    verbose: Callable[..., None] = eqx.field(static=True)
    progress: Callable[[dict[str, Array]], None] | None = eqx.field(static=True)

    def __init__(
        self,
        rtol: float,
        atol: float,
        norm: Callable[[PyTree], Scalar] = optx.max_norm,
        *,
        search: optx.AbstractSearch = optx.BacktrackingArmijo(),
        forcing: str | float = "eisenstat-walker",
        cg_max_steps: int | None = None,
        saddle_probe_steps: int = 10,
        linearise: bool = True,
        warm_start: Callable[[Any, Any], Any] | None = None,
        verbose: bool | Callable[..., None] = False,
        progress: Callable[[dict[str, Array]], None] | None = None,
    ):
        """**Arguments:**

        - `rtol`, `atol`: relative and absolute tolerances, as in optimistix:
          stop when two consecutive accepted iterates differ by less than
          `atol + rtol |y|` in `norm` and their values by less than
          `atol + rtol |f|`.
        - `norm`: the norm of that test (`optimistix.max_norm` by default).
        - `search`: an `optimistix.AbstractSearch` using gradients;
          `optimistix.BacktrackingArmijo()` (default) or
          `optimistix.LearningRate(alpha)` for relaxed Newton.
        - `forcing`: inner CG tolerance, `"eisenstat-walker"` (adaptive,
          superlinear convergence) or a fixed relative residual in (0, 1).
        - `cg_max_steps`: CG steps per Newton step; `None` means the number of
          parameters.
        - `saddle_probe_steps`: Lanczos steps (HVPs) of the curvature probe
          run where the iteration would stop (in place of that point's CG
          solve, which is not needed there); capped at the number of
          parameters; `0` turns it off (and stops at any stationary point).
        - `linearise`: evaluate HVPs through one `jax.linearize` per point
          (one Sinkhorn solve per point); `False` calls
          `jax.jvp(jax.grad(fn))` per HVP instead (re-solves; for functions
          whose linearisation is memory-heavy).
        - `warm_start`: optional `warm_start(args, aux) -> args`: the `args`
          `fn` is evaluated with at a trial point, built from the `aux` that
          `fn` returned at the last accepted point (`has_aux=True`; zeros of
          its shape before the first point). With ot_matfree's losses,
          `return_potentials=True` returns the potentials as `aux` and
          `init=` takes them, so each Sinkhorn solve starts from the previous
          point's potentials:

          ```python
          def fn(w, args):
              x, y, init = args
              return om.ot_cost(x @ w, y, epsilon=0.05, init=init, return_potentials=True)

          solver = om.NewtonCG(1e-8, 1e-8, warm_start=lambda args, pots: (*args[:2], pots))
          f0, g0 = jnp.zeros(len(x)), jnp.zeros(len(y))
          optx.minimise(fn, solver, w0, (x, y, (f0, g0)), has_aux=True)
          ```
        - `verbose`: `True` prints the loss, step size, gradient norm and CG
          steps of every step (`jax.debug.print`); a callable receives them as
          keyword arguments `name=(label, value)`, as optimistix's `verbose`.
        - `progress`: optional callable `progress(info)` called from inside the
          jitted loop (through `jax.debug.callback`) after every step with a dict
          of scalars: `step`, `loss`, `grad_norm`, `step_size`,
          `num_newton_steps`, `num_hvps`, e.g. to drive a tqdm bar.
        """
        self.rtol = rtol
        self.atol = atol
        self.norm = norm
        self.descent = NewtonCGDescent(
            forcing=forcing, max_steps=cg_max_steps, probe_steps=saddle_probe_steps
        )
        self.search = search
        self.linearise = linearise
        if warm_start is not None and not callable(warm_start):
            raise TypeError(f"`warm_start` must be callable or None, got {type(warm_start)}.")
        self.warm_start = warm_start
        if callable(verbose):
            self.verbose = verbose
        elif verbose is True or verbose is False:
            self.verbose = _print_verbose if verbose else _no_verbose
        else:
            raise ValueError(f"`verbose` must be a bool or a callable, got {type(verbose)}.")
        if progress is not None and not callable(progress):
            raise TypeError(f"`progress` must be callable or None, got {type(progress)}.")
        self.progress = progress

    def __check_init__(self):
        if not (self.rtol >= 0 and self.atol >= 0 and self.rtol + self.atol > 0):
            raise ValueError(
                f"`rtol` and `atol` must be >= 0 and not both 0, got {self.rtol}, {self.atol}."
            )

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> NewtonCGState:
        check_one_dtype(y, "NewtonCG")
        f_info = optx.FunctionInfo.EvalGrad(jnp.zeros(f_struct.shape, f_struct.dtype), y)
        f_info_struct = jax.eval_shape(lambda: f_info)
        return NewtonCGState(
            first_step=jnp.array(True),
            y_eval=y,
            search_state=self.search.init(y, f_info_struct),
            f_info=f_info,
            aux=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_struct),
            descent_state=self.descent.init(y, f_info_struct),
            terminate=jnp.array(False),
            result=optx.RESULTS.successful,
            num_accepted_steps=jnp.array(0),
            num_evaluations=jnp.array(0),
        )

    def _evaluate(self, fn, y_eval, args):
        """`(f, grad, aux, hvp)` at `y_eval`; `hvp` reuses this evaluation's solves."""
        value_and_grad = jax.value_and_grad(lambda y: fn(y, args), has_aux=True)
        if self.linearise:
            def flat(y):
                (f, aux), g = value_and_grad(y)
                return (f, g), aux

            (f, grad), lin, aux = jax.linearize(flat, y_eval, has_aux=True)
            return f, grad, aux, lambda v: lin(v)[1]
        (f, aux), grad = value_and_grad(y_eval)
        grad_fn = lambda y: value_and_grad(y)[1]  # noqa: E731
        return f, grad, aux, lambda v: jax.jvp(grad_fn, (y_eval,), (v,))[1]

    def step(self, fn, y, args, options, state: NewtonCGState, tags):
        if self.warm_start is not None:
            args = self.warm_start(args, state.aux)
        f_eval, grad, aux_eval, hvp = self._evaluate(fn, state.y_eval, args)
        step_size, accept, search_result, search_state = self.search.step(
            state.first_step, y, state.y_eval, state.f_info,
            optx.FunctionInfo.EvalGrad(f_eval, grad), state.search_state,
        )

        y_diff = jax.tree.map(jnp.subtract, state.y_eval, y)

        def accepted(descent_state):
            f_info = optx.FunctionInfo.EvalGradHessian(
                f_eval, grad, hessian_operator(hvp, state.y_eval)
            )
            terminate = _cauchy_termination(
                self.rtol, self.atol, self.norm, state.y_eval, y_diff, f_eval,
                f_eval - state.f_info.f,
            )
            terminate = ~state.first_step & terminate
            # Where it would stop, probe the curvature instead of solving
            # for a Newton step: at a saddle or a maximum (zero gradient, or
            # one confined by symmetry) the direction is one of negative
            # curvature, and the run goes on.
            escapes = descent_state.num_saddle_escapes
            descent_state = self.descent.query(
                state.y_eval, f_info, descent_state, probe=terminate,
                min_decrease=self.atol + self.rtol * jnp.abs(f_eval),
            )
            terminate = terminate & (descent_state.num_saddle_escapes == escapes)
            return state.y_eval, optx.FunctionInfo.EvalGrad(f_eval, grad), aux_eval, (
                descent_state), terminate, jnp.isfinite(f_eval)

        def rejected(descent_state):
            # Backtracked below the tolerances: the trial point equals the
            # accepted one to the precision asked for, where a loss's rounding
            # (e.g. a Sinkhorn solve's) can fail Armijo's test at every step
            # length. Stop at the accepted point, as if the trial were accepted.
            stalled = _cauchy_termination(
                self.rtol, self.atol, self.norm, y, y_diff, state.f_info.f,
                f_eval - state.f_info.f,
            )
            return y, state.f_info, state.aux, descent_state, stalled, jnp.array(True)

        # A non-finite value (e.g. a loss that returns +inf where its solve
        # failed) fails Armijo's test, so at a trial point it is a rejected
        # step; accepted anyway (the first point, a fixed step) it is a divergence.
        y, f_info, aux, descent_state, terminate, finite_value = jax.lax.cond(
            accept, accepted, rejected, state.descent_state
        )
        y_descent, descent_result = self.descent.step(step_size, descent_state)
        y_eval = jax.tree.map(jnp.add, y, y_descent)
        result = optx.RESULTS.where(
            search_result == optx.RESULTS.successful, descent_result, search_result
        )
        result = optx.RESULTS.where(finite_value, result, optx.RESULTS.nonlinear_divergence)
        num_accepted = state.num_accepted_steps + jnp.where(accept, 1, 0)
        self._report(f_eval, f_info, step_size, grad, descent_state, num_accepted)
        prev_aux = tree_where(state.first_step, aux, state.aux)
        new_state = NewtonCGState(
            first_step=jnp.array(False),
            y_eval=y_eval,
            search_state=search_state,
            f_info=f_info,
            aux=aux,
            descent_state=descent_state,
            terminate=terminate | (result != optx.RESULTS.successful),
            result=result,
            num_accepted_steps=num_accepted,
            num_evaluations=state.num_evaluations + 1,
        )
        return y, new_state, prev_aux

    def _report(self, f_eval, f_info, step_size, grad, descent_state, num_accepted):
        """`verbose` and `progress` after a step."""
        grad_norm = jnp.sqrt(tree_dot(grad, grad))
        self.verbose(
            loss=("Loss on this step", f_eval),
            loss_last_accepted_step=("Loss on the last accepted step", f_info.f),
            step_size=("Step size", step_size),
            grad_norm=("Gradient norm", grad_norm),
            cg_steps=("CG steps (total)", descent_state.num_cg_steps),
        )
        if self.progress is not None:
            info = dict(
                step=num_accepted, loss=f_eval, grad_norm=grad_norm, step_size=step_size,
                num_newton_steps=descent_state.num_queries, num_hvps=descent_state.num_hvps,
            )
            jax.debug.callback(self.progress, info)

    def terminate(self, fn, y, args, options, state: NewtonCGState, tags):
        return state.terminate, state.result

    def postprocess(self, fn, y, aux, args, options, state: NewtonCGState, tags, result):
        d = state.descent_state
        stats = dict(
            num_newton_steps=d.num_queries,
            num_hvps=d.num_hvps,
            num_cg_steps=d.num_cg_steps,
            num_negative_curvature=d.num_negative_curvature,
            num_saddle_escapes=d.num_saddle_escapes,
            num_search_steps=state.num_evaluations - state.num_accepted_steps,
        )
        return y, aux, stats
