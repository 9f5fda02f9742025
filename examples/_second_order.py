"""Helpers shared by the second-order training examples (Li, Lu, Tao & Ye, Section 6).

`shuffled_regression.py` and `registration.py` fit parameters `w` of a loss
`loss(w, x, y)` with several optimisers side by side. Every run here:

- is compiled ahead of time (`jax.jit(...).lower(...).compile()`), then run
  once; its wall time excludes compilation;
- records a trace of `(iteration, loss, seconds)` through `jax.debug.callback`
  (host timestamps, so they include the callback overhead);
- ends with its final point re-evaluated by `loss`, which raises if the
  Sinkhorn solve there fails.

The contract on failed solves: `loss` raises; `trial_loss` is used only where
a line search evaluates trial points (Newton-CG with Armijo, BFGS), which may
lie far out where Sinkhorn converges slowly or not at all: there it is
`capped_cost`, `+inf` where a capped solve fails, which the search rejects.
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
    """Host-side trace of `(loss, time since reset)`, fed through `jax.debug.callback`;
    `echo(line)`, if given, also receives each record (progress of long runs)."""

    def __init__(self, echo=None):
        self.echo = echo
        self.reset()

    def reset(self):
        self.losses, self.times, self.start = [], [], time.perf_counter()

    def __call__(self, value):
        self.losses.append(float(value))
        self.times.append(time.perf_counter() - self.start)
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


def _run_compiled(solve, recorder, *args):
    """Compile `solve` for `args`, run it once; `(output, seconds)`, compilation excluded."""
    start = time.perf_counter()
    compiled = jax.jit(solve).lower(*args).compile()
    if recorder.echo is not None:
        recorder.echo(f"  compiled in {time.perf_counter() - start:.1f} s")
    recorder.reset()
    out = jax.block_until_ready(compiled(*args))
    return out, time.perf_counter() - recorder.start


def _final(loss, w, x, y):
    return float(jax.jit(loss)(w, x, y))


def run_first_order(name, loss, x, y, w0, optimiser, steps, echo=None):
    """`steps` iterations of an optax optimiser on `loss`, in one jitted `lax.scan`."""
    value_and_grad = jax.value_and_grad(loss)
    recorder = Recorder(echo)

    def solve(w0, x, y):
        def body(carry, _):
            w, state = carry
            value, g = value_and_grad(w, x, y)
            jax.debug.callback(recorder, value)  # loss at the iterate before this step
            updates, state = optimiser.update(g, state, w)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(body, (w0, optimiser.init(w0)), None, length=steps)
        return w

    w, seconds = _run_compiled(solve, recorder, w0, x, y)
    return dict(name=name, w=w, iterations=steps, hvps=None, seconds=seconds,
                iters=list(range(steps + 1)), losses=recorder.losses + [_final(loss, w, x, y)],
                times=recorder.times + [seconds])


def run_newton(name, loss, trial_loss, x, y, w0, *, newton_search, rtol, max_steps, sgd=None,
               echo=None):
    """Newton-CG from `w0`, or `om.sgd_newton` (its SGD stage, then Newton) if
    `sgd` is a dict of `sgd_newton`'s keyword arguments (`key`, `batch_size`,
    `learning_rate`, `max_sgd_steps`, `lanczos_steps`).

    With a line search (`newton_search` other than `optx.LearningRate`) the
    objective is `trial_loss`, and the trace is the running minimum of the
    reported losses, i.e. the last accepted one (rejected trial points are
    reported too and count as iterations). The HVPs include those of
    `sgd_newton`'s Lanczos definiteness checks. `echo`: see `Recorder`.
    """
    recorder = Recorder(echo)
    newton = om.NewtonCG(rtol, rtol, search=newton_search,
                         progress=lambda info: recorder(info["loss"]))
    relaxed = isinstance(newton_search, optx.LearningRate)
    fn = loss if relaxed else trial_loss
    if sgd is None:
        def solve(w0, x, y):
            return optx.minimise(lambda w, data: fn(w, *data), newton, w0, (x, y),
                                 max_steps=max_steps, throw=False)
    else:
        def solve(w0, x, y):
            return om.sgd_newton(fn, w0, x, y, newton=newton, max_newton_steps=max_steps,
                                 throw=False, **sgd)

    sol, seconds = _run_compiled(solve, recorder, w0, x, y)
    # `progress` reports at solver step j the loss of the point evaluated
    # there (iterate j - 1 of this stage): append the final iterate's.
    losses = recorder.losses + [_final(loss, sol.value, x, y)]
    times = recorder.times + [seconds]
    if not relaxed:
        losses = [float(v) for v in jnp.minimum.accumulate(jnp.asarray(losses))]
    sgd_steps = int(sol.stats.get("num_sgd_steps", 0))
    iters = [sgd_steps + j for j in range(len(losses))]
    hvps = int(sol.stats["num_hvps"])
    if sgd is not None:
        # One check at the start and one after each SGD step (check_every = 1),
        # each `min(lanczos_steps, number of parameters)` HVPs.
        hvps += (1 + sgd_steps) * min(sgd.get("lanczos_steps", 20), w0.size)
        if sgd_steps:  # the SGD stage is not traced: start from the initial loss
            iters, losses, times = [0, *iters], [_final(loss, w0, x, y), *losses], [0.0, *times]
    return dict(name=name, w=sol.value, iterations=sgd_steps + int(sol.stats["num_newton_steps"]),
                hvps=hvps, seconds=seconds, iters=iters, losses=losses, times=times,
                result=sol.result, sgd_steps=sgd_steps,
                newton_steps=int(sol.stats["num_newton_steps"]))


def run_bfgs(loss, trial_loss, x, y, w0, *, rtol, max_steps, echo=None):
    recorder = Recorder(echo)

    def verbose(**kwargs):
        jax.debug.callback(recorder, kwargs["loss_last_accepted_step"][1])

    solver = optx.BFGS(rtol, rtol, verbose=verbose)

    def solve(w0, x, y):
        return optx.minimise(lambda w, data: trial_loss(w, *data), solver, w0, (x, y),
                             max_steps=max_steps, throw=False)

    sol, seconds = _run_compiled(solve, recorder, w0, x, y)
    # The trace is the loss at the last accepted point before each step (the
    # first entry is the initial loss once the first step has evaluated it).
    losses = recorder.losses[1:] + [_final(loss, sol.value, x, y)]
    return dict(name="BFGS (optimistix)", w=sol.value, iterations=int(sol.stats["num_steps"]),
                hvps=None, seconds=seconds, iters=list(range(len(losses))), losses=losses,
                times=recorder.times[1:] + [seconds], result=sol.result)


def first_reach(run, target):
    """Iteration and seconds at which the trace first reaches `target` (or `(None, None)`)."""
    for k, value, t in zip(run["iters"], run["losses"], run["times"]):
        if value <= target:
            return k, t
    return None, None


def results_table(runs, loss, error, x, y, target, error_label):
    """Markdown table; sets each run's `final` (loss re-evaluated) and `error`."""
    header = (f"| {'method':<31} | iterations | HVPs | wall time (s) | final loss | "
              f"{error_label} | iterations / s to reach GD's final loss |")
    lines = [header, "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"]
    for run in runs:
        run["final"] = _final(loss, run["w"], x, y)
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

