"""Float32 robustness of the matrix-free HVP (issue 3, item 5).

For each size n and epsilon: points uniform in [0, 1]^3 (x and y independent,
n = m, uniform weights), one Gaussian direction v. The reference is the
float64 HVP `hvp_x` with a tight Sinkhorn (tol 1e-10) and CG (rtol 1e-10);
every float32 result (its own float32 Sinkhorn at tol 1e-5, the same max
iteration cap, then `hvp_x` with each solver at rtol 1e-5) is compared with
it: `|hv32 - hv64| / |hv64|`. ott-jax's implicit HVP
(`jax.jvp(jax.grad(reg_ot_cost))`, `ImplicitDiff()` defaults: lineax
NormalCG, rtol = atol = 1e-6) is run in float32 at the small sizes, where its
O(nm) memory fits.

    python benchmarks/float32.py            # full run (slow on a CPU)
    python benchmarks/float32.py --smoke    # tiny sizes, < 60 s
"""

import argparse
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as common  # noqa: E402

import ot_matfree  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def make_problem(seed, n, d=3):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = common.uniform_cloud(k1, n, d)
    y = common.uniform_cloud(k2, n, d)
    w = jnp.full((n,), 1 / n, jnp.float64)
    v = jax.random.normal(k3, (n, d), jnp.float64)
    return x, y, w, w, v


def ott_hvp(x, y, a, b, v, eps, *, threshold, max_iterations):
    """ott-jax's implicit HVP in x, with the Sinkhorn diagnostics."""

    def cost(x_):
        return common.ott_sinkhorn(
            x_, y, a, b, eps, threshold=threshold, max_iterations=max_iterations
        ).reg_ot_cost

    @jax.jit
    def run(x_, v_):
        out = common.ott_sinkhorn(x_, y, a, b, eps, threshold=threshold, max_iterations=max_iterations)
        _, hv = jax.jvp(jax.grad(cost), (x_,), (v_,))
        return hv, out.n_iters, out.converged

    return run(x, v)


def run_case(n, eps, *, seed, max_iters, solvers32, ott_sizes, repeats, log, check64=True):
    x, y, a, b, v = make_problem(seed, n)
    rows = []

    # float64 reference. throw=False throughout: Sinkhorn or CG stopping short
    # is recorded in the table (`conv`, steps, residual), not raised.
    t0 = time.perf_counter()
    c64 = common.block(
        ot_matfree.solve(x, y, a, b, epsilon=eps, throw=False,
                         solver=ot_matfree.Sinkhorn(tol=1e-10, max_iters=max_iters))
    )
    t_sk64 = time.perf_counter() - t0
    sol64 = common.block(
        ot_matfree.hvp_x_solution(c64, v, throw=False,
                                  linear_solver=ot_matfree.CG(rtol=1e-10, max_steps=5000))
    )
    ref, st64 = sol64.value, sol64.stats
    log(
        f"n={n} eps={eps}: f64 sinkhorn {int(c64.num_iters)} it, err {float(c64.marginal_error):.1e},"
        f" conv {bool(c64.converged)} ({t_sk64:.1f}s); CG {int(st64['num_steps'])} steps"
    )
    base = dict(
        n=n, eps=eps,
        sk64_iters=int(c64.num_iters), sk64_err=float(c64.marginal_error), sk64_conv=bool(c64.converged),
        cg64_steps=int(st64["num_steps"]), cg64_res=float(st64["residual"]),
    )

    # float32, our solvers.
    x32, y32, a32, b32, v32 = (t.astype(jnp.float32) for t in (x, y, a, b, v))
    t0 = time.perf_counter()
    c32 = common.block(
        ot_matfree.solve(
            x32, y32, a32, b32, epsilon=eps, throw=False,
            solver=ot_matfree.Sinkhorn(tol=1e-5, max_iters=max_iters),
        )
    )
    t_sk32 = time.perf_counter() - t0
    for name, solver in solvers32.items():
        common.prepare(solver, c32)  # compile the set-up
        solver, state, setup = common.prepare(solver, c32)
        sol, secs = common.timed(
            ot_matfree.hvp_x_solution, c32, v32, linear_solver=solver, solver_state=state,
            throw=False, repeats=repeats,
        )
        hv, stats = sol.value, sol.stats
        hv = np.asarray(hv, np.float64)
        rows.append(
            dict(
                base, method=f"ot_matfree {name}", dtype="float32",
                sk_iters=int(c32.num_iters), sk_err=float(c32.marginal_error), sk_conv=bool(c32.converged),
                steps=int(stats["num_steps"]), residual=float(stats["residual"]),
                finite=bool(np.all(np.isfinite(hv))), rel_err=common.rel_err(hv, ref), seconds=secs,
                sk_seconds=t_sk32, setup=setup,
            )
        )
        log(f"   f32 {name}: rel err {rows[-1]['rel_err']:.2e}, steps {rows[-1]['steps']}, {secs:.2f}s (+ setup {setup:.2f}s)")

    # ott-jax implicit, float32 (and float64 as a check of the reference).
    if n in ott_sizes:
        checks = [(jnp.float32, 1e-5)]
        if check64 and n == min(ott_sizes):  # float64 agreement check of the reference, once
            checks.append((jnp.float64, 1e-10))
        for dtype, thr in checks:
            args = [t.astype(dtype) for t in (x, y, a, b, v)]
            try:
                t0 = time.perf_counter()
                hv, iters, conv = common.block(
                    ott_hvp(*args, eps, threshold=thr, max_iterations=max_iters)
                )
                secs = time.perf_counter() - t0  # includes compilation
                hv = np.asarray(hv, np.float64)
                row = dict(
                    base, method="ott-jax implicit (jvp of grad)", dtype=jnp.dtype(dtype).name,
                    sk_iters=int(iters), sk_err=None, sk_conv=bool(conv), steps=None, residual=None,
                    finite=bool(np.all(np.isfinite(hv))),
                    rel_err=common.rel_err(hv, ref) if np.all(np.isfinite(hv)) else float("nan"),
                    seconds=None, sk_seconds=secs,
                )
            except Exception as exc:  # e.g. out of memory: record, do not hide
                row = dict(base, method="ott-jax implicit (jvp of grad)", dtype=jnp.dtype(dtype).name,
                           error=f"{type(exc).__name__}: {str(exc)[:80]}")
            rows.append(row)
            log(f"   ott {row['dtype']}: finite {row.get('finite')}, rel err {row.get('rel_err')}")
    return rows


def to_markdown(rows, meta):
    header = [
        "n", "eps", "method", "dtype", "Sinkhorn it (conv)", "marg. err",
        "f64 ref: Sinkhorn it / err / CG steps", "solver steps", "residual", "finite",
        "rel. err vs f64", "HVP s (median)", "set-up s",
    ]
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["n"], r["eps"], r["method"], r["dtype"]] + ["-"] * 6 + [r["error"], "-", "-"])
            continue
        body.append([
            r["n"], r["eps"], r["method"], r["dtype"],
            f"{r['sk_iters']} ({common.fmt(r['sk_conv'])})", r["sk_err"],
            f"{r['sk64_iters']}{'' if r['sk64_conv'] else ' (NOT conv.)'} / {common.fmt(r['sk64_err'])}"
            f" / {r['cg64_steps']}",
            r["steps"], r["residual"], common.fmt(r["finite"]), r["rel_err"], r["seconds"], r.get("setup"),
        ])
    text = [
        "# Float32 vs float64 Hessian-vector products",
        "",
        f"- device: {meta['device']}",
        f"- problem: x, y independent, uniform in [0, 1]^3 (d = 3), n = m, uniform weights, "
        f"seed {meta['seed']}; direction v ~ N(0, I) (n x 3); epsilon absolute "
        f"(the mean squared distance is 0.5).",
        "- reference: float64 `hvp_x` on a float64 Sinkhorn (tol 1e-10 on |P1 - a|_1) with "
        "CG(rtol=1e-10).",
        "- float32: own float32 Sinkhorn (tol 1e-5), then `hvp_x` with the named solver "
        "(rtol 1e-5). Rel. err = |hv32 - hv64| / |hv64|; it includes the float32 Sinkhorn's "
        "stopping error.",
        f"- Sinkhorn max_iters = {meta['max_iters']} for both dtypes (`conv` says whether "
        "the tolerance was reached).",
        "- ott-jax: `jax.jvp(jax.grad(reg_ot_cost))` through `Sinkhorn(lse_mode=True, "
        "implicit_diff=ImplicitDiff(), use_danskin=False)` (lineax NormalCG, rtol = atol = 1e-6), "
        "threshold 1e-5 in float32 / 1e-10 in float64; its time column is left out "
        "(one call, compilation included). Its float64 row (smallest size only) checks the reference.",
        f"- HVP time: median of {meta['repeats']} warm runs (after one compiling run), "
        "`block_until_ready`. Every solver is set up once per coupling with "
        "`solver.init(h_operator(coupling), {})` (H's marginals, one streaming pass; for "
        "SpectralCG and TruncatedSVD also the top-k spectrum of Pt by block Krylov) and the "
        "state is passed to every HVP (`solver_state=`); that set-up is timed separately (one "
        "warm run) and not included in the HVP time; rank k = 20, TruncatedSVD threshold 1e-8. "
        "All solves use `throw=False`: failures are recorded, not raised.",
        f"- total wall time of this run: {meta['wall']:.0f} s. {meta.get('note', '')}",
        "",
        common.markdown_table(header, body),
        "",
    ]
    return "\n".join(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 20000])
    p.add_argument("--epsilons", type=float, nargs="+", default=[0.05, 0.005])
    p.add_argument("--ott-sizes", type=int, nargs="+", default=[1000, 3000])
    p.add_argument("--max-iters", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None, help="markdown file to write")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.ott_sizes, args.repeats = [200, 400], [200], 1
        args.epsilons = [0.05]
    out = args.out or RESULTS / ("float32_smoke.md" if args.smoke else "float32_cpu.md")

    solvers32 = common.matrix_free_solvers(32)
    t_start = time.perf_counter()
    rows = []
    for eps in args.epsilons:
        for n in args.sizes:
            rows += run_case(
                n, eps, seed=args.seed, max_iters=args.max_iters, solvers32=solvers32,
                ott_sizes=set(args.ott_sizes), repeats=args.repeats, check64=not args.smoke,
                log=lambda s: print(s, flush=True),
            )
    meta = dict(device=common.device_string(), seed=args.seed, max_iters=args.max_iters,
                repeats=args.repeats, wall=time.perf_counter() - t_start, note=args.note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, meta))
    print(f"wrote {out}")
    ours = [r for r in rows if r["method"].startswith("ot_matfree")]
    if not all(r["finite"] for r in ours):
        print("FAILURE: a float32 ot_matfree HVP is not finite", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
