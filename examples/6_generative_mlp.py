"""A generative model trained with the sharp Sinkhorn loss (Qiu, Yin & Wang's application).

Find a small MLP `g_theta` such that `g_theta(Z)`, `Z ~ N(0, I_2)`, matches
a 2-D target cloud `X_1, ..., X_n` (eight Gaussians on a circle of radius 2,
standard deviation 0.1), by minimising the sharp Sinkhorn loss of the slides,

    l(theta) = S_lambda(M_theta, 1_n / n, 1_m / m) = <T*, M_theta>,
    (M_theta)_ij = |X_i - g_theta(Z_j)|^2,   lambda = 1 / epsilon,

(`om.sinkhorn_distance`; `--loss divergence` uses `om.sinkhorn_divergence`
instead) over a fixed batch `Z_1, ..., Z_m`. The parameters are the MLP's
array leaves (`eqx.partition`), a pytree that every optimiser below takes as is:

- Newton-CG (`om.NewtonCG`, Armijo line search): truncated CG on
  Hessian-vector products through the network (`jax.jvp(jax.grad)` of the
  loss, one `jax.linearize` per point: the Sinkhorn solve is not repeated per
  HVP); trial points where Sinkhorn does not converge within a reduced cap
  are rejected steps (the loss returns `+inf` there);
- Adam (optax), the usual choice for this problem;
- plain gradient descent.

Each method is compiled ahead of time (`.lower(...).compile()`), then run
and timed, with the loss against wall time recorded through `jax.debug.callback`
(the runners are those of `_second_order.py`).
The table gives iterations, HVPs, wall time, final loss, and each first-order
method's loss at the moment Newton-CG stopped; the figure shows loss against
wall time and the samples against the target.

    python examples/6_generative_mlp.py            # committed output (~15 min on 2 loaded cores)
    python examples/6_generative_mlp.py --quick    # small sizes, the CI test
"""

import argparse
import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optax  # noqa: E402
import optimistix as optx  # noqa: E402

import ot_matfree as om  # noqa: E402
from _second_order import first_reach, run_first_order, run_newton  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUTS = os.path.join(HERE, "outputs")


def eight_gaussians(key, n: int):
    """`n` points from eight Gaussians (std 0.1) centred on a circle of radius 2."""
    k_mode, k_noise = jax.random.split(key)
    angles = 2 * jnp.pi * jax.random.randint(k_mode, (n,), 0, 8) / 8
    centres = 2.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=1)
    return centres + 0.1 * jax.random.normal(k_noise, (n, 2))


class Problem(eqx.Module):
    """The data and the loss: target `x`, latent batch `z`, the MLP's static part."""

    x: jax.Array
    z: jax.Array
    static: eqx.Module = eqx.field(static=True)
    epsilon: float = eqx.field(static=True)
    divergence: bool = eqx.field(static=True)

    def samples(self, params):
        return jax.vmap(eqx.combine(params, self.static))(self.z)

    def loss(self, params, solver: om.Sinkhorn, throw: bool = True):
        ot_loss = om.sinkhorn_divergence if self.divergence else om.sinkhorn_distance
        return ot_loss(self.samples(params), self.x, epsilon=self.epsilon, solver=solver,
                       throw=throw)


# Tolerance 1e-6: once g(Z) sits on the target's clusters (std 0.1, eps 0.05)
# the coupling is close to a permutation and Sinkhorn's marginal error stalls
# between 1e-6 and 1e-8 (a run at 1e-8 failed at 20,000 iterations there).
SOLVER = om.Sinkhorn(tol=1e-6, max_iters=50_000, momentum="adaptive")
# Line-search trial points: a point where Sinkhorn needs more than this is rejected.
TRIAL_SOLVER = om.Sinkhorn(tol=1e-6, max_iters=2_000, momentum="adaptive")


def loss(params, problem: Problem):
    return problem.loss(params, SOLVER)  # raises if a solve fails


def trial_loss(params, problem: Problem):
    """`loss` at a line-search trial point: `+inf` where Sinkhorn does not
    converge within `TRIAL_SOLVER`'s cap, which the search rejects (and
    `NewtonCG` reports as a divergence if it were an accepted point). The
    probe solve runs first, without derivatives; the loss repeats it only where
    it converged."""
    y = jax.lax.stop_gradient(problem.samples(params))
    probes = [om.solve(y, problem.x, epsilon=problem.epsilon, solver=TRIAL_SOLVER,
                       throw=False)]
    if problem.divergence:  # the self term of the samples (that of the target is fixed)
        probes.append(om.solve(y, y, epsilon=problem.epsilon, solver=TRIAL_SOLVER,
                               throw=False))
    converged = jnp.all(jnp.stack([p.converged for p in probes]))
    return jax.lax.cond(converged, lambda: problem.loss(params, TRIAL_SOLVER, throw=False),
                        lambda: jnp.array(jnp.inf, problem.x.dtype))


def loss_at(run, seconds):
    """The last loss that `run` had recorded by `seconds` (its initial loss before that)."""
    value = run["losses"][0]
    for v, t in zip(run["losses"], run["times"]):
        if t > seconds:
            break
        value = v
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (the CI test)")
    parser.add_argument("--loss", choices=("sharp", "divergence"), default="sharp")
    parser.add_argument("--n", type=int, default=None, help="target and latent batch size")
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=None, help="hidden width (2 layers)")
    parser.add_argument("--newton-steps", type=int, default=None)
    parser.add_argument("--cg-steps", type=int, default=20, help="CG steps per Newton step")
    parser.add_argument("--first-order-steps", type=int, default=None)
    parser.add_argument("--adam-lr", type=float, default=1e-2)
    parser.add_argument("--gd-lr", type=float, default=1e-1)
    parser.add_argument("--out", default=None, help="PNG path (default: examples/outputs/"
                        "6_generative_mlp.png; with --quick, the temporary directory)")
    args = parser.parse_args()
    n = args.n or (120 if args.quick else 500)
    width = args.width or (8 if args.quick else 32)
    newton_steps = args.newton_steps or (15 if args.quick else 25)
    steps = args.first_order_steps or (60 if args.quick else 250)
    out = args.out or os.path.join(tempfile.gettempdir() if args.quick else OUTPUTS,
                                   "6_generative_mlp.png")
    log = []

    def say(*parts):
        log.append(" ".join(map(str, parts)))
        print(*parts, flush=True)

    k_x, k_z, k_init = jax.random.split(jax.random.PRNGKey(0), 3)
    model = eqx.nn.MLP(2, 2, width, 2, activation=jnp.tanh, dtype=jnp.float64, key=k_init)
    params0, static = eqx.partition(model, eqx.is_inexact_array)
    problem = Problem(x=eight_gaussians(k_x, n), z=jax.random.normal(k_z, (n, 2)),
                      static=static, epsilon=args.epsilon, divergence=args.loss == "divergence")
    size = sum(leaf.size for leaf in jax.tree.leaves(params0))
    name = "sinkhorn_divergence" if problem.divergence else "sinkhorn_distance (sharp)"
    say(f"jax {jax.__version__} on {jax.devices()[0]}, float64")
    say(f"target: 8 Gaussians (radius 2, std 0.1), n = m = {n}, latent Z ~ N(0, I_2) (fixed "
        f"batch); g: MLP 2 -> {width} -> {width} -> 2, tanh, {size} parameters; loss "
        f"{name}, epsilon = {args.epsilon}; Sinkhorn tol 1e-6, adaptive momentum "
        f"(iterates: 50,000 iterations at most, raises if it fails; Newton-CG's trial "
        f"points: 2,000, +inf if it fails)")
    l0 = float(eqx.filter_jit(loss)(params0, problem))
    say(f"initial loss {l0:.6f}")

    runs = [run_newton("Newton-CG (ours, Armijo)", loss, trial_loss, (problem,), params0,
                       newton_search=optx.BacktrackingArmijo(), rtol=1e-6,
                       max_steps=newton_steps, cg_max_steps=args.cg_steps),
            run_first_order(f"Adam (lr {args.adam_lr:g})", loss, (problem,), params0,
                            optax.adam(args.adam_lr), steps),
            run_first_order(f"gradient descent (lr {args.gd_lr:g})", loss, (problem,), params0,
                            optax.sgd(args.gd_lr), steps)]
    newton = runs[0]
    header = (f"| {'method':<28} | iterations | HVPs | wall time (s) | final loss | "
              f"loss at Newton-CG's time | time (s) to Newton-CG's final loss |")
    lines = [header, "|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|"]
    for run in runs:
        hvps = "-" if run["hvps"] is None else str(run["hvps"])
        at_newton = loss_at(run, newton["seconds"])
        reach = first_reach(run, run_final(newton))[1]
        reach = "not reached" if reach is None else f"{reach:.2f}"
        lines.append(f"| {run['name']:<28} | {run['iterations']:>10} | {hvps:>4} | "
                     f"{run['seconds']:>13.2f} | {run_final(run):>10.6f} | "
                     f"{at_newton:>24.6f} | {reach:>35} |")
    say("\n".join(lines))
    stats = newton["stats"]
    say(f"Newton-CG: {stats['num_newton_steps']} Newton steps, {stats['num_search_steps']} "
        f"rejected trial points ({sum(v == float('inf') for v in newton['raw'])} of them "
        f"with a failed Sinkhorn solve), {stats['num_cg_steps']} CG steps, "
        f"{stats['num_negative_curvature']} stopped by negative curvature; "
        f"{newton['result']}")
    adam = runs[1]
    say(f"at Newton-CG's wall time ({newton['seconds']:.1f} s) Adam's loss is "
        f"{loss_at(adam, newton['seconds']):.6f} against Newton-CG's {run_final(newton):.6f}")

    plot(runs, problem, out, f"{name}, eps = {args.epsilon}, n = m = {n}, {size} parameters")
    say(f"figure: {os.path.relpath(out)}")
    if not args.quick and args.out is None:
        with open(os.path.join(OUTPUTS, "6_generative_mlp_output.txt"), "w") as f:
            f.write("\n".join(log) + "\n")


def run_final(run):
    return run["losses"][-1]


def plot(runs, problem, out, title):
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(5 * (1 + len(runs)), 4.5))
    for run in runs:
        axes[0].plot(run["times"], run["losses"], label=run["name"])
    axes[0].set_xscale("symlog", linthresh=0.1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("wall time (s, compiled, under load)")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    for ax, run in zip(axes[1:], runs):
        y = problem.samples(run["w"])
        ax.scatter(*problem.x.T, s=4, c="grey", alpha=0.5, label="target X")
        ax.scatter(*y.T, s=4, c="C3", label="g(Z)")
        ax.set_title(f"{run['name']}: loss {run_final(run):.4f}", fontsize=9)
        ax.set_aspect("equal")
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main()
