"""Conditioning of the H-matrix and the effect of spectral deflation (issue 3, item 8).

Part 1: smallest positive eigenvalue of H vs epsilon and N, from the
matrix-free block Lanczos of `ot_matfree.spectrum` (`1 - s_2` of the
normalised coupling; for uniform weights and n = m, `lambda_min(H) =
(1 - s_2) / N`), for equally spaced points on the unit circle (x = y, Li et
al.'s Example 12) and for uniform points in the unit square (x = y). For the
circle, the exact value and the two asymptotics of Example 12 are derived
from the circulant kernel `K_ij = exp(-|x_i - x_j|^2 / eps)` with
eigenvalues `lam_k = sum_j exp(-(2 - 2 cos(2 pi j / N)) / eps) cos(2 pi k j / N)`:
`lambda_min(H) = (1 - lam_1 / lam_0) / N`, which tends to
`(1 - I_1(2/eps) / I_0(2/eps)) / N ~ eps / (4 N)` as N grows (fixed eps) and to
`(2 / N) (1 - cos(2 pi / N)) exp(-4 sin^2(pi / N) / eps)` as eps -> 0 (fixed N).

Part 2: CG iterations and wall times with and without deflation
(`SpectralCG(rank=k)`, k in {0, 5, 20, 100}) at n = 3,000, d = 2, uniform
square, eps = 0.002, rtol 1e-8. Times exclude compilation (warm-up call
first), are medians of repeats, `block_until_ready`.

    python benchmarks/conditioning.py            # full run, writes results
    python benchmarks/conditioning.py --smoke    # reduced sizes, < 60 s
"""

import argparse
import pathlib
import platform
import statistics

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import lineax as lx  # noqa: E402
import numpy as np  # noqa: E402
import scipy.special  # noqa: E402

import ot_matfree as om  # noqa: E402
from _common import timed  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"


def circle(num):
    theta = 2 * jnp.pi * jnp.arange(num) / num
    return jnp.stack([jnp.cos(theta), jnp.sin(theta)], axis=1)


def circle_exact(num, eps):
    """`lambda_min(H)` for the circle from the circulant eigenvalues (float64, numpy)."""
    j = np.arange(num)
    # Work with exp((2 cos - 2) / eps) relative to the j = 0 term: stable.
    cos = np.cos(2 * np.pi * j / num)
    w = np.exp((2 * cos - 2) / eps)
    # 1 - lam_1 / lam_0, summed without the cancellation of forming lam_1.
    return np.sum(w * (1 - cos)) / w.sum() / num


def circle_large_n(num, eps):
    z = 2 / eps
    return (1 - scipy.special.ive(1, z) / scipy.special.ive(0, z)) / num


def circle_small_eps(num, eps):
    return 2 / num * (1 - np.cos(2 * np.pi / num)) * np.exp(-4 * np.sin(np.pi / num) ** 2 / eps)


def lambda_min(x, eps, tol=1e-12):
    # throw=False: at the smallest eps the square's Sinkhorn stops at max_iters
    # (marginal error ~1e-7 instead of 1e-12); its spectrum is still reported.
    sinkhorn = om.Sinkhorn(tol=tol, max_iters=50_000)
    coupling = om.solve(x, x, epsilon=eps, solver=sinkhorn, throw=False)
    spec = om.spectrum(coupling, 2, oversample=8, num_blocks=10, throw=False)
    return float(spec.smallest_eigenvalue) / x.shape[0]


def part1(smoke):
    rows = []
    ns = [20, 40] if smoke else [20, 40, 80, 160, 320]
    epss = [0.2, 0.02] if smoke else [0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005]
    for num in ns:
        for eps in epss:
            measured = lambda_min(circle(num), eps)
            rows.append(("circle", num, eps, measured, circle_exact(num, eps),
                         circle_large_n(num, eps), circle_small_eps(num, eps)))
    key = jax.random.PRNGKey(0)
    for num in ns:
        x = jax.random.uniform(jax.random.fold_in(key, num), (num, 2), jnp.float64)
        for eps in epss:
            rows.append(("square", num, eps, lambda_min(x, eps), np.nan, np.nan, np.nan))
    return rows


def part2(smoke, num_directions, ranks):
    n, eps = (400, 0.01) if smoke else (3000, 0.002)
    ranks = [0, 5, 20] if smoke else ranks
    repeats = 1 if smoke else 3
    x = jax.random.uniform(jax.random.PRNGKey(0), (n, 2), jnp.float64)
    y = jax.random.uniform(jax.random.PRNGKey(1), (n, 2), jnp.float64)
    coupling = om.solve(x, y, epsilon=eps, solver=om.Sinkhorn(tol=1e-9, max_iters=100_000))
    # Direction 0 is timed; every direction's iteration count is recorded.
    vs = [jax.random.normal(jax.random.PRNGKey(2 + i), x.shape, jnp.float64)
          for i in range(num_directions)]
    # throw=False: whether CG converges is recorded (`converged` column), not raised.
    @eqx.filter_jit
    def hvp(c, s, st, v):
        sol = om.hvp_x_solution(c, v, linear_solver=s, solver_state=st, throw=False)
        return sol.value, sol.stats
    # Set-up once per coupling: H's marginals, plus block Lanczos for SpectralCG.
    init = eqx.filter_jit(lambda s, c: s.init(om.h_operator(c), {}))
    # Random right-hand sides of the H-system itself (not from an HVP).
    rhs = [(jax.random.normal(jax.random.PRNGKey(100 + i), (n,), jnp.float64),
            jax.random.normal(jax.random.PRNGKey(200 + i), (n,), jnp.float64))
           for i in range(num_directions)]
    h_solve = eqx.filter_jit(lambda s, st, r, t: lx.linear_solve(
        st.operator, jnp.concatenate([r, t]), solver=s, state=st, throw=False).stats["num_steps"])
    refs = [hvp(coupling, om.DenseSolver(), None, v)[0] for v in vs] if n <= 1000 else None
    rows = []
    for k in ranks:
        solver = om.CG(rtol=1e-8) if k == 0 else om.SpectralCG(rank=k, rtol=1e-8)
        state, setup = timed(lambda: init(solver, coupling), repeats=repeats)
        _, per_hvp = timed(lambda: hvp(coupling, solver, state, vs[0]), repeats=repeats)
        outs = [hvp(coupling, solver, state, v) for v in vs]
        steps = [int(stats["num_steps"]) for _, stats in outs]
        rhs_steps = [int(h_solve(solver, state, r, t)) for r, t in rhs]
        converged = all(bool(stats["converged"]) for _, stats in outs)
        if k == 0 and refs is None:
            refs = [out for out, _ in outs]
        err = max(float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
                  for (out, _), ref in zip(outs, refs))
        spec_res = float(outs[0][1]["spectrum_residual"]) if k else 0.0
        rows.append((k, steps, converged, setup, per_hvp, setup + 10 * per_hvp, err, spec_res,
                     rhs_steps))
    return (n, eps, int(coupling.num_iters), float(coupling.marginal_error)), rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="reduced sizes (CI)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 5, 20, 100],
                        help="deflation ranks k (0 = plain CG, must come first)")
    parser.add_argument("--directions", type=int, default=5,
                        help="HVP directions whose CG iterations are counted")
    parser.add_argument("--out", default=None, help="markdown path (the PNG goes beside it); "
                        "default benchmarks/results/conditioning_{cpu,smoke}.md")
    args = parser.parse_args()
    tag = "smoke" if args.smoke else "cpu"
    device = f"{jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})"

    rows1 = part1(args.smoke)
    (n, eps, sk_iters, sk_err), rows2 = part2(args.smoke, args.directions, args.ranks)

    lines = [f"# Conditioning of H and spectral deflation ({tag})", "",
             f"Device: {device}; float64; ot_matfree {om.__version__}.", "",
             "## Smallest positive eigenvalue of H (x = y, uniform weights)", "",
             "Measured: `spectrum(coupling, 2).smallest_eigenvalue / N` (block Lanczos, "
             "Sinkhorn tol 1e-12, at most 50,000 iterations; couplings that stop there are "
             "kept, `throw=False`). Circle: exact circulant value and Example 12's "
             "asymptotics (large N: `(1 - I1/I0(2/eps)) / N`; small eps: "
             "`(2/N)(1 - cos(2pi/N)) exp(-4 sin^2(pi/N)/eps)`). Values below ~1e-16/N "
             "are at rounding level.", "",
             "| data | N | eps | lambda_min (Lanczos) | exact | large-N asympt. | small-eps asympt. |",
             "|---|---|---|---|---|---|---|"]
    for name, num, e, meas, exact, big, small in rows1:
        fmt = (lambda z: "" if np.isnan(z) else f"{z:.3e}")
        lines.append(f"| {name} | {num} | {e} | {meas:.3e} | {fmt(exact)} | {fmt(big)} | {fmt(small)} |")
    lines += ["", f"## CG iterations with deflation (n = m = {n}, d = 2, uniform square, "
              f"eps = {eps}, rtol 1e-8)", "",
              f"Sinkhorn: {sk_iters} iterations, marginal error {sk_err:.1e}. CG iterations "
              f"of `hvp_x` along {len(rows2[0][1])} Gaussian directions v (mean; ratio: mean "
              "over mean of plain CG). Times: direction 0, median, compile excluded; "
              "`set-up` is `solver.init(h_operator(coupling), {})`, done once per coupling and "
              "passed to every HVP as `solver_state` (k = 0: `CG`, H's marginals only; k > 0: "
              "`SpectralCG(rank=k)`, which also runs the block Lanczos, default oversample 10, "
              "8 Krylov blocks); `error` is the largest relative difference of the HVPs to "
              "plain CG's (to dense in the smoke run).", "",
              "| k | CG iterations per direction | mean | ratio to k = 0 | converged | set-up [s] "
              "| per HVP [s] | set-up + 10 HVPs [s] | error | max Ritz residual |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    plain = statistics.mean(rows2[0][1])
    for k, steps, conv, setup, per, ten, err, res, _ in rows2:
        mean = statistics.mean(steps)
        lines.append(f"| {k} | {', '.join(map(str, steps))} | {mean:.1f} | {mean / plain:.3f} | "
                     f"{conv} | {setup:.2f} | {per:.3f} | {ten:.2f} | {err:.1e} | {res:.1e} |")
    lines += ["", "CG iterations of `lineax.linear_solve(h_operator(coupling), "
              "concatenate([r, s]), solver, state=state)` for "
              f"{len(rows2[0][8])} random right-hand sides `r, s ~ N(0, I)` of the H-system "
              "(not from an HVP):", "",
              "| k | CG iterations per right-hand side | mean | ratio to k = 0 |", "|---|---|---|---|"]
    plain_rhs = statistics.mean(rows2[0][8])
    for k, *_, rhs_steps in rows2:
        mean = statistics.mean(rhs_steps)
        lines.append(f"| {k} | {', '.join(map(str, rhs_steps))} | {mean:.1f} | "
                     f"{mean / plain_rhs:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = pathlib.Path(args.out) if args.out else RESULTS / f"conditioning_{tag}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, name in zip(axes[:2], ["circle", "square"]):
        for num in sorted({r[1] for r in rows1}):
            sel = [r for r in rows1 if r[0] == name and r[1] == num]
            e = [r[2] for r in sel]
            line, = ax.loglog(e, [max(r[3], 1e-300) for r in sel], "o-", label=f"N={num}")
            if name == "circle":
                ax.loglog(e, [r[4] for r in sel], ":", color=line.get_color())
        ax.set_xlabel("epsilon")
        ax.set_ylabel("smallest positive eigenvalue of H")
        ax.set_title(f"{name} (dotted: exact circulant)" if name == "circle" else name)
        ax.legend(fontsize=7)
    ks = [r[0] for r in rows2]
    axes[2].bar([str(k) for k in ks], [statistics.mean(r[1]) for r in rows2])
    axes[2].set_xlabel("deflated directions k")
    axes[2].set_ylabel("mean CG iterations per HVP (rtol 1e-8)")
    axes[2].set_title(f"n={n}, eps={eps}, uniform square")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
