"""Problem factories, tolerances and the ott-jax oracle shared by the tests."""

import functools
import os

import jax
import jax.numpy as jnp
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation as imp
from ott.solvers.linear import sinkhorn

#: Sinkhorn tolerance used on both sides of every comparison.
SINKHORN_TOL = 1e-13
#: Relative agreement demanded of derivatives against ott-jax (float64).
RTOL = 1e-7


def smoke_env(**extra):
    """Environment of the scripts the smoke tests run: compilation is most of
    their time and LLVM's optimisations are not needed at smoke sizes (timings
    are never checked), so XLA compiles at `--xla_backend_optimization_level=0`."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        if flag not in flags:
            flags = f"{flags} {flag}".strip()
    return {**os.environ, "XLA_FLAGS": flags, **extra}


def problem(seed, n, m, d, *, uniform=False, shift=0.5, dtype=jnp.float64):
    """Gaussian clouds (y shifted) with random positive weights summing to 1."""
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k1, (n, d), dtype)
    y = jax.random.normal(k2, (m, d), dtype) + jnp.asarray(shift, dtype)
    if uniform:
        return x, y, jnp.full((n,), 1 / n, dtype), jnp.full((m,), 1 / m, dtype)
    a = jax.random.uniform(k3, (n,), dtype) + 0.5
    b = jax.random.uniform(k4, (m,), dtype) + 0.5
    return x, y, a / a.sum(), b / b.sum()


def ott_output(x, y, a, b, epsilon, cost_fn=None, threshold=SINKHORN_TOL):
    # ott-jax itself mixes int and float arrays, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
        return _ott_output(x, y, a, b, epsilon, cost_fn, threshold)


# Compiled as one program: run eagerly, ott-jax's solve and its implicit
# derivatives compile primitive by primitive, 3-4x slower per new shape (most
# of these tests' time); the values are the same to rounding.
@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _ott_output(x, y, a, b, epsilon, cost_fn, threshold):
    kwargs = {} if cost_fn is None else {"cost_fn": cost_fn}
    geom = pointcloud.PointCloud(x, y, epsilon=epsilon, **kwargs)
    prob = linear_problem.LinearProblem(geom, a, b)
    solver = sinkhorn.Sinkhorn(
        threshold=threshold,
        max_iterations=100_000,
        implicit_diff=imp.ImplicitDiff(),
        use_danskin=False,
    )
    return solver(prob)


def ott_cost(epsilon, cost_fn=None):
    """`(x, y, a, b) -> reg_ot_cost` by ott-jax with implicit differentiation."""

    def cost(x, y, a, b):
        return ott_output(x, y, a, b, epsilon, cost_fn).reg_ot_cost

    return cost


def rel_err(actual, expected):
    return float(jnp.linalg.norm(actual - expected) / jnp.linalg.norm(expected))


def centred(v):
    return v - jnp.mean(v)
