"""The gradient of the sharp Sinkhorn distance `<P*, C>` with respect to a cost
matrix `C`: ot_matfree's `matrix.sinkhorn_distance` against ott-jax on
`Geometry(cost_matrix=C)` by implicit differentiation and by unrolling, and
Qiu, Yin & Wang's dense formula on ott-jax's plan, in one process.

Each method's value and gradient are compiled once, then timed (median of
`--repeats`); errors are relative (Frobenius) against Qiu's dense formula on
a plan converged to 1e-12. Problem: `C_ij = |x_i - y_j|^2`, x, y uniform in
[0, 1]^2, n = m, uniform weights, epsilon = `--eps-rel` x mean(C),
tolerance 1e-8 on the L1 marginal error for every method (ott-jax's
`threshold` is on one marginal, which it leaves last: the same rule).

    python benchmarks/cost_matrix_grad.py [--sizes 500 1000 2000] [--repeats 3]
    python benchmarks/cost_matrix_grad.py --smoke --out /tmp/c.md
"""

import argparse
import os
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ot_matfree as om  # noqa: E402
from _common import device_string, markdown_table, rel_err, timed  # noqa: E402

TOL = 1e-8


def problem(n, eps_rel):
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x, y = jax.random.uniform(kx, (n, 2)), jax.random.uniform(ky, (n, 2))
    C = om.SqEuclidean().matrix(x, y)
    return C, float(eps_rel * jnp.mean(C))


def ott_solver(implicit: bool, threshold: float):
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    return sinkhorn.Sinkhorn(
        threshold=threshold, max_iterations=100_000,
        implicit_diff=imp.ImplicitDiff() if implicit else None, use_danskin=False,
    )


def ott_plan(C, eps, solver):
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem

    n, m = C.shape
    a, b = jnp.full((n,), 1.0 / n), jnp.full((m,), 1.0 / m)
    return solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=C, epsilon=eps), a, b))


def qiu_dense(C, eps, threshold):
    """Qiu et al.'s formula (their slides) on ott-jax's plan: a dense `(m-1)` solve."""
    T = ott_plan(C, eps, ott_solver(True, threshold)).matrix
    a, b = T.sum(1), T.sum(0)
    mu_r, mu_c = (C * T).sum(1), (C * T).sum(0)
    Tt = T[:, :-1]
    D = jnp.diag(b[:-1]) - Tt.T @ (Tt / a[:, None])
    s_vt = jnp.linalg.solve(D, mu_c[:-1] - Tt.T @ (mu_r / a))
    s_u = (mu_r - Tt @ s_vt) / a
    s_v = jnp.append(s_vt, 0.0)
    return jnp.sum(C * T), T + (s_u[:, None] + s_v[None, :] - C) * T / eps


def methods(eps):
    ours = om.Sinkhorn(tol=TOL)
    with_promotion = lambda fn: (lambda C: _standard(fn, C))
    return {
        "ot_matfree (H-solve, CG)": jax.jit(jax.value_and_grad(
            lambda C: om.matrix.sinkhorn_distance(C, epsilon=eps, solver=ours))),
        "ott-jax implicit": with_promotion(jax.jit(jax.value_and_grad(
            lambda C: jnp.sum(C * ott_plan(C, eps, ott_solver(True, TOL)).matrix)))),
        "ott-jax unrolled": with_promotion(jax.jit(jax.value_and_grad(
            lambda C: jnp.sum(C * ott_plan(C, eps, ott_solver(False, TOL)).matrix)))),
        "Qiu dense formula": with_promotion(jax.jit(lambda C: qiu_dense(C, eps, TOL))),
    }


def _standard(fn, C):
    with jax.numpy_dtype_promotion("standard"):  # ott-jax mixes int and float arrays
        return fn(C)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--eps-rel", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="n = 100, one repeat")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sizes, repeats = ([100], 1) if args.smoke else (args.sizes, args.repeats)
    rows = []
    for n in sizes:
        C, eps = problem(n, args.eps_rel)
        _, reference = jax.jit(lambda C: _standard(lambda C: qiu_dense(C, eps, 1e-12), C))(C)
        for name, fn in methods(eps).items():
            (value, grad), seconds = timed(fn, C, repeats=repeats)
            rows.append([n, name, seconds, float(value), rel_err(grad, reference)])
            print(f"n={n:5d} {name:26s} {seconds:8.3f} s  value {float(value):.10f}  "
                  f"grad err {rows[-1][-1]:.2e}", flush=True)
    load = os.getloadavg()
    text = "\n".join([
        "# Gradient of the sharp Sinkhorn distance w.r.t. a cost matrix",
        "",
        f"Device: {device_string()}; float64; load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} (2-core machine). `C_ij = |x_i - y_j|^2`, x, y uniform in [0, 1]^2, "
        f"n = m, uniform weights, epsilon = {args.eps_rel} x mean(C), tolerance {TOL:g} (L1 "
        "marginal error). Time: value and gradient, compiled, median of "
        f"{repeats}. Error: relative Frobenius against Qiu et al.'s dense formula on a "
        "plan converged to 1e-12. Command: `python benchmarks/cost_matrix_grad.py "
        + " ".join(sys.argv[1:]) + "`.",
        "",
        markdown_table(["n", "method", "time (s)", "value", "grad error"], rows),
        "",
    ])
    print(text)
    out = args.out or (pathlib.Path(__file__).parent / "results" / "cost_matrix_grad_cpu.md")
    pathlib.Path(out).write_text(text)


if __name__ == "__main__":
    main()
