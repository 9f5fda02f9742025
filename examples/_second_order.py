"""Runners shared by the second-order training examples.

`2_gradient_flows.py`, `3_registration.py`, `4_shuffled_regression.py` and
`6_generative_mlp.py` minimise a loss `loss(w, *data)` over parameters `w` (an
array or a pytree) with several optimisers side by side. Every run here:

- is compiled ahead of time (`jax.jit(...).lower(...).compile()`), then run
  once (twice with `warm=True`: the second run is timed); its wall time
  excludes compilation, which is reported separately (`compile_seconds`);
- records a trace of `(iteration, loss, seconds)` through `jax.debug.callback`
  (host timestamps, so they include the callback overhead);
- ends with its final point re-evaluated by `loss` (`final`), which raises if
  the Sinkhorn solve there fails.

The contract on failed solves: `loss` raises; `trial_loss` is used only where
a line search evaluates trial points (Newton-CG with Armijo, BFGS), which may
lie far out where Sinkhorn converges slowly or not at all: there it is
`capped_cost` (or an equivalent), `+inf` where a capped solve fails, which the
search rejects.
"""

import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import optax
import optimistix as optx

import ot_matfree as om


class Recorder:
    """Host-side trace of `(loss, time since reset)`, fed through `jax.debug.callback`
    (`recorder(loss)`, or `recorder(loss, extra)` to keep `extra` too, in
    `extras`); `echo(line)`, if given, also receives each record (progress of
    long runs)."""

    def __init__(self, echo=None):
        self.echo = echo
        self.reset()

    def reset(self):
        self.losses, self.times, self.extras = [], [], []
        self.start = time.perf_counter()

    def __call__(self, value, extra=None):
        self.losses.append(float(value))
        self.times.append(time.perf_counter() - self.start)
        self.extras.append(extra)
        if self.echo is not None:
            self.echo(f"  [{self.times[-1]:.1f} s] loss {self.losses[-1]:.6g}")


def capped_cost(points, y, epsilon, solver):
    """`ot_cost(points, y)` with `solver`, or `+inf` where `solver` does not
    converge (within its `max_iters`, which caps the work spent on a trial point).

    A probe solve runs first, without derivatives; the cost repeats it only
    where it converged. `NewtonCG` reports a `+inf` at an accepted point as a
    divergence.
    """
    probe = om.solve(jax.lax.stop_gradient(points), y, epsilon=epsilon, solver=solver,
                     throw=False)
    return jax.lax.cond(
        probe.converged,
        lambda: om.ot_cost(points, y, epsilon=epsilon, solver=solver, throw=False),
        lambda: jnp.array(jnp.inf, points.dtype),
    )


def _run_compiled(solve, recorder, *args, warm=False):
    """Compile `solve` for `args` and run it once (with `warm`, twice: the second
    run is timed); `(output, seconds, compile_seconds)`, compilation excluded."""
    start = time.perf_counter()
    compiled = jax.jit(solve).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    if recorder.echo is not None:
        recorder.echo(f"  compiled in {compile_seconds:.1f} s")
    if warm:
        jax.block_until_ready(compiled(*args))
    recorder.reset()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - recorder.start, compile_seconds


def _final(loss, w, data):
    return float(jax.jit(loss)(w, *data))


def run_first_order(name, loss, data, w0, optimiser, steps, *, echo=None, warm=False,
                    path_every=None):
    """`steps` iterations of an optax optimiser on `loss(w, *data)`, in one
    jitted `lax.scan`. With `path_every`, the run also keeps every
    `path_every`-th iterate and the final one (`path`, stacked along axis 0)."""
    value_and_grad = jax.value_and_grad(loss)
    recorder = Recorder(echo)

    def solve(w0, data):
        def body(carry, _):
            w, state = carry
            value, g = value_and_grad(w, *data)
            jax.debug.callback(recorder, value)  # loss at the iterate before this step
            updates, state = optimiser.update(g, state, w)
            return (optax.apply_updates(w, updates), state), w if path_every else None

        (w, _), path = jax.lax.scan(body, (w0, optimiser.init(w0)), None, length=steps)
        if path_every:
            path = jax.tree.map(lambda p, last: jnp.concatenate([p[::path_every], last[None]]),
                                path, w)
        return w, path

    (w, path), seconds, compile_seconds = _run_compiled(solve, recorder, w0, data, warm=warm)
    final = _final(loss, w, data)
    return dict(name=name, w=w, iterations=steps, hvps=None, seconds=seconds,
                compile_seconds=compile_seconds, iters=list(range(steps + 1)),
                losses=recorder.losses + [final], times=recorder.times + [seconds],
                final=final, path=path)


def run_newton(name, loss, trial_loss, data, w0, *, newton_search, rtol, max_steps,
               cg_max_steps=None, sgd=None, echo=None, warm=False):
    """Newton-CG from `w0` on `loss(w, *data)`, or `om.sgd_newton` (its SGD
    stage, then Newton) if `sgd` is a dict of `sgd_newton`'s keyword arguments
    (`key`, `batch_size`, `learning_rate`, `max_sgd_steps`, `lanczos_steps`).

    With a line search (`newton_search` other than `optx.LearningRate`) the
    objective is `trial_loss`, and the trace is the running minimum of the
    reported losses, i.e. the last accepted one (rejected trial points are
    reported too and count as iterations; `raw` keeps the reported values).
    `iterations` counts SGD and Newton steps, `evaluations` the Newton stage's
    loss evaluations (optimistix's `num_steps`). The HVPs include those of
    `sgd_newton`'s Lanczos definiteness checks; `hvps_reported` is the HVP count
    at each report. `echo`: see `Recorder`.
    """
    recorder = Recorder(echo)

    def progress(info):
        recorder(info["loss"], int(info["num_hvps"]))
        if echo is not None:
            echo(f"    next step size {float(info['step_size']):.3g}, HVPs so far "
                 f"{int(info['num_hvps'])}")

    newton = om.NewtonCG(rtol, rtol, search=newton_search, cg_max_steps=cg_max_steps,
                         progress=progress)
    relaxed = isinstance(newton_search, optx.LearningRate)
    fn = loss if relaxed else trial_loss
    if sgd is None:
        def solve(w0, data):
            return optx.minimise(lambda w, data: fn(w, *data), newton, w0, data,
                                 max_steps=max_steps, throw=False)
    else:
        def solve(w0, data):
            return om.sgd_newton(fn, w0, *data, newton=newton, max_newton_steps=max_steps,
                                 throw=False, **sgd)

    sol, seconds, compile_seconds = _run_compiled(solve, recorder, w0, data, warm=warm)
    final = _final(loss, sol.value, data)
    # `progress` reports at solver step j the loss of the point evaluated
    # there (iterate j - 1 of this stage): append the final iterate's.
    raw = list(recorder.losses)
    losses = raw + [final]
    times = recorder.times + [seconds]
    if not relaxed:
        losses = [float(v) for v in jnp.minimum.accumulate(jnp.asarray(losses))]
    stats = {k: int(v) for k, v in sol.stats.items() if jnp.ndim(v) == 0}
    sgd_steps = stats.get("num_sgd_steps", 0)
    iters = [sgd_steps + j for j in range(len(losses))]
    hvps = stats["num_hvps"]
    if sgd is not None:
        # One check at the start and one after each SGD step (check_every = 1),
        # each `min(lanczos_steps, number of parameters)` HVPs.
        size = sum(leaf.size for leaf in jax.tree.leaves(w0))
        hvps += (1 + sgd_steps) * min(sgd.get("lanczos_steps", 20), size)
        if sgd_steps:  # the SGD stage is not traced: start from the initial loss
            iters, losses, times = [0, *iters], [_final(loss, w0, data), *losses], [0.0, *times]
    return dict(name=name, w=sol.value, iterations=sgd_steps + stats["num_newton_steps"],
                evaluations=stats["num_steps"], hvps=hvps, cg_steps=stats["num_cg_steps"],
                seconds=seconds, compile_seconds=compile_seconds, iters=iters, losses=losses,
                times=times, final=final, raw=raw, hvps_reported=list(recorder.extras),
                result=sol.result, sgd_steps=sgd_steps,
                newton_steps=stats["num_newton_steps"], stats=stats)


def run_bfgs(loss, trial_loss, data, w0, *, rtol, max_steps, echo=None):
    """optimistix's BFGS on `trial_loss(w, *data)`; the same record as the other runners."""
    recorder = Recorder(echo)

    def verbose(**kwargs):
        jax.debug.callback(recorder, kwargs["loss_last_accepted_step"][1])

    solver = optx.BFGS(rtol, rtol, verbose=verbose)

    def solve(w0, data):
        return optx.minimise(lambda w, data: trial_loss(w, *data), solver, w0, data,
                             max_steps=max_steps, throw=False)

    sol, seconds, compile_seconds = _run_compiled(solve, recorder, w0, data)
    final = _final(loss, sol.value, data)
    # The trace is the loss at the last accepted point before each step (the
    # first entry is the initial loss once the first step has evaluated it).
    losses = recorder.losses[1:] + [final]
    return dict(name="BFGS (optimistix)", w=sol.value, iterations=int(sol.stats["num_steps"]),
                hvps=None, seconds=seconds, compile_seconds=compile_seconds,
                iters=list(range(len(losses))), losses=losses,
                times=recorder.times[1:] + [seconds], final=final, result=sol.result)


def first_reach(run, target):
    """Iteration and seconds at which the trace first reaches `target` (or `(None, None)`)."""
    for k, value, t in zip(run["iters"], run["losses"], run["times"]):
        if value <= target:
            return k, t
    return None, None


def results_table(runs, error, target, error_label):
    """Markdown table of the runs' counts, times, final losses and `error(w)`
    (which it stores as each run's `error`)."""
    header = (f"| {'method':<31} | iterations | HVPs | wall time (s) | final loss | "
              f"{error_label} | iterations / s to reach GD's final loss |")
    lines = [header, "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"]
    for run in runs:
        run["error"] = error(run["w"])
        k, t = first_reach(run, target)
        reach = "not reached" if k is None else f"{k} / {t:.2f}"
        hvps = "-" if run["hvps"] is None else str(run["hvps"])
        lines.append(f"| {run['name']:<31} | {run['iterations']:>10} | {hvps:>4} | "
                     f"{run['seconds']:>13.2f} | {run['final']:>10.6f} | "
                     f"{run['error']:>{len(error_label)}.4f} | {reach:>39} |")
    return "\n".join(lines)


def plot_traces(axes, runs, target):
    """Excess loss against iterations (`axes[0]`) and wall time (`axes[1]`), log scales."""
    best = min(min(r["losses"]) for r in runs)
    for run in runs:
        excess = [v - best + 1e-10 for v in run["losses"]]
        marker = "." if len(excess) < 60 else None
        axes[0].plot(run["iters"], excess, label=run["name"], marker=marker)
        axes[1].plot(run["times"], excess, label=run["name"], marker=marker)
    for ax, xlabel in zip(axes, ("iteration", "wall time (s, compiled, under load)")):
        ax.set_xscale("symlog", linthresh=1) if xlabel == "iteration" else ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss - min loss + 1e-10")
        ax.axhline(target - best + 1e-10, color="grey", ls=":", lw=0.8)
    axes[0].legend(fontsize=8)

