"""ott-jax: `Sinkhorn` on a `PointCloud` (squared Euclidean, ott's own convention,
which ot_matfree follows: cost |x - y|^2, absolute epsilon, `reg_ot_cost`).

Stopping rule: L1 error of the column marginal (`norm_error=1`), checked every
`inner_iterations = 10` iterations, against `threshold`.
"""

import jax

from . import probe


def available():
    return probe("ott")


def _sinkhorn(threshold, max_iterations, *, implicit=True, use_danskin=None, momentum=None,
              anderson=None):
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    return sinkhorn.Sinkhorn(
        threshold=threshold, max_iterations=max_iterations,
        implicit_diff=imp.ImplicitDiff() if implicit else None, use_danskin=use_danskin,
        momentum=momentum, anderson=anderson,
    )


def _problem(x, y, epsilon, batch_size=None):
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem

    return linear_problem.LinearProblem(
        pointcloud.PointCloud(x, y, epsilon=epsilon, batch_size=batch_size))


def value_and_grad(y, epsilon, tol, max_iterations=20_000, batch_size=None):
    """Jitted `x -> (reg_ot_cost, grad_x)`, Danskin gradient (ott's default with
    implicit differentiation). `batch_size`: ott's online (matrix-free) mode."""
    solver = _sinkhorn(tol, max_iterations)
    return jax.jit(jax.value_and_grad(
        lambda x: solver(_problem(x, y, epsilon, batch_size)).reg_ot_cost))


def implicit_hvp(y, epsilon, tol, max_iterations=20_000):
    """Jitted `(x, v) -> H_xx v` by `jax.jvp(jax.grad(reg_ot_cost))` with
    implicit differentiation (ImplicitDiff defaults, `use_danskin=False`); the
    Sinkhorn solve runs inside every call (ott cannot reuse one)."""
    solver = _sinkhorn(tol, max_iterations, use_danskin=False)

    def cost(x):
        return solver(_problem(x, y, epsilon)).reg_ot_cost

    return jax.jit(lambda x, v: jax.jvp(jax.grad(cost), (x,), (v,))[1])


VARIANTS = {
    "ott-jax Sinkhorn": {},
    "ott-jax Sinkhorn momentum (adaptive, start 20)": {"momentum": "adaptive"},
    "ott-jax Sinkhorn Anderson (memory 5)": {"anderson": 5},
}


def forward_solver(variant: str, tol: float, max_iterations: int = 20_000):
    """Jitted `(x, y, epsilon) -> (f, g, n_iters, converged)`."""
    from ott.solvers.linear import acceleration

    opts = VARIANTS[variant]
    kwargs = {}
    if opts.get("momentum") == "adaptive":
        kwargs["momentum"] = acceleration.Momentum(start=20)
    if "anderson" in opts:
        kwargs["anderson"] = acceleration.AndersonAcceleration(memory=opts["anderson"])
    solver = _sinkhorn(tol, max_iterations, **kwargs)

    @jax.jit
    def run(x, y, epsilon):
        out = solver(_problem(x, y, epsilon))
        return out.f, out.g, out.n_iters, out.converged

    return run
