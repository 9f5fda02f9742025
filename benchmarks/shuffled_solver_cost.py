"""Cost of one loss evaluation in the shuffled regression at the paper's setting.

`examples/4_shuffled_regression.py --paper`: `ot_cost(X W, Y)`, n = 500,
epsilon = 0.05, Sinkhorn tolerance 1e-6, float64. One value and gradient
(`jax.value_and_grad`, what gradient descent pays per step and Newton-CG per
outer iteration) with the default `Sinkhorn()` (adaptive momentum) against
`Sinkhorn(momentum="adaptive", newton=0.1)` (Newton steps on the dual below a
marginal error of 0.1, docs/forward_solvers.md; the table's
`Sinkhorn(newton=0.1)` rows), at three points: the start `W0` (start seed 1),
a gradient-descent iterate (5 steps of learning rate 1e-3 from `W0`) and the
true `W`. Median of `--repeats` runs after a compiling call; the solve's
iterations (Newton steps counted as half their streaming passes) and passes.

The committed result: `python benchmarks/shuffled_solver_cost.py --repeats 2
--out benchmarks/results/shuffled_solver_cost_cpu.md`.
"""

import argparse
import importlib
import os
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

from _common import device_string, timed  # noqa: E402

import ot_matfree as om  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
# `4_shuffled_regression` is not an identifier: import it by name.
_shuffled = importlib.import_module("4_shuffled_regression")
EPSILON, make_problem = _shuffled.EPSILON, _shuffled.make_problem

TOL, MAX_ITERS = 1e-6, 100_000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gd-steps", type=int, default=5)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args()
    x, y, w, w0 = make_problem(500, start_seed=1)
    solvers = {
        "`Sinkhorn()` (adaptive momentum)": om.Sinkhorn(tol=TOL, max_iters=MAX_ITERS),
        "`Sinkhorn(newton=0.1)`": om.Sinkhorn(tol=TOL, max_iters=MAX_ITERS, momentum="adaptive",
                                              newton=0.1),
    }

    def value_and_grad(solver):
        return jax.jit(jax.value_and_grad(
            lambda v: om.ot_cost(x @ v, y, epsilon=EPSILON, solver=solver)))

    def solve(solver):
        return jax.jit(lambda v: om.solve(x @ v, y, epsilon=EPSILON, solver=solver))

    step = value_and_grad(solvers["`Sinkhorn(newton=0.1)`"])
    w_gd = w0
    for _ in range(opts.gd_steps):
        w_gd = w_gd - 1e-3 * step(w_gd)[1]
    points = {"`W0` (start seed 1)": w0, f"gradient descent, step {opts.gd_steps}": w_gd,
              "true `W`": w}
    rows, loads = [], [os.getloadavg()[0]]
    for point, v in points.items():
        seconds = {}
        for name, solver in solvers.items():
            coupling = solve(solver)(v)
            (value, _), seconds[name] = timed(value_and_grad(solver), v, repeats=opts.repeats)
            rows.append((point, name, float(value), int(coupling.num_iters),
                         int(coupling.num_passes), seconds[name]))
            loads.append(os.getloadavg()[0])
        first, second = seconds.values()
        rows[-1] += (first / second,)
    lines = [
        f"# Shuffled regression, one value and gradient: adaptive momentum vs Newton steps "
        f"({device_string()})",
        "",
        f"`ot_cost(X W, Y)`, n = 500, d_X = 5, d_Y = 2, epsilon = {EPSILON}, float64, Sinkhorn "
        f"tol {TOL:g} ({MAX_ITERS:,} iterations at most); median of {opts.repeats} runs after a "
        f"compiling call; load average {min(loads):.1f} to {max(loads):.1f} (2 cores shared "
        "with other jobs).",
        "",
        "| point | solver | loss | Sinkhorn iterations | streaming passes | value and gradient (s) "
        "| speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for point, name, value, iters, passes, sec, *ratio in rows:
        speedup = f"{ratio[0]:.1f}x" if ratio else ""
        lines.append(f"| {point} | {name} | {value:.6f} | {iters:,} | {passes:,} | {sec:.2f} | "
                     f"{speedup} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        pathlib.Path(opts.out).write_text(text)


if __name__ == "__main__":
    main()
