"""Shuffled regression with a Gaussian mixture (Li, Lu, Tao & Ye 2025, Section 6.1).

Recover `W` (5 x 2) from `X` and a row-shuffled `Y = X W + noise` by minimising
the entropic OT cost between the predictions and the shuffled targets,

    L(W) = OT_eps(X W, Y),   eps = 0.05,

with `X` drawn from a three-cluster Gaussian mixture (cluster standard
deviations 0.3, 0.05, 0.6; cluster means 2 * N(0, I_5), chosen here), n = 500,
`Y = X W + 0.2 N(0, 1)`, `W0 = W + N(0, 1)`. Methods, side by side:

- SGD-Newton (`om.sgd_newton`): 10 SGD steps on minibatches of 100 rows with
  learning rate 1e-3, then relaxed Newton (`NewtonCG`, fixed step 0.5): the paper's method;
- Newton-CG with Armijo backtracking (`optx.minimise(fn, om.NewtonCG(...))`) from W0;
- gradient descent, learning rate 1e-3 (the paper's baseline), 2,000 iterations;
- Adam (optax, learning rate 1e-2), 2,000 iterations;
- BFGS (optimistix).

Every method is compiled ahead of time (`.lower(...).compile()`), then run
and timed (wall-clock time of that run; per-iteration times are host
timestamps taken through `jax.debug.callback`, so they include the callback
overhead). Losses, HVPs and parameter errors are printed as a table, and loss
against iteration and against wall time is saved as a figure. In the traces an
iteration is one gradient step, one SGD step, or one solver step (for
Newton-CG with Armijo and BFGS a rejected trial point counts as a step, so
"iterations to reach GD's final loss" is an upper bound there).

At the paper's epsilon = 0.05 the clouds (spread ~5, squared distances ~100)
give a coupling close to a permutation near the minimiser, where adaptive
Sinkhorn reaches a marginal error of 1e-6 in ~400 iterations but 1e-8 only
after ~100,000 (n = 500). `--paper` therefore runs n = 500, eps = 0.05 at
Sinkhorn tolerance 1e-6, with gradient descent and Adam capped at
`--gd-steps` (default 300, not the paper's 2,000: one gradient costs ~1 s
there on 2 loaded cores); its output is `shuffled_regression_paper_output.txt`.

    python examples/shuffled_regression.py --n 200 --epsilon 0.5   # committed output
    python examples/shuffled_regression.py --paper   # n = 500, eps = 0.05, tol 1e-6 (committed)
    python examples/shuffled_regression.py --quick   # n = 60, few iterations (smoke test)
"""

import argparse
import os
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402

import ot_matfree as om  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EPSILON = 0.05
STDS = (0.3, 0.05, 0.6)


def make_problem(n: int, seed: int = 0):
    """Gaussian-mixture `X` (n x 5), `W` (5 x 2), shuffled noisy `Y`, and `W0`."""
    k_means, k_lab, k_x, k_w, k_noise, k_perm, k_w0 = jax.random.split(
        jax.random.PRNGKey(seed), 7
    )
    d_x, d_y = 5, 2
    means = 2.0 * jax.random.normal(k_means, (len(STDS), d_x))
    labels = jax.random.randint(k_lab, (n,), 0, len(STDS))
    stds = jnp.asarray(STDS)[labels][:, None]
    x = means[labels] + stds * jax.random.normal(k_x, (n, d_x))
    w = jax.random.normal(k_w, (d_x, d_y))
    y = x @ w + 0.2 * jax.random.normal(k_noise, (n, d_y))
    y = y[jax.random.permutation(k_perm, n)]
    w0 = w + jax.random.normal(k_w0, (d_x, d_y))
    return x, y, w, w0


SOLVER = om.Sinkhorn(tol=1e-8, max_iters=20_000, momentum="adaptive")
# Line-search trial points: a point where Sinkhorn needs more than this is rejected.
TRIAL_SOLVER = om.Sinkhorn(tol=1e-8, max_iters=2_000, momentum="adaptive")


def loss(w, x, y):
    return om.ot_cost(x @ w, y, epsilon=EPSILON, solver=SOLVER)  # raises if a solve fails


def trial_loss(w, x, y):
    """`loss` at the line searches' trial points (Armijo, BFGS), which may lie
    far from the data (costs ~1e4) where Sinkhorn converges slowly or not at
    all: `+inf` where Sinkhorn does not converge within `TRIAL_SOLVER`'s cap,
    which the search rejects (and `NewtonCG` reports as a divergence if it were
    an accepted point). The probe solve runs first, without derivatives; the
    loss repeats it only where it converged. Every method's final point is
    re-evaluated with `loss`, which raises if its solve fails."""
    probe = om.solve(jax.lax.stop_gradient(x @ w), y, epsilon=EPSILON, solver=TRIAL_SOLVER,
                     throw=False)
    return jax.lax.cond(
        probe.converged,
        lambda: om.ot_cost(x @ w, y, epsilon=EPSILON, solver=TRIAL_SOLVER, throw=False),
        lambda: jnp.array(jnp.inf, x.dtype),
    )


class Recorder:
    """Host-side trace of `(loss, time since reset)`, fed through `jax.debug.callback`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.losses, self.times, self.start = [], [], time.perf_counter()

    def __call__(self, value):
        self.losses.append(float(value))
        self.times.append(time.perf_counter() - self.start)


def run_first_order(name, x, y, w0, optimiser, steps):
    """`steps` iterations of an optax optimiser, in one jitted `lax.scan`."""
    value_and_grad = jax.value_and_grad(loss)

    @jax.jit
    def solve(w0, x, y):
        def body(carry, _):
            w, state = carry
            value, g = value_and_grad(w, x, y)
            jax.debug.callback(recorder, value)  # loss at the iterate before this step
            updates, state = optimiser.update(g, state, w)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(body, (w0, optimiser.init(w0)), None, length=steps)
        return w

    recorder = Recorder()
    solve = solve.lower(w0, x, y).compile()
    recorder.reset()
    w = jax.block_until_ready(solve(w0, x, y))
    seconds = time.perf_counter() - recorder.start
    final = float(jax.jit(loss)(w, x, y))
    # The trace holds L(w_0), ..., L(w_{steps-1}); append the final iterate.
    recorder.losses.append(final)
    recorder.times.append(seconds)
    return dict(name=name, w=w, iterations=steps, hvps=None, seconds=seconds,
                losses=recorder.losses, times=recorder.times, offset=0)


def run_newton(name, x, y, w0, *, sgd: bool, rtol, max_steps, key):
    recorder = Recorder()
    relaxed = optx.LearningRate(0.5)
    newton = om.NewtonCG(rtol, rtol, search=relaxed if sgd else optx.BacktrackingArmijo(),
                         progress=lambda info: recorder(info["loss"]))

    if sgd:
        @eqx.filter_jit
        def solve(w0, x, y):
            return om.sgd_newton(loss, w0, x, y, key=key, batch_size=min(100, x.shape[0]),
                                 learning_rate=1e-3, max_sgd_steps=10, newton=newton,
                                 max_newton_steps=max_steps, throw=False)
    else:
        @eqx.filter_jit
        def solve(w0, x, y):  # a line search: its trial points may be far out
            return optx.minimise(lambda w, data: trial_loss(w, *data), newton, w0, (x, y),
                                 max_steps=max_steps, throw=False)

    sol, seconds, final = timed(solve, recorder, w0, x, y)
    # `progress` reports, at step k, the loss of the point evaluated there
    # (iterate k - 1): drop the first report (the initial loss, prepended
    # below) and append the final iterate's.
    losses, times = recorder.losses[1:] + [final], recorder.times[1:] + [seconds]
    if not sgd:
        # Armijo: rejected trial points are reported too; the last accepted
        # loss is the running minimum (accepted losses decrease).
        losses = list(jnp.minimum.accumulate(jnp.asarray(losses))) if losses else losses
        losses = [float(v) for v in losses]
    offset = int(sol.stats.get("num_sgd_steps", 0))
    l0 = float(jax.jit(loss)(w0, x, y))
    return dict(name=name, w=sol.value, iterations=offset + int(sol.stats["num_newton_steps"]),
                hvps=int(sol.stats["num_hvps"]), seconds=seconds, losses=[l0, *losses],
                times=[0.0, *times], offset=offset, result=sol.result,
                sgd_steps=offset, newton_steps=int(sol.stats["num_newton_steps"]))


def timed(solve, recorder, w0, x, y):
    """`solve` compiled, then run: the solution, its wall time, and the loss at
    its end point evaluated with `loss` (which raises if the solve there fails)."""
    solve = solve.lower(w0, x, y).compile()
    recorder.reset()
    sol = solve(w0, x, y)
    jax.block_until_ready(sol.value)
    seconds = time.perf_counter() - recorder.start
    return sol, seconds, float(jax.jit(loss)(sol.value, x, y))


def run_bfgs(x, y, w0, *, rtol, max_steps):
    recorder = Recorder()

    def verbose(**kwargs):
        jax.debug.callback(recorder, kwargs["loss_last_accepted_step"][1])

    solver = optx.BFGS(rtol, rtol, verbose=verbose)

    @eqx.filter_jit
    def solve(w0, x, y):
        return optx.minimise(lambda w, data: trial_loss(w, *data), solver, w0, (x, y),
                             max_steps=max_steps, throw=False)

    sol, seconds, final = timed(solve, recorder, w0, x, y)
    # The trace is the loss at the last accepted point before each step (the
    # first entry is the initial loss once the first step has evaluated it).
    losses, times = recorder.losses[1:] + [final], recorder.times[1:] + [seconds]
    return dict(name="BFGS (optimistix)", w=sol.value, iterations=int(sol.stats["num_steps"]),
                hvps=None, seconds=seconds, losses=losses, times=times, offset=0,
                result=sol.result)


def first_reach(run, target):
    """Iterations and seconds at which the trace first reaches `target` (or None)."""
    for k, (value, t) in enumerate(zip(run["losses"], run["times"])):
        if value <= target:
            return (k + run["offset"] if k else 0), t
    return None, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 60, few iterations")
    parser.add_argument("--paper", action="store_true",
                        help="n = 500, eps = 0.05, Sinkhorn tol 1e-6, 300 GD/Adam steps")
    parser.add_argument("--tol", type=float, default=None,
                        help="Sinkhorn tolerance (default 1e-8; 1e-6 with --paper)")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--gd-steps", type=int, default=None)
    parser.add_argument("--epsilon", type=float, default=None,
                        help="default 0.05 (the paper's); 0.5 with --quick")
    parser.add_argument("--out", default=None, help="PNG path (default: examples/"
                        "shuffled_regression.png; with --quick, the temporary directory)")
    args = parser.parse_args()
    log = []

    def say(*parts):
        log.append(" ".join(map(str, parts)))
        print(*parts, flush=True)

    global EPSILON, SOLVER, TRIAL_SOLVER
    EPSILON = args.epsilon or (0.5 if args.quick else 0.05)
    tol = args.tol or (1e-6 if args.paper else 1e-8)
    # --paper: one gradient-descent iterate needed 65,000 iterations at tol 1e-6.
    SOLVER = eqx.tree_at(lambda s: (s.tol, s.max_iters), SOLVER,
                         (tol, 100_000 if args.paper else 20_000))
    TRIAL_SOLVER = eqx.tree_at(lambda s: s.tol, TRIAL_SOLVER, tol)
    n = args.n or (60 if args.quick else 500)
    steps = args.gd_steps or (100 if args.quick else 300 if args.paper else 2_000)
    name = "shuffled_regression_paper" if args.paper else "shuffled_regression"
    out = args.out or os.path.join(tempfile.gettempdir() if args.quick else HERE, name + ".png")
    x, y, w, w0 = make_problem(n)
    say(f"jax {jax.__version__} on {jax.devices()[0]}, float64")
    say(f"n = {n}, d_X = 5, d_Y = 2, epsilon = {EPSILON}, cluster stds {STDS}, "
        f"cluster means 2 N(0, I), Sinkhorn tol {tol:g} (adaptive momentum, "
        f"{SOLVER.max_iters:,} iterations at most; a failed solve raises; "
        f"line-search trial points: 2,000 at most, +inf if it fails)")
    l0 = float(jax.jit(loss)(w0, x, y))
    say(f"initial loss {l0:.6f}, loss at the true W {float(jax.jit(loss)(w, x, y)):.6f}, "
          f"initial parameter error {float(jnp.linalg.norm(w0 - w) / jnp.linalg.norm(w)):.3f}")

    key = jax.random.PRNGKey(1)
    rtol = 1e-5 if args.paper else 1e-7  # the losses are accurate to ~tol
    runs = [
        run_newton("SGD-Newton (ours, relaxed 0.5)", x, y, w0, sgd=True, rtol=rtol,
                   max_steps=30 if args.quick else 100, key=key),
        run_newton("Newton-CG (ours, Armijo)", x, y, w0, sgd=False, rtol=rtol,
                   max_steps=30 if args.quick else 100, key=key),
        run_first_order("gradient descent (lr 1e-3)", x, y, w0, optax.sgd(1e-3), steps),
        run_first_order("Adam (lr 1e-2)", x, y, w0, optax.adam(1e-2), steps),
        run_bfgs(x, y, w0, rtol=rtol, max_steps=30 if args.quick else 500),
    ]
    gd = runs[2]
    target = gd["losses"][-1]
    norm_w = float(jnp.linalg.norm(w))
    header = (f"| {'method':<31} | iterations | HVPs | wall time (s) | final loss | "
              f"rel. error of W_hat | iterations / s to reach GD's final loss |")
    lines = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for run in runs:
        run["final"] = float(jax.jit(loss)(run["w"], x, y))
        run["error"] = float(jnp.linalg.norm(run["w"] - w)) / norm_w
        k, t = first_reach(run, target)
        reach = "not reached" if k is None else f"{k} / {t:.2f}"
        hvps = "-" if run["hvps"] is None else str(run["hvps"])
        lines.append(f"| {run['name']:<31} | {run['iterations']:>10} | {hvps:>4} | "
                     f"{run['seconds']:>13.2f} | {run['final']:>10.6f} | "
                     f"{run['error']:>20.4f} | {reach:>39} |")
    say("\n".join(lines))
    sgdn = runs[0]
    say(f"SGD-Newton: {sgdn['sgd_steps']} SGD steps + {sgdn['newton_steps']} relaxed Newton "
          f"steps; iterations count SGD and Newton steps (one gradient or one Newton step "
          f"each), wall time excludes compilation")
    k, t = first_reach(sgdn, target)
    if k is not None:
        say(f"SGD-Newton reaches GD's final loss in {gd['iterations'] / max(k, 1):.0f}x fewer "
              f"iterations and {gd['seconds'] / max(t, 1e-9):.1f}x less wall time; parameter "
              f"error {gd['error'] / sgdn['error']:.1f}x smaller than GD's")

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in runs:
        its = list(range(len(run["losses"])))
        if run["offset"]:  # SGD-Newton: the SGD stage is not traced, mark its end.
            its = [0] + [run["offset"] + i for i in range(len(run["losses"]) - 1)]
        axes[0].plot(its, run["losses"], label=run["name"], marker="." if len(its) < 60 else None)
        axes[1].plot(run["times"], run["losses"], label=run["name"])
    best = min(min(r["losses"]) for r in runs)
    for ax, xlabel in zip(axes, ("iteration", "wall time (s, compiled, under load)")):
        ax.set_xscale("symlog", linthresh=1) if xlabel == "iteration" else ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss - min loss + 1e-10")
        ax.axhline(target, color="grey", ls=":", lw=0.8)
    for ax in axes:  # plot the excess loss, log scale
        for line in ax.get_lines()[:-1]:
            line.set_ydata([v - best + 1e-10 for v in line.get_ydata()])
        ax.get_lines()[-1].set_ydata([target - best + 1e-10] * 2)
        ax.relim()
        ax.autoscale_view()
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Shuffled regression, Gaussian mixture, n = {n}, eps = {EPSILON} "
                 "(dotted: GD's final loss)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    say(f"figure: {os.path.relpath(out)}")
    if not args.quick and args.out is None:
        with open(os.path.join(HERE, name + "_output.txt"), "w") as f:
            f.write("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
