"""Shared pieces of the benchmark scripts: timing, problems, accuracy measures,
optional solvers and the ott-jax peer.

Import this module only after `jax.config.update("jax_enable_x64", True)`.
"""

import platform
import statistics
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ot_matfree


def device_string() -> str:
    """`'cpu (2 cores, x86_64), jax 0.x'`-style description of the backend."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    where = f"{cores} cores, {platform.machine()}" if dev.platform == "cpu" else kind
    return f"{dev.platform} ({where}), jax {jax.__version__}"


def block(tree):
    """`block_until_ready` on every array leaf."""
    return jax.tree_util.tree_map(
        lambda leaf: leaf.block_until_ready() if hasattr(leaf, "block_until_ready") else leaf,
        tree,
    )


def timed(fn: Callable, *args, repeats: int = 3, warmup: int = 1, **kwargs):
    """Run `fn` `warmup` times (compilation), then `repeats` times.

    **Returns:** `(result of the last call, median seconds)`.
    """
    out = None
    for _ in range(warmup):
        out = block(fn(*args, **kwargs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn(*args, **kwargs))
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times) if times else float("nan")


# --------------------------------------------------------------------------- problems


def uniform_cloud(key, n: int, d: int, dtype=jnp.float64):
    """`n` points uniform in `[0, 1]^d`."""
    return jax.random.uniform(key, (n, d), dtype)


def uniform_problem(seed: int, n: int, d: int, *, same: bool, dtype=jnp.float64):
    """Uniform points in `[0, 1]^d`, `y = x` (`same`) or independent, uniform weights."""
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = uniform_cloud(kx, n, d, dtype)
    y = x if same else uniform_cloud(ky, n, d, dtype)
    w = jnp.full((n,), 1 / n, dtype)
    return x, y, w, w


def mean_sq_cost(x, y) -> float:
    """Mean of `|x_i - y_j|^2` without forming the n x m matrix."""
    n, m = x.shape[0], y.shape[0]
    return float(
        jnp.sum(x**2) / n + jnp.sum(y**2) / m - 2 * jnp.dot(x.mean(0), y.mean(0))
    )


# --------------------------------------------------------------------------- accuracy


def rel_err(actual, expected) -> float:
    actual, expected = jnp.asarray(actual), jnp.asarray(expected)
    return float(jnp.linalg.norm((actual - expected).ravel()) / jnp.linalg.norm(expected.ravel()))


def marginal_violation_hessian(hess, a) -> float:
    """Li et al. eq. (59) for a dense Hessian `(n, d, n, d)` of `OT` in `x`
    with the squared Euclidean cost: `sum_i H_(i, k) = 2 a_k I_d`.

    Returns `|| sum_i H_(i, k) - 2 a_k I ||_F / || 2 a_k I ||_F`, the Frobenius
    norms taken over all `k` and both `d` indices. NaN if `hess` has a NaN.
    """
    hess = jnp.asarray(hess)
    d = hess.shape[1]
    col = hess.sum(0)  # (d, n, d): [a, k, b] = sum_i H[i, a, k, b]
    target = 2 * jnp.einsum("k,ab->akb", a, jnp.eye(d, dtype=hess.dtype))
    return float(jnp.linalg.norm((col - target).ravel()) / jnp.linalg.norm(target.ravel()))


def marginal_violation_translations(hvps, a) -> float:
    """The same measure from `d` HVPs along the translations `V = 1_n (x) e_l`.

    `hvps[l]` is `H V` for `V = e_l` at every point, shape (n, d); by the
    symmetry of the Hessian `(H V^l)_k = sum_i H_(i, k)[:, l]`, so this is
    eq. (59) computed matrix-free (2 HVPs in d = 2 instead of n d).
    """
    hvps = jnp.stack([jnp.asarray(h) for h in hvps])  # (l, k, a)
    d = hvps.shape[0]
    target = 2 * jnp.einsum("k,la->lka", a, jnp.eye(d, dtype=hvps.dtype))
    return float(jnp.linalg.norm((hvps - target).ravel()) / jnp.linalg.norm(target.ravel()))


def translations(n: int, d: int, dtype):
    return [jnp.zeros((n, d), dtype).at[:, l].set(1) for l in range(d)]


# --------------------------------------------------------------------------- solvers


def matrix_free_solvers(dtype_bits: int = 64, *, rank: int = 20, threshold: float = 1e-8):
    """`{name: linear_solver}` for `hvp_x`: CG always; SpectralCG and
    TruncatedSVD (`rank` directions, cut-off `threshold`) when this version
    of ot_matfree has them."""
    rtol = 1e-10 if dtype_bits == 64 else 1e-5
    out = {"CG": ot_matfree.CG(rtol=rtol, max_steps=5000)}
    if hasattr(ot_matfree, "SpectralCG"):
        out["SpectralCG"] = ot_matfree.SpectralCG(rank=rank, rtol=rtol, max_steps=5000)
    if hasattr(ot_matfree, "TruncatedSVD"):
        out["TruncatedSVD"] = ot_matfree.TruncatedSVD(
            rank=rank, threshold=threshold, rtol=rtol, max_steps=5000
        )
    return out


@eqx.filter_jit
def _init(solver, coupling):
    return solver.init(ot_matfree.h_operator(coupling), {})


def prepare(solver, coupling):
    """`(solver, state, setup seconds)` with `state = solver.init(h_operator(coupling), {})`.

    Every solver is set up once per coupling and the state reused for every
    HVP (`hvp_x(..., linear_solver=solver, solver_state=state)`): the H
    operator's marginals (one streaming pass) for all solvers, plus the block
    Lanczos spectrum for SpectralCG / TruncatedSVD. The set-up is jitted and
    timed once (compilation included on first use).
    """
    t0 = time.perf_counter()
    state = block(_init(solver, coupling))
    return solver, state, time.perf_counter() - t0


def ott_sinkhorn(
    x, y, a, b, epsilon, *, threshold: float, max_iterations: int, implicit: bool = True,
    fixed_iterations: bool = False,
):
    """ott-jax `Sinkhorn` (lse mode, `PointCloud`, squared Euclidean, no cost
    scaling) output. `implicit=True`: `ImplicitDiff()` with its defaults
    (lineax CG/NormalCG, rtol = atol = 1e-6), `use_danskin=False` so that
    second derivatives go through the implicit rule. `implicit=False`:
    unrolling; `fixed_iterations` then runs exactly `max_iterations`
    iterations (a `fori_loop`, which forward-mode differentiation needs)."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import implicit_differentiation as imp
    from ott.solvers.linear import sinkhorn

    geom = pointcloud.PointCloud(x, y, epsilon=epsilon)
    prob = linear_problem.LinearProblem(geom, a, b)
    solver = sinkhorn.Sinkhorn(
        lse_mode=True,
        threshold=threshold,
        max_iterations=max_iterations,
        min_iterations=max_iterations if fixed_iterations else 0,
        implicit_diff=imp.ImplicitDiff() if implicit else None,
        use_danskin=False,
    )
    return solver(prob)


# --------------------------------------------------------------------------- output


def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if not np.isfinite(v):
        return "nan" if np.isnan(v) else "inf"
    return f"{v:.{digits}e}" if (v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4)) else f"{v:.{digits + 1}g}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(lines)
