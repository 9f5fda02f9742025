"""Forward-solve speed at small epsilon (issue 9, part 3).

Problem of the issue: n = m = 3,000 points uniform in the unit square
(d = 2, x and y independent, uniform weights), squared Euclidean cost,
absolute epsilon in {0.05, 0.01, 0.002, 0.0005}, tolerance 1e-6 on the L1
marginal error, at most 1,500 iterations. Every solver runs in the same
process:

- ours (`ot_matfree.solve`): plain Sinkhorn; `momentum="adaptive"`;
  `anderson=5`; `epsilon_scaling=0.5` (GeomLoss's default factor);
  `epsilon_scaling=0.5` with `momentum="adaptive"`; the default `Sinkhorn()`
  (adaptive momentum); Newton steps (`newton=0.1`) entered from adaptive
  momentum or from `anderson=5`; L-BFGS on the semi-dual (`om.LBFGS()`,
  its iterations are L-BFGS steps, each one pass or more: compare passes);
- ott-jax 0.6 `Sinkhorn` (lse mode, `PointCloud`, `inner_iterations=10`, no
  implicit differentiation needed for a forward solve): plain;
  `Momentum(start=20)` and `Momentum(start=100)` (Lehmann et al.'s adaptive
  rule, fixed once at `start`); `AndersonAcceleration(memory=5)`; the
  epsilon schedule `Epsilon(target, init=eps_0 / eps, decay=0.9)` with the
  same `eps_0` as ours (the squared diagonal of the bounding box).

For every solve the table reports the iterations, the time (one run after a
compiling call at epsilon = 1; the machine is shared, see `--repeats`), the
L1 marginal error `|P 1 - a|_1 + |P^T 1 - b|_1` of the *returned* potentials
at the *target* epsilon, measured by the same streaming pass for every
solver, and whether the solver reported convergence. A second table measures
warm starts: x moved by 1e-2 (Gaussian), solved cold and from the previous
coupling.

    python benchmarks/sinkhorn_speed.py            # full grid (tens of minutes on 2 cores)
    python benchmarks/sinkhorn_speed.py --smoke    # n = 200, < 2 min

`--solvers` picks solvers by name prefix (`SOLVERS`), `--interleave` runs
the solvers one after the other per epsilon, `--merge` writes one table from
the JSON files of runs made apart. Findings: `benchmarks/results/sinkhorn_speed_cpu.md`.
"""

import argparse
import json
import os
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as common  # noqa: E402

import ot_matfree as om  # noqa: E402
from ot_matfree._stream.engine import marginals  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TOL = 1e-6


def ours(options, kind=om.Sinkhorn):
    def run(x, y, epsilon, max_iters):
        solver = kind(tol=TOL, max_iters=max_iters, **options)
        c = om.solve(x, y, epsilon=epsilon, solver=solver, throw=False)
        return c.f, c.g, c.num_iters, c.converged, c.num_passes

    return run


def ott(kind):
    from ott.geometry import epsilon_scheduler, pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import acceleration, sinkhorn

    @jax.jit
    def solve(x, y, epsilon, eps0):
        kwargs, eps = {}, epsilon
        if kind.startswith("momentum"):
            kwargs["momentum"] = acceleration.Momentum(start=int(kind.split()[1]))
        elif kind == "anderson":
            kwargs["anderson"] = acceleration.AndersonAcceleration(memory=5)
        elif kind == "schedule":
            eps = epsilon_scheduler.Epsilon(
                epsilon, init=jnp.maximum(eps0 / epsilon, 1.0), decay=0.9
            )
        with jax.numpy_dtype_promotion("standard"):
            geom = pointcloud.PointCloud(x, y, epsilon=eps)
            prob = linear_problem.LinearProblem(geom)
            solver = sinkhorn.Sinkhorn(
                threshold=TOL, max_iterations=MAX_ITERS[0], implicit_diff=None, **kwargs
            )
            out = solver(prob)
        # Two dense log-sum-exp passes per iteration.
        return out.f, out.g, out.n_iters, out.converged, 2 * out.n_iters

    def run(x, y, epsilon, max_iters):
        assert max_iters == MAX_ITERS[0]
        eps = jnp.asarray(epsilon)
        return solve(x, y, eps, om._forward.sinkhorn.initial_epsilon(x, y, om.SqEuclidean(), eps))

    return run


#: ott-jax's iteration cap is static in its jitted solve: set once by `main`.
MAX_ITERS = [1500]


SOLVERS = {
    "ours plain": ours(dict(momentum=None)),
    "ours momentum adaptive": ours(dict(momentum="adaptive")),
    "ours anderson 5": ours(dict(anderson=5)),
    "ours scaling 0.5": ours(dict(momentum=None, epsilon_scaling=0.5)),
    "ours scaling 0.5 + adaptive": ours(dict(epsilon_scaling=0.5, momentum="adaptive")),
    "ours default": ours({}),
    "ours newton 0.1 (adaptive entry)": ours(dict(momentum="adaptive", newton=0.1)),
    "ours newton 0.1 (anderson entry)": ours(dict(anderson=5, newton=0.1)),
    "ours lbfgs": ours({}, om.LBFGS),
    "ott plain": ott("plain"),
    "ott momentum start=20": ott("momentum 20"),
    "ott momentum start=100": ott("momentum 100"),
    "ott anderson 5": ott("anderson"),
    "ott schedule decay 0.9": ott("schedule"),
}


def true_error(x, y, f, g, epsilon):
    n, m = x.shape[0], y.shape[0]
    a, b = jnp.full((n,), 1 / n), jnp.full((m,), 1 / m)
    c = om.Coupling(x, y, a, b, f, g, jnp.asarray(epsilon), om.SqEuclidean())
    row, col = marginals(c)
    return float(jnp.sum(jnp.abs(row - a)) + jnp.sum(jnp.abs(col - b)))


def run_grid(x, y, epsilons, max_iters, repeats, log, names, interleave=False):
    """Every solver at every epsilon. `interleave`: per epsilon and repeat, the
    solvers one after the other (times under a varying load stay comparable),
    instead of one solver's whole grid after the other's."""
    rows = []
    for name in names:
        common.block(SOLVERS[name](x, y, 1.0, max_iters))  # compile
    order = ([[(name, eps) for name in names] for eps in epsilons] if interleave
             else [[(name, eps)] for name in names for eps in epsilons])
    for cells in order:
        times = {cell: [] for cell in cells}
        outs = {}
        for _ in range(repeats):
            for name, eps in cells:
                t0 = time.perf_counter()
                outs[name, eps] = common.block(SOLVERS[name](x, y, eps, max_iters))
                times[name, eps].append(time.perf_counter() - t0)
        for name, eps in cells:
            f, g, iters, conv, passes = outs[name, eps]
            err = true_error(x, y, f, g, eps)
            row = dict(solver=name, epsilon=eps, iters=int(iters), passes=int(passes),
                       seconds=float(np.median(times[name, eps])), error=err,
                       reported=bool(conv), converged=err <= TOL, load=os.getloadavg()[0])
            log(f"{name:34s} eps={eps:<7g} iters={row['iters']:5d} passes={row['passes']:5d} "
                f"t={row['seconds']:7.2f}s err={err:.2e} reported={row['reported']} "
                f"true={row['converged']} load={row['load']:.1f}")
            rows.append(row)
    return rows


def run_warm(x, y, epsilons, max_iters, log):
    moved = x + 1e-2 * jax.random.normal(jax.random.PRNGKey(7), x.shape)
    rows = []
    for name, options in [("plain", {}), ("momentum adaptive", dict(momentum="adaptive"))]:
        solver = om.Sinkhorn(tol=TOL, max_iters=max_iters, **options)
        for eps in epsilons:
            before = om.solve(x, y, epsilon=eps, solver=solver, throw=False)
            cold = om.solve(moved, y, epsilon=eps, solver=solver, throw=False)
            warm = om.solve(moved, y, epsilon=eps, solver=solver, init=before, throw=False)
            row = dict(solver=name, epsilon=eps, cold=int(cold.num_iters),
                       warm=int(warm.num_iters), converged=bool(cold.converged & warm.converged))
            log(f"warm start {name:20s} eps={eps:<7g} cold={row['cold']} warm={row['warm']}")
            rows.append(row)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == name]
        style = "-o" if name.startswith("ours") else "--s"
        for ax, key in zip(axes, ["iters", "seconds"]):
            vals = [r[key] if r["converged"] else np.nan for r in mine]
            ax.plot([r["epsilon"] for r in mine], vals, style, label=name)
    for ax, label in zip(axes, ["iterations to 1e-6 (true error)", "seconds (one run, shared CPU)"]):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epsilon")
        ax.set_ylabel(label)
        ax.invert_xaxis()
    axes[0].legend(fontsize=7)
    fig.suptitle("Sinkhorn variants; missing points did not reach 1e-6 (true marginal error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="n = 200, two epsilons (CI)")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.01, 0.002, 0.0005])
    p.add_argument("--max-iters", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per cell (median)")
    p.add_argument("--no-warm", action="store_true", help="skip the warm-start table")
    p.add_argument("--interleave", action="store_true",
                   help="per epsilon and repeat, run the solvers one after the other")
    p.add_argument("--solvers", nargs="+", default=None,
                   help="only the solvers whose name starts with one of these (e.g. ours ott)")
    p.add_argument("--merge", type=pathlib.Path, nargs="+", default=None,
                   help="write one table + figure from the .json files of earlier runs")
    p.add_argument("--out", type=pathlib.Path, default=None, help="markdown file (png, json alongside)")
    args = p.parse_args()
    if args.smoke:
        args.n, args.epsilons, args.max_iters = 200, [0.05, 0.005], 300
    MAX_ITERS[0] = args.max_iters
    out = args.out or RESULTS / ("sinkhorn_speed_smoke.md" if args.smoke else "sinkhorn_speed_cpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    t0 = time.perf_counter()
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        rows = [r for run in runs for r in run["rows"]]
        warm = [r for run in runs for r in run["warm"]]
        seconds = max(run["seconds"] for run in runs)
    else:
        kx, ky = jax.random.split(jax.random.PRNGKey(0))
        x = common.uniform_cloud(kx, args.n, 2)
        y = common.uniform_cloud(ky, args.n, 2)
        names = [k for k in SOLVERS if args.solvers is None
                 or any(k.startswith(prefix) for prefix in args.solvers)]
        rows = run_grid(x, y, args.epsilons, args.max_iters, args.repeats, log, names,
                        args.interleave)
        warm_eps = args.epsilons[:1] if args.smoke else [e for e in args.epsilons if e >= 0.01]
        warm = [] if args.no_warm else run_warm(x, y, warm_eps, 5000, log)
        seconds = time.perf_counter() - t0
        out.with_suffix(".json").write_text(json.dumps(dict(rows=rows, warm=warm, seconds=seconds)))
    header = ["solver", "epsilon", "iterations", "passes", "seconds", "true marginal error",
              "reported converged", "true error <= 1e-6"]
    table = common.markdown_table(
        header, [[r["solver"], r["epsilon"], r["iters"], r.get("passes", 2 * r["iters"]),
                  r["seconds"], r["error"], r["reported"], r["converged"]] for r in rows]
    )
    text = [
        "# Sinkhorn variants at small epsilon (issue 9, part 3)",
        "",
        f"n = m = {args.n}, d = 2, uniform square, uniform weights, squared Euclidean, "
        f"float64, tolerance {TOL:g} (L1 marginal error), at most {args.max_iters} iterations. "
        f"Device: {common.device_string()}, shared with other jobs: times are one run "
        f"(median of {args.repeats}) after a compiling call, iterations are load-independent. "
        "The true error is that of the returned potentials at the target epsilon, measured "
        "by the same streaming pass for every solver.",
        "",
        table,
    ]
    if warm:
        text += [
            "",
            "## Warm start (x moved by 1e-2, Gaussian; from the previous `Coupling`)",
            "",
            "Iterations to 1e-6 (at most 5000).",
            "",
            common.markdown_table(["solver", "epsilon", "cold", "warm", "both converged"],
                                  [[r["solver"], r["epsilon"], r["cold"], r["warm"], r["converged"]]
                                   for r in warm]),
        ]
    text += ["", f"Wall time {seconds:.0f} s (the longest run, when merged).", ""]
    out.write_text("\n".join(text))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
