"""Time per element of each streaming reduction against the rows per block.

For n = m (default 10,000), d = 3, float64 and float32, and rows per block
from 32 to 4,096, times one pass of

- `row_logsumexp` (a Sinkhorn half-iteration),
- `apply` with one column (`P @ v`, a CG half-step before issue 9's one-pass CG step),
- `apply` with 8 columns (`P @ V`, batched HVPs and the block Lanczos),
- `schur_apply` (`P^T ((P z) * w)` in one pass, a CG step),

next to two floors, scanned over the same row blocks:

- `bare exps`: row sums of `exp(f_i + g_j)`, the exps alone (no cost, no
  epsilon);
- `exps + cost`: row sums of the coupling's own block
  `exp((f_i + g_j - C_ij) / eps)`, the cost block included
  (`ot_matfree._stream.engine.logits`, as every pass forms it): what any
  pass must do.

and, as the "before" of issue 9's apply kernel, `apply k=1 (C first)`: the
same `P @ v` with the block formed as `C`, then `(f + g - C) / eps` (the
form before `logits`). Prints a table of nanoseconds per element
and the ratios to the fastest time of each floor, saves them as markdown
and a figure (`results/block_sizes_<device>.{md,png}`). The per-reduction
CPU budgets in `ot_matfree/_core/coupling.py` (`CPU_BLOCK_BYTES`) are read off
these curves: bytes per block = rows x m x width x itemsize at the optimum.

    python benchmarks/block_sizes.py                 # n = 10,000
    python benchmarks/block_sizes.py --sizes 32,64 --out results/x.md   # focused
    python benchmarks/block_sizes.py --smoke --out /tmp/b.md
"""

import argparse
import functools
import math
import os
import pathlib
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _common as common  # noqa: E402
from ot_matfree import Coupling  # noqa: E402
from ot_matfree._stream.engine import apply, row_logsumexp, schur_apply, stream  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def problem(n, d, dtype):
    kx, ky, kf, kg = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.uniform(kx, (n, d), dtype)
    y = jax.random.uniform(ky, (n, d), dtype)
    w = jnp.full((n,), 1 / n, dtype)
    # Potentials of the right size: P has entries of order 1 / n^2.
    f = jnp.log(w) * 0.05 + 0.01 * jax.random.normal(kf, (n,), dtype)
    g = jnp.log(w) * 0.05 + 0.01 * jax.random.normal(kg, (n,), dtype)
    return x, y, w, f, g


def bare_exps(f, g, block):
    """Row sums of `exp(f_i + g_j)` over row blocks: the exps of one pass and
    little else (the same row-block scan as the passes)."""
    n = f.shape[0]
    nb = math.ceil(n / block)
    fb = jnp.pad(f, (0, nb * block - n)).reshape(nb, block)

    def body(acc, fr):
        return acc, jnp.sum(jnp.exp(fr[:, None] + g[None, :]), axis=1)

    return jax.lax.scan(body, 0.0, fb)[1]


def exps_and_cost(coupling):
    """Row sums of the blocks of `P`: the cost block and its exps, nothing else."""

    def block_fn(blk, rows, cols):
        return jnp.sum(blk.probs(), axis=1), ()

    return stream(coupling, block_fn, width=2, kind="apply")[0]


def apply_cost_first(coupling, v):
    """`P @ v` with the block formed as `C`, then `exp((f + g - C) / eps)`."""

    def block_fn(blk, rows, cols):
        (vc,) = cols
        return blk.probs_and_cost()[0] @ vc, ()

    return stream(coupling, block_fn, cols=(v,), width=2, kind="apply")[0]


def passes(v1, v8, w):
    return {
        "exps + cost": jax.jit(exps_and_cost),
        "apply k=1 (C first)": jax.jit(lambda c: apply_cost_first(c, v1)),
        "row_logsumexp": jax.jit(lambda c: row_logsumexp(c, c.g)),
        "apply k=1": jax.jit(lambda c: apply(c, v=v1)[0]),
        "apply k=8": jax.jit(lambda c: apply(c, v=v8)[0]),
        "schur (one pass)": jax.jit(lambda c: schur_apply(c, v1, w)[1]),
    }


def round_robin(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, timed in turns (one run of each per round)
    so that a change of load hits every candidate alike."""
    for fn in calls.values():
        common.block(fn())  # compile
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            t0 = time.perf_counter()
            common.block(fn())
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(ts) for key, ts in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--d", type=int, default=3)
    parser.add_argument("--sizes", type=str, default="32,64,128,256,512,1024,2048,4096")
    parser.add_argument("--dtypes", type=str, default="float64,float32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.n, args.sizes, args.repeats = 600, "64,256", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    dev = jax.devices()[0].platform
    out = pathlib.Path(args.out) if args.out else RESULTS / f"block_sizes_{dev}.md"
    n, d = args.n, args.d
    rows = []
    curves = {}
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        x, y, w, f, g = problem(n, d, dtype)
        v1 = jax.random.normal(jax.random.PRNGKey(1), (n,), dtype)
        v8 = jax.random.normal(jax.random.PRNGKey(2), (n, 8), dtype)
        w_inv = 1 / w
        calls = {}
        for block in sizes:
            calls[("bare exps", block)] = functools.partial(
                jax.jit(bare_exps, static_argnums=2), f, g, block
            )
            c = Coupling(x, y, w, w, f, g, jnp.asarray(0.05, dtype),
                         common.ot_matfree.SqEuclidean(), block_size=block)
            for name, fn in passes(v1, v8, w_inv).items():
                calls[(name, block)] = functools.partial(fn, c)
        medians = round_robin(calls, args.repeats)
        floor = min(t for (name, _), t in medians.items() if name == "bare exps")
        floor_c = min(t for (name, _), t in medians.items() if name == "exps + cost")
        order = ("bare exps", "exps + cost")
        for (name, block), t in sorted(medians.items(), key=lambda kv: (
                order.index(kv[0][0]) if kv[0][0] in order else 2, kv[0][0], kv[0][1])):
            ns = t / (n * n) * 1e9
            curves.setdefault((dtype_name, name), []).append((block, ns))
            rows.append([dtype_name, name, block, f"{ns:.2f}", f"{t / floor:.2f}",
                         f"{t / floor_c:.2f}"])
            print(rows[-1], flush=True)
    load = f" (load average {os.getloadavg()[0]:.1f} at the end)"
    best = []
    for (dtype_name, name), pts in curves.items():
        b, ns = min(pts, key=lambda p: p[1])
        best.append([dtype_name, name, b, f"{ns:.2f}"])
    text = (
        f"# Time per element of a streaming pass against rows per block\n\n"
        f"n = m = {n}, d = {d}, device {common.device_string()}; other jobs shared the cores "
        f"(timings under load{load}, median of {args.repeats}, all candidates timed in turns). "
        f"`x bare` is the ratio to the fastest bare-exp scan (`exp(f_i + g_j)` only), "
        f"`x exps+cost` to the fastest scan of the blocks of `P` themselves (cost block "
        f"and exps, the floor of a pass).\n\n"
        + common.markdown_table(
            ["dtype", "pass", "rows/block", "ns/element", "x bare", "x exps+cost"], rows)
        + "\n\n## Fastest block per pass\n\n"
        + common.markdown_table(["dtype", "pass", "rows/block", "ns/element"], best)
        + "\n"
    )
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        dts = args.dtypes.split(",")
        fig, axes = plt.subplots(1, len(dts), figsize=(6 * len(dts), 4), squeeze=False)
        for ax, dtype_name in zip(axes[0], dts):
            for (dt, name), pts in curves.items():
                if dt == dtype_name:
                    ax.plot(*np.array(pts).T, marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("rows per block")
            ax.set_ylabel("ns per element")
            ax.set_title(f"{dtype_name}, n = m = {n} (2-core CPU, under load)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=100)
    except ImportError:
        print("matplotlib not installed: no figure")


if __name__ == "__main__":
    main()
