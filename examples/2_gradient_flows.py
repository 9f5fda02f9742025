"""Gradient flows of point clouds: the Sinkhorn divergence against OT_eps,
gradient steps against Newton steps.

The setting is ott-jax's tutorial "Sinkhorn divergence gradient flows" (after
Feydy et al. 2019): the source `x = 0.25 N(0, I_2)` (25 points) and the target
`y = 0.5 N(0, I_2) + (6, 0)` (50 points), drawn with the tutorial's keys
(`PRNGKey(0)` split in two), uniform weights, and the tutorial's large
epsilon = 1.0. The positions `x` are the parameters, and two losses are minimised:

- `S_eps(x, y) = om.sinkhorn_divergence(x, y)`: its flow carries x onto y;
- `OT_eps(x, y) = om.ot_cost(x, y)`: its minimiser is biased (the entropic
  bias): the cloud collapses to a point near y's mean.

Three methods per loss, side by side:

- gradient descent, the tutorial's explicit flow `x <- x - lr grad_x L`,
  lr = 0.2, 500 steps;
- Newton-CG with Armijo backtracking (`om.NewtonCG`, HVPs through
  `jax.jvp(jax.grad(loss))`);
- Newton-CG with the full step (`search=optx.LearningRate(1.0)`, no globalisation).

The Sinkhorn solves on the iterates raise if they fail; only Armijo's trial
points are evaluated with `throw=False` (the search rejects them; every final
point is re-evaluated with the raising loss), as in `4_shuffled_regression.py`.
Each method is compiled ahead of time, run once to warm up and timed on a second
run (the large part: one run); per-iteration times are host timestamps taken
through `jax.debug.callback` (the runners are those of `_second_order.py`). An iteration is one
gradient step or one loss evaluation of Newton-CG (an Armijo trial point that is
rejected counts, so "iterations to reach GD's final loss" is an upper bound).
The distance to the target is the exact W2 between the clouds (an assignment
between the clouds repeated to a common size), the spread the RMS distance of
the points to their mean (y's: 0.63 for 50 points, 0.71 for 20,000).

`--part large` runs the same divergence flow at n = m = 20,000 (float32, Sinkhorn
tol 1e-5 with adaptive momentum): a few gradient steps (the same time step per
point, lr = 0.2 n / 25) and a few Newton-CG steps, with the time per step, HVPs,
CG steps, Sinkhorn iterations and the process's peak RSS.

    python examples/2_gradient_flows.py                # both parts (the recorded output)
    python examples/2_gradient_flows.py --part small   # the 25 / 50-point flows (minutes)
    python examples/2_gradient_flows.py --quick        # small part, 150 gradient steps, no
                                                       # full-step Newton (smoke test)
"""

import argparse
import math
import os
import resource
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optimistix as optx  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

import ot_matfree as om  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _second_order import first_reach, run_first_order, run_newton  # noqa: E402

OUTPUT = os.path.join(HERE, "outputs", "2_gradient_flows_output.txt")
EPSILON = 1.0
LR = 0.2  # the tutorial's, for 25 points
LOSSES = {"S_eps": om.sinkhorn_divergence, "OT_eps": om.ot_cost}


def make_problem(n: int = 25, m: int = 50, dtype=jnp.float64):
    """The tutorial's clouds: `x = 0.25 N(0, I_2)`, `y = 0.5 N(0, I_2) + (6, 0)`."""
    key1, key2 = jax.random.split(jax.random.PRNGKey(0), 2)
    x = 0.25 * jax.random.normal(key1, (n, 2))
    y = 0.5 * jax.random.normal(key2, (m, 2)) + jnp.array((6.0, 0.0))
    return x.astype(dtype), y.astype(dtype)


def make_loss(name: str, solver: om.Sinkhorn, *, throw: bool = True):
    fn = LOSSES[name]
    return lambda x, y: fn(x, y, epsilon=EPSILON, solver=solver, throw=throw)


def run_gd(loss, x0, y, *, lr: float, steps: int, dump_every: int, warm: bool = True,
           echo=None):
    """The explicit flow `x <- x - lr grad L(x)` (optax's SGD, `_second_order`'s
    runner); with `warm`, the timed run is the second one."""
    run = run_first_order(f"gradient descent (lr {lr:g})", loss, (y,), x0, optax.sgd(lr), steps,
                          echo=echo, warm=warm, path_every=dump_every)
    return dict(run, newton_steps=None, cg_steps=None, result=None,
                step_times=np.diff(run["times"]).tolist())


def run_newton_cg(name, loss, trial_loss, x0, y, *, search, max_steps: int, rtol: float,
                  cg_max_steps: int | None = None, warm: bool = True, echo=None):
    """`optx.minimise` with `om.NewtonCG` (`_second_order`'s runner); with `warm`,
    the timed run is the second one. An iteration is a loss evaluation."""
    run = run_newton(name, loss, trial_loss, (y,), x0, newton_search=search, rtol=rtol,
                     max_steps=max_steps, cg_max_steps=cg_max_steps, echo=echo, warm=warm)
    return dict(run, iterations=run["evaluations"],
                hvps_per_step=np.diff([0, *run["hvps_reported"]]).tolist(),
                step_times=np.diff([0.0, *run["times"][:-1]]).tolist())


def w2(x, y) -> float:
    """Exact W2 between uniform clouds: an assignment between copies of common size."""
    n, m = x.shape[0], y.shape[0]
    size = math.lcm(n, m)
    xs, ys = np.repeat(np.asarray(x), size // n, 0), np.repeat(np.asarray(y), size // m, 0)
    cost = ((xs[:, None, :] - ys[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


def spread(x) -> float:
    """RMS distance of the points to their mean."""
    return float(jnp.sqrt(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, axis=1))))


def result_string(run) -> str:
    if run["result"] is None:
        return "-"
    return "converged" if run["result"] == optx.RESULTS.successful else "max steps"


def small_part(args, say):
    x0, y = make_problem()
    solver = om.Sinkhorn(tol=1e-10, max_iters=20_000, momentum="adaptive")
    gd_steps = args.gd_steps or (150 if args.quick else 500)
    max_steps = 30 if args.quick else 60
    say(f"jax {jax.__version__} on {jax.devices()[0]}, float64, load average "
        f"{os.getloadavg()[0]:.1f} (2 cores)")
    say(f"n = 25, m = 50, d = 2 (the tutorial's clouds), epsilon = {EPSILON}, Sinkhorn tol "
        f"1e-10 (adaptive momentum; a failed solve raises, except at Armijo's trial points), "
        f"gradient descent lr {LR} x {gd_steps} steps, Newton-CG rtol = atol = 1e-10, "
        f"at most {max_steps} evaluations")
    say(f"y: spread {spread(y):.3f}; x0: spread {spread(x0):.3f}, W2(x0, y) {w2(x0, y):.3f}")
    all_runs = {}
    for name in LOSSES:
        loss = make_loss(name, solver)
        trial_loss = make_loss(name, solver, throw=False)
        runs = [
            run_gd(loss, x0, y, lr=LR, steps=gd_steps, dump_every=max(gd_steps // 20, 1)),
            run_newton_cg("Newton-CG (Armijo)", loss, trial_loss, x0, y,
                          search=optx.BacktrackingArmijo(), max_steps=max_steps, rtol=1e-10),
        ]
        if not args.quick:
            runs.append(run_newton_cg("Newton-CG (full step)", loss, trial_loss, x0, y,
                                      search=optx.LearningRate(1.0), max_steps=max_steps,
                                      rtol=1e-10))
        all_runs[name] = runs
        target = runs[0]["final"]
        say(f"\n{name} = {'sinkhorn_divergence' if name == 'S_eps' else 'ot_cost'}"
            f"(x, y, epsilon={EPSILON}); initial loss {runs[0]['losses'][0]:.6f}")
        header = ("| method | iterations | Newton steps | HVPs | wall time (s) | final loss | "
                  "status | W2 to y | spread | iterations / s to reach GD's final loss |")
        lines = [header, "|" + "---|" * (header.count("|") - 1)]
        for run in runs:
            k, t = first_reach(run, target)
            reach = "not reached" if k is None else f"{k} / {t:.3f}"
            dash = lambda v: "-" if v is None else str(v)  # noqa: E731
            lines.append(
                f"| {run['name']} | {run['iterations']} | {dash(run['newton_steps'])} | "
                f"{dash(run['hvps'])} | {run['seconds']:.3f} | {run['final']:.6e} | "
                f"{result_string(run)} | {w2(run['w'], y):.4f} | {spread(run['w']):.4f} | "
                f"{reach} |")
        say("\n".join(lines))
        say("compilation (s): "
            + ", ".join(f"{r['name']} {r['compile_seconds']:.1f}" for r in runs))
        gd, armijo = runs[0], runs[1]
        k, t = first_reach(armijo, target)
        if k is not None:
            say(f"{name}: Newton-CG (Armijo) reaches GD's final loss after {gd['iterations']} "
                f"steps in {k} iterations ({gd['iterations'] / max(k, 1):.0f}x fewer) and "
                f"{t:.3f} s ({gd['seconds'] / max(t, 1e-9):.0f}x less wall time)")
    save_figure(all_runs, x0, y, args.out)
    say(f"figure: {os.path.relpath(args.out)}")
    return all_runs


def save_figure(all_runs, x0, y, out):
    """One row per loss: the flow, the final clouds, the loss against iterations and time."""
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    y_np = np.asarray(y)
    for row, name in zip(axes, LOSSES):
        runs = all_runs[name]
        gd, armijo = runs[:2]
        path = np.asarray(gd["path"])  # (frames, n, 2)
        for ax in row[:2]:
            ax.scatter(*y_np.T, marker="X", s=60, c="tab:orange", edgecolors="k",
                       label="y (target)", zorder=1)
            ax.scatter(*np.asarray(gd["w"]).T, s=40, c="tab:blue", edgecolors="k",
                       label="gradient descent, final", zorder=2)
            ax.scatter(*np.asarray(armijo["w"]).T, marker="+", s=90, c="tab:red",
                       label="Newton-CG (Armijo), final", zorder=3)
        for i in range(path.shape[1]):
            row[0].plot(path[:, i, 0], path[:, i, 1], color="tab:blue", lw=0.5, alpha=0.5)
        row[0].scatter(*np.asarray(x0).T, s=30, c="lightgrey", edgecolors="k", label="x0")
        row[0].set_title(f"flow of {name} (eps = {EPSILON}): gradient descent's paths")
        row[0].legend(fontsize=7, loc="upper left")
        centre, half = y_np.mean(0), 1.6
        row[1].set_xlim(centre[0] - half, centre[0] + half)
        row[1].set_ylim(centre[1] - half, centre[1] + half)
        row[1].set_aspect("equal")
        row[1].set_title(f"{name}: final clouds (spread: GD {spread(gd['w']):.3f}, "
                         f"Newton {spread(armijo['w']):.3f}, y {spread(y):.3f})", fontsize=9)
        # S_eps's minimum over 25 points is unknown (> 0): plot the loss; OT_eps
        # converges to a positive value: plot the excess over the best one.
        best = 0.0 if name == "S_eps" else min(min(r["losses"]) for r in runs) - 1e-12
        for run in runs:
            values = [v - best for v in run["losses"]]
            marker = "." if len(values) < 80 else None
            row[2].plot(range(len(values)), values, label=run["name"], marker=marker)
            row[3].plot(run["times"], values, label=run["name"], marker=marker)
        target = gd["final"] - best
        for ax, xlabel in zip(row[2:], ("iteration", "wall time (s, compiled, under load)")):
            ax.set_xscale("symlog", linthresh=1 if xlabel == "iteration" else 1e-3)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("loss" if name == "S_eps" else "loss - best loss + 1e-12")
            ax.axhline(target, color="grey", ls=":", lw=0.8)
        row[2].legend(fontsize=7)
        row[2].set_title(f"{name} (dotted: gradient descent's final loss)")
    fig.suptitle("Gradient flows, 25 -> 50 points in 2-D (ott-jax tutorial's clouds): "
                 "Sinkhorn divergence S_eps vs OT_eps, gradient descent vs Newton-CG")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def large_part(args, say):
    """The divergence flow at n = m = `args.large_n`, float32: a few steps of each method."""
    n = args.large_n
    dtype = jnp.float32
    x0, y = make_problem(n, n, dtype)
    solver = om.Sinkhorn(tol=1e-5, max_iters=2_000, momentum="adaptive")
    loss = make_loss("S_eps", solver)
    trial_loss = make_loss("S_eps", solver, throw=False)
    lr = LR * n / 25  # the tutorial's step per point: grad_x L carries the weight 1 / n
    say(f"jax {jax.__version__} on {jax.devices()[0]}, float32, load average "
        f"{os.getloadavg()[0]:.1f} (2 cores)")
    say(f"n = m = {n}, d = 2 (x = 0.25 N(0, I), y = 0.5 N(0, I) + (6, 0)), S_eps at epsilon = "
        f"{EPSILON}, Sinkhorn tol 1e-5 (adaptive momentum), CG rtol 1e-5 (float32 default), "
        f"gradient descent lr {lr:g} (= 0.2 n / 25: the tutorial's step per point)")
    start = time.perf_counter()
    coupling = om.solve(x0, y, epsilon=EPSILON, solver=solver)
    say(f"Sinkhorn at x0 (x-y term): {int(coupling.num_iters)} iterations, marginal error "
        f"{float(coupling.marginal_error):.1e}, {time.perf_counter() - start:.1f} s "
        f"(compilation included)")
    runs = [
        run_gd(loss, x0, y, lr=lr, steps=args.large_gd_steps, dump_every=1, warm=False,
               echo=say),
        run_newton_cg("Newton-CG (Armijo)", loss, trial_loss, x0, y,
                      search=optx.BacktrackingArmijo(), max_steps=args.large_newton_steps,
                      rtol=1e-6, cg_max_steps=args.large_cg_steps, warm=False, echo=say),
    ]
    header = ("| method | steps | HVPs | CG steps | compile (s) | time per step (s) | "
              "loss after each step | spread | mean distance to y's mean |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for run in runs:
        hvps = "-" if run["hvps"] is None else f"{run['hvps']} ({run['hvps_per_step']} per step)"
        cg = "-" if run["cg_steps"] is None else str(run["cg_steps"])
        times = ", ".join(f"{t:.1f}" for t in run["step_times"])
        losses = ", ".join(f"{v:.4g}" for v in run["losses"][1:])
        centre = float(jnp.linalg.norm(run["w"].mean(0) - y.mean(0)))
        lines.append(f"| {run['name']} | {run['iterations']} | {hvps} | {cg} | "
                     f"{run['compile_seconds']:.0f} | {times} | {losses} | "
                     f"{spread(run['w']):.4f} | {centre:.4f} |")
    say("\n".join(lines))
    gd, newton = runs
    end = om.solve(newton["w"], y, epsilon=EPSILON, solver=solver)
    say(f"Sinkhorn at Newton's end point (x-y term): {int(end.num_iters)} iterations; "
        f"y's spread {spread(y):.4f}, x0's {spread(x0):.4f}")
    rate = gd["losses"][-1] / gd["losses"][-2]
    if 0 < rate < 1 and newton["final"] < gd["final"]:
        more = math.log(newton["final"] / gd["final"]) / math.log(rate)
        say(f"gradient descent's last step multiplied the loss by {rate:.4f}; at that rate (it "
            f"slows down near the target, see the small run) it would need about {more:.0f} "
            f"more steps (about {more * gd['step_times'][-1] / 60:.0f} min) to reach "
            f"Newton-CG's final loss (an extrapolation, not a measurement)")
    say(f"peak RSS of the process: "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; wall time "
        f"{time.perf_counter() - start:.0f} s")


def save_section(part: str, lines: list[str]) -> None:
    """Replace this part's section of the output file (the other part's is kept)."""
    sections = {}
    if os.path.exists(OUTPUT):
        current = None
        for line in open(OUTPUT).read().splitlines():
            if line.startswith("== part: "):
                current = line.removeprefix("== part: ").split()[0]
                sections[current] = []
            elif current is not None:
                sections[current].append(line)
    sections[part] = lines
    with open(OUTPUT, "w") as f:
        for name in ("small", "large"):
            if name in sections:
                f.write(f"== part: {name}\n" + "\n".join(sections[name]).strip("\n") + "\n\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small part, fewer steps")
    parser.add_argument("--part", choices=("small", "large", "all"), default="all")
    parser.add_argument("--gd-steps", type=int, default=None, help="small part (default 500)")
    parser.add_argument("--large-n", type=int, default=20_000)
    parser.add_argument("--large-gd-steps", type=int, default=2)
    parser.add_argument("--large-newton-steps", type=int, default=4,
                        help="Newton-CG loss evaluations at large n")
    parser.add_argument("--large-cg-steps", type=int, default=3,
                        help="CG steps per Newton step at large n")
    parser.add_argument("--out", default=None, help="PNG path (default: examples/outputs/"
                        "2_gradient_flows.png; with --quick, the temporary directory)")
    args = parser.parse_args()
    record = not args.quick and args.out is None
    args.out = args.out or os.path.join(tempfile.gettempdir() if args.quick
                                        else os.path.join(HERE, "outputs"),
                                        "2_gradient_flows.png")
    parts = ("small",) if args.quick else (("small", "large") if args.part == "all"
                                           else (args.part,))
    for part in parts:
        log = []

        def say(*items):
            log.append(" ".join(map(str, items)))
            print(*items, flush=True)
            if record:  # as it goes: a run stopped by `timeout` keeps its trace
                save_section(part, log)

        (small_part if part == "small" else large_part)(args, say)


if __name__ == "__main__":
    main()
