"""Issue 9's two HVP speed targets against ott-jax, and where our HVP's time goes.

One problem (peers.py's table 2): n = m (default 4,000), d = 3, x, y uniform
in [0,1]^3, epsilon = 0.05 (absolute), float64, squared Euclidean, HVP of
`reg_ot_cost` w.r.t. x along a Gaussian direction; Sinkhorn tol 1e-8, CG
rtol 1e-8 (ott-jax: tol 1e-8, ImplicitDiff defaults, `use_danskin=False`).
Timed in turns in one process (a compiling call first, then `--repeats`
rounds over every case, medians):

- ot_matfree `solve` with plain Sinkhorn (`momentum=None`), the default
  `Sinkhorn()` (adaptive momentum) and `Sinkhorn(anderson=5)`,
- ot_matfree `hvp_x` given the coupling (CG),
- ott-jax's implicit `jax.jvp(jax.grad(reg_ot_cost))` (its solve inside),
- ott-jax's forward solve alone (how much of its HVP is the solve),
- one CG step of ours (`schur_apply`, one streaming pass) and one pass of
  `P @ v`, to split the HVP into `K` CG steps and fixed costs.

Ratios: "HVP given the coupling" = ott-jax HVP / our `hvp_x`; "including
our solve" = ott-jax HVP / (our solve + our `hvp_x`), per solver variant.

    python benchmarks/hvp_vs_ott.py                    # n = 4,000
    python benchmarks/hvp_vs_ott.py --smoke --out /tmp/h.md

Saves `results/hvp_vs_ott_n<n>_<device>.md`.
"""

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as common  # noqa: E402
from _peers import ott_jax, ours  # noqa: E402

from ot_matfree._stream.engine import apply, schur_apply  # noqa: E402

EPS, TOL, RTOL = 0.05, 1e-8, 1e-8


def rounds(calls: dict, repeats: int, log) -> tuple[dict, dict]:
    """`(median seconds, last output)` of each call, timed in turns after a warm-up."""
    outs, times = {}, {k: [] for k in calls}
    for k, fn in calls.items():
        t0 = time.perf_counter()
        outs[k] = jax.block_until_ready(fn())
        log(f"  warm-up {k}: {time.perf_counter() - t0:.2f} s")
    for r in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            outs[k] = jax.block_until_ready(fn())
            times[k].append(time.perf_counter() - t0)
        log(f"  round {r + 1}: " + ", ".join(f"{k} {ts[-1]:.2f}" for k, ts in times.items()))
    return {k: statistics.median(ts) for k, ts in times.items()}, outs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.n, args.repeats = 300, 1
    n = args.n
    out = pathlib.Path(args.out) if args.out else (
        HERE / "results" / f"hvp_vs_ott_n{n}_{jax.devices()[0].platform}.md")

    def log(msg):
        print(msg, flush=True)

    rng = np.random.default_rng(2)  # peers.py's table-2 problem
    x, y = rng.uniform(size=(n, 3)), rng.uniform(size=(n, 3))
    v = rng.standard_normal((n, 3))
    xj, yj, vj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(v)

    variants, skipped = ours.sinkhorn_variants()
    wanted = {"Sinkhorn (plain)": "Sinkhorn(momentum=None)", "Sinkhorn momentum (adaptive)":
              'Sinkhorn() (adaptive momentum)', "Sinkhorn Anderson (m = 5)": "Sinkhorn(anderson=5)"}
    solvers = {label: ours.solver(TOL, **variants[name])
               for name, label in wanted.items() if name in variants}
    coupling = jax.block_until_ready(ours.solve(xj, yj, EPS, solvers["Sinkhorn(momentum=None)"]))
    calls = {f"solve {label}": (lambda s=s: ours.solve(xj, yj, EPS, s))
             for label, s in solvers.items()}
    calls["hvp_x given the coupling"] = lambda: ours.hvp(coupling, vj, RTOL)
    one_step = jax.jit(lambda c, z: schur_apply(c, z, 1 / c.a)[1])
    one_apply = jax.jit(lambda c, z: apply(c, v=z)[0])
    z = jnp.asarray(rng.standard_normal(n))
    calls["one CG step (schur_apply pass)"] = lambda: one_step(coupling, z)
    calls["one P @ v pass"] = lambda: one_apply(coupling, z)
    ok, why = ott_jax.available()
    if ok:
        ott_hvp = ott_jax.implicit_hvp(yj, EPS, TOL)
        ott_fwd = ott_jax.forward_solver("ott-jax Sinkhorn", TOL)
        calls[f"ott-jax {why} implicit jvp(grad), solve inside"] = lambda: ott_hvp(xj, vj)
        calls[f"ott-jax {why} forward solve alone"] = lambda: ott_fwd(xj, yj, EPS)
    t, outs = rounds(calls, args.repeats, log)
    load = os.getloadavg()

    hv, stats = outs["hvp_x given the coupling"]
    steps = int(stats["num_steps"])
    t_hvp = t["hvp_x given the coupling"]
    t_step = t["one CG step (schur_apply pass)"]
    rows = []
    for label in solvers:
        c = outs[f"solve {label}"]
        rows.append([f"ot_matfree solve, {label}", common.fmt(t[f"solve {label}"], 3),
                     f"{int(c.num_iters)} it., marginal err {float(c.marginal_error):.1e}",
                     "", ""])
    rows.append(["ot_matfree hvp_x given the coupling (CG)", common.fmt(t_hvp, 3),
                 f"{steps} CG steps, {steps + 3} passes", "1", ""])
    rows.append(["  one CG step (one pass, `schur_apply`)", common.fmt(t_step, 3), "", "", ""])
    rows.append(["  one `P @ v` pass (`apply`)", common.fmt(t["one P @ v pass"], 3), "", "", ""])
    summary = []
    if ok:
        name = f"ott-jax {why} implicit jvp(grad), solve inside"
        t_ott = t[name]
        err = float(jnp.linalg.norm(hv - outs[name]) / jnp.linalg.norm(outs[name]))
        ratios = "; ".join(f"{t_ott / (t[f'solve {label}'] + t_hvp):.2f} with {label}"
                           for label in solvers)
        rows.append([name, common.fmt(t_ott, 3), f"rel. diff. to ours {err:.1e}",
                     f"{t_ott / t_hvp:.1f}", ratios])
        fwd = outs[f"ott-jax {why} forward solve alone"]
        rows.append([f"ott-jax {why} forward solve alone", common.fmt(t[f"ott-jax {why} forward "
                     "solve alone"], 3), f"{int(fwd[2])} it.", "", ""])
        summary = [
            f"- HVP given the coupling: ott-jax / ours = **{t_ott / t_hvp:.1f}x** (target 30x).",
            "- HVP including our solve: ott-jax / (our solve + our HVP) = "
            + ", ".join(f"**{t_ott / (t[f'solve {label}'] + t_hvp):.2f}x** with `{label}`"
                        for label in solvers) + " (target 5x).",
            f"- Where our HVP's time goes: {steps} CG steps x {t_step:.3f} s = "
            f"{steps * t_step:.2f} s ({steps * t_step / t_hvp:.0%}), the rest "
            f"({t_hvp - steps * t_step:.2f} s, {(t_hvp - steps * t_step) / t_step:.1f} "
            "CG steps' worth) the 3 passes around CG (right-hand side with its reduction, "
            "final residual with the recovery, output; the first and last carry the "
            "per-pair terms) and the rest of the solve.",
            f"- ott-jax's forward solve alone takes {t[f'ott-jax {why} forward solve alone']:.2f}"
            f" s of its HVP's {t_ott:.2f} s.",
        ]
    for name, reason in skipped.items():
        if name in wanted:
            rows.append([f"ot_matfree solve, {wanted[name]}", "skipped", reason, "", ""])
    text = (
        f"# HVP against ott-jax at n = {n} (issue 9's targets)\n\n"
        f"n = m = {n}, d = 3, x, y uniform in [0,1]^3 (peers.py's table-2 problem), "
        f"epsilon = {EPS} (absolute), float64, squared Euclidean; Sinkhorn tol {TOL:g}, "
        f"CG rtol {RTOL:g}; ott-jax tol {TOL:g}, ImplicitDiff defaults, use_danskin=False. "
        f"Device {common.device_string()}; load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} (1 / 5 / 15 min) when written: the cores were shared, absolute "
        f"times are pessimistic; every case timed in turns in one process (compile "
        f"excluded, median of {args.repeats}), so the ratios are comparable.\n\n"
        + common.markdown_table(["case", "time (s)", "details", "ott-jax / ours, HVP given "
                                 "the coupling", "ott-jax / ours, including our solve"], rows)
        + "\n\n" + "\n".join(summary) + "\n"
    )
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
