"""Cost of one inner HVP inside `NewtonCG` against standalone HVPs.

Registration loss `ot_cost(x @ A, y)` with a 3 x 3 parameter `A`. Times (median
of `--repeats` after a compiling call):

- `solve`: one Sinkhorn solve (`ot_matfree.solve`);
- `jvp(grad)`: a standalone HVP of the loss, `jax.jvp(jax.grad(loss))`:
  Sinkhorn solve + H-solve;
- `hvp_x`: `ot_matfree.hvp_x(coupling, x @ V)` on a solved coupling: H-solve only;
- `inner`: one call of the linear map `NewtonCG` uses inside an outer
  iteration (`jax.linearize(jax.grad(loss))` once, then per HVP);
- a `NewtonCG` run: Sinkhorn solves counted through `Sinkhorn(progress=...)`
  against the number of HVPs; then cold against warm-started solves
  (`NewtonCG(warm_start=...)`): Sinkhorn iterations and time.

`python benchmarks/newton_hvp_cost.py [--n 2000] [--epsilon 0.05]`
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optimistix as optx  # noqa: E402
from _common import block, device_string, timed  # noqa: E402

import ot_matfree as om  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--newton-steps", type=int, default=4)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args()
    n, eps = opts.n, opts.epsilon

    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.uniform(k1, (n, 3))
    rotation, _ = jnp.linalg.qr(jax.random.normal(k2, (3, 3)))
    a_true = rotation @ jnp.diag(jnp.array([1.2, 0.9, 1.1]))
    y = (x @ a_true)[jax.random.permutation(k3, n)]
    a0 = a_true + 0.05 * jax.random.normal(k4, (3, 3))
    v = jax.random.normal(jax.random.PRNGKey(5), (3, 3))
    solver = om.Sinkhorn(tol=1e-8)
    loss = lambda a: om.ot_cost(x @ a, y, epsilon=eps, solver=solver)  # noqa: E731

    solve = jax.jit(lambda a: om.solve(x @ a, y, epsilon=eps, solver=solver))
    coupling, t_solve = timed(solve, a0, repeats=opts.repeats)
    hv_jvp, t_jvp = timed(jax.jit(lambda a, v: jax.jvp(jax.grad(loss), (a,), (v,))[1]), a0, v,
                          repeats=opts.repeats)
    hvp_x = jax.jit(lambda c, v: x.T @ om.hvp_x(c, x @ v))
    hv_x, t_hvp_x = timed(hvp_x, coupling, v, repeats=opts.repeats)
    _, lin = block(jax.jit(lambda a: jax.linearize(jax.grad(loss), a))(a0))
    hv_inner, t_inner = timed(jax.jit(lambda lin, v: lin(v)), lin, v, repeats=opts.repeats)
    # hvp_x is only the x-x block: d/dA of grad_A = x^T H_xx (x V) exactly
    # here, since y does not depend on A (second-order term of x @ A is zero).
    err = float(jnp.max(jnp.abs(hv_inner - hv_jvp)) / jnp.max(jnp.abs(hv_jvp)))
    err_x = float(jnp.max(jnp.abs(hv_x - hv_jvp)) / jnp.max(jnp.abs(hv_jvp)))

    # NewtonCG runs, cold and warm-started Sinkhorn solves (`init=` from the
    # last accepted point's potentials): solves and iterations counted
    # through `progress` (every iteration calls it once).
    starts = []
    counting = om.Sinkhorn(tol=1e-8, progress=lambda it, e: starts.append(int(it) == 1),
                           progress_every=1)

    def counted(a, args):
        return om.ot_cost(x @ a, y, epsilon=eps, solver=counting, init=args,
                          return_potentials=True)

    zeros = (jnp.zeros(n), jnp.zeros(n))
    runs = {}
    for name, warm in [("cold", None), ("warm", lambda args, pots: pots)]:
        newton = om.NewtonCG(rtol=1e-12, atol=1e-12, warm_start=warm)
        run = lambda: optx.minimise(counted, newton, a0, zeros,  # noqa: E731
                                    max_steps=opts.newton_steps, throw=False, has_aux=True)
        block(run())
        starts.clear()
        t0 = time.perf_counter()
        sol = block(run())
        runs[name] = (time.perf_counter() - t0, sum(starts), len(starts), sol)
    t_newton, solves, _, sol = runs["cold"]
    stats = {k: int(s) for k, s in sol.stats.items()}
    diff = float(jnp.max(jnp.abs(runs["warm"][3].value - sol.value)))

    lines = [
        f"# One inner HVP inside NewtonCG vs standalone HVPs ({device_string()})",
        "",
        f"`ot_cost(x @ A, y)`, n = m = {n}, d = 3, epsilon = {eps}, float64, Sinkhorn tol 1e-8 "
        f"({int(coupling.num_iters)} iterations), CG defaults; median of {opts.repeats} runs "
        "after a compiling call.",
        "",
        "| what | time (s) | relative to inner HVP |",
        "|---|---|---|",
        f"| Sinkhorn solve | {t_solve:.3f} | {t_solve / t_inner:.1f} |",
        f"| standalone HVP `jax.jvp(jax.grad(loss))` (solve + H-solve) | {t_jvp:.3f} | "
        f"{t_jvp / t_inner:.1f} |",
        f"| standalone `hvp_x` on a solved coupling (H-solve) | {t_hvp_x:.3f} | "
        f"{t_hvp_x / t_inner:.1f} |",
        f"| **inner HVP inside NewtonCG** (linear map of one `jax.linearize`) | {t_inner:.3f} "
        "| 1.0 |",
        "",
        f"Inner HVP vs `jax.jvp(jax.grad)`: max relative difference {err:.1e}; "
        f"`x^T hvp_x(x V)`: {err_x:.1e}.",
        "",
        f"NewtonCG, {opts.newton_steps} steps (objective evaluations): {t_newton:.2f} s, "
        f"{solves} Sinkhorn solves, {stats['num_hvps']} HVPs, "
        f"{stats['num_newton_steps']} Newton steps, {stats['num_search_steps']} backtracks.",
        "",
        "Warm starts (`NewtonCG(warm_start=...)`, `ot_cost(init=..., return_potentials=True)`: "
        "each solve starts from the last accepted point's potentials), same run:",
        "",
        "| Sinkhorn solves | solves | Sinkhorn iterations | NewtonCG time (s) |",
        "|---|---|---|---|",
        *[f"| {name} | {r[1]} | {r[2]} | {r[0]:.2f} |" for name, r in runs.items()],
        "",
        f"Final A, warm vs cold: max difference {diff:.1e}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        pathlib.Path(opts.out).write_text(text)


if __name__ == "__main__":
    main()
