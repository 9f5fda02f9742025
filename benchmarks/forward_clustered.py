"""Forward solvers on clustered clouds, float64 and float32: the default
`Sinkhorn()`, `Sinkhorn(newton=0.1)` and `LBFGS()` (issue 19, item 3: where
L-BFGS wins beyond `sinkhorn_speed.py`'s uniform square).

n = m = 3,000 points in d = 3, each cloud 5 Gaussian clusters (centres
N(0, 9 I), spread 0.3), squared Euclidean cost, uniform weights, epsilon =
{0.05, 0.005, 0.0005} x the mean cost (of the first 500 x 500 pairs);
tolerance 1e-6 in float64 and 1e-4 in float32 (the solvers' own marginal
error, float32's as float32 measures it). Per solve: status, iterations,
streaming passes, reported error, the first call (compilation included) and
a second call.

    python benchmarks/forward_clustered.py [--out FILE]
"""

import argparse
import os
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import ot_matfree as om  # noqa: E402
from _common import device_string  # noqa: E402


def clouds(n=3000):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    cx, cy = jax.random.normal(k[0], (5, 3)) * 3, jax.random.normal(k[1], (5, 3)) * 3
    x = cx[jax.random.randint(k[2], (n,), 0, 5)] + 0.3 * jax.random.normal(k[2], (n, 3))
    y = cy[jax.random.randint(k[3], (n,), 0, 5)] + 0.3 * jax.random.normal(k[3], (n, 3))
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(
        pathlib.Path(__file__).parent / "results" / "forward_clustered_cpu.md"))
    args = parser.parse_args()
    x, y = clouds()
    mean = float(jnp.mean(om.SqEuclidean().matrix(x[:500], y[:500])))
    lines = []
    for dtype, tol in [(jnp.float64, 1e-6), (jnp.float32, 1e-4)]:
        xs, ys = x.astype(dtype), y.astype(dtype)
        for rel in [0.05, 0.005, 0.0005]:
            for name, solver in [("default", om.Sinkhorn(tol=tol, max_iters=5000)),
                                 ("newton=0.1", om.Sinkhorn(tol=tol, max_iters=5000, newton=0.1)),
                                 ("LBFGS", om.LBFGS(tol=tol, max_iters=5000))]:
                run = jax.jit(lambda x, y, e, s=solver: om.solve(x, y, epsilon=e, solver=s,
                                                                throw=False))
                t0 = time.perf_counter()
                jax.block_until_ready(run(xs, ys, rel * mean).f)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                c = run(xs, ys, rel * mean)
                jax.block_until_ready(c.f)
                second = time.perf_counter() - t0
                row = (f"| {jnp.dtype(dtype).name} | {rel} | {name} | {bool(c.converged)} | "
                       f"{int(c.num_iters)} | {int(c.num_passes)} | "
                       f"{float(c.marginal_error):.2e} | {first:.2f} | {second:.2f} | {os.getloadavg()[0]:.1f} |")
                print(row, flush=True)
                lines.append(row)
    text = "\n".join([
        "# Forward solvers on clustered clouds", "",
        f"{__doc__.split(chr(10) + chr(10))[1]}", "",
        f"Device: {device_string()}; mean cost {mean:.3f}.", "",
        "| dtype | epsilon / mean cost | solver | converged | iterations | passes | "
        "reported error | first call (s) | second call (s) | load |",
        "|---|---|---|---|---|---|---|---|---|---|", *lines, ""])
    pathlib.Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
