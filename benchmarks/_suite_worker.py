"""One method of `benchmarks/suite.py`, in a process of its own (issue 9, part 5).

`suite.py` starts this module once per (task, method, dtype, d, epsilon) and
sends it one JSON line per cell (`{"n": ...}`) on stdin; it answers one line
`@@RESULT {...}` per cell on stdout, with n increasing, so that the process's
peak RSS (`ru_maxrss`) is that of its largest cell so far. A cell:

1. builds the problem (the same points in every process: `problem()`),
2. compiles JAX functions ahead of time (`jit(...).lower(...).compile()`;
   compile time reported apart, never in the time),
3. runs the method once with `PeakRSS` sampling (the memory column), then
   twice more if that run took under `--quick-s` seconds (median reported),
4. measures its accuracy outside the timing: L1 marginal error for forward
   solves, relative error against the reference for gradients and HVPs.

The reference (method `ref`) is ot_matfree in float64 at Sinkhorn tol 1e-10
and CG rtol 1e-10; it writes `ref_<n>_<d>_<eps>.npz` into the cache folder
that the gradient and HVP processes read.
"""

import json
import math
import pathlib
import resource
import statistics
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ot_matfree as om  # noqa: E402
from _peers import flashsinkhorn, geomloss_keops, ott_jax, pot  # noqa: E402
from _peers._memory import PeakRSS  # noqa: E402

REF_TOL = 1e-10
MAX_ITERS = 20_000


def problem(n, d, dtype, seed=0):
    """x, y independent uniform in `[0, s]^d` with `s = sqrt(3 / d)` (mean squared
    distance 0.5 at every d, so that one epsilon means the same at d = 3 and 64),
    and a Gaussian direction v. Drawn in float64, then cast: float32 runs see
    the float64 points rounded."""
    rng = np.random.default_rng(seed)
    s = math.sqrt(3 / d)
    x = rng.uniform(size=(n, d)) * s
    y = rng.uniform(size=(n, d)) * s
    v = rng.standard_normal((n, d))
    return x.astype(dtype), y.astype(dtype), v.astype(dtype)


def l1_marginal_error(f, g, x, y, eps, rows=256):
    """`|P 1 - a|_1 + |P^T 1 - b|_1` with `P_ij = exp((f_i + g_j - |x_i - y_j|^2) / eps)`,
    uniform weights, in float64 by row blocks (no n x m array)."""
    f, g, x, y = (np.asarray(t, np.float64) for t in (f, g, x, y))
    n, m = x.shape[0], y.shape[0]
    y2 = (y**2).sum(1)
    col = np.zeros(m)
    row_err = 0.0
    for i in range(0, n, rows):
        xb = x[i:i + rows]
        C = (xb**2).sum(1)[:, None] + y2[None, :] - 2 * xb @ y.T
        P = np.exp((f[i:i + rows, None] + g[None, :] - C) / eps)
        row_err += np.abs(P.sum(1) - 1 / n).sum()
        col += P.sum(0)
    return float(row_err + np.abs(col - 1 / m).sum())


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def aot(fn, *args):
    """`(compiled callable, compile seconds)`: `jax.jit(fn)` compiled for `args`."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return (lambda: compiled(*args)), time.perf_counter() - t0


def _sinkhorn(tol, **opts):
    """Plain Sinkhorn unless `opts` name the iteration: the committed cells ran
    plain Sinkhorn, the default until 0.3 (the default is now adaptive momentum,
    the `ours_adaptive` row)."""
    return om.Sinkhorn(tol=tol, max_iters=MAX_ITERS, **(opts or dict(momentum=None)))


# --------------------------------------------------------------------------- methods
# Each builder takes the cell and returns `(run, post, compile_s)`: `run()` is
# timed, `post(out)` returns the accuracy fields (not timed).


def forward_ours(c, **opts):
    x, y = jnp.asarray(c["x"]), jnp.asarray(c["y"])
    solver = _sinkhorn(c["tol"], **opts)
    run, comp = aot(lambda x, y: om.solve(x, y, epsilon=c["eps"], solver=solver, throw=False), x, y)

    def post(cp):
        return {"iterations": int(cp.num_iters), "converged": bool(cp.converged),
                "error": l1_marginal_error(cp.f, cp.g, c["x"], c["y"], c["eps"])}

    return run, post, comp


def forward_ott(c, batch_size=None):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem

    x, y = jnp.asarray(c["x"]), jnp.asarray(c["y"])
    solver = ott_jax._sinkhorn(c["tol"], MAX_ITERS)

    def fn(x, y):
        geom = pointcloud.PointCloud(x, y, epsilon=c["eps"], batch_size=batch_size)
        out = solver(linear_problem.LinearProblem(geom))
        return out.f, out.g, out.n_iters, out.converged

    run, comp = aot(fn, x, y)

    def post(out):
        f, g, it, conv = out
        return {"iterations": int(it), "converged": bool(conv),
                "error": l1_marginal_error(f, g, c["x"], c["y"], c["eps"])}

    return run, post, comp


def forward_pot(c, lazy):
    import ot

    x, y, eps = c["x"], c["y"], c["eps"]
    m = y.shape[0]
    if lazy:  # stops on the L1 row error, every 10 iterations
        def run():
            return ot.solve_sample(x, y, reg=eps, lazy=True, batch_size=c["pot_batch"],
                                   tol=c["tol"], max_iter=MAX_ITERS)
    else:  # dense `ot.solve` -> `sinkhorn_log`, which stops on the L2 column error
        # every 10 iterations: tol / sqrt(m) bounds the L1 error. (`method="sinkhorn_log"`
        # would send solve_sample to its lazy branch.)
        def run():
            return ot.solve_sample(x, y, reg=eps, tol=c["tol"] / math.sqrt(m), max_iter=MAX_ITERS)

    def post(res):
        f, g = (eps * np.asarray(p) for p in res.potentials)  # POT's are log-scalings
        it = res.log.get("niter") if isinstance(res.log, dict) else None
        return {"iterations": None if it is None else int(it) + 1,
                "error": l1_marginal_error(f, g, x, y, eps)}

    return run, post, 0.0


def _grad_post(c):
    def post(out):
        if c["ref"] is None:  # above --ref-max-n
            return {"error": None}
        ref = np.load(c["ref"])
        val, gx = out
        return {"error": rel(gx, ref["grad"]), "value_error": rel(val, ref["value"])}

    return post


def grad_ours(c):
    x, y = jnp.asarray(c["x"]), jnp.asarray(c["y"])
    solver = _sinkhorn(c["tol"])
    fn = jax.value_and_grad(lambda x, y: om.ot_cost(x, y, epsilon=c["eps"], solver=solver))
    run, comp = aot(fn, x, y)
    return run, _grad_post(c), comp


def grad_ott(c):
    x, y = jnp.asarray(c["x"]), jnp.asarray(c["y"])
    f = ott_jax.value_and_grad(y, c["eps"], c["tol"], MAX_ITERS)
    t0 = time.perf_counter()
    compiled = f.lower(x).compile()
    return (lambda: compiled(x)), _grad_post(c), time.perf_counter() - t0


def grad_pot(c):
    import ot
    import torch

    x_np, y_np, eps = c["x"], c["y"], c["eps"]
    dt = {"float32": torch.float32, "float64": torch.float64}[str(x_np.dtype)]
    y = torch.as_tensor(y_np, dtype=dt)
    stop = c["tol"] / math.sqrt(y_np.shape[0])

    def run():
        x = torch.tensor(x_np, dtype=dt, requires_grad=True)
        res = ot.solve_sample(x, y, reg=eps, tol=stop, max_iter=MAX_ITERS, grad="envelope")
        (gx,) = torch.autograd.grad(res.value, x)
        return float(res.value.detach()), gx.numpy()

    return run, _grad_post(c), 0.0


def grad_geomloss(c, backend):
    run = geomloss_keops.value_and_grad(c["x"], c["y"], c["eps"], scaling=c["geomloss_scaling"],
                                        backend=backend, debias=False)
    return run, _grad_post(c), 0.0


def _hvp_post(c):
    return lambda hv: {"error": None if c["ref"] is None else rel(hv, np.load(c["ref"])["hvp"])}


def hvp_ours(c):
    x, y, v = (jnp.asarray(c[k]) for k in "xyv")
    solver = _sinkhorn(c["tol"])
    cg = om.CG(rtol=c["tol"], max_steps=5000)
    solve, comp1 = aot(lambda x, y: om.solve(x, y, epsilon=c["eps"], solver=solver), x, y)
    t0 = time.perf_counter()
    cp = jax.block_until_ready(solve())
    t_solve = time.perf_counter() - t0
    hvp, comp2 = aot(lambda cp, v: om.hvp_x_solution(cp, v, linear_solver=cg), cp, v)

    def post(out):
        hv, stats = out.value, out.stats
        return {"error": _hvp_post(c)(hv)["error"], "cg_steps": int(stats["num_steps"]),
                "solve_s": t_solve, "iterations": int(cp.num_iters)}

    return hvp, post, comp1 + comp2


def hvp_ott(c):
    x, y, v = (jnp.asarray(c[k]) for k in "xyv")
    f = ott_jax.implicit_hvp(y, c["eps"], c["tol"], MAX_ITERS)
    t0 = time.perf_counter()
    compiled = f.lower(x, v).compile()
    return (lambda: compiled(x, v)), _hvp_post(c), time.perf_counter() - t0


def hvp_dense(c):
    """Li, Lu, Tao & Ye's analytic Hessian (our `hessian_x`) given the coupling, then
    one matvec: the cost of the first HVP; later HVPs are matvecs."""
    x, y, v = (jnp.asarray(c[k]) for k in "xyv")
    cp = jax.block_until_ready(jax.jit(lambda x, y: om.solve(
        x, y, epsilon=c["eps"], solver=_sinkhorn(c["tol"])))(x, y))
    run, comp = aot(lambda cp, v: jnp.einsum("iajb,jb->ia", om.hessian_x(cp), v), cp, v)
    return run, _hvp_post(c), comp


def hvp_flash(c):
    run = flashsinkhorn.hvp(c["x"], c["y"], c["v"], c["eps"])
    return run, _hvp_post(c), 0.0


def reference(c):
    """ot_matfree, float64, Sinkhorn tol 1e-10, CG rtol 1e-10: value, gradient, HVP."""
    x, y, v = (jnp.asarray(c[k], jnp.float64) for k in "xyv")
    solver = _sinkhorn(REF_TOL)
    cp = jax.jit(lambda x, y: om.solve(x, y, epsilon=c["eps"], solver=solver))(x, y)
    hv = jax.jit(lambda cp, v: om.hvp_x(cp, v, linear_solver=om.CG(rtol=REF_TOL, max_steps=10_000)))(cp, v)
    gx = om.grad_x(cp)
    np.savez(c["ref"], value=np.asarray(cp.reg_ot_cost), grad=np.asarray(gx), hvp=np.asarray(hv))
    return {"iterations": int(cp.num_iters), "error": float(cp.marginal_error)}


BUILDERS = {
    ("forward", "ours"): forward_ours,
    ("forward", "ours_adaptive"): lambda c: forward_ours(c, momentum="adaptive"),
    ("forward", "ott"): forward_ott,
    ("forward", "ott_online"): lambda c: forward_ott(c, batch_size=c["ott_batch"]),
    ("forward", "pot_dense"): lambda c: forward_pot(c, lazy=False),
    ("forward", "pot_lazy"): lambda c: forward_pot(c, lazy=True),
    ("grad", "ours"): grad_ours,
    ("grad", "ott"): grad_ott,
    ("grad", "pot_dense"): grad_pot,
    ("grad", "geomloss_tensorized"): lambda c: grad_geomloss(c, "tensorized"),
    ("grad", "geomloss_online"): lambda c: grad_geomloss(c, "online"),
    ("hvp", "ours"): hvp_ours,
    ("hvp", "ott"): hvp_ott,
    ("hvp", "dense"): hvp_dense,
    ("hvp", "flash"): hvp_flash,
}

AVAILABLE = {
    "ott": ott_jax.available, "ott_online": ott_jax.available, "pot_dense": pot.available,
    "pot_lazy": pot.available, "geomloss_tensorized": lambda: geomloss_keops.available("tensorized"),
    "geomloss_online": lambda: geomloss_keops.available("online"), "flash": flashsinkhorn.available,
}


def _block(out):
    return jax.block_until_ready(out)


def gpu_peak_mb():
    """Peak device memory of this process so far (JAX's allocator and PyTorch's), or
    None on the CPU. Cells run in increasing n, so this is the largest cell's."""
    if jax.devices()[0].platform != "gpu":
        return None
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            peak = max(peak, torch.cuda.max_memory_allocated())
    return peak / 1e6


def run_cell(task, method, cell, quick_s):
    if task == "ref":
        t0 = time.perf_counter()
        out = reference(cell)
        return {"status": "ok", "time_s": time.perf_counter() - t0, **out}
    run, post, comp = BUILDERS[(task, method)](cell)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with PeakRSS() as p:
        t0 = time.perf_counter()
        out = _block(run())
        times = [time.perf_counter() - t0]
    if times[0] < quick_s:
        for _ in range(2):
            t0 = time.perf_counter()
            out = _block(run())
            times.append(time.perf_counter() - t0)
    res = {"status": "ok", "time_s": statistics.median(times), "runs": len(times),
           "compile_s": comp, "mem_delta_mb": p.delta_mb,
           "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "process_peak_before_mb": rss0 / 1024}
    if (gpu := gpu_peak_mb()) is not None:
        res["gpu_peak_mb"] = gpu
    res.update(post(out))
    return res


def main():
    task, method, dtype, d, eps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    opts = json.loads(sys.argv[6])

    def reply(obj):
        print("@@RESULT " + json.dumps(obj), flush=True)

    if method in AVAILABLE:
        ok, why = AVAILABLE[method]()
        if not ok:
            reply({"status": "unavailable", "reason": why})
            return
        version = why
    else:
        version = om.__version__ if hasattr(om, "__version__") else ""
    if method in AVAILABLE and not method.startswith("ott"):
        # pay first-use costs (imports, thread pools, KeOps's formula) on a tiny cell;
        # JAX methods compile ahead of time per shape, so they need none
        try:
            x, y, v = problem(16, d, dtype)
            run_cell(task, method, dict(opts, x=x, y=y, v=v, eps=max(eps, 0.05), n=16,
                                        ref=None), 0.0)
        except Exception:
            pass  # a real failure shows up in the measured cell
    reply({"status": "ready", "version": version})
    for line in sys.stdin:
        req = json.loads(line)
        n = req["n"]
        x, y, v = problem(n, d, "float64" if task == "ref" else dtype)
        cell = dict(opts, x=x, y=y, v=v, eps=eps, n=n, ref=req.get("ref"))
        try:
            reply(run_cell(task, method, cell, opts["quick_s"]))
        except Exception as exc:
            traceback.print_exc()
            reply({"status": "failed", "reason": f"{type(exc).__name__}: "
                                                 f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"})


if __name__ == "__main__":
    main()
