"""Sinkhorn divergence Hessians, after ott-jax's tutorial, with ot_matfree.

The tutorial ("Sinkhorn Divergence Hessians", ott-jax docs) differentiates
`sinkhorn_divergence` twice w.r.t. the weights `a` and the locations `x` of
the first measure (n = 17, m = 15, d = 3, random weights), by unrolling the
Sinkhorn loop or by implicit differentiation. Here:

1. `jax.hessian` of `ot_matfree.sinkhorn_divergence` w.r.t. `a` and `x`, next to
   ott-jax unrolled and implicit (`use_danskin=False`), all float64 with the
   same epsilon and tight tolerances; heat maps saved as PNG.
2. Eigenvalues of the Hessian w.r.t. `a` projected on the simplex's tangent
   space (`Q H Q`, `Q = I - 11^T/n`): positive semidefinite.
3. The quadratic form `<delta, H delta>` against a central second difference.
4. Time of the three `jax.hessian`s (jitted, compile excluded, median).
5. The same study at n = m = 2,000 with Hessian-vector products only
   (`jax.jvp(jax.grad(...))`); the dense Hessians (ott-jax's route) would be
   2,000 x 2,000 and 2,000 x 3 x 2,000 x 3 and need one solve per column.

    python examples/1_divergence_hessians.py          # full study (a few minutes on 2 cores)
    python examples/1_divergence_hessians.py --ci     # small sizes, no ott unrolled, < 60 s
"""

import argparse
import os
import statistics
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from ott.geometry import pointcloud  # noqa: E402
from ott.solvers.linear import implicit_differentiation as imp_diff  # noqa: E402
from ott.tools import sinkhorn_divergence as ott_sd  # noqa: E402

import ot_matfree as om  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUTS = os.path.join(HERE, "outputs")
TOL = 1e-12


def sample(n: int, m: int, dim: int):
    """The tutorial's sampler (uniform points, random weights, perturbations), float64."""
    rngs = jax.random.split(jax.random.PRNGKey(0), 7)
    x = jax.random.uniform(rngs[0], (n, dim), jnp.float64)
    y = jax.random.uniform(rngs[1], (m, dim), jnp.float64)
    a = jax.random.uniform(rngs[2], (n,), jnp.float64) + 0.1
    b = jax.random.uniform(rngs[3], (m,), jnp.float64) + 0.1
    a, b = a / jnp.sum(a), b / jnp.sum(b)
    delta_a = jax.random.uniform(rngs[5], (n,), jnp.float64) - 0.5
    delta_a = delta_a - jnp.mean(delta_a)  # sums to 0: stays on the simplex.
    delta_x = jax.random.uniform(rngs[6], (n, dim), jnp.float64) - 0.5
    return a, x, b, y, delta_a, delta_x


def median_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_difference(loss, a, x, delta, arg, *rest):
    """`<delta, (grad L(p + h delta) - grad L(p - h delta)) / 2h>` along argument `arg`.

    Central differences of the gradient (O(h^2) truncation, roundoff / h);
    for the weights `h` keeps `a +- h delta` within 1% of `a`.
    """
    grad = jax.jit(jax.grad(loss, argnums=arg))
    if arg == 0:
        h = 0.01 * float(jnp.min(a) / jnp.max(jnp.abs(delta)))
        plus, minus = grad(a + h * delta, x, *rest), grad(a - h * delta, x, *rest)
    else:
        h = 1e-4
        plus, minus = grad(a, x + h * delta, *rest), grad(a, x - h * delta, *rest)
    return float(jnp.sum(delta * (plus - minus)) / (2 * h))


def projector(n):
    return jnp.eye(n) - jnp.ones((n, n)) / n


def small_study(repeats: int, out_png: str, unrolled: bool):
    n, m, d = 17, 15, 3
    a, x, b, y, delta_a, delta_x = sample(n, m, d)
    # ott-jax's default epsilon for this geometry (0.05 * std of the cost matrix),
    # fixed once and shared by all three terms and all methods.
    epsilon = float(pointcloud.PointCloud(x, y).epsilon)
    print(f"== n = {n}, m = {m}, d = {d}, float64, epsilon = {epsilon:.4g} ==")

    def ours(a, x):
        return om.sinkhorn_divergence(
            x, y, a, b, epsilon=epsilon, solver=om.Sinkhorn(tol=TOL, max_iters=100_000)
        )

    def ott(implicit):
        def loss(a, x):
            div, _ = ott_sd.sinkhorn_divergence(
                pointcloud.PointCloud, x, y, a=a, b=b, epsilon=epsilon,
                solve_kwargs={
                    "implicit_diff": imp_diff.ImplicitDiff() if implicit else None,
                    "use_danskin": False, "threshold": TOL, "max_iterations": 20_000,
                },
            )
            return div

        return loss

    losses = {"ot_matfree": ours, "ott implicit": ott(True)}
    if unrolled:  # slow to compile: skipped with --ci
        losses["ott unrolled"] = ott(False)
    print("divergence:", {k: f"{float(jax.jit(f)(a, x)):.12f}" for k, f in losses.items()})
    fig, axes = plt.subplots(2, len(losses), figsize=(5 * len(losses), 9))
    results = {}
    for arg, name, delta in ((0, "a", delta_a), (1, "x", delta_x)):
        print(f"-- Hessian w.r.t. {name}")
        hessians = {}
        for (method, loss), ax in zip(losses.items(), axes[arg]):
            hess_fn = jax.jit(jax.hessian(loss, argnums=arg))
            seconds = median_time(hess_fn, a, x, repeats=repeats)
            hess = hess_fn(a, x)
            if arg == 0:
                # Balanced OT: only the part orthogonal to 1 is meaningful.
                q = projector(n)
                hess = q @ hess @ q
                evals = jnp.linalg.eigvalsh(hess)
                # One exact zero (the direction 1); the rest should be >= 0.
                extra = f" | eigenvalues min {float(evals[0]):+.3e} max {float(evals[-1]):.4f}"
                quad = float(delta @ hess @ delta)
            else:
                extra = ""
                quad = float(jnp.sum(delta * jnp.tensordot(hess, delta, axes=2)))
            hessians[method] = hess
            results[(name, method)] = seconds
            print(f"{method:>13}: {1e3 * seconds:9.2f} ms (median of {repeats}){extra} "
                  f"| <delta, H delta> = {quad:.10f}")
            image = ax.imshow(hess if arg == 0 else hess[0, 0, :, :], aspect="auto")
            part = " (Q H Q)" if arg == 0 else " [0, 0, :, :]"
            ax.set_title(f"{method}: Hessian w.r.t. {name}{part}")
            fig.colorbar(image, ax=ax)
        fd = gradient_difference(ours, a, x, delta, arg)
        print(f"{'finite diff.':>13}: <delta, H delta> = {fd:.10f} "
              "(central differences of the gradient)")
        ref = hessians["ott implicit"]
        for method, hess in hessians.items():
            err = float(jnp.linalg.norm(hess - ref) / jnp.linalg.norm(ref))
            print(f"{method:>13}: relative difference to ott implicit {err:.2e}")
    fig.suptitle(f"Sinkhorn divergence Hessians, n = {n}, m = {m}, d = {d}, eps = {epsilon:.3g}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    print(f"figure: {os.path.relpath(out_png)}")
    return epsilon


def large_study(n: int, epsilon: float, repeats: int, krylov_block: int):
    m, d = n, 3
    a, x, b, y, delta_a, delta_x = sample(n, m, d)
    print(f"== n = m = {n}, d = {d}, float64, epsilon = {epsilon:.4g}: HVPs only ==")
    solver = om.Sinkhorn(tol=TOL, max_iters=100_000)

    # Data enter every jitted function as arguments: closed-over arrays would be
    # compile-time constants, and XLA would constant-fold n x n cost blocks.
    def loss(a, x, b, y):
        return om.sinkhorn_divergence(x, y, a, b, epsilon=epsilon, solver=solver)

    grad = jax.grad(loss, argnums=(0, 1))
    for arg, name, delta in ((0, "a", delta_a), (1, "x", delta_x)):
        tangent = (delta, jnp.zeros_like(x)) if arg == 0 else (jnp.zeros_like(a), delta)

        @jax.jit
        def hvp(a, x, b, y, t):
            return jax.jvp(lambda a, x: grad(a, x, b, y), (a, x), t)[1][arg]

        seconds = median_time(hvp, a, x, b, y, tangent, repeats=repeats)
        h_delta = hvp(a, x, b, y, tangent)
        if arg == 0:
            h_delta = h_delta - jnp.mean(h_delta)
        quad = float(jnp.sum(delta * h_delta))
        fd = gradient_difference(loss, a, x, delta, arg, b, y)
        print(f"w.r.t. {name}: one HVP {seconds:.2f} s (3 Sinkhorn solves + 3 H-solves, median "
              f"of {repeats}) | <delta, H delta> = {quad:.8f} | finite diff. {fd:.8f} | "
              f"rel. diff. {abs(quad - fd) / abs(fd):.1e}")

    # Extreme Ritz values of Q H_a Q on a block Krylov space [V, HV, H^2 V]
    # (batched HVPs through vmap); Ritz values lie inside the spectrum.
    @jax.jit
    def batched(v, a, x, b, y):
        def hvp_a(v):
            out = jax.jvp(lambda a: jax.grad(loss)(a, x, b, y), (a,), (v,))[1]
            return out - jnp.mean(out)

        return jax.vmap(hvp_a, in_axes=1, out_axes=1)(v)

    q = projector(n)
    v = q @ jax.random.normal(jax.random.PRNGKey(1), (n, krylov_block), jnp.float64)
    start = time.perf_counter()
    basis = [jnp.linalg.qr(v)[0]]
    for _ in range(2):
        basis.append(jnp.linalg.qr(q @ batched(basis[-1], a, x, b, y))[0])
    k = jnp.linalg.qr(q @ jnp.concatenate(basis, axis=1))[0]
    ritz = jnp.linalg.eigvalsh(k.T @ batched(k, a, x, b, y))
    seconds = time.perf_counter() - start
    print(f"Ritz values of Q H_a Q on a {k.shape[1]}-dim. block Krylov space "
          f"({4 * krylov_block} HVP columns, {seconds:.1f} s incl. compile): "
          f"min {float(ritz[0]):.4e}, max {float(ritz[-1]):.4f}")
    dense_gib = (n * d) ** 2 * 8 / 2**30
    print(f"(a dense Hessian w.r.t. x would hold {dense_gib:.2f} GiB and need {n * d} HVP solves)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", "--small", action="store_true", dest="ci",
                        help="small sizes and few repeats (< 60 s)")
    parser.add_argument("--large-n", type=int, default=None, help="size of the HVP-only study")
    parser.add_argument("--out", default=None, help="PNG path (default: examples/outputs/"
                        "1_divergence_hessians.png; with --ci, the temporary directory)")
    args = parser.parse_args()
    repeats = 3 if args.ci else 7
    out_dir = tempfile.gettempdir() if args.ci else OUTPUTS
    out = args.out or os.path.join(out_dir, "1_divergence_hessians.png")
    large_n = args.large_n or (200 if args.ci else 2_000)
    print(f"jax {jax.__version__} on {jax.devices()[0]}")
    epsilon = small_study(repeats, out, unrolled=not args.ci)
    large_study(large_n, epsilon, repeats=2 if args.ci else 3, krylov_block=2 if args.ci else 8)


if __name__ == "__main__":
    main()
