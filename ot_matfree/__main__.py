"""`python -m ot_matfree demo`: solve, differentiate and check a default problem.

Float64, n = m = 5,000 points in 3-D by default: a Sinkhorn solve with a
progress bar, a gradient, Hessian-vector products with CG statistics, and two
checks that need no reference implementation (central finite differences of
the gradient, and the marginal identity of the x-x Hessian block).
"""

import argparse
import time

import jax
import jax.numpy as jnp
from tqdm import tqdm


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start


def demo(n: int, m: int, d: int, epsilon: float, seed: int) -> None:
    jax.config.update("jax_enable_x64", True)
    import ot_matfree as om

    kx, ky, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(kx, (n, d))
    y = 0.8 * jax.random.normal(ky, (m, d)) + 1.0
    v = jax.random.normal(kv, (n, d))
    print(f"ot_matfree {om.__version__} demo on {jax.devices()[0].platform.upper()}: "
          f"n = {n}, m = {m}, d = {d}, epsilon = {epsilon}, float64")

    bar = tqdm(desc="Sinkhorn", unit=" it", mininterval=1.0)

    def progress(iteration, error):
        bar.set_postfix(marginal_error=f"{float(error):.1e}", refresh=False)
        bar.update(int(iteration) - bar.n)

    solver = om.Sinkhorn(tol=1e-9, max_iters=20_000, progress=progress, progress_every=10)
    coupling, t_solve = _timed(om.solve, x, y, epsilon=epsilon, solver=solver)
    jax.effects_barrier()
    bar.close()
    print(f"solve:     {t_solve:7.2f} s  ({int(coupling.num_iters)} iterations, converged "
          f"{bool(coupling.converged)}, marginal error {float(coupling.marginal_error):.1e}, "
          f"reg_ot_cost {float(coupling.reg_ot_cost):.10f})")

    grad, t_grad = _timed(om.grad_x, coupling)
    print(f"grad_x:    {t_grad:7.2f} s  (first call, includes compilation)")
    cg = om.CG(rtol=1e-10)
    (hv, stats), t_first = _timed(om.hvp_x, coupling, v, linear_solver=cg, return_stats=True)
    (hv, stats), t_hvp = _timed(om.hvp_x, coupling, v, linear_solver=cg, return_stats=True)
    print(f"hvp_x:     {t_hvp:7.2f} s  ({int(stats['num_steps'])} CG iterations, relative "
          f"residual {float(stats['residual']):.1e}; first call {t_first:.2f} s with compilation)")

    # Check 1: central finite differences of the gradient (warm-started re-solves).
    h = 1e-4
    tight = om.Sinkhorn(tol=1e-11, max_iters=20_000)

    def gradient_at(z):
        return om.grad_x(om.solve(z, y, epsilon=epsilon, solver=tight, init=coupling.f))

    (g_plus, g_minus), t_fd = _timed(lambda: (gradient_at(x + h * v), gradient_at(x - h * v)))
    fd = (g_plus - g_minus) / (2 * h)
    fd_error = float(jnp.linalg.norm(hv - fd) / jnp.linalg.norm(fd))
    print(f"check 1:   finite differences of the gradient (h = {h:g}): relative error "
          f"{fd_error:.1e}  ({t_fd:.1f} s)")

    # Check 2: marginal identity sum_i (H v)_i = 2 sum_k a_k v_k (SqEuclidean).
    a = coupling.a
    expected = 2 * jnp.sum(a[:, None] * v, axis=0)
    mi_error = float(jnp.linalg.norm(hv.sum(0) - expected) / jnp.linalg.norm(expected))
    print(f"check 2:   marginal identity sum_i (H v)_i = 2 sum_k a_k v_k: relative error "
          f"{mi_error:.1e}")
    print(f"|grad_x| = {float(jnp.linalg.norm(grad)):.6f}, |H v| = {float(jnp.linalg.norm(hv)):.6f}")
    ok = bool(coupling.converged) and bool(stats["converged"]) and fd_error < 1e-5 and mi_error < 1e-8
    print("demo " + ("OK" if ok else "FAILED: see the numbers above"))
    if not ok:
        raise SystemExit(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ot_matfree", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="solve, differentiate and check a default problem")
    p.add_argument("--n", type=int, default=5000, help="source points (default 5000)")
    p.add_argument("--m", type=int, default=None, help="target points (default: n)")
    p.add_argument("--d", type=int, default=3, help="dimension (default 3)")
    p.add_argument("--epsilon", type=float, default=0.5, help="entropic regularisation (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    demo(args.n, args.m or args.n, args.d, args.epsilon, args.seed)


if __name__ == "__main__":
    main()
