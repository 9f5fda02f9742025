"""ot_matfree against its peers, each on its own ground, in one run (issue 9).

Three tables, every peer and ot_matfree interleaved in the same process
(warm-up call first, then `repeats` rounds over all cases, median reported):

1. Value + gradient w.r.t. x of the OT cost (ott-jax `reg_ot_cost`, POT
   `ot.solve(..., reg_type="KL", grad="envelope")`) and of the Sinkhorn
   divergence (GeomLoss "tensorized" and KeOps "online"), x, y uniform in
   [0,1]^3, n = m, float32 and float64, epsilon = 0.05 (absolute), squared
   Euclidean. Errors against ot_matfree in float64 at tol 1e-10.
2. HVP w.r.t. x of the OT cost: ot_matfree `solve` + `hvp_x` (CG), ott-jax
   implicit `jax.jvp(jax.grad)` (its solve inside), the dense analytic
   Hessian (Li, Lu, Tao & Ye; ours `hessian_x`, with and without their
   truncated-SVD cut-off) at small n; ott-jax's memory in a capped child
   process at larger n, and ot_matfree alone at n = 20,000.
3. Forward solvers at small epsilon (n = 3,000, d = 2, uniform square,
   epsilon in {0.01, 0.002}, L1 marginal error 1e-6): ot_matfree `solve`
   (every `om.Sinkhorn` variant listed in `_peers/ours.py` that this version
   has), ott-jax plain / momentum / Anderson, POT `sinkhorn_log`, regot's
   Newton-type and L-BFGS solvers. Final L1 marginal errors are recomputed by
   one dense routine for every solver.

Memory: peak RSS above the RSS before the call, sampled every 2 ms by a thread
(`_peers/_memory.py`); for JAX cases in a separate call after compilation.

    python benchmarks/peers.py                 # all tables, results/peers_*_cpu2.*
    python benchmarks/peers.py --tables 3      # one table
    python benchmarks/peers.py --quick --out /tmp/peers   # tiny sizes, 1 repeat (smoke test)

Peers are optional (`pip install ".[bench]"`); a missing one is skipped with
its reason in the tables.
"""

import argparse
import csv
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# glibc must hand large freed buffers back to the system for the RSS deltas
# to mean anything (see _peers/_memory.py): re-execute once with a fixed
# mmap threshold.
if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None and __name__ == "__main__":
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _peers import flashsinkhorn, geomloss_keops, ours, ott_jax, pot, regot_solvers  # noqa: E402
from _peers._memory import PeakRSS  # noqa: E402

EPS = 0.05


# --------------------------------------------------------------------------- harness


class Case:
    """One thing to time: `fn()` returns its (blocked) output. `jax_compiled`:
    its first call compiles, so memory is measured in an extra call."""

    def __init__(self, name, fn, *, group="", jax_compiled=True, meta=None):
        self.name, self.fn, self.group = name, fn, group
        self.jax_compiled = jax_compiled
        self.meta = meta or {}
        self.out = None
        self.error = None
        self.times = []
        self.mem_mb = None


def _block(out):
    return jax.block_until_ready(out)


DEADLINE = None  # wall-clock time (time.time()) after which no new call starts


def _late(c):
    """True (and the case marked) if the time budget (`--deadline`) is spent."""
    if DEADLINE is not None and time.time() > DEADLINE:
        if not c.times and not c.error:
            c.error = "not run: time budget of this run (--deadline) spent"
        return True
    return False


def run_interleaved(cases, repeats, log, *, compiled=False):
    """Warm up every case, then `repeats` rounds over all cases. Memory is
    sampled during the warm-up of cases with nothing to compile, else during
    the last timed round.

    `compiled=True`: every JAX case was compiled by an earlier call (same
    shapes), so no case needs a separate warm-up call."""
    if compiled:
        for c in cases:
            c.jax_compiled = False
    for c in cases:
        if _late(c):
            continue
        try:
            t0 = time.perf_counter()
            if c.jax_compiled:
                c.out = _block(c.fn())
            else:  # nothing to compile: the warm-up call is the memory call and a timed run
                with PeakRSS() as p:
                    c.out = _block(c.fn())
                c.mem_mb = p.delta_mb
                c.times.append(time.perf_counter() - t0)
            log(f"  warm-up {c.name}: {time.perf_counter() - t0:.2f} s")
        except Exception as exc:  # a peer failing is a result, not a crash
            c.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            log(f"  FAILED {c.name}: {c.error}")
    for r in range(repeats):
        for c in cases:
            if c.error or len(c.times) >= repeats or _late(c):
                continue
            with PeakRSS() as p:
                t0 = time.perf_counter()
                c.out = _block(c.fn())
                c.times.append(time.perf_counter() - t0)
            if c.mem_mb is None or r == repeats - 1:
                c.mem_mb = p.delta_mb if c.mem_mb is None else max(c.mem_mb, p.delta_mb)
        log(f"  round {r + 1}/{repeats} done")


def _err(c):
    return c.error if c.error.startswith("not run") else f"failed: {c.error}"


def median(c):
    return statistics.median(c.times) if c.times else float("nan")


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else "inf"
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits + 1}g}"


def write_table(path_stem, title, notes, header, rows):
    """Markdown (`.md`) and CSV (`.csv`) with the same rows."""
    md = [f"## {title}", "", *notes, "", "| " + " | ".join(header) + " |",
          "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    text = "\n".join(md) + "\n"
    path_stem.with_suffix(".md").write_text(text)
    with open(path_stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if c is None else c for c in r])
    return text


def device_tag():
    dev = jax.devices()[0]
    cores = len(os.sched_getaffinity(0))
    if flashsinkhorn.available()[0]:  # a CUDA device: FlashSinkhorn runs on it
        return f"{dev.platform}{cores}-cuda"
    return f"{dev.platform}{cores}"


def device_line():
    import platform

    cores = len(os.sched_getaffinity(0))
    load = os.getloadavg()
    return (f"Device: {jax.devices()[0].platform.upper()}, {cores} cores ({platform.machine()}), "
            f"jax {jax.__version__}; load average when written {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1 / 5 / 15 min) — the cores were shared with other jobs, so "
            "absolute times are pessimistic; compare ratios within a table.")


def problem(seed, n, d, dtype=np.float64, v=False):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d))
    y = rng.uniform(size=(n, d))
    out = (x.astype(dtype), y.astype(dtype))
    return out + (rng.standard_normal((n, d)).astype(dtype),) if v else out


def l1_marginal_error(P_or_fg, x, y, epsilon):
    """`|P 1 - a|_1 + |P^T 1 - b|_1` (uniform weights), dense float64, from a
    plan or from potentials `(f, g)` with `P = exp((f_i + g_j - |x_i - y_j|^2) / eps)`."""
    n, m = x.shape[0], y.shape[0]
    if isinstance(P_or_fg, tuple):
        f, g = (np.asarray(t, np.float64) for t in P_or_fg)
        C = ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)
        P = np.exp((f[:, None] + g[None, :] - C) / epsilon)
    else:
        P = np.asarray(P_or_fg, np.float64)
    return float(np.abs(P.sum(1) - 1 / n).sum() + np.abs(P.sum(0) - 1 / m).sum())


# --------------------------------------------------------------------------- table 1


def table1(args, out, log):
    tol = {"float64": 1e-6, "float32": 1e-5}
    rows = []
    records = []
    for n in args.sizes1:
        for dtype in ("float64",) if args.quick else args.dtypes1:
            if DEADLINE is not None and time.time() > DEADLINE:
                rows.append(["-", "not run: time budget of this run (--deadline) spent", n, dtype]
                            + [None] * 6)
                continue
            log(f"[table 1] n = {n}, {dtype}")
            x64, y64 = problem(1, n, 3)
            x, y = x64.astype(dtype), y64.astype(dtype)
            xj, yj = jnp.asarray(x), jnp.asarray(y)
            # References: ot_matfree in float64 at tol 1e-10.
            ref = {loss: _block(ours.value_and_grad(loss, jnp.asarray(y64), EPS, 1e-10)(
                jnp.asarray(x64))) for loss in ("ot", "divergence")}
            t = tol[dtype]
            cases = [
                Case("ot_matfree ot_cost", lambda f=ours.value_and_grad("ot", yj, EPS, t): f(xj),
                     group="ot", meta={"rule": f"L1 row marginal <= {t:g}, every iteration"}),
            ]
            ok, why = ott_jax.available()
            if ok:
                cases.append(Case(f"ott-jax {why} reg_ot_cost (dense PointCloud)",
                                  lambda f=ott_jax.value_and_grad(yj, EPS, t): f(xj), group="ot",
                                  meta={"rule": f"L1 column marginal <= {t:g}, every 10 it."}))
            if ok and not args.quick:
                cases.append(Case(f"ott-jax {why} reg_ot_cost (online, batch_size 256)",
                                  lambda f=ott_jax.value_and_grad(yj, EPS, t, batch_size=256): f(xj),
                                  group="ot", meta={"rule": f"L1 column marginal <= {t:g}, every 10 it."}))
            if not ok:
                rows.append(["ot", f"ott-jax: skipped ({why})", n, dtype] + [None] * 6)
            ok, why = pot.available()
            if ok:
                cases.append(Case(f"POT {why} ot.solve sinkhorn_log (torch, dense)",
                                  pot.value_and_grad(x, y, EPS, t), group="ot", jax_compiled=False,
                                  meta={"rule": f"L2 column marginal <= {t:g}/sqrt(m), every 10 it."}))
            else:
                rows.append(["ot", f"POT: skipped ({why})", n, dtype] + [None] * 6)
            cases.append(Case("ot_matfree sinkhorn_divergence",
                              lambda f=ours.value_and_grad("divergence", yj, EPS, t): f(xj),
                              group="divergence",
                              meta={"rule": f"L1 row marginal <= {t:g}, every iteration"}))
            for backend in ("tensorized",) if args.quick else ("tensorized", "online"):
                ok, why = geomloss_keops.available(backend)
                if not ok:
                    rows.append(["divergence", f"GeomLoss {backend}: skipped ({why})", n, dtype]
                                + [None] * 6)
                    continue
                scalings = [s for s in args.geomloss_scalings
                            if s < 0.98 or (n <= args.geomloss_fine_max_n and dtype == "float64")]
                for s in scalings:
                    cases.append(Case(
                        f"GeomLoss {why.split(',')[0]} {backend}, scaling {s}",
                        geomloss_keops.value_and_grad(x, y, EPS, scaling=s, backend=backend),
                        group="divergence", jax_compiled=backend == "online",  # KeOps compiles
                        meta={"rule": f"epsilon-scaling, ratio {s} per step (no tolerance)"}))
            ok, why = flashsinkhorn.available()
            if ok and dtype == "float32":
                cases.append(Case("FlashSinkhorn SamplesLoss (GPU)",
                                  flashsinkhorn.value_and_grad(x, y, EPS), group="divergence",
                                  jax_compiled=True, meta={"rule": "epsilon-scaling 0.95"}))
            run_interleaved(cases, args.repeats, log)
            base = {}
            for c in cases:
                if c.name.startswith("ot_matfree") and not c.error:
                    base[c.group] = median(c)
            for c in cases:
                if c.error:
                    rows.append([c.group, c.name, n, dtype, _err(c)] + [None] * 5)
                    continue
                val, grad = c.out
                rv, rg = ref[c.group]
                tmed = median(c)
                row = [c.group, c.name, n, dtype, tmed, tmed / base.get(c.group, math.nan), c.mem_mb,
                       rel(val, rv), rel(grad, rg), c.meta.get("rule", "")]
                rows.append(row)
                records.append(dict(zip(HEADER1, row)))
            _write1(args, out, rows)  # after every configuration: partial results survive
    return _write1(args, out, rows), records


def _write1(args, out, rows):
    notes = [
        device_line(),
        f"x, y independent uniform in [0,1]^3, n = m, uniform weights, epsilon = {EPS} (absolute), "
        "cost |x - y|^2 (GeomLoss's |x - y|^2 / 2 with blur = sqrt(epsilon / 2), its value and "
        "gradient doubled). Tolerance 1e-6 (float64) / 1e-5 (float32) in each library's own "
        "stopping rule, converted where needed so that L1 marginal error <= tol.",
        f"Time: value + gradient w.r.t. x, solve included, compile excluded, median of "
        f"{args.repeats} interleaved rounds (fewer where the run's time budget ran out). "
        "ratio: time / ot_matfree's time for the same loss "
        "(> 1: slower than ours). Memory: peak RSS above the pre-call RSS (sampled every 2 ms, "
        "in the warm-up call of peers with nothing to compile, else in the last timed round). "
        "Peers with nothing to compile (POT, GeomLoss tensorized) count their warm-up call as "
        "a timed run; the others are timed after a compiling call.",
        "Errors: relative to ot_matfree in float64 at tol 1e-10 (value; gradient, 2-norm).",
    ]
    return write_table(out / f"peers_grad_{args.tag}", "Table 1: value + gradient", notes, HEADER1,
                       rows)


HEADER1 = ["loss", "method", "n", "dtype", "time (s)", "ratio to ours", "peak RSS (MB)",
           "value rel. err", "grad rel. err", "stopping rule"]


# --------------------------------------------------------------------------- table 2


def ott_probe_child(n, tol):
    """One ott-jax implicit HVP at size n (run in a child process, capped)."""
    x, y, v = problem(2, n, 3, v=True)
    hvp = ott_jax.implicit_hvp(jnp.asarray(y), EPS, tol)
    t0 = time.perf_counter()
    hv = _block(hvp(jnp.asarray(x), jnp.asarray(v)))
    import resource

    return {"n": n, "time_incl_compile_s": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "finite": bool(np.all(np.isfinite(np.asarray(hv))))}


def run_capped(cmd, cap_mb, timeout):
    """Run `cmd`; kill it if its RSS exceeds `cap_mb` or it runs past `timeout` s."""
    from _peers._memory import _PAGE

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, t0, why = 0.0, time.time(), None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/statm") as fh:
                peak = max(peak, int(fh.read().split()[1]) * _PAGE / 1e6)
        except OSError:
            pass
        if peak > cap_mb:
            why = f"killed at the {cap_mb / 1000:.0f} GB cap"
        elif time.time() - t0 > timeout:
            why = f"killed after {timeout} s"
        if why:
            proc.kill()
            proc.wait()
            return {"error": why, "peak_rss_mb": peak}
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        return {"error": stderr.strip().splitlines()[-1][:160] if stderr else "failed",
                "peak_rss_mb": peak}
    return json.loads(stdout.strip().splitlines()[-1])


def table2(args, out, log):
    tol, rtol = 1e-8, 1e-8
    rows, records = [], []
    for n in args.sizes2:
        log(f"[table 2] n = {n}")
        x, y, v = problem(2, n, 3, v=True)
        xj, yj, vj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(v)
        sk = ours.solver(tol)
        coupling = _block(ours.solve(xj, yj, EPS, sk))
        # Reference HVP: the dense Hessian at small n, else ours at tol / rtol 1e-11.
        tight = _block(ours.solve(xj, yj, EPS, ours.solver(1e-11, 50_000)))
        if n <= args.dense_max_n:
            H = np.asarray(ours.dense_hessian(tight))
            ref = np.einsum("iajb,jb->ia", H, v)
            ref_name = "dense analytic Hessian, Sinkhorn tol 1e-11"
            del H
        else:
            ref = np.asarray(ours.hvp(tight, vj, 1e-11)[0])
            ref_name = "ot_matfree, Sinkhorn tol 1e-11, CG rtol 1e-11"
        cases = [
            Case("ot_matfree solve (Sinkhorn tol 1e-8)", lambda: ours.solve(xj, yj, EPS, sk),
                 group="solve"),
            Case("ot_matfree hvp_x given the coupling (CG rtol 1e-8)",
                 lambda: ours.hvp(coupling, vj, rtol), group="hvp"),
        ]
        ok, why = ott_jax.available()
        if ok:
            f = ott_jax.implicit_hvp(yj, EPS, tol)
            cases.append(Case(f"ott-jax {why} implicit jax.jvp(jax.grad), solve inside",
                              lambda f=f: f(xj, vj), group="ott"))
        else:
            rows.append([f"ott-jax: skipped ({why})", n] + [None] * 6)
        if n <= args.dense_max_n:
            cases.append(Case("dense analytic Hessian (Li et al.; ours hessian_x) + matvec",
                              lambda: jnp.einsum("iajb,jb->ia", ours.dense_hessian(coupling), vj),
                              group="dense"))
        if n <= args.dense_max_n and not args.quick:
            cases.append(Case("dense analytic Hessian, TSVD cut-off 1e-8 (Li et al.) + matvec",
                              lambda: jnp.einsum("iajb,jb->ia", ours.dense_hessian(coupling, 1e-8),
                                                 vj), group="dense"))
        ok, why = flashsinkhorn.available()
        if ok:
            cases.append(Case("FlashSinkhorn double backward (GPU, float32, tau2 1e-5)",
                              flashsinkhorn.hvp(x, y, v, EPS), group="flash"))
        run_interleaved(cases, args.repeats, log)
        by = {c.group: c for c in cases}
        t_solve = median(by["solve"])
        t_hvp = median(by["hvp"])
        for c in cases:
            if c.error:
                rows.append([c.name, n, _err(c)] + [None] * 5)
                continue
            t = median(c)
            if c.group == "solve":
                rows.append([c.name, n, t, None, None, c.mem_mb,
                             f"{int(c.out.num_iters)} it., marginal err "
                             f"{float(c.out.marginal_error):.1e}", None])
                continue
            hv = c.out[0] if c.group == "hvp" else c.out
            extra = f"{int(c.out[1]['num_steps'])} CG steps" if c.group == "hvp" else ""
            # ratio to ours: against the HVP alone (given the coupling), and
            # against solve + HVP where the peer solves inside each call.
            r_given = t / t_hvp
            r_total = t / (t_solve + t_hvp)
            if c.group == "hvp":
                r_given, r_total = 1.0, None
            rows.append([c.name, n, t, r_given, r_total, c.mem_mb, extra, rel(hv, ref)])
        rows.append(["ot_matfree solve + one HVP", n, t_solve + t_hvp, None, 1.0,
                     max(by["solve"].mem_mb or 0, by["hvp"].mem_mb or 0), f"reference: {ref_name}",
                     None])
        records += [dict(zip(HEADER2, r)) for r in rows[-len(cases) - 1:]]
    # ott-jax at larger n: one HVP in a child process, capped.
    probes = []
    for n in args.ott_probe:
        log(f"[table 2] ott-jax probe n = {n} (cap {args.ott_cap_gb} GB)")
        r = run_capped([sys.executable, __file__, "--ott-child", str(n)],
                       args.ott_cap_gb * 1000, args.ott_timeout)
        r.setdefault("n", n)
        probes.append(r)
        log(f"  {r}")
        if "error" in r:
            rows.append(["ott-jax implicit, one HVP in a child process", n,
                         f"{r['error']}", None, None, r["peak_rss_mb"], "", None])
        else:
            rows.append(["ott-jax implicit, one HVP in a child process (compile incl.)", n,
                         r["time_incl_compile_s"], None, None, r["peak_rss_mb"],
                         "peak RSS of the whole child", None])
    # ot_matfree alone at large n: one solve + one HVP, compile included.
    for n in args.big:
        log(f"[table 2] ot_matfree alone at n = {n}")
        x, y, v = problem(2, n, 3, v=True)
        xj, yj, vj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(v)
        with PeakRSS() as p:
            t0 = time.perf_counter()
            c = _block(ours.solve(xj, yj, EPS, ours.solver(tol)))
            t1 = time.perf_counter()
            hv, st = _block(ours.hvp(c, vj, rtol))
            t2 = time.perf_counter()
        a = np.full(n, 1 / n)
        ident = rel(np.asarray(hv).sum(0), 2 * (a[:, None] * v).sum(0))
        rows.append(["ot_matfree solve + one HVP (one run, compile included)", n, t2 - t0, None,
                     None, p.delta_mb,
                     f"solve {t1 - t0:.1f} s ({int(c.num_iters)} it.), HVP {t2 - t1:.1f} s "
                     f"({int(st['num_steps'])} CG steps); marginal identity error {ident:.1e}",
                     None])
        records.append(dict(zip(HEADER2, rows[-1])))
    notes = [
        device_line(),
        f"float64, d = 3, x, y independent uniform in [0,1]^3, n = m, epsilon = {EPS} (absolute), "
        "HVP of reg_ot_cost w.r.t. x along a Gaussian direction. Sinkhorn tol 1e-8 (ours: L1 "
        "row marginal, every iteration; ott-jax: L1 column marginal, every 10 iterations); "
        "ott-jax ImplicitDiff defaults (lineax CG, rtol = atol = 1e-6), use_danskin=False.",
        f"Time: median of {args.repeats} interleaved rounds, compile excluded. "
        "'ratio, HVP given coupling': time / our hvp_x time; 'ratio incl. solve': time / our "
        "solve + hvp_x time (ott-jax solves inside each HVP and cannot reuse a coupling). "
        "Memory: peak RSS above the pre-call RSS (sampled every 2 ms); child rows: the child's "
        "whole peak RSS (runtime included, about 0.3 GB).",
        "Error: relative 2-norm error of the HVP against the reference named in the "
        "'ot_matfree solve + one HVP' row.",
    ]
    text = write_table(out / f"peers_hvp_{args.tag}", "Table 2: Hessian-vector products",
                       notes, HEADER2, rows)
    return text, records, probes


HEADER2 = ["method", "n", "time (s)", "ratio, HVP given coupling", "ratio incl. solve",
           "peak RSS (MB)", "details", "HVP rel. err"]


# --------------------------------------------------------------------------- table 3


def table3(args, out, log):
    tol = 1e-6
    n = args.n3
    x, y = problem(3, n, 2)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    rows, records = [], []
    variants, skipped = ours.sinkhorn_variants()
    for name, why in skipped.items():
        rows.append([f"ot_matfree {name}: skipped ({why})", None] + [None] * 6)
    cases_by_eps = {}
    # Jitted functions take epsilon as an argument: one compilation per solver
    # serves every epsilon, so only the first epsilon's warm-up compiles.
    our_solvers = {name: ours.solver(tol, args.max_iters3, **opts) for name, opts in variants.items()}
    ok_ott, why_ott = ott_jax.available()
    ott_names = list(ott_jax.VARIANTS)[:1] if args.quick else list(ott_jax.VARIANTS)
    ott_runs = ({name: ott_jax.forward_solver(name, tol, args.max_iters3) for name in ott_names}
                if ok_ott else {})
    if not ok_ott:
        rows.append([f"ott-jax: skipped ({why_ott})", None] + [None] * 6)
    ok_pot, why_pot = pot.available()
    if not ok_pot:
        rows.append([f"POT: skipped ({why_pot})", None] + [None] * 6)
    ok_regot, why_regot = regot_solvers.available()
    if not ok_regot:
        rows.append([f"regot: skipped ({why_regot})", None] + [None] * 6)
    for eps in args.eps3:
        log(f"[table 3] n = {n}, epsilon = {eps}")
        cases = []
        for name, s in our_solvers.items():
            cases.append(Case(f"ot_matfree {name}", lambda s=s, e=eps: ours.solve(xj, yj, e, s),
                              meta={"kind": "ours"}))
        for name, f in ott_runs.items():
            cases.append(Case(f"{name} ({why_ott})", lambda f=f, e=eps: f(xj, yj, e),
                              meta={"kind": "ott"}))
        if ok_pot:
            cases.append(Case(f"POT {why_pot} sinkhorn_log (torch, dense)",
                              pot.forward_solver(x, y, eps, tol, args.max_iters3),
                              jax_compiled=False, meta={"kind": "pot"}))
        if ok_regot:
            for name in regot_solvers.METHODS:
                if name.startswith("regot Newton") and n > args.regot_newton_max_n:
                    rows.append([f"{name}: skipped at n = {n} (an (n + m - 1)^2 dense Cholesky "
                                 f"per step; runs up to --regot-newton-max-n "
                                 f"{args.regot_newton_max_n})", eps] + [None] * 6)
                    continue
                if args.quick and ("SSNS" in name or "SPLR" in name):
                    continue
                if any(k in name for k in args.regot_skip):
                    rows.append([f"{name}: skipped (--regot-skip; {args.regot_skip_reason})", eps]
                                + [None] * 6)
                    continue
                cases.append(Case(f"{name} ({why_regot})",
                                  regot_solvers.forward_solver(name, x, y, eps, tol,
                                                               args.regot_max_iter[name]),
                                  jax_compiled=False, meta={"kind": "regot"}))
        first = eps == args.eps3[0]
        repeats = args.repeats if first else args.repeats_small_eps
        run_interleaved(cases, repeats, log, compiled=not first)
        base = next((median(c) for c in cases if c.name.startswith("ot_matfree") and not c.error),
                    float("nan"))
        for c in cases:
            if c.error:
                rows.append([c.name, eps, _err(c), None, None, None, None, None])
                continue
            kind = c.meta["kind"]
            if kind == "ours":
                iters = int(c.out.num_iters)
                err = l1_marginal_error((c.out.f, c.out.g), x, y, eps)
            elif kind == "ott":
                f, g, iters, _ = c.out
                iters = int(iters)
                err = l1_marginal_error((f, g), x, y, eps)
            elif kind == "pot":
                f, g, iters = c.out
                err = l1_marginal_error((f, g), x, y, eps)
            else:
                plan, iters = c.out
                err = l1_marginal_error(plan, x, y, eps)
            t = median(c)
            rows.append([c.name, eps, t, t / base, iters, err, c.mem_mb,
                         f"{len(c.times)} timed run(s)"])
            records.append(dict(zip(HEADER3, rows[-1])))
        cases_by_eps[eps] = cases
        _write3(args, out, rows)  # after every epsilon: partial results survive an interruption
    return _write3(args, out, rows), records


def _write3(args, out, rows):
    tol = 1e-6
    n = args.n3
    notes = [
        device_line(),
        f"n = m = {n}, d = 2, x, y independent uniform in [0,1]^2, uniform weights, float64, "
        f"target L1 marginal error {tol:g}: ours `|P1 - a|_1` every iteration; ott-jax L1 "
        "column error every 10 iterations; POT L2 column error <= tol/sqrt(m) every 10 "
        "iterations; regot L2 norm of the dual gradient <= tol/sqrt(n+m). 'L1 marginal err' "
        "is recomputed for every solver as |P1 - a|_1 + |P^T1 - b|_1 from its potentials "
        "(or plan), dense float64.",
        f"Time: median of the timed runs (column 'runs'; {args.repeats} at the first epsilon, "
        f"{args.repeats_small_eps} at the others to fit the time budget), interleaved, compile "
        "excluded (the first epsilon's warm-up compiles for all; at the other epsilons the "
        "timed call is also the memory call). Memory: peak RSS above "
        "the pre-call RSS. regot and POT build the dense cost matrix outside the timed call; "
        "they have nothing to compile, so their warm-up call is one of the timed runs.",
    ]
    return write_table(out / f"peers_forward_{args.tag}",
                       "Table 3: forward solvers at small epsilon", notes, HEADER3, rows)




HEADER3 = ["method", "epsilon", "time (s)", "ratio to ours", "iterations", "L1 marginal err",
           "peak RSS (MB)", "runs"]


# --------------------------------------------------------------------------- figure


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def figure(out, tag, rec1, rec2, rec3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    ax = axes[0]
    for r in rec1:
        if not math.isfinite(_num(r.get("time (s)"))) or r["dtype"] != "float64":
            continue
        ax.scatter(_num(r["time (s)"]), max(_num(r["grad rel. err"]), 1e-16),
                   marker="o" if r["loss"] == "ot" else "s",
                   color="C3" if r["method"].startswith("ot_matfree") else None,
                   label=f"{r['method'][:46]} (n={r['n']})")
    ax.set(xscale="log", yscale="log", xlabel="value + gradient time (s)",
           ylabel="gradient rel. error vs tight float64", title="1: value + gradient (float64)")
    ax.legend(fontsize=5.5)
    ax = axes[1]
    for r in rec2:
        if math.isfinite(_num(r.get("time (s)"))) and math.isfinite(_num(r.get("peak RSS (MB)"))):
            ax.scatter(_num(r["n"]), max(_num(r["peak RSS (MB)"]), 1),
                       color="C3" if r["method"].startswith("ot_matfree") else None,
                       label=f"{r['method'][:50]}")
    ax.set(xscale="log", yscale="log", xlabel="n = m", ylabel="peak RSS increment (MB)",
           title="2: HVP memory")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=5.5)
    ax = axes[2]
    rec3 = [r for r in rec3 if math.isfinite(_num(r.get("time (s)")))]
    names = sorted({r["method"] for r in rec3})
    eps_vals = sorted({r["epsilon"] for r in rec3}, reverse=True)
    width = 0.8 / max(len(eps_vals), 1)
    for k, eps in enumerate(eps_vals):
        ts = [next((_num(r["time (s)"]) for r in rec3 if r["method"] == m and r["epsilon"] == eps),
                   np.nan) for m in names]
        ax.barh(np.arange(len(names)) + k * width, ts, height=width, label=f"epsilon = {eps}")
    ax.set_yticks(np.arange(len(names)) + width / 2, [m[:40] for m in names], fontsize=6)
    ax.set(xscale="log", xlabel="time to L1 marginal error 1e-6 (s)",
           title="3: forward solvers (n = 3000, d = 2)")
    ax.legend(fontsize=7)
    fig.suptitle("ot_matfree vs peers, 2-core CPU under load (ratios within a panel are what "
                 "to compare)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"peers_{tag}.png", dpi=130)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (smoke test)")
    parser.add_argument("--smoke", action="store_true", help="alias of --quick")
    parser.add_argument("--out", default=str(HERE / "results"),
                        help="folder for the results (a file path: its folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes1", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--dtypes1", nargs="+", default=["float64", "float32"])
    parser.add_argument("--geomloss-scalings", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--geomloss-fine-max-n", type=int, default=1000,
                        help="largest n for GeomLoss scalings >= 0.98 (slow)")
    parser.add_argument("--sizes2", type=int, nargs="*", default=[1000, 4000])
    parser.add_argument("--dense-max-n", type=int, default=1000)
    parser.add_argument("--ott-probe", type=int, nargs="*", default=[6000])
    parser.add_argument("--ott-cap-gb", type=float, default=8.0)
    parser.add_argument("--ott-timeout", type=int, default=600)
    parser.add_argument("--big", type=int, nargs="*", default=[20000])
    parser.add_argument("--n3", type=int, default=3000)
    parser.add_argument("--eps3", type=float, nargs="+", default=[0.01, 0.002])
    parser.add_argument("--repeats-small-eps", type=int, default=1)
    parser.add_argument("--max-iters3", type=int, default=20_000)
    parser.add_argument("--regot-newton-max-n", type=int, default=2000,
                        help="largest n for regot's dense Newton (an (n+m)^2 Cholesky per step)")
    parser.add_argument("--regot-skip", nargs="*", default=[],
                        help="regot solvers to leave out (substrings of their names)")
    parser.add_argument("--regot-skip-reason", default="left out of this run")
    parser.add_argument("--tag", default=None, help="device tag in file names (default: cpu<cores>)")
    parser.add_argument("--deadline", default=None,
                        help="HH:MM (UTC): start no new measured call after this time; cases "
                             "left are reported as not run")
    parser.add_argument("--figure-only", action="store_true",
                        help="redraw the figure from the CSV files in --out")
    parser.add_argument("--ott-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ott_child:
        print(json.dumps(ott_probe_child(args.ott_child, 1e-8)))
        return
    args.quick = args.quick or args.smoke
    if args.quick:
        args.repeats, args.repeats_small_eps = 1, 1
        args.sizes1, args.sizes2, args.n3 = [40], [30], 40
        args.geomloss_scalings = [0.5]
        args.dense_max_n, args.ott_probe, args.big = 30, [], []
        args.eps3 = [0.05]
    args.regot_max_iter = {name: (200 if "Newton" in name or "SSNS" in name or "SPLR" in name
                                  else 5_000) for name in regot_solvers.METHODS}
    args.tag = args.tag or device_tag()
    if args.deadline:
        global DEADLINE
        import datetime as dt

        hh, mm = (int(t) for t in args.deadline.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        when = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
        DEADLINE = when.timestamp()
    out = pathlib.Path(args.out)
    if out.suffix:  # a file was named (the smoke-test convention): use its folder
        out = out.parent
    out.mkdir(parents=True, exist_ok=True)

    _prewarm()
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:7.1f} s] {msg}", flush=True)

    if args.figure_only:
        args.tables = []
    texts, rec1, rec2, rec3 = [], [], [], []
    jobs = {1: table1, 2: table2, 3: table3}
    for k in args.tables:
        try:
            res = jobs[k](args, out, log)
        except Exception:
            traceback.print_exc()
            raise
        texts.append(res[0])
        if k == 1:
            rec1 = res[1]
        elif k == 2:
            rec2 = res[1]
        else:
            rec3 = res[1]
        print(res[0], flush=True)
    # Keep earlier tables' records for the figure when only some tables ran.
    for k, name in ((1, "grad"), (2, "hvp"), (3, "forward")):
        path = out / f"peers_{name}_{args.tag}.csv"
        if k not in args.tables and path.exists():
            recs = _read_csv(path)
            if k == 1:
                rec1 = recs
            elif k == 2:
                rec2 = recs
            else:
                rec3 = recs
    figure(out, args.tag, rec1, rec2, rec3)
    log(f"done; results in {out}")


def _prewarm():
    """Pay the peers' one-time first-use costs (backend set-up, thread pools) on a
    tiny problem, outside every measurement: their warm-up calls are timed runs."""
    x, y = problem(0, 8, 2)
    for ok, fn in (
        (pot.available()[0], lambda: (pot.value_and_grad(x, y, 0.5, 1e-3)(),
                                      pot.forward_solver(x, y, 0.5, 1e-3)())),
        (geomloss_keops.available()[0],
         lambda: geomloss_keops.value_and_grad(x, y, 0.5, scaling=0.5)()),
        (regot_solvers.available()[0],
         lambda: regot_solvers.forward_solver("regot L-BFGS (dual)", x, y, 0.5, 1e-3, 100)()),
    ):
        if ok:
            try:
                fn()
            except Exception:  # a real failure shows up in the measured call
                pass


def _read_csv(path):
    def conv(s):
        try:
            return int(s)
        except ValueError:
            try:
                return float(s)
            except ValueError:
                return s if s != "" else None

    with open(path) as fh:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(fh)]


if __name__ == "__main__":
    main()
