"""Shuffled regression (Li et al. 6.1): which minimum do the methods reach, over draws of W0?

`4_shuffled_regression.py --paper` starts from one draw `W0 = W + N(0, 1)` and
every converged method ends in a local minimum whose loss is above the loss
at the true `W`. This study keeps the data (`make_problem`'s seed 0) and
draws `W0` again `--draws` times (start seeds 1, 2, ...). For each draw:

- Newton-CG with Armijo backtracking from `W0`;
- 10 SGD steps (minibatches of 100 rows, learning rate 1e-3, the paper's
  first stage, always taken) and then the same Newton-CG;
- gradient descent (learning rate 1e-3) for `--gd-steps` steps.

The true basin's minimiser `W*` is Newton-CG's end point from the true `W`;
an end point is in the true basin when it is within 1e-3 of `W*` (relative).
Gradient descent has not converged after a few hundred steps: its row gives
its loss and error at the cap, and whether Newton-CG started from its end
point reaches `W*` (the basin it is in).

`--means normal` is the example's mixture (cluster means `2 N(0, I_5)`);
`--means blobs` draws the means uniformly on `[-10, 10]^5`, as the paper's
code does (scikit-learn's `make_blobs`). Sinkhorn runs at tolerance
`--tol` (default 1e-4; the paper's code uses 0.01 / n^0.33 = 1.3e-3): at
tolerance 1e-6 one solve at a blobs `W0` takes ~95,000 iterations.

    python examples/5_shuffled_regression_seeds.py --means normal
    python examples/5_shuffled_regression_seeds.py --means blobs
"""

import argparse
import importlib
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optimistix as optx  # noqa: E402
from _second_order import capped_cost  # noqa: E402

import ot_matfree as om  # noqa: E402

# `4_shuffled_regression` is not an identifier: import it by name.
_shuffled = importlib.import_module("4_shuffled_regression")
EPSILON, make_problem = _shuffled.EPSILON, _shuffled.make_problem

HERE = os.path.dirname(os.path.abspath(__file__))
SGD_STEPS, SGD_BATCH, LR = 10, 100, 1e-3


def make_methods(tol: float, gd_steps: int):
    """Jitted `newton(w0, x, y)`, `sgd_newton(w0, x, y, key)` and `gd(w0, x, y)`."""
    solver = om.Sinkhorn(tol=tol, max_iters=100_000, momentum="adaptive")
    trial_solver = om.Sinkhorn(tol=tol, max_iters=10_000, momentum="adaptive")

    def loss(w, x, y):
        return om.ot_cost(x @ w, y, epsilon=EPSILON, solver=solver)

    def newton(w0, x, y):
        sol = optx.minimise(lambda w, data: capped_cost(data[0] @ w, data[1], EPSILON,
                                                        trial_solver),
                            om.NewtonCG(tol, tol, search=optx.BacktrackingArmijo()), w0, (x, y),
                            max_steps=60, throw=False)
        return sol.value, sol.stats["num_newton_steps"], loss(sol.value, x, y)

    def sgd_newton(w0, x, y, key):
        def step(w, k):
            batch = jax.random.permutation(k, x.shape[0])[:SGD_BATCH]
            return w - LR * jax.grad(loss)(w, x[batch], y), None

        w, _ = jax.lax.scan(step, w0, jax.random.split(key, SGD_STEPS))
        return newton(w, x, y)

    def gd(w0, x, y):
        def step(w, _):
            return w - LR * jax.grad(loss)(w, x, y), None

        w, _ = jax.lax.scan(step, w0, None, length=gd_steps)
        return w, loss(w, x, y)

    return jax.jit(newton), jax.jit(sgd_newton), jax.jit(gd), jax.jit(loss)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--means", choices=("normal", "blobs"), default="normal")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--gd-steps", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--out", default=None, help="output path (default: examples/outputs/"
                        "5_shuffled_regression_seeds_MEANS_output.txt)")
    args = parser.parse_args()
    log = []

    def say(*parts):
        log.append(" ".join(map(str, parts)))
        print(*parts, flush=True)

    newton, sgd_newton, gd, loss = make_methods(args.tol, args.gd_steps)
    x, y, w, _ = make_problem(args.n, means=args.means)
    rel = lambda v, ref: float(jnp.linalg.norm(v - ref) / jnp.linalg.norm(ref))  # noqa: E731
    start = time.perf_counter()
    w_star, k_star, l_star = newton(w, x, y)
    say(f"jax {jax.__version__} on {jax.devices()[0]}, float64, load average "
        f"{os.getloadavg()[0]:.1f} at the start; n = {args.n}, epsilon = {EPSILON}, cluster "
        f"means {args.means}, Sinkhorn tol {args.tol:g}, Newton-CG (Armijo) rtol = atol = "
        f"{args.tol:g}, 60 steps at most")
    say(f"loss at the true W {float(loss(w, x, y)):.6f}; W* (Newton-CG from W, {int(k_star)} "
        f"steps): loss {float(l_star):.6f}, relative distance to W {rel(w_star, w):.4f}")
    say("| draw | error of W0 | Newton-CG: steps / loss / error / true basin | "
        f"10 SGD + Newton-CG: same | GD ({args.gd_steps} steps): loss / error / "
        "Newton-CG from there reaches W* |")
    say("|---|---|---|---|---|")
    counts = {"newton": 0, "sgd": 0, "gd": 0}
    for draw in range(1, args.draws + 1):
        w0 = make_problem(args.n, means=args.means, start_seed=draw)[3]
        cells = []
        for name, (v, k, value) in (("newton", newton(w0, x, y)),
                                    ("sgd", sgd_newton(w0, x, y, jax.random.PRNGKey(draw)))):
            hit = rel(v, w_star) < 1e-3
            counts[name] += hit
            cells.append(f"{int(k)} / {float(value):.6f} / {rel(v, w):.4f} / "
                         f"{'yes' if hit else 'no'}")
        w_gd, l_gd = gd(w0, x, y)
        hit = rel(newton(w_gd, x, y)[0], w_star) < 1e-3
        counts["gd"] += hit
        say(f"| {draw} | {rel(w0, w):.3f} | {cells[0]} | {cells[1]} | {float(l_gd):.6f} / "
            f"{rel(w_gd, w):.4f} / {'yes' if hit else 'no'} |")
    say(f"in the true basin, of {args.draws} draws: Newton-CG {counts['newton']}, "
        f"10 SGD + Newton-CG {counts['sgd']}, gradient descent's end point {counts['gd']}; "
        f"{time.perf_counter() - start:.0f} s in all (compilation included)")
    out = args.out or os.path.join(HERE, "outputs",
                                   f"5_shuffled_regression_seeds_{args.means}_output.txt")
    with open(out, "w") as f:
        f.write("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
