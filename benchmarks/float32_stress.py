"""Float32 stress table (issue 11, section 3): where does float32 break?

Every case is run in float32 and, as the reference, in float64 on the same
points (made in float32 and upcast, so that the quantisation of points far
from the origin is not counted as error). Per dtype: `solve`, its
`reg_ot_cost`, `grad_x` and one `hvp_x` with `CG`, all with `throw=False`;
the statuses (`ot_matfree.RESULTS`) are recorded, not raised.

Cases (d = 3, n = m, uniform weights, points uniform in [0, 1]^3 and then
shifted by `offset * (1, 1, 1)`; epsilon = factor x mean squared distance):

- `indep`: x and y independent;
- `dup`: x has repeated rows (n / 2 distinct points, each twice), y independent;
- `same`: y = x (every point has a zero-cost partner).

The script checks two things and exits with status 1 if either fails:

1. no float32 output that its status reports as converged (Sinkhorn for the
   cost and gradient, Sinkhorn and CG for the HVP) is non-finite;
2. no converged float32 output, compared with a converged float64
   reference, has a relative error above its bound: `COST_BOUND` for the
   cost, `bound = max(FLOOR, SAFETY * kappa * TOL32)` for the gradient and
   the HVP, where `kappa = 2 / (1 - s_2)` is the condition number of the
   normalised H-matrix of the reference coupling, estimated by
   `ot_matfree.spectrum(c, 1, num_blocks=4)` (4 Krylov blocks: a lower estimate
   when s_2 is close to 1, which makes the bound stricter, not looser).
   A Sinkhorn stopped at marginal error `TOL32` leaves potentials (hence
   `P`, the gradient and the HVP's right-hand side) off by about
   `kappa * TOL32`: the stopping rule promises no more.

    python benchmarks/float32_stress.py --smoke --out /tmp/s.md     # CI, tiny
    python benchmarks/float32_stress.py --grid full                 # the saved table
    python benchmarks/float32_stress.py --case indep 20000 1 1e4 --out c.md   # one case
    python benchmarks/float32_stress.py --from-json a.json b.json --out t.md   # merge runs
"""

import argparse
import csv
import datetime
import json
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common as common  # noqa: E402

import ot_matfree as om  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
D = 3
TOL64, RTOL64 = 1e-8, 1e-10
TOL32, RTOL32 = 1e-5, 1e-5
COST_BOUND, FLOOR, SAFETY = 1e-4, 1e-3, 10.0

#: (kind, n, epsilon factor, offset). `full`: every axis at n = 1,000 (epsilon
#: factor 0.001 for `indep` only: its float64 reference alone takes minutes);
#: epsilon factors 1 to 0.01 and one setting of each other axis at n = 5,000;
#: at n = 20,000 every axis at the cheapest factor (1), and factor 0.1 (the
#: float64 reference costs seconds per streaming pass there on 2 cores).
GRIDS = {
    "smoke": [("indep", 150, 0.1, 0.0), ("indep", 150, 0.01, 1e4), ("dup", 150, 0.1, 0.0),
              ("same", 150, 0.1, 0.0)],
    "full": [
        *[("indep", 1000, e, 0.0) for e in (1.0, 0.1, 0.01, 0.001)],
        *[("indep", 1000, e, o) for e in (0.1, 0.01) for o in (1e3, 1e4)],
        *[(k, 1000, e, 0.0) for k in ("dup", "same") for e in (0.1, 0.01)],
        *[("indep", 5000, e, 0.0) for e in (1.0, 0.1, 0.01)],
        ("indep", 5000, 0.1, 1e4), ("dup", 5000, 0.1, 0.0), ("same", 5000, 0.1, 0.0),
        ("indep", 20000, 1.0, 0.0), ("same", 20000, 1.0, 0.0), ("indep", 20000, 1.0, 1e4),
        ("dup", 20000, 1.0, 0.0), ("indep", 20000, 0.1, 0.0),
    ],
}


def make_points(kind: str, n: int, offset: float, seed: int):
    """`(x, y, v)` in float32; `v` is the HVP direction."""
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.uniform(kx, (n, D), jnp.float32)
    if kind == "dup":
        x = jnp.concatenate([x[: (n + 1) // 2], x[: n // 2]])
    y = x if kind == "same" else jax.random.uniform(ky, (n, D), jnp.float32)
    shift = jnp.full((D,), offset, jnp.float32)
    return x + shift, y + shift, jax.random.normal(kv, (n, D), jnp.float32)


def mean_cost(x, y) -> float:
    """Mean of `|x_i - y_j|^2` in float64, on points centred first (no
    cancellation far from the origin): `var x + var y + |mean x - mean y|^2`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    centre = x.mean(0)
    x, y = x - centre, y - centre
    return float(x.var(0).sum() + y.var(0).sum() + np.sum((x.mean(0) - y.mean(0)) ** 2))


def finite(a) -> bool:
    """Whether every entry of `a` is finite."""
    return bool(np.all(np.isfinite(np.asarray(a))))


def run_dtype(x, y, v, eps, *, tol, rtol, max_iters):
    """Solve, cost, gradient and one CG HVP in the dtype of `x` (throw=False)."""
    t0 = time.perf_counter()
    c = common.block(om.solve(x, y, epsilon=eps, solver=om.Sinkhorn(tol=tol, max_iters=max_iters),
                              throw=False))
    grad = common.block(om.grad_x(c, throw=False))
    sol = common.block(om.hvp_x_solution(c, v, linear_solver=om.CG(rtol=rtol, max_steps=5000),
                                         throw=False))
    hv, stats = sol.value, {**sol.stats, "result": sol.result}
    return c, dict(
        sk_result=result_name(c.result), sk_conv=bool(c.converged),
        sk_iters=int(c.num_iters), sk_err=float(c.marginal_error),
        cost=float(c.reg_ot_cost), grad=np.asarray(grad, np.float64),
        hv=np.asarray(hv, np.float64), cg_steps=int(stats["num_steps"]),
        cg_conv=bool(stats["result"] == om.RESULTS.successful),
        cg_result=result_name(stats["result"]), seconds=time.perf_counter() - t0,
    )


def result_name(result) -> str:
    """The member name of an `om.RESULTS` value (`successful`, ...)."""
    names = om.RESULTS._name_to_item  # noqa: SLF001
    return next(name for name in names if bool(result == getattr(om.RESULTS, name)))


def run_case(kind, n, factor, offset, *, seed, max_iters, log):
    x, y, v = make_points(kind, n, offset, seed)
    mc = mean_cost(x, y)
    eps = factor * mc
    up = (t.astype(jnp.float64) for t in (x, y, v))
    c64, ref = run_dtype(*up, eps, tol=TOL64, rtol=RTOL64, max_iters=max_iters)
    kappa = float(om.spectrum(c64, 1, num_blocks=4, throw=False).condition_number)
    _, low = run_dtype(x, y, v, eps, tol=TOL32, rtol=RTOL32, max_iters=max_iters)
    ref_ok = ref["sk_conv"] and ref["cg_conv"]
    bound = max(FLOOR, SAFETY * kappa * TOL32)
    row = dict(
        kind=kind, n=n, eps_factor=factor, epsilon=eps, offset=offset, kappa=kappa,
        ref_sk_iters=ref["sk_iters"], ref_sk_result=ref["sk_result"], ref_sk_err=ref["sk_err"],
        ref_cg_steps=ref["cg_steps"], ref_cg_result=ref["cg_result"], ref_ok=ref_ok,
        ref_seconds=ref["seconds"],
        sk_iters=low["sk_iters"], sk_result=low["sk_result"], sk_err=low["sk_err"],
        cg_steps=low["cg_steps"], cg_result=low["cg_result"], seconds=low["seconds"],
        cost_err=abs(low["cost"] - ref["cost"]) / abs(ref["cost"]),
        grad_err=common.rel_err(low["grad"], ref["grad"]),
        hvp_err=common.rel_err(low["hv"], ref["hv"]),
        cost_finite=bool(np.isfinite(low["cost"])), grad_finite=finite(low["grad"]),
        hvp_finite=finite(low["hv"]), bound=bound,
    )
    row["all_finite"] = row["cost_finite"] and row["grad_finite"] and row["hvp_finite"]
    row["violations"] = violations(row, low)
    log(f"[{kind} n={n} eps={factor:g}x{mc:.3g} offset={offset:g}] kappa {kappa:.2e}; "
        f"f64 {ref['sk_iters']} it {ref['sk_result']}, CG {ref['cg_steps']} {ref['cg_result']} "
        f"({ref['seconds']:.0f}s); f32 {low['sk_iters']} it {low['sk_result']}, CG "
        f"{low['cg_steps']} {low['cg_result']} ({low['seconds']:.0f}s); errors cost "
        f"{row['cost_err']:.1e} grad {row['grad_err']:.1e} hvp {row['hvp_err']:.1e}; "
        f"violations: {row['violations'] or 'none'}")
    return row


def violations(row, low) -> list[str]:
    """What breaks the two rules of the module docstring, in words."""
    out = []
    checks = [  # (name, reported converged, finite, error, bound)
        ("cost", low["sk_conv"], row["cost_finite"], row["cost_err"], COST_BOUND),
        ("grad", low["sk_conv"], row["grad_finite"], row["grad_err"], row["bound"]),
        ("hvp", low["sk_conv"] and low["cg_conv"], row["hvp_finite"], row["hvp_err"], row["bound"]),
    ]
    for name, conv, fin, err, bound in checks:
        if conv and not fin:
            out.append(f"{name} non-finite but reported converged")
        elif conv and row["ref_ok"] and not err <= bound:
            out.append(f"{name} rel. err {err:.1e} > bound {bound:.1e} but reported converged")
    return out


def status(result, iters):
    return f"{iters} ok" if result == "successful" else f"{iters} **{result}**"


def to_markdown(rows, meta):
    header = ["setting", "n", "eps factor (eps)", "offset", "kappa (est.)",
              "f64 ref: Sinkhorn / CG",
              "f32 Sinkhorn it / status", "f32 marg. err", "cost rel. err", "grad rel. err",
              "HVP rel. err", "f32 CG steps / status", "bound", "all finite", "violations"]
    body = [[r["kind"], r["n"], f"{r['eps_factor']:g} ({common.fmt(r['epsilon'])})",
             f"{r['offset']:g}", r["kappa"],
             f"{status(r['ref_sk_result'], r['ref_sk_iters'])} / "
             f"{status(r['ref_cg_result'], r['ref_cg_steps'])}",
             status(r["sk_result"], r["sk_iters"]), r["sk_err"], r["cost_err"], r["grad_err"],
             r["hvp_err"], status(r["cg_result"], r["cg_steps"]), r["bound"], r["all_finite"],
             "; ".join(r["violations"]) or "none"] for r in rows]
    text = [
        "# Float32 stress table: float32 against float64 on the same points",
        "",
        f"- {meta['date']}; device {meta['device']}; wall time {meta['wall']:.0f} s "
        "(shared cores); "
        f"grid `{meta['grid']}`, seed {meta['seed']}, d = {D}, n = m, uniform weights.",
        *([f"- {meta['note']}"] if meta.get("note") else []),
        "- Points uniform in [0, 1]^3 (made in float32, upcast for the reference) shifted by "
        "offset x (1, 1, 1); `indep`: y independent; `dup`: x has each of n/2 points twice; "
        "`same`: y = x. eps = factor x mean squared distance (about 0.5). HVP direction "
        "v ~ N(0, I).",
        f"- float64 reference: Sinkhorn tol {TOL64:g} (L1 marginal error), CG rtol {RTOL64:g}. "
        f"float32: Sinkhorn tol {TOL32:g}, CG rtol {RTOL32:g}, max_steps 5000. Sinkhorn "
        f"max_iters {meta['max_iters']} (both). Everything with `throw=False`: a status other "
        "than `successful` is shown in bold.",
        "- kappa = 2 / (1 - s_2), the reference coupling's normalised H condition number, "
        "estimated by `ot_matfree.spectrum(c, 1, num_blocks=4)` (4 Krylov blocks): "
        "a lower estimate when "
        "s_2 is close to 1 (n = 1,000, factor 0.01: 63 against 182 with 16 or 64 blocks), so "
        "the bound is stricter than intended, never looser. Errors are relative (2-norm) "
        "against the reference. "
        f"Bound for converged float32 outputs against a converged reference: cost {COST_BOUND:g}; "
        f"gradient and HVP max({FLOOR:g}, {SAFETY:g} x kappa x {TOL32:g}) (column `bound`).",
        "",
        common.markdown_table(header, body),
        "",
    ]
    return "\n".join(text)


def write(out, rows, meta):
    """Markdown, CSV and JSON of the rows so far (a long run keeps its rows)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_markdown(rows, meta))
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "violations": "; ".join(r["violations"])} for r in rows)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the tiny CI grid (same as --grid smoke)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="full")
    p.add_argument("--sizes", type=int, nargs="*", help="run only the grid's cases of these n")
    p.add_argument("--case", nargs=4, action="append", metavar=("KIND", "N", "FACTOR", "OFFSET"),
                   help="run this case instead of a grid (repeatable)")
    p.add_argument("--max-iters", type=int, default=20_000, help="Sinkhorn cap (both dtypes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None, help="markdown file (+ .csv, .json)")
    p.add_argument("--from-json", type=pathlib.Path, nargs="+",
                   help="run nothing: merge these saved runs' rows into --out")
    args = p.parse_args(argv)
    if args.from_json:
        runs = [json.loads(f.read_text()) for f in args.from_json]
        meta = {**runs[0]["meta"], "wall": sum(r["meta"]["wall"] for r in runs),
                "note": "merged from " + ", ".join(f"{f.name} ({r['meta']['date']})"
                                                   for f, r in zip(args.from_json, runs))}
        rows = [row for r in runs for row in r["rows"]]
        write(args.out, rows, meta)
        return 1 if any(r["violations"] for r in rows) else 0
    grid = "smoke" if args.smoke else args.grid
    todo = [c for c in GRIDS[grid] if not args.sizes or c[1] in args.sizes]
    if args.case:
        grid = "cases"
        todo = [(k, int(n), float(e), float(o)) for k, n, e, o in args.case]
    out = args.out or RESULTS / f"float32_stress_{grid}_cpu.md"
    meta = dict(date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                device=common.device_string(), grid=grid, seed=args.seed,
                max_iters=args.max_iters)
    t0 = time.perf_counter()
    rows = []
    for kind, n, factor, offset in todo:
        rows.append(run_case(kind, n, factor, offset, seed=args.seed, max_iters=args.max_iters,
                             log=lambda s: print(s, flush=True)))
        write(out, rows, {**meta, "wall": time.perf_counter() - t0})
    print(f"wrote {out} (+ .csv, .json)")
    bad = [(r["kind"], r["n"], r["eps_factor"], r["offset"], r["violations"]) for r in rows
           if r["violations"]]
    for case in bad:
        print("VIOLATION", *case, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
