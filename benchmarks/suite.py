"""One benchmark suite (issue 9, part 5): forward solve, gradient and HVP of the
entropic OT cost, ot_matfree and its peers, over n, dtype, d and epsilon.

    python -m benchmarks.suite                       # the default CPU grid, results/suite_cpu.*
    python -m benchmarks.suite --n 500 2000 --dtypes float64 --d 3 --eps 0.05
    python -m benchmarks.suite --smoke --out /tmp/suite   # tiny (CI)
    python -m benchmarks.suite --device gpu          # n = 1e4 .. 1e6, FlashSinkhorn added

Every (task, method, dtype, d, epsilon) runs in a process of its own
(`_suite_worker.py`) that takes its cells in increasing n, so the methods'
memory never mixes. For each n, the methods of a task take turns (one cell
each), so that load on a shared machine hits them alike. Per cell: time
(compile excluded, median of 3 runs when a run is under `--quick-s`, else
one run), accuracy (L1 marginal error of forward solves; relative error of
gradients and HVPs against ot_matfree in float64 at tol 1e-10), and memory:
`mem` = peak RSS above the RSS before the timed call (a thread samples
/proc/self/statm every 2 ms), `proc` = the process's peak RSS so far
(`ru_maxrss`; runtime, compile and reference included).

Skip rule (a skipped cell is a row of the tables with its reason, never
dropped): a method's next n is skipped when its time at the last n it ran,
scaled by (n / n_last)^k (k = 2 for Sinkhorn-type methods, 3 for the dense
Hessian), exceeds `--cell-budget`, or its memory, scaled by (n / n_last)^2,
exceeds `--mem-cap-gb`; a method that failed or was killed (RSS above the
cap, or past `--kill-after` x budget) is skipped at every larger n; cells
after `--total-budget` are skipped.
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import select
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

WORKER = HERE / "_suite_worker.py"

# (task, method): (label, time exponent in n). Order = row order.
METHODS = {
    ("forward", "ours"): ("ot_matfree `solve` (Sinkhorn, default options)", 2),
    ("forward", "ours_adaptive"): ('ot_matfree `solve`, `Sinkhorn(momentum="adaptive")`', 2),
    ("forward", "ott"): ("ott-jax `Sinkhorn`, dense `PointCloud`", 2),
    ("forward", "ott_online"): ("ott-jax `Sinkhorn`, online `PointCloud(batch_size)`", 2),
    ("forward", "pot_dense"): ('POT `ot.solve_sample(reg=eps)`, dense (`sinkhorn_log`)', 2),
    ("forward", "pot_lazy"): ("POT `ot.solve_sample(lazy=True)`", 2),
    ("grad", "ours"): ("ot_matfree `jax.value_and_grad(ot_cost)`", 2),
    ("grad", "ott"): ("ott-jax `value_and_grad(reg_ot_cost)`, dense", 2),
    ("grad", "pot_dense"): ('POT `ot.solve_sample(reg=eps, grad="envelope")`, dense (torch)', 2),
    ("grad", "pot_lazy"): ("POT `ot.solve_sample(lazy=True)`", 2),
    ("grad", "geomloss_tensorized"): ("GeomLoss `SamplesLoss`, tensorized", 2),
    ("grad", "geomloss_online"): ("GeomLoss `SamplesLoss`, online (KeOps)", 2),
    ("hvp", "ours"): ("ot_matfree `hvp_x` given the coupling (CG)", 2),
    ("hvp", "ott"): ("ott-jax implicit `jax.jvp(jax.grad)`, solve inside", 2),
    ("hvp", "dense"): ("dense analytic Hessian (`hessian_x`, Li et al. Alg. 1) + matvec, given the coupling", 3),
    ("hvp", "flash"): ("FlashSinkhorn double backward (x only), solve inside", 2),
}
TASKS = ("forward", "grad", "hvp")
STATIC_SKIPS = {
    ("grad", "pot_lazy"): "no gradient: POT's lazy solver (empirical_sinkhorn2) converts the "
                          "points to NumPy, so autograd cannot pass through it",
}
GPU_ONLY = {"flash"}
START_TIMEOUT = 300.0  # seconds for a worker to import, and warm up on a tiny problem


# --------------------------------------------------------------------------- workers


class Worker:
    """A `_suite_worker.py` process for one (task, method, dtype, d, epsilon)."""

    def __init__(self, task, method, dtype, d, eps, opts, log):
        cmd = [sys.executable, str(WORKER), task, method, dtype, str(d), repr(eps), json.dumps(opts)]
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_TRIM_THRESHOLD_="1048576")
        env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.buf = b""
        self.tail = []
        self.log = log
        self.dead = None

    def _rss_mb(self):
        try:
            with open(f"/proc/{self.proc.pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
        except OSError:
            return 0.0

    def read(self, timeout, cap_mb):
        """Next `@@RESULT` object, or `{"status": "killed"/"failed", ...}`."""
        t0, peak = time.time(), 0.0
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith("@@RESULT "):
                    out = json.loads(text[len("@@RESULT "):])
                    out.setdefault("parent_peak_mb", peak)
                    return out
                self.tail = (self.tail + [text])[-15:]
            peak = max(peak, self._rss_mb())
            why = None
            if peak > cap_mb:
                why = f"killed: RSS {peak / 1e3:.1f} GB above the {cap_mb / 1e3:.0f} GB cap"
            elif time.time() - t0 > timeout:
                why = f"killed: still running after {timeout:.0f} s"
            if why:
                self.close(kill=True)
                self.dead = why
                return {"status": "killed", "reason": why, "parent_peak_mb": peak}
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    why = f"process exited ({self.proc.returncode}): " + " / ".join(self.tail[-3:])[-300:]
                    self.dead = why
                    return {"status": "failed", "reason": why, "parent_peak_mb": peak}
                self.buf += chunk

    def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def close(self, kill=False):
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                try:
                    self.proc.stdin.close()
                    self.proc.wait(timeout=30)
                except Exception:
                    self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- grid


def configs(args):
    """`[(dtype, d, eps, [n...])]`: the slices (small n, cheap) first, then the main grid."""
    out = []
    for spec in args.slice:  # "dtype:d:eps:n1,n2,..."
        dt, d, e, ns = spec.split(":")
        out.append((dt, int(d), float(e), [int(k) for k in ns.split(",")]))
    return out + [(dt, d, e, list(args.n)) for d in args.d for e in args.eps for dt in args.dtypes]


def predicted_skip(prev, n, k, args):
    """Reason to skip n given the last cell that ran (`prev`), or None."""
    if prev is None:
        return None
    n0, t0, m0 = prev
    t = t0 * (n / n0) ** k
    if t > args.cell_budget:
        return (f"skipped: predicted {t:,.0f} s (from {t0:.3g} s at n = {n0:,}, x (n/n0)^{k}) "
                f"> cell budget {args.cell_budget:.0f} s")
    mem = m0 * (n / n0) ** 2
    if mem > args.mem_cap_gb * 1e3:
        return (f"skipped: predicted {mem / 1e3:,.1f} GB (from {m0:,.0f} MB at n = {n0:,}, "
                f"x (n/n0)^2) > cap {args.mem_cap_gb:g} GB")
    return None


def run_grid(args, log, results, save):
    t_start = time.time()
    cache = pathlib.Path(args.cache or tempfile.mkdtemp(prefix="suite_ref_"))
    cache.mkdir(parents=True, exist_ok=True)
    tol = {"float64": args.tol64, "float32": args.tol32}
    base_opts = {"quick_s": args.quick_s, "geomloss_scaling": args.geomloss_scaling,
                 "ott_batch": args.ott_batch, "pot_batch": args.pot_batch}
    on_gpu = args.device == "gpu"
    kill_s = max(args.kill_after * args.cell_budget, 60.0)

    def over_budget():
        return time.time() - t_start > args.total_budget

    def record(entry):
        entry["load_avg_1min"] = round(os.getloadavg()[0], 2)
        results.append(entry)
        save()

    refs = {}  # (d, eps) -> Worker, float64 references shared by both dtypes
    for dtype, d, eps, ns in configs(args):
        key = dict(dtype=dtype, d=d, eps=eps)
        opts = dict(base_opts, tol=tol[dtype])
        needs_ref = any(t in ("grad", "hvp") for t in args.tasks)
        todo = [(t, m) for (t, m) in METHODS if t in args.tasks and m in args.methods]
        # n outermost: at each n every method takes its turn, so that the large-n
        # cells of every task come last (and share the run's remaining budget).
        workers, prev, dead = {}, {}, {}
        for task, m in todo:
            why = STATIC_SKIPS.get((task, m))
            if m in GPU_ONLY and not on_gpu:
                why = "GPU only (PyTorch + Triton kernels); this run is on the CPU"
            if m == "dense" and on_gpu:
                why = "left out of the GPU grid: (n d)^2 memory at n >= 1e4"
            if why:
                dead[(task, m)] = f"skipped: {why}"
        for n in ns:
            ref_path = None
            if needs_ref and n <= args.ref_max_n:
                ref_path = str(cache / f"ref_{n}_{d}_{eps}.npz")
                if not os.path.exists(ref_path):
                    why = "skipped: the run's total budget was spent" if over_budget() else None
                    if why is None:
                        rw = refs.get((d, eps))
                        if rw is None or rw.dead:
                            rw = refs[(d, eps)] = Worker("ref", "ours", "float64", d, eps, opts, log)
                            rw.read(START_TIMEOUT, args.mem_cap_gb * 1e3)
                        log(f"reference n = {n}, d = {d}, eps = {eps}")
                        rw.send({"n": n, "ref": ref_path})
                        r = rw.read(kill_s * 3, args.mem_cap_gb * 1e3)
                        log(f"  {r}")
                        record(dict(dtype="float64", d=d, eps=eps, task="reference", method="ref",
                                    n=n, **r))
                        if r["status"] != "ok":
                            why = f"skipped: no reference ({r.get('reason')})"
                    if why:
                        for task, m in todo:
                            if task != "forward":
                                record(dict(key, task=task, method=m, n=n, status="skipped",
                                            reason=dead.get((task, m), why)))
                        ref_path = "missing"
            for task, m in todo:
                if task != "forward" and ref_path == "missing":
                    continue
                entry = dict(key, task=task, method=m, n=n, label=METHODS[(task, m)][0])
                why = dead.get((task, m)) or predicted_skip(prev.get((task, m)), n,
                                                            METHODS[(task, m)][1], args)
                if why is None and over_budget():
                    why = "skipped: the run's total budget was spent"
                if why:
                    record(dict(entry, status="skipped", reason=why))
                    continue
                w = workers.get((task, m))
                if w is None:
                    w = workers[(task, m)] = Worker(task, m, dtype, d, eps, opts, log)
                    hello = w.read(START_TIMEOUT, args.mem_cap_gb * 1e3)
                    if hello["status"] != "ready":
                        dead[(task, m)] = f"skipped: {hello.get('reason', hello['status'])}"
                        record(dict(entry, status="skipped", reason=dead[(task, m)]))
                        continue
                    w.version = hello.get("version")
                entry["version"] = getattr(w, "version", None)
                log(f"{task} {m} {dtype} d={d} eps={eps} n={n}")
                w.send({"n": n, "ref": None if task == "forward" else ref_path})
                r = w.read(kill_s, args.mem_cap_gb * 1e3)
                entry.update(r)
                log(f"  {r.get('status')} {r.get('time_s', r.get('reason'))}")
                record(entry)
                if r["status"] == "ok":
                    mem = max(r.get("mem_delta_mb") or 0.0, 1.0)
                    prev[(task, m)] = (n, r["time_s"], mem)
                else:
                    dead[(task, m)] = f"skipped: {r['status']} at n = {n:,} ({r.get('reason', '')[:120]})"
                    w.close(kill=True)
        for w in workers.values():
            w.close()
    for w in refs.values():
        w.close()


# --------------------------------------------------------------------------- output


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.1e}"
    return f"{v:.3g}"


def cell_text(r):
    if r["status"] != "ok":
        return r.get("reason", r["status"]).replace("|", "/")
    mem = r.get("gpu_peak_mb", r.get("mem_delta_mb"))  # on a GPU: device memory, process peak
    parts = [f"{fmt(r['time_s'])} s", f"err {fmt(r.get('error'))}", f"{fmt(mem)} MB"]
    if r.get("iterations") is not None and r["task"] == "forward":
        parts.append(f"{r['iterations']} it.")
    if r.get("cg_steps") is not None:
        parts.append(f"{r['cg_steps']} CG")
    if r["task"] == "grad" and r.get("value_error") is not None:
        parts.append(f"value err {fmt(r['value_error'])}")
    return " / ".join(parts)


ERROR_MEANING = {
    "forward": "err = L1 marginal error |P1 - a|_1 + |P^T 1 - b|_1 of the returned potentials, "
               "recomputed in float64 for every method",
    "grad": "err = relative 2-norm error of the gradient w.r.t. x against ot_matfree float64 at "
            "tol 1e-10 (value err: of the cost)",
    "hvp": "err = relative 2-norm error of H_xx v against ot_matfree float64 (Sinkhorn tol "
           "1e-10, CG rtol 1e-10)",
}


def tables(results, header):
    md = [header]
    keys = []
    for r in results:
        k = (r["task"], r["dtype"], r["d"], r["eps"])
        if r["task"] != "reference" and k not in keys:
            keys.append(k)
    for task, dtype, d, eps in keys:
        rows = [r for r in results if (r["task"], r["dtype"], r["d"], r["eps"]) == (task, dtype, d, eps)]
        ns = sorted({r["n"] for r in rows})
        md += ["", f"### {task}: {dtype}, d = {d}, epsilon = {eps}", "",
               f"Cell: time / {ERROR_MEANING[task].split(' = ')[0]} / mem (MB)"
               + (" / Sinkhorn iterations" if task == "forward" else "")
               + (" / CG steps" if task == "hvp" else "") + f". {ERROR_MEANING[task]}.", "",
               "| method | " + " | ".join(f"n = {n:,}" for n in ns) + " |",
               "|---|" + "---|" * len(ns)]
        methods = []
        for r in rows:
            if r["method"] not in methods:
                methods.append(r["method"])
        for m in methods:
            by_n = {r["n"]: r for r in rows if r["method"] == m}
            label = METHODS[(task, m)][0]
            ver = next((r.get("version") for r in by_n.values() if r.get("version")), None)
            if ver and not m.startswith("ours") and m != "dense":
                label += f" ({ver.split(',')[0]})"
            md.append(f"| {label} | " + " | ".join(cell_text(by_n[n]) if n in by_n else "-" for n in ns) + " |")
            if task == "hvp" and m == "ours":
                inc = []
                for n in ns:
                    r = by_n.get(n)
                    inc.append(f"{fmt(r['time_s'] + r['solve_s'])} s (solve {fmt(r['solve_s'])} s, "
                               f"{r['iterations']} it.)" if r and r["status"] == "ok" else "-")
                md.append("| ot_matfree `solve` + `hvp_x` (including the solve) | " + " | ".join(inc) + " |")
        if task == "hvp":
            ours = {r["n"]: r for r in rows if r["method"] == "ours" and r["status"] == "ok"}
            dense = {r["n"]: r for r in rows if r["method"] == "dense" and r["status"] == "ok"}
            both = [n for n in ns if n in ours and n in dense]
            if both:
                md += ["", "Dense Hessian against matrix-free HVPs: building it costs as much as "
                       + ", ".join(f"{fmt(dense[n]['time_s'] / ours[n]['time_s'])} HVPs at n = {n:,}"
                                   for n in both)
                       + " (given the coupling); it pays off only for more HVPs than that on one "
                         "coupling, and its memory is (n d)^2."]
    return "\n".join(md) + "\n"


def figure(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    main = [r for r in results if r["status"] == "ok" and r["task"] in TASKS]
    # the main configuration: the most common (d, eps)
    from collections import Counter

    if not main:
        plt.close(fig)
        return
    (d0, e0), _ = Counter((r["d"], r["eps"]) for r in main).most_common(1)[0]
    for j, task in enumerate(TASKS):
        for i, (field, ylabel) in enumerate((("time_s", "time (s)"),
                                             ("mem_delta_mb", "peak RSS above start (MB)"))):
            ax = axes[i, j]
            for k, (task_, m) in enumerate(METHODS):
                if task_ != task:
                    continue
                for dtype, style in (("float64", "-o"), ("float32", "--s")):
                    pts = sorted((r["n"], max(r.get(field) or 0.0, 1e-3)) for r in main
                                 if (r["task"], r["method"], r["dtype"], r["d"], r["eps"])
                                 == (task, m, dtype, d0, e0))
                    if pts:
                        ax.plot(*zip(*pts), style, color=f"C{k % 10}",
                                label=f"{METHODS[(task, m)][0][:48]} [{dtype[-2:]}]")
                if task == "hvp" and m == "ours" and field == "time_s":
                    pts = sorted((r["n"], r["time_s"] + r["solve_s"]) for r in main
                                 if (r["task"], r["method"], r["dtype"], r["d"], r["eps"])
                                 == (task, m, "float64", d0, e0))
                    if pts:
                        ax.plot(*zip(*pts), ":^", color="k", label="ot_matfree solve + hvp_x [64]")
            ax.set(xscale="log", yscale="log", xlabel="n = m", ylabel=ylabel,
                   title=f"{task}: {ylabel.split(' (')[0]} (d = {d0}, eps = {e0})")
            ax.grid(True, which="both", alpha=0.3)
            if i == 0:
                ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_info(args):
    import jax

    dev = jax.devices()[0]
    name = getattr(dev, "device_kind", dev.platform)
    cores = len(os.sched_getaffinity(0))
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": dev.platform, "device": name, "cpu": cpu, "cores": cores,
            "jax": jax.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- main


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=None)
    p.add_argument("--dtypes", nargs="+", default=None)
    p.add_argument("--d", type=int, nargs="+", default=[3])
    p.add_argument("--eps", type=float, nargs="+", default=[0.05])
    p.add_argument("--slice", nargs="*", default=None,
                   help='extra configurations "dtype:d:eps:n1,n2,..." (default: d = 64 and '
                        'epsilon = 0.005 at small n)')
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--methods", nargs="+", default=None,
                   help="method ids: " + ", ".join(sorted({m for _, m in METHODS})))
    p.add_argument("--tol64", type=float, default=1e-6,
                   help="Sinkhorn tolerance (L1 marginal error, each library's rule converted) "
                        "and CG rtol, float64")
    p.add_argument("--tol32", type=float, default=1e-5)
    p.add_argument("--cell-budget", type=float, default=300.0, help="seconds per cell (skip rule)")
    p.add_argument("--kill-after", type=float, default=3.0, help="x cell budget: a cell is killed")
    p.add_argument("--mem-cap-gb", type=float, default=6.0)
    p.add_argument("--total-budget", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("--quick-s", type=float, default=5.0,
                   help="runs shorter than this are repeated (median of 3)")
    p.add_argument("--geomloss-scaling", type=float, default=0.9)
    p.add_argument("--ott-batch", type=int, default=1024)
    p.add_argument("--pot-batch", type=int, default=256)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--ref-max-n", type=int, default=None,
                   help="largest n with a float64 reference (gradient / HVP errors); above "
                        "it the errors read '-' (default: every n on the CPU, 1e5 on a GPU)")
    p.add_argument("--smoke", action="store_true", help="tiny grid, a few methods (< 25 s)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--name", default=None, help="file stem (default suite_<device>)")
    p.add_argument("--cache", default=None, help="folder for the reference arrays (default: a temp dir)")
    p.add_argument("--from-json", nargs="+", default=None,
                   help="redraw tables and plot from JSON files of earlier runs (merged in order)")
    args = p.parse_args(argv)
    if args.device == "gpu":
        args.n = args.n or [10_000, 30_000, 100_000, 300_000, 1_000_000]
        args.dtypes = args.dtypes or ["float32"]
        args.slice = [] if args.slice is None else args.slice
        args.methods = args.methods or ["ours", "ours_adaptive", "ott", "ott_online", "geomloss_online",
                                        "pot_lazy", "flash"]
        args.ref_max_n = args.ref_max_n or 100_000
    if args.smoke:
        args.n, args.dtypes, args.slice = [40, 80], ["float64"], []
        args.tasks = ["forward", "hvp"]
        args.methods = args.methods or ["ours", "dense", "flash"]
        args.quick_s = 0.0
    args.n = args.n or [500, 2000, 8000, 20000]
    args.dtypes = args.dtypes or ["float64", "float32"]
    if args.slice is None:
        args.slice = ["float64:64:0.05:500,2000", "float64:3:0.005:500,2000"]
    args.ref_max_n = args.ref_max_n or max([*args.n, 0])
    for spec in args.slice:
        args.ref_max_n = max(args.ref_max_n, *(int(k) for k in spec.split(":")[3].split(",")))
    args.methods = args.methods or sorted({m for _, m in METHODS})
    return args


def main(argv=None):
    args = parse(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.name or f"suite_{args.device}")
    if args.from_json:
        parts = [json.loads(pathlib.Path(f).read_text()) for f in args.from_json]
        payload = dict(parts[-1])
        if len(parts) > 1:  # one table from several runs: every command is named
            payload["command"] = " ; ".join(p["command"] for p in parts)
            payload["started_utc"] = parts[0]["started_utc"]
            payload["load_avg_at_start"] = parts[0]["load_avg_at_start"]
            payload["elapsed_s"] = sum(p.get("elapsed_s", 0.0) for p in parts)
            payload["results"] = [r for p in parts for r in p["results"]]
            payload["runs"] = [{k: v for k, v in p.items() if k != "results"} for p in parts]
            stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
        write_outputs(stem, payload)
        return
    if args.device == "gpu":
        import jax

        if jax.devices()[0].platform != "gpu":
            raise SystemExit("--device gpu: JAX sees no GPU (install jax[cuda12] and a CUDA "
                             "torch with flash-sinkhorn); nothing was run")
    start = time.time()

    def log(msg):
        print(f"[{time.time() - start:7.1f} s] {msg}", flush=True)

    results = []
    payload = {
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.suite " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_info(args),
        "settings": {k: v for k, v in vars(args).items() if k not in ("from_json",)},
        "load_avg_at_start": os.getloadavg(),
        "results": results,
    }

    def save():
        payload["load_avg_now"] = os.getloadavg()
        payload["elapsed_s"] = time.time() - start
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))

    run_grid(args, log, results, save)
    payload["finished_utc"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    save()
    write_outputs(stem, payload)
    log(f"done: {stem}.json, .md, .png")


def write_outputs(stem, payload):
    dev, s = payload["device"], payload["settings"]
    la, lb = payload["load_avg_at_start"], payload.get("load_avg_now", [math.nan] * 3)
    res = payload["results"]
    runs = payload.get("runs", [payload])
    budgets = " / ".join(f"{r['settings']['cell_budget']:.0f} s" for r in runs)
    caps = " / ".join(f"{r['settings']['mem_cap_gb']:g} GB" for r in runs)
    if len(runs) > 1:
        budgets += " (in the runs' order)"
        caps += " (in the runs' order)"
    n_ok = sum(r["status"] == "ok" for r in res if r["task"] in TASKS)
    n_skip = sum(r["status"] != "ok" for r in res if r["task"] in TASKS)
    header = "\n".join([
        f"## Benchmark suite ({dev['platform']}: {dev['device'] if dev['platform'] != 'cpu' else dev['cpu']}, "
        f"{dev['cores']} cores, jax {dev['jax']})",
        "",
        f"`{payload['command']}`, started {payload['started_utc']}, "
        f"{payload.get('elapsed_s', math.nan) / 60:.0f} min"
        + (f" (sum over the {len(runs)} runs, which may overlap: see `runs` in the JSON)"
           if len(runs) > 1 else "") + ". Load average (1 / 5 / 15 min) "
        f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} at the start, {lb[0]:.1f} / {lb[1]:.1f} / "
        f"{lb[2]:.1f} at the end; each cell's 1-min load is in the JSON. {n_ok} cells ran, "
        f"{n_skip} were skipped or failed (reason in the cell).",
        "",
        "Problem: x, y independent uniform in [0, sqrt(3/d)]^d (mean squared distance 0.5), n = m, "
        "uniform weights, cost |x - y|^2, absolute epsilon. Tolerance (L1 marginal error; "
        f"each library's own rule converted so that it bounds it; CG rtol the same): "
        f"{s['tol64']:g} in float64, {s['tol32']:g} in float32. GeomLoss has no tolerance "
        f"(epsilon-scaling {s['geomloss_scaling']}, `debias=False`, blur = sqrt(eps/2), value and "
        "gradient doubled to our convention).",
        "Time: compile excluded; median of 3 runs when one run is under "
        f"{s['quick_s']:g} s, else one run. Memory (MB): peak RSS above the RSS just before the "
        "timed call, sampled every 2 ms, in a process per method (whole-process peaks "
        "`process_peak_mb` in the JSON). Skip rule: predicted time > "
        f"{budgets} per cell (from the last n, x (n/n0)^2, ^3 for the dense "
        f"Hessian) or predicted memory > {caps}; failures and kills skip the larger n.",
    ])
    text = tables(res, header)
    stem.with_suffix(".md").write_text(text)
    figure(res, stem.with_suffix(".png"),
           f"ot_matfree benchmark suite, {dev['platform']} ({dev['cores']} cores), load "
           f"{la[0]:.1f} -> {lb[0]:.1f}; solid float64, dashed float32")
    print(text)


if __name__ == "__main__":
    main()
