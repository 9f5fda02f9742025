"""Scale check: solve + 3 HVPs at n = m = 20,000, d = 3, float64, on the CPU.

A dense P alone would take 20,000^2 x 8 B = 3.2 GB; the target is a peak
resident memory under 1 GB. Each configuration runs in a fresh subprocess so
its peak RSS (`ru_maxrss`, which includes the Python + JAX runtime, about
0.3 GB) is its own. With `--ott N`, ott-jax's implicit-differentiation HVP
(`jax.jvp(jax.grad(reg_ot_cost))`, O(nm) memory) runs at size N for
comparison, next to ot_matfree at the same N.

Usage: `python benchmarks/scale_check.py [--n 20000] [--ott 3000] [--hvps 3]`.
Results go to `benchmarks/results/scale_check_cpu.md`.
"""

import argparse
import json
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results"


def problem(n, d, seed=0):
    import jax

    kx, ky, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, d))
    y = jax.random.uniform(ky, (n, d)) * 0.8 + 0.3
    v = jax.random.normal(kv, (n, d))
    return x, y, v


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(n, d, epsilon, hvps):
    import jax

    jax.config.update("jax_enable_x64", True)
    import ot_matfree as om

    x, y, v = problem(n, d)
    start = time.perf_counter()
    coupling = jax.block_until_ready(
        om.solve(x, y, epsilon=epsilon, solver=om.Sinkhorn(tol=1e-8, max_iters=5000))
    )
    t_solve = time.perf_counter() - start  # includes compilation (a few seconds)
    cg = om.CG(rtol=1e-8)
    times, steps, residuals = [], [], []
    hv = None
    for k in range(hvps + 1):  # the first call compiles and is not counted
        start = time.perf_counter()
        sol = jax.block_until_ready(om.hvp_x_solution(coupling, v * (k + 1), linear_solver=cg))
        hv, stats = sol.value, sol.stats
        if k:
            times.append(time.perf_counter() - start)
            steps.append(int(stats["num_steps"]))
            residuals.append(float(stats["residual"]))
    a = coupling.a
    identity = float(jax.numpy.linalg.norm(hv.sum(0) - 2 * (hvps + 1) * (a[:, None] * v).sum(0))
                     / jax.numpy.linalg.norm(2 * (hvps + 1) * (a[:, None] * v).sum(0)))
    return {
        "method": "ot_matfree CG", "n": n, "solve_s": t_solve, "sinkhorn_iters": int(coupling.num_iters),
        "marginal_error": float(coupling.marginal_error), "hvp_s": statistics.median(times),
        "cg_steps": steps, "residual": max(residuals), "marginal_identity": identity,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_ott(n, d, epsilon, hvps):
    import jax

    jax.config.update("jax_enable_x64", True)
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    x, y, v = problem(n, d)

    def cost(x):
        geom = pointcloud.PointCloud(x, y, epsilon=epsilon)
        solver = sinkhorn.Sinkhorn(threshold=1e-8, max_iterations=5000,
                                   implicit_diff=imp.ImplicitDiff(), use_danskin=False)
        return solver(linear_problem.LinearProblem(geom)).reg_ot_cost

    hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(cost), (x,), (v,))[1])
    times = []
    hv = None
    for k in range(hvps + 1):
        start = time.perf_counter()
        hv = jax.block_until_ready(hvp(x, v * (k + 1)))
        if k:
            times.append(time.perf_counter() - start)
    return {
        "method": "ott-jax implicit (solve inside each HVP)", "n": n, "hvp_s": statistics.median(times),
        "finite": bool(jax.numpy.all(jax.numpy.isfinite(hv))), "peak_rss_mb": peak_rss_mb(),
    }


def run_child(kind, n, d, epsilon, hvps):
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--d", str(d),
           "--epsilon", str(epsilon), "--hvps", str(hvps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"method": kind, "n": n, "error": out.stderr.strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--hvps", type=int, default=3)
    parser.add_argument("--ott", type=int, default=0, help="also compare with ott-jax at this n")
    parser.add_argument("--child", choices=["ours", "ott"], help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "scale_check_cpu.md"))
    args = parser.parse_args(argv)
    if args.child:
        fn = child_ours if args.child == "ours" else child_ott
        print(json.dumps(fn(args.n, args.d, args.epsilon, args.hvps)))
        return

    runs = [("ours", args.n)]
    if args.ott:
        runs += [("ours", args.ott), ("ott", args.ott)]
    rows = []
    for kind, n in runs:
        row = run_child(kind, n, args.d, args.epsilon, args.hvps)
        print(json.dumps(row))
        rows.append(row)

    header = (f"Device: CPU ({platform.processor() or platform.machine()}, "
              f"{len(__import__('os').sched_getaffinity(0))} cores), float64, d = {args.d}, "
              f"epsilon = {args.epsilon}, x ~ U[0,1]^d, y ~ U[0.3,1.1]^d, n = m, "
              f"Sinkhorn tol 1e-8 (L1 marginal error), CG rtol 1e-8, median of {args.hvps} HVPs "
              "after a compiling call.\n\n")
    table = ["| method | n | solve (s, incl. compile) | Sinkhorn iters | marginal error | "
             "per HVP (s) | CG iters | marginal identity err | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            table.append(f"| {r['method']} | {r['n']} | failed: {r['error']} ||||||| ")
            continue
        table.append(
            f"| {r['method']} | {r['n']} | {r.get('solve_s', float('nan')):.1f} | "
            f"{r.get('sinkhorn_iters', '-')} | {r.get('marginal_error', float('nan')):.1e} | "
            f"{r['hvp_s']:.2f} | {r.get('cg_steps', '-')} | "
            f"{r.get('marginal_identity', float('nan')):.1e} | {r['peak_rss_mb']:.0f} |")
    text = header + "\n".join(table) + "\n"
    print(text)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
