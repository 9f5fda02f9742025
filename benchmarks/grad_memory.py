"""Peak memory of `jax.grad(ot_cost)` at n = m = 20,000, d = 3, float64, on CPU.

A dense cost or coupling at this size is n * m * 8 bytes = 3.2 GB; the
matrix-free gradient should stay at O((n + m) d) plus one streaming block
(64 MiB budget). Peak resident memory (`resource.getrusage().ru_maxrss`) is
measured in a fresh child process, at three points: after importing JAX and
building the data (baseline), after compiling, and after the gradient.

    python benchmarks/grad_memory.py [--n 20000] [--tol 1e-4] [--max-iters 300]

Writes `benchmarks/results/grad_memory_cpu.md`.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "grad_memory_cpu.md")


def peak_mib() -> float:
    import resource

    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import ot_matfree as om

    n = m = args.n
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(k1, (n, 3), jnp.float64)
    y = jax.random.normal(k2, (m, 3), jnp.float64) + 0.5
    solver = om.Sinkhorn(tol=args.tol, max_iters=args.max_iters)
    kwargs = dict(epsilon=args.epsilon, solver=solver, throw=False)
    jax.block_until_ready((x, y))
    baseline = peak_mib()

    grad = jax.jit(jax.grad(lambda x, y: om.ot_cost(x, y, **kwargs), argnums=(0, 1)))
    start = time.perf_counter()
    compiled = grad.lower(x, y).compile()
    compile_s = time.perf_counter() - start
    after_compile = peak_mib()

    start = time.perf_counter()
    gx, gy = jax.block_until_ready(compiled(x, y))
    grad_s = time.perf_counter() - start
    after_grad = peak_mib()

    # Diagnostics of the same Sinkhorn solve (the gradient's forward pass).
    start = time.perf_counter()
    coupling = jax.block_until_ready(om.solve(x, y, epsilon=args.epsilon, solver=solver))
    solve_s = time.perf_counter() - start
    # Marginal identity of the Danskin gradient: sum_i grad_x_i = -sum_j grad_y_j.
    balance = float(jnp.linalg.norm(gx.sum(0) + gy.sum(0)) / jnp.linalg.norm(gx))
    return {
        "n": n, "m": m, "d": 3, "dtype": "float64", "epsilon": args.epsilon,
        "tol": args.tol, "max_iters": args.max_iters,
        "num_iters": int(coupling.num_iters), "converged": bool(coupling.converged),
        "marginal_error": float(coupling.marginal_error),
        "baseline_mib": baseline, "after_compile_mib": after_compile,
        "after_grad_mib": after_grad, "compile_s": compile_s, "grad_s": grad_s,
        "solve_s": solve_s, "grad_balance": balance,
        "grad_finite": bool(jnp.all(jnp.isfinite(gx)) & jnp.all(jnp.isfinite(gy))),
        "device": str(jax.devices()[0]), "jax": jax.__version__,
        "cpus": os.cpu_count(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--max-iters", type=int, default=300)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cmd = [
        sys.executable, os.path.abspath(__file__), "--child", "--n", str(args.n),
        "--epsilon", str(args.epsilon), "--tol", str(args.tol), "--max-iters", str(args.max_iters),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    dense_mib = r["n"] * r["m"] * 8 / 2**20
    lines = [
        "# Peak memory of `jax.grad(ot_cost)` (CPU)",
        "",
        f"Problem: n = m = {r['n']:,}, d = 3, {r['dtype']}, Gaussian clouds (y shifted by 0.5), "
        f"epsilon = {r['epsilon']}, squared Euclidean cost, uniform weights.",
        f"Sinkhorn: tol = {r['tol']:g} (L1 marginal error), max_iters = {r['max_iters']}; "
        f"used {r['num_iters']} iterations, marginal error {r['marginal_error']:.2e}, "
        f"converged = {r['converged']}.",
        f"Device: {r['device']} ({r['cpus']} visible CPU cores, shared), jax {r['jax']}, "
        f"{platform.machine()}.",
        "",
        "| stage | peak RSS (MiB) |",
        "|---|---|",
        f"| after import + data (baseline) | {r['baseline_mib']:.0f} |",
        f"| after compiling jit(grad) | {r['after_compile_mib']:.0f} |",
        f"| after the gradient (x and y) | {r['after_grad_mib']:.0f} |",
        f"| one dense n x m float64 array, for scale | {dense_mib:.0f} |",
        "",
        f"Gradient time (compiled, one run, Sinkhorn solve included): {r['grad_s']:.1f} s; "
        f"compile {r['compile_s']:.1f} s; the Sinkhorn solve alone {r['solve_s']:.1f} s.",
        f"Gradient increment over the compiled baseline: "
        f"{r['after_grad_mib'] - r['after_compile_mib']:.0f} MiB; "
        f"balance check |sum grad_x + sum grad_y| / |grad_x| = {r['grad_balance']:.1e}.",
        "",
        "Measured with `python benchmarks/grad_memory.py` (peak `ru_maxrss` of a fresh "
        "child process).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
