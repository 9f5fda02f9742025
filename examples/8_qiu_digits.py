"""Qiu, Yin & Wang's generative model on real images: handwritten digits.

A generator `g_theta`, an equinox MLP from `z ~ N(0, I_8)` to 8 x 8 images
(d = 64, sigmoid output), is trained so that a batch `g_theta(Z)` matches a
batch of scikit-learn's bundled digits (`load_digits`: 1,797 images, pixels
scaled to [0, 1]) under the sharp Sinkhorn loss `<P*, C>` of the slides
(`om.sinkhorn_distance`), `C_ij = |g(z_i) - x_j|^2`, epsilon = 0.05 x the
mean cost of the initial batch.

Part 1, Qiu's timing table: one gradient of the loss with respect to the
network's parameters by (i) unrolled autodiff through ott-jax's Sinkhorn,
(ii) ott-jax's implicit differentiation, (iii) ours (an H-solve, no
differentiation of the iterations), at batch sizes 256, 1,024 and 4,096 (n =
m; above 1,797 the digits are drawn with replacement). Each cell runs in a
fresh process: the time of a compiled gradient (median of 3), its peak
resident memory above the process's start, and the gradient's relative
difference from ours. Cells that a fit of the measured memory (c B^2 for
ott-jax, c B for ours) predicts above 16 GB are skipped with the
prediction, and so is the largest batch each method reaches in 16 GB.
Every solve stops at an L1 marginal error of 1e-6 (ott-jax: `threshold`).

Part 2, training from the same start, batch 256, a fresh batch of digits
and latents each step for Adam (the usual setting), one fixed batch for the
comparison with Newton-CG (which needs a deterministic loss): Adam with our
gradient against Adam with the unrolled one (the loss against wall time),
and `om.NewtonCG` against Adam on the fixed batch. The figure shows the
loss curves and generated digits beside real ones.

    python examples/8_qiu_digits.py            # the committed outputs (~15 min on 2 cores)
    python examples/8_qiu_digits.py --parts 2  # training only
    python examples/8_qiu_digits.py --quick    # small sizes, the CI test
    python examples/8_qiu_digits.py --cell ours 1024   # one timing cell (used by part 1)

Needs scikit-learn (`pip install ".[examples]"`).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
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
OUTPUTS = os.path.join(HERE, "outputs")
TOL = 1e-6
LATENT, WIDTH = 8, 128
METHODS = ("unrolled (ott-jax)", "implicit (ott-jax)", "ours")
BUDGET_GB = 16.0


def digits():
    from sklearn.datasets import load_digits

    return jnp.asarray(load_digits().data / 16.0)


def generator(key):
    model = eqx.nn.MLP(LATENT, 64, WIDTH, 2, activation=jax.nn.relu,
                       final_activation=jax.nn.sigmoid, dtype=jnp.float64, key=key)
    return eqx.partition(model, eqx.is_inexact_array)


def batch(key, data, size):
    k_x, k_z = jax.random.split(key)
    replace = size > data.shape[0]
    x = data[jax.random.choice(k_x, data.shape[0], (size,), replace=replace)]
    return x, jax.random.normal(k_z, (size, LATENT))


def epsilon_for(params, static, x, z):
    y = jax.vmap(eqx.combine(params, static))(z)
    return 0.05 * float(jnp.mean(om.SqEuclidean().matrix(y[:256], x[:256])))


def ours_loss(params, static, x, z, epsilon, solver=om.Sinkhorn(tol=TOL, max_iters=50_000)):
    y = jax.vmap(eqx.combine(params, static))(z)
    return om.sinkhorn_distance(y, x, epsilon=epsilon, solver=solver)


def ott_loss(params, static, x, z, epsilon, implicit):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    y = jax.vmap(eqx.combine(params, static))(z)
    geom = pointcloud.PointCloud(y, x, epsilon=epsilon)
    solver = sinkhorn.Sinkhorn(threshold=TOL, max_iterations=50_000, use_danskin=False,
                               implicit_diff=imp.ImplicitDiff() if implicit else None)
    out = solver(linear_problem.LinearProblem(geom))
    return jnp.sum(out.matrix * geom.cost_matrix)


def loss_fn(method):
    if method == "ours":
        return ours_loss
    return lambda *a: ott_loss(*a, implicit=method.startswith("implicit"))


def flat(tree):
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


# --- part 1: one cell of the timing table, in a process of its own ------------------------


def cell(method, size, repeats=3):
    """Time, peak memory and gradient of one (method, batch size): a JSON line."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    params, static = generator(jax.random.PRNGKey(0))
    x, z = batch(jax.random.PRNGKey(1), digits(), size)
    eps = epsilon_for(params, static, x, z)
    grad = jax.jit(jax.value_and_grad(loss_fn(method)), static_argnums=(1,))
    with jax.numpy_dtype_promotion("standard"):  # ott-jax mixes int and float arrays
        t0 = time.perf_counter()
        value, g = jax.block_until_ready(grad(params, static, x, z, eps))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(grad(params, static, x, z, eps))
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    path = os.path.join(tempfile.gettempdir(), f"qiu_grad_{method[:4]}_{size}.npy")
    jnp.save(path, flat(g))
    print(json.dumps(dict(method=method, size=size, seconds=statistics.median(times),
                          first_call=compile_s, peak_gb=peak / 2**20, value=float(value),
                          grad=path, epsilon=eps)))


def run_cell(method, size, timeout):
    proc = subprocess.run(
        [sys.executable, __file__, "--cell", method, str(size)], capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    if proc.returncode != 0:
        return dict(method=method, size=size, error=proc.stderr.strip().splitlines()[-1][:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted_gb(rows, method, size):
    """Peak memory at `size`, `c0 + c B^p` through the two largest measured
    cells (`p = 2` for ott-jax's dense matrices, 1 for ours); from one cell,
    `c B^p` (no constant: an overestimate)."""
    done = sorted((r for r in rows if r["method"] == method and "peak_gb" in r),
                  key=lambda r: r["size"])
    if not done:
        return 0.0
    power = 1 if method == "ours" else 2
    last = done[-1]
    if len(done) == 1:
        return last["peak_gb"] * (size / last["size"]) ** power
    prev = done[-2]
    slope = (last["peak_gb"] - prev["peak_gb"]) / (last["size"] ** power - prev["size"] ** power)
    slope = max(slope, 0.0)
    return last["peak_gb"] + slope * (size**power - last["size"] ** power)


def timing_table(sizes, say, timeout):
    rows = []
    for size in sizes:
        for method in METHODS:
            guess = predicted_gb(rows, method, size)
            if guess > BUDGET_GB:
                rows.append(dict(method=method, size=size, skipped=guess))
                say(f"  {method:20s} B={size:5d}: skipped, predicted {guess:.1f} GB")
                continue
            row = run_cell(method, size, timeout)
            rows.append(row)
            say(f"  {method:20s} B={size:5d}: {row}")
    lines = ["| batch | method | gradient (s) | first call (s) | peak memory (GB) | "
             "difference from ours |", "|---|---|---|---|---|---|"]
    for size in sizes:
        ref = next((r for r in rows if r["method"] == "ours" and r["size"] == size
                    and "grad" in r), None)
        for r in (r for r in rows if r["size"] == size):
            if "skipped" in r:
                lines.append(f"| {size} | {r['method']} | skipped: predicted {r['skipped']:.0f} GB "
                             f"> {BUDGET_GB:.0f} GB | | | |")
                continue
            if "error" in r:
                lines.append(f"| {size} | {r['method']} | failed: {r['error']} | | | |")
                continue
            diff = "-"
            if ref is not None and r is not ref:
                g, g_ref = jnp.load(r["grad"]), jnp.load(ref["grad"])
                diff = f"{float(jnp.linalg.norm(g - g_ref) / jnp.linalg.norm(g_ref)):.1e}"
            lines.append(f"| {size} | {r['method']} | {r['seconds']:.3g} | {r['first_call']:.3g} "
                         f"| {r['peak_gb']:.2f} | {diff} |")
    reach = []
    for method in METHODS:
        limit = next((s for s in (2**k for k in range(8, 30))
                      if predicted_gb(rows, method, s) > BUDGET_GB), 2**30) // 2
        reach.append(f"{method}: {limit:,}")
    lines.append("")
    lines.append(f"Largest batch (a power of 2) within {BUDGET_GB:.0f} GB, predicted from the "
                 "two largest measured cells (`c0 + c B^2` for ott-jax, `c0 + c B` for ours; "
                 "peak memory includes XLA's compilation): " + "; ".join(reach) + ".")
    return "\n".join(lines)


# --- part 2: training -------------------------------------------------------------------


def adam_run(name, short, method, params, static, data, eps, steps, size, lr, fixed=None):
    """`steps` Adam steps (a fresh batch each step, or `fixed`), compiled once: the loss trace."""
    loss = loss_fn(method)
    opt = optax.adam(lr)
    losses, times = [], []
    start = [0.0]

    def record(value):
        losses.append(float(value))
        times.append(time.perf_counter() - start[0])

    def step(carry, key):
        params, state = carry
        x, z = fixed if fixed is not None else batch(key, data, size)
        value, g = jax.value_and_grad(loss)(params, static, x, z, eps)
        jax.debug.callback(record, value)
        updates, state = opt.update(g, state, params)
        return (optax.apply_updates(params, updates), state), None

    @jax.jit
    def train(params):
        keys = jax.random.split(jax.random.PRNGKey(2), steps)
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), keys)
        return params

    with jax.numpy_dtype_promotion("standard"):
        compiled = train.lower(params).compile()
        losses.clear()
        times.clear()
        start[0] = time.perf_counter()
        out = jax.block_until_ready(compiled(params))
    return dict(name=name, short=short, params=out, losses=losses, times=times,
                seconds=times[-1])


def newton_run(params, static, fixed, eps, steps):
    x, z = fixed
    losses, times = [], []
    start = [time.perf_counter()]

    def loss(p, _):
        value = ours_loss(p, static, x, z, eps)
        jax.debug.callback(lambda v: (losses.append(float(v)),
                                      times.append(time.perf_counter() - start[0])), value)
        return value

    solver = om.NewtonCG(rtol=1e-8, atol=1e-8, cg_max_steps=20)
    minimise = jax.jit(lambda p: optx.minimise(loss, solver, p, None, max_steps=steps,
                                               throw=False))
    minimise.lower(params).compile()
    losses.clear()
    times.clear()
    start[0] = time.perf_counter()
    sol = jax.block_until_ready(minimise(params))
    # The trace holds line-search trials too: keep the running minimum (accepted points).
    best = [min(losses[: i + 1]) for i in range(len(losses))]
    return dict(name="Newton-CG (ours), fixed batch", short="Newton-CG, fixed",
                params=sol.value, losses=best,
                times=times, seconds=times[-1],
                steps=int(sol.stats["num_steps"]), hvps=int(sol.stats["num_hvps"]))


def figure(runs, static, data, out, title):
    fig, (ax, grid) = plt.subplots(2, 1, figsize=(12, 9), height_ratios=(1, 1.3))
    for r in runs:
        ax.plot(r["times"], r["losses"], label=r["name"])
    ax.set_xlabel("wall time (s, compiled, 2-core CPU)")
    ax.set_ylabel("sharp Sinkhorn loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    # One row of 12 digits per method, real ones first, with a white gap between digits.
    z = jax.random.normal(jax.random.PRNGKey(9), (12, LATENT))
    rows = [("real digits", data[:12])] + [
        (r["short"], jax.vmap(eqx.combine(r["params"], static))(z)) for r in runs
    ]
    tiles = jnp.zeros((len(rows) * 10, 12 * 10))
    for i, (_, images) in enumerate(rows):
        for j in range(12):
            tiles = tiles.at[i * 10 + 1:i * 10 + 9, j * 10 + 1:j * 10 + 9].set(
                images[j].reshape(8, 8))
    grid.imshow(tiles, cmap="gray_r", vmin=0, vmax=1)
    grid.set_yticks([i * 10 + 5 for i in range(len(rows))], [label for label, _ in rows])
    grid.set_xticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI test)")
    parser.add_argument("--cell", nargs=2, metavar=("METHOD", "SIZE"),
                        help="one timing cell (METHOD: unrolled, implicit, ours)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="Adam steps")
    parser.add_argument("--newton-steps", type=int, default=None)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2], choices=[1, 2],
                        help="1: the timing table, 2: training (default: both)")
    parser.add_argument("--out", default=None, help="PNG path")
    args = parser.parse_args()
    if args.cell:
        method = next(m for m in METHODS if m.startswith(args.cell[0]))
        return cell(method, int(args.cell[1]))
    sizes = args.sizes or ([64] if args.quick else [256, 1024, 4096])
    steps = args.steps or (5 if args.quick else 300)
    newton_steps = args.newton_steps or (2 if args.quick else 100)
    size = 64 if args.quick else 256
    out = args.out or os.path.join(tempfile.gettempdir() if args.quick else OUTPUTS,
                                   "8_qiu_digits.png")
    log = []

    def say(*parts):
        log.append(" ".join(map(str, parts)))
        print(*parts, flush=True)

    say(f"jax {jax.__version__} on {jax.devices()[0]} ({os.cpu_count()} cores), float64; "
        f"load average {os.getloadavg()[0]:.1f}")
    say(f"generator: MLP {LATENT} -> {WIDTH} -> {WIDTH} -> 64, relu, sigmoid output; data: "
        "load_digits (1,797 images 8 x 8, pixels / 16); loss: sharp Sinkhorn <P*, C>, "
        f"tolerance {TOL:g} (L1 marginal error) for every method")
    record = not args.quick and args.out is None
    if 1 in args.parts:
        say("Part 1: one gradient w.r.t. the parameters, each cell in a fresh process")
        say(timing_table(sizes, say, timeout=3600))
        if record:
            with open(os.path.join(OUTPUTS, "8_qiu_digits_timing.txt"), "w") as f:
                f.write("\n".join(log) + "\n")
    if 2 not in args.parts:
        return
    log[2:] = []

    data = digits()
    params, static = generator(jax.random.PRNGKey(0))
    fixed = batch(jax.random.PRNGKey(1), data, size)
    eps = epsilon_for(params, static, *fixed)
    say(f"Part 2: training, batch {size}, epsilon {eps:.4f}, Adam lr 1e-3")
    runs = [
        adam_run("Adam, our gradient, fresh batches", "Adam, ours", "ours", params, static,
                 data, eps, steps, size, 1e-3),
        adam_run("Adam, unrolled gradient (ott-jax), fresh batches", "Adam, unrolled",
                 "unrolled (ott-jax)", params, static, data, eps, steps, size, 1e-3),
        adam_run("Adam, our gradient, fixed batch", "Adam, ours, fixed", "ours", params,
                 static, data, eps, steps, size, 1e-3, fixed=fixed),
        newton_run(params, static, fixed, eps, newton_steps),
    ]
    for r in runs:
        extra = f", {r['steps']} Newton steps, {r['hvps']} HVPs" if "hvps" in r else ""
        say(f"  {r['name']}: {r['seconds']:.1f} s, final loss {r['losses'][-1]:.5f} "
            f"(first {r['losses'][0]:.5f}){extra}")
    newton = runs[-1]
    fixed_adam = runs[2]
    at = next((v for v, t in zip(fixed_adam["losses"][::-1], fixed_adam["times"][::-1])
               if t <= newton["seconds"]), fixed_adam["losses"][0])
    say(f"  at Newton-CG's wall time ({newton['seconds']:.1f} s), Adam on the fixed batch had "
        f"reached {at:.5f}")
    figure(runs, static, data, out, f"load_digits, batch {size}, epsilon {eps:.3f}")
    say(f"figure: {os.path.relpath(out)}")
    if record:
        with open(os.path.join(OUTPUTS, "8_qiu_digits_output.txt"), "w") as f:
            f.write("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
