"""`python -m ot_matfree demo`: solve, differentiate and check a default problem.

n = m = 5,000 points in 3-D by default, in float64 on JAX's default device: a
Sinkhorn solve with a progress bar, a gradient, Hessian-vector products with
CG statistics, and two checks that need no reference implementation (central
finite differences of the gradient, and the marginal identity of the x-x
Hessian block). The progress bar needs tqdm: `pip install "ot-matfree[demo]"`.

Exit status: 0 when the solves converged and both checks pass, 1 when one
does not, 2 for invalid options (or a device JAX does not see), 3 when an
optional dependency of the demo is missing.
"""

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp

#: Exit status when an optional dependency of the demo is missing.
EXIT_MISSING_DEPENDENCY = 3

#: Tolerances and check thresholds per precision. In float32 the solves stop
#: at 1e-5 (the marginal error and the CG residual cannot go much below), the
#: finite-difference step is larger (truncation ~h^2 against the gradient's
#: error ~1e-5 / h) and the checks are looser: at n = 300 and 2,000 on a CPU
#: the finite differences agree to 4e-3 and the marginal identity to 8e-5.
PRECISION = {
    "float64": dict(tol=1e-9, fd_tol=1e-11, h=1e-4, cg_rtol=1e-10, fd_bound=1e-5,
                    marginal_bound=1e-8),
    "float32": dict(tol=1e-5, fd_tol=1e-5, h=1e-2, cg_rtol=1e-5, fd_bound=3e-2,
                    marginal_bound=1e-3),
}


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- options


def _positive_int(text: str) -> int:
    """A count of at least 1, written as an integer (`5000`, `5_000`) or as an
    integral number in scientific notation (`1e4`)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        if not (math.isfinite(number) and number.is_integer()):
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        value = int(number)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _memory_bytes(n: int, m: int, d: int, dtype: str) -> int:
    """A lower bound on the memory the demo's arrays take: the clouds, the
    direction, the gradient, the HVP, the two shifted clouds and their
    gradients of the finite-difference check (9 arrays of n x d and one of
    m x d), and the potentials, weights and CG vectors (~20 of length n + m).
    The streamed blocks come on top (a few MB at the default block sizes)."""
    itemsize = 8 if dtype == "float64" else 4
    return itemsize * ((9 * n + m) * d + 20 * (n + m))


def _host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _device_memory_bytes(device) -> int | None:
    if device.platform == "cpu":
        return _host_memory_bytes()
    try:
        return int(device.memory_stats()["bytes_limit"])
    except Exception:  # not every backend reports it
        return None


def _gib(size: float) -> str:
    return f"{size / 2**30:,.1f} GiB"


def _select_device(parser, name: str):
    """The device for `--device`, before any computation (`cpu` keeps JAX off
    the accelerators entirely)."""
    if name == "cpu":
        jax.config.update("jax_platforms", "cpu")
        return jax.devices("cpu")[0]
    if name == "gpu":
        try:
            return jax.devices("gpu")[0]
        except RuntimeError:
            seen = ", ".join(sorted({dev.platform for dev in jax.devices()}))
            parser.error(
                f"--device gpu: JAX sees no GPU (its devices: {seen}). Install JAX with "
                "CUDA support, e.g. pip install -U \"jax[cuda12]\", or run with --device cpu."
            )
    return jax.devices()[0]


def _import_tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        print(
            "python -m ot_matfree demo: the demo's progress bar needs tqdm, an optional "
            "dependency of ot_matfree.\nInstall it with:  pip install \"ot-matfree[demo]\"  "
            "(or: pip install tqdm)",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_MISSING_DEPENDENCY)
    return tqdm


# ----------------------------------------------------------------------------- the demo


def demo(n: int, m: int, d: int, epsilon: float, seed: int, dtype: str = "float64",
         device=None) -> None:
    """Solve, differentiate and check; raises `SystemExit(1)` if a check fails."""
    tqdm = _import_tqdm()
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import ot_matfree as om

    settings = PRECISION[dtype]
    device = jax.devices()[0] if device is None else device
    with jax.default_device(device):
        _run(om, tqdm, n, m, d, epsilon, seed, getattr(jnp, dtype), device, settings)


def _run(om, tqdm, n, m, d, epsilon, seed, dtype, device, s) -> None:
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, d), dtype)
    y = 0.8 * jax.random.normal(ky, (m, d), dtype) + 1.0
    v = jax.random.normal(kv, (n, d), dtype)
    print(f"ot_matfree {om.__version__} demo on {device.platform.upper()} "
          f"({device.device_kind}): n = {n}, m = {m}, d = {d}, epsilon = {epsilon}, "
          f"{jnp.dtype(dtype).name}")

    bar = tqdm(desc="Sinkhorn", unit=" it", mininterval=1.0)

    def progress(iteration, error):
        bar.set_postfix(marginal_error=f"{float(error):.1e}", refresh=False)
        bar.update(max(int(iteration) - bar.n, 0))

    solver = om.Sinkhorn(tol=s["tol"], max_iters=20_000, progress=progress, progress_every=10)
    coupling, t_solve = _timed(om.solve, x, y, epsilon=epsilon, solver=solver)
    jax.effects_barrier()
    # The bar advances every `progress_every` iterations: bring it to the
    # count the solve reports (and its final error) before closing it.
    bar.set_postfix(marginal_error=f"{float(coupling.marginal_error):.1e}", refresh=False)
    bar.update(max(int(coupling.num_iters) - bar.n, 0))
    bar.close()
    print(f"solve:     {t_solve:7.2f} s  ({int(coupling.num_iters)} iterations, converged "
          f"{bool(coupling.converged)}, marginal error {float(coupling.marginal_error):.1e}, "
          f"reg_ot_cost {float(coupling.reg_ot_cost):.10f})")

    grad, t_grad = _timed(om.grad_x, coupling)
    print(f"grad_x:    {t_grad:7.2f} s  (first call, includes compilation)")
    cg = om.CG(rtol=s["cg_rtol"])
    _, t_first = _timed(om.hvp_x_solution, coupling, v, linear_solver=cg)
    sol, t_hvp = _timed(om.hvp_x_solution, coupling, v, linear_solver=cg)
    hv, stats = sol.value, sol.stats
    print(f"hvp_x:     {t_hvp:7.2f} s  ({int(stats['num_steps'])} CG iterations, relative "
          f"residual {float(stats['residual']):.1e}; first call {t_first:.2f} s with compilation)")

    # Check 1: central finite differences of the gradient (warm-started re-solves).
    h = s["h"]
    tight = om.Sinkhorn(tol=s["fd_tol"], max_iters=20_000)

    def gradient_at(z):
        return om.grad_x(om.solve(z, y, epsilon=epsilon, solver=tight, init=coupling.f))

    (g_plus, g_minus), t_fd = _timed(lambda: (gradient_at(x + h * v), gradient_at(x - h * v)))
    fd = (g_plus - g_minus) / (2 * h)
    fd_error = float(jnp.linalg.norm(hv - fd) / jnp.linalg.norm(fd))
    print(f"check 1:   finite differences of the gradient (h = {h:g}): relative error "
          f"{fd_error:.1e} (bound {s['fd_bound']:g}, {t_fd:.1f} s)")

    # Check 2: marginal identity sum_i (H v)_i = 2 sum_k a_k v_k (SqEuclidean).
    a = coupling.a
    expected = 2 * jnp.sum(a[:, None] * v, axis=0)
    mi_error = float(jnp.linalg.norm(hv.sum(0) - expected) / jnp.linalg.norm(expected))
    print(f"check 2:   marginal identity sum_i (H v)_i = 2 sum_k a_k v_k: relative error "
          f"{mi_error:.1e} (bound {s['marginal_bound']:g})")
    print(f"|grad_x| = {float(jnp.linalg.norm(grad)):.6f}, "
          f"|H v| = {float(jnp.linalg.norm(hv)):.6f}")
    ok = (bool(coupling.converged) and bool(stats["converged"]) and fd_error < s["fd_bound"]
          and mi_error < s["marginal_bound"])
    print("demo " + ("OK" if ok else "FAILED: see the numbers above"))
    if not ok:
        raise SystemExit(1)


# ----------------------------------------------------------------------------- command line


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line and its `demo` sub-command."""
    parser = argparse.ArgumentParser(prog="python -m ot_matfree",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo", help="solve, differentiate and check a default problem",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n", type=_positive_int, default=5000, metavar="N",
                   help="number of source points x (default 5000; 1e4 and 10_000 are accepted)")
    p.add_argument("--m", type=_positive_int, default=None, metavar="M",
                   help="number of target points y (default: the same as --n)")
    p.add_argument("--d", type=_positive_int, default=3, metavar="D",
                   help="dimension of the points (default 3)")
    p.add_argument("--epsilon", type=_positive_float, default=0.5, metavar="EPS",
                   help="entropic regularisation, > 0 (default 0.5); the points are standard "
                   "normal (x) and 0.8 N(0, I) + 1 (y), so the squared distances are of order "
                   "2 d; a smaller epsilon needs more Sinkhorn iterations")
    p.add_argument("--seed", type=int, default=0, help="random seed of the points (default 0)")
    p.add_argument("--dtype", choices=sorted(PRECISION), default="float64",
                   help="precision (default float64). float32 halves the memory and is much "
                   "faster on GPUs, and is resolved to about 1e-6: Sinkhorn tol 1e-5, CG rtol "
                   "1e-5, and looser check bounds (finite differences 3e-2 instead of 1e-5, "
                   "marginal identity 1e-3 instead of 1e-8)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="where JAX runs it (default auto: JAX's default device, a GPU if JAX "
                   "was installed with CUDA and sees one, else the CPU); gpu fails with a "
                   "message if JAX sees none")
    return parser, p


def main(argv=None) -> None:
    parser, demo_parser = _parser()
    args = parser.parse_args(argv)
    _import_tqdm()  # before any JAX work: say what to install first
    m = args.n if args.m is None else args.m
    device = _select_device(demo_parser, args.device)
    needed = _memory_bytes(args.n, m, args.d, args.dtype)
    available = _device_memory_bytes(device)
    if available is not None and needed > available:
        where = ("this machine has" if device.platform == "cpu"
                 else f"the {device.platform.upper()} ({device.device_kind}) has")
        demo_parser.error(f"--n {args.n:,}, --m {m:,}, --d {args.d} in {args.dtype} need at "
                          f"least {_gib(needed)} of memory; {where} {_gib(available)}")
    demo(args.n, m, args.d, args.epsilon, args.seed, args.dtype, device)


if __name__ == "__main__":
    main()
