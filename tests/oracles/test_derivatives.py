"""Derivatives against ott-jax (implicit differentiation), finite differences,
the dense analytic Hessian and identities that need no reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ott.geometry import costs

import ot_matfree as om

from ..helpers import RTOL, centred, ott_cost, problem, rel_err

# Reference couplings at float64's rounding floor of the marginal error. Plain
# Sinkhorn lands below 1e-14 on these problems; adaptive momentum (the default)
# stops at a fixed point of its rounded iteration with 1.27e-14 on the first.
# (1e-13: float64's measurable floor of the marginal error on these problems is
# 1e-14 to 7e-14; at 1e-14 0.3.0 claimed convergence on the iteration's own
# estimate, which a separate pass does not confirm. Oracle tolerances unchanged.)
TIGHT = om.Sinkhorn(tol=1e-13, max_iters=100_000, momentum=None)
CG = om.CG(rtol=1e-13)


@functools.lru_cache(maxsize=None)
def case(seed, n, m, d, epsilon, uniform=False):
    x, y, a, b = problem(seed, n, m, d, uniform=uniform)
    return (x, y, a, b), om.solve(x, y, a, b, epsilon=epsilon, solver=TIGHT)


def tangents(seed, n, m, d):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(1000 + seed), 4)
    dx = jax.random.normal(k1, (n, d))
    dy = jax.random.normal(k2, (m, d))
    # Weight tangents on the simplex's tangent space: the system is consistent.
    da = centred(jax.random.normal(k3, (n,)))
    db = centred(jax.random.normal(k4, (m,)))
    return dx, dy, da, db


def ott_jvp_of_grad(epsilon, args, tangent, cost_fn=None):
    with jax.numpy_dtype_promotion("standard"):
        grads = jax.grad(ott_cost(epsilon, cost_fn), argnums=(0, 1, 2, 3))
        return jax.jvp(grads, args, tangent)[1]


# The x block of the joint HVP, which test_joint_hvp_matches_ott checks against
# ott-jax on both orientations (n > m, d = 2; n < m, d = 3): the cases with
# those shapes run with --runslow only.
@pytest.mark.parametrize(
    "n, m, d, epsilon",
    [(12, 9, 1, 0.05), pytest.param(15, 11, 2, 0.1, marks=pytest.mark.slow),
     pytest.param(10, 14, 3, 0.5, marks=pytest.mark.slow),
     pytest.param(8, 8, 5, 1.0, marks=pytest.mark.slow)],
)
def test_hvp_x_matches_ott(n, m, d, epsilon):
    args, coupling = case(0, n, m, d, epsilon)
    v = tangents(0, n, m, d)[0]
    expected = ott_jvp_of_grad(epsilon, args, (v, *(jnp.zeros_like(t) for t in args[1:])))[0]
    sol = om.hvp_x_solution(coupling, v, linear_solver=CG)
    hv, stats = sol.value, sol.stats
    assert rel_err(hv, expected) < RTOL
    assert bool(stats["converged"]) and stats["residual"] <= 2e-13
    assert 0 < int(stats["num_steps"]) <= min(n, m)


@pytest.mark.parametrize("n, m, d, epsilon", [(11, 7, 2, 0.2), (7, 12, 3, 0.1)])
def test_joint_hvp_matches_ott(n, m, d, epsilon):
    args, coupling = case(1, n, m, d, epsilon)
    tangent = tangents(1, n, m, d)
    expected = ott_jvp_of_grad(epsilon, args, tangent)
    actual = om.hvp(coupling, *tangent, linear_solver=CG)
    for i, (got, want) in enumerate(zip(actual, expected)):
        if i >= 2:  # weight gradients are meaningful up to a constant
            got, want = centred(got), centred(want)
        assert rel_err(got, want) < RTOL, i


@pytest.mark.slow  # 17 s; test_losses' jax.hessian checks the weight blocks against ott-jax
def test_weight_hessian_on_simplex_matches_ott():
    n, m, d, epsilon = 9, 7, 2, 0.2
    (x, y, a, b), coupling = case(2, n, m, d, epsilon)
    with jax.numpy_dtype_promotion("standard"):
        expected = jax.hessian(ott_cost(epsilon), argnums=2)(x, y, a, b)
    # Basis vectors e_i are not on the simplex: the least-squares solution is used.
    columns = jax.vmap(lambda e: om.hvp(coupling, da=e, linear_solver=CG)[2])(jnp.eye(n))
    q = jnp.eye(n) - jnp.ones((n, n)) / n
    assert rel_err(q @ columns.T @ q, q @ expected @ q) < RTOL


@pytest.mark.slow  # 19 s; the Cosine case below checks hessian_x against ott-jax in CI
def test_hessian_x_matches_ott():
    n, m, d, epsilon = 10, 8, 2, 0.1
    (x, y, a, b), coupling = case(3, n, m, d, epsilon)
    with jax.numpy_dtype_promotion("standard"):
        expected = jax.hessian(ott_cost(epsilon), argnums=0)(x, y, a, b)
    assert rel_err(om.hessian_x(coupling), expected) < RTOL


# (SqPNorm(3) is slow, 32 s: Cosine takes the same per-pair autodiff path.)
@pytest.mark.parametrize("cost_fn", [pytest.param(costs.SqPNorm(p=3.0), marks=pytest.mark.slow),
                                     costs.Cosine()], ids=["sqpnorm3", "cosine"])
def test_non_euclidean_cost_matches_ott(cost_fn):
    n, m, d, epsilon = 9, 8, 3, 0.1
    x, y, a, b = problem(4, n, m, d)
    coupling = om.solve(x, y, a, b, epsilon=epsilon, cost=cost_fn, solver=TIGHT)
    dx, dy, da, db = tangents(4, n, m, d)
    expected = ott_jvp_of_grad(epsilon, (x, y, a, b), (dx, dy, da, db), cost_fn)
    actual = om.hvp(coupling, dx, dy, da, db, linear_solver=CG)
    for i, (got, want) in enumerate(zip(actual, expected)):
        if i >= 2:
            got, want = centred(got), centred(want)
        assert rel_err(got, want) < RTOL, i
    # The dense `hessian_x` against the HVPs just checked, column by column
    # (ott-jax's own Hessian, 12 s more, in the test below with --runslow).
    columns = jax.vmap(lambda v: om.hvp_x(coupling, v.reshape(n, d), linear_solver=CG))(
        jnp.eye(n * d))
    assert rel_err(om.hessian_x(coupling), columns.reshape(n, d, n, d).transpose(2, 3, 0, 1)) < RTOL


@pytest.mark.slow  # 34 s; the test above checks the Hessian against HVPs checked against ott-jax
@pytest.mark.parametrize("cost_fn", [costs.SqPNorm(p=3.0), costs.Cosine()], ids=["sqpnorm3", "cosine"])
def test_non_euclidean_hessian_matches_ott(cost_fn):
    n, m, d, epsilon = 9, 8, 3, 0.1
    x, y, a, b = problem(4, n, m, d)
    coupling = om.solve(x, y, a, b, epsilon=epsilon, cost=cost_fn, solver=TIGHT)
    with jax.numpy_dtype_promotion("standard"):
        hess = jax.hessian(ott_cost(epsilon, cost_fn), argnums=0)(x, y, a, b)
    assert rel_err(om.hessian_x(coupling), hess) < RTOL


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_hvp_x_matches_finite_differences(d):
    n, m, epsilon = 14, 10, 0.3
    (x, y, a, b), coupling = case(5, n, m, d, epsilon)
    v = tangents(5, n, m, d)[0]
    h = 1e-5

    def gradient(z):
        return om.grad_x(om.solve(z, y, a, b, epsilon=epsilon, solver=TIGHT))

    fd = (gradient(x + h * v) - gradient(x - h * v)) / (2 * h)
    assert rel_err(om.hvp_x(coupling, v, linear_solver=CG), fd) < 1e-8


def test_hessian_x_matches_hvp_x_and_is_symmetric():
    n, m, d = 12, 16, 3
    _, coupling = case(6, n, m, d, 0.2)
    hess = om.hessian_x(coupling)
    v = tangents(6, n, m, d)[0]
    assert rel_err(om.hvp_x(coupling, v, linear_solver=CG), jnp.einsum("iajb,jb->ia", hess, v)) < 1e-10
    flat = hess.reshape(n * d, n * d)
    assert rel_err(flat, flat.T) < 1e-12


def test_marginal_identity():
    # SqEuclidean: sum_i (H V)_i = 2 sum_k a_k V_k for the x-x block.
    n, m, d = 40, 30, 2
    (x, y, a, b), coupling = case(7, n, m, d, 0.05)
    v = tangents(7, n, m, d)[0]
    hv = om.hvp_x(coupling, v, linear_solver=CG)
    expected = 2 * jnp.sum(a[:, None] * v, axis=0)
    assert rel_err(hv.sum(0), expected) < 1e-9


def test_joint_hvp_is_symmetric():
    n, m, d = 13, 9, 2
    _, coupling = case(8, n, m, d, 0.1)
    u = tangents(8, n, m, d)
    w = tangents(9, n, m, d)
    hu = om.hvp(coupling, *u, linear_solver=CG)
    hw = om.hvp(coupling, *w, linear_solver=CG)
    lhs = sum(jnp.vdot(p, q) for p, q in zip(u, hw))
    rhs = sum(jnp.vdot(p, q) for p, q in zip(hu, w))
    assert abs(lhs - rhs) <= 1e-10 * abs(lhs)


def test_hvp_under_jit_and_vmap():
    n, m, d = 10, 8, 2
    _, coupling = case(10, n, m, d, 0.2)
    vs = jax.random.normal(jax.random.PRNGKey(3), (4, n, d))
    batched = jax.jit(jax.vmap(lambda v: om.hvp_x(coupling, v, linear_solver=CG)))(vs)
    for i in range(4):
        assert rel_err(batched[i], om.hvp_x(coupling, vs[i], linear_solver=CG)) < 1e-12


def test_block_size_does_not_change_hvp():
    n, m, d = 17, 13, 3
    (x, y, a, b), coupling = case(11, n, m, d, 0.2)
    blocked = om.solve(x, y, a, b, epsilon=0.2, solver=TIGHT, block_size=5)
    v = tangents(11, n, m, d)[0]
    assert rel_err(om.hvp_x(blocked, v, linear_solver=CG), om.hvp_x(coupling, v, linear_solver=CG)) < 1e-11


def test_return_stats_is_deprecated_and_unchanged():
    """0.2's `return_stats=True` still returns `(value, stats)`, the status in
    `stats["result"]`, and warns naming the `*_solution` replacement."""
    n, m, d = 12, 9, 2
    _, coupling = case(0, n, m, d, 0.1)
    dx, dy, da, db = tangents(0, n, m, d)
    cg = om.CG(rtol=1e-14, max_steps=3)  # fails: the status must come through
    sol = om.hvp_solution(coupling, dx, dy, da, db, linear_solver=cg, throw=False)
    assert sol.result == om.RESULTS.linear_solve_failed
    with pytest.warns(DeprecationWarning, match="hvp_solution"):
        out, stats = om.hvp(coupling, dx, dy, da, db, linear_solver=cg, return_stats=True,
                            throw=False)
    assert stats["result"] == sol.result and int(stats["num_steps"]) == 3
    assert all(bool(jnp.all(a == b)) for a, b in zip(out, sol.value))
    with pytest.warns(DeprecationWarning, match="hvp_x_solution"):
        hv, stats_x = om.hvp_x(coupling, dx, linear_solver=cg, return_stats=True, throw=False)
    sol_x = om.hvp_x_solution(coupling, dx, linear_solver=cg, throw=False)
    assert bool(jnp.all(hv == sol_x.value)) and stats_x["result"] == sol_x.result
    assert set(stats_x) == {*sol_x.stats, "result"}


def test_cg_iteration_cap_is_reported_and_finite():
    n, m, d = 60, 50, 2
    _, coupling = case(12, n, m, d, 0.01)
    v = tangents(12, n, m, d)[0]
    sol = om.hvp_x_solution(coupling, v, linear_solver=om.CG(rtol=1e-14, max_steps=2), throw=False)
    hv, stats = sol.value, sol.stats
    assert int(stats["num_steps"]) == 2
    assert not bool(stats["converged"])
    assert sol.result == om.RESULTS.linear_solve_failed
    assert stats["residual"] > 1e-14
    assert jnp.all(jnp.isfinite(hv))


def test_dense_solver_matches_cg():
    n, m, d = 11, 9, 2
    _, coupling = case(13, n, m, d, 0.1)
    tangent = tangents(13, n, m, d)
    dense = om.hvp(coupling, *tangent, linear_solver=om.DenseSolver())
    cg = om.hvp(coupling, *tangent, linear_solver=CG)
    for got, want in zip(dense, cg):
        assert rel_err(got, want) < 1e-10


def test_grad_matches_ott():
    n, m, d, epsilon = 12, 10, 3, 0.2
    (x, y, a, b), coupling = case(14, n, m, d, epsilon)
    with jax.numpy_dtype_promotion("standard"):
        expected = jax.grad(ott_cost(epsilon), argnums=(0, 1, 2, 3))(x, y, a, b)
    for i, (got, want) in enumerate(zip(om.grad(coupling), expected)):
        if i >= 2:
            got, want = centred(got), centred(want)
        assert rel_err(got, want) < 1e-10, i
    np.testing.assert_allclose(om.grad_x(coupling), om.grad(coupling)[0])


def test_float32_hvp_is_finite_and_close_to_float64():
    n, m, d = 300, 250, 3
    x, y, a, b = problem(15, n, m, d)
    v = tangents(15, n, m, d)[0]
    c64 = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-12))
    ref = om.hvp_x(c64, v, linear_solver=CG)
    x32, y32, a32, b32, v32 = (t.astype(jnp.float32) for t in (x, y, a, b, v))
    c32 = om.solve(x32, y32, a32, b32, epsilon=0.05, solver=om.Sinkhorn(tol=1e-5))
    hv = om.hvp_x(c32, v32)
    assert hv.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(hv))
    assert rel_err(hv.astype(jnp.float64), ref) < 1e-3


@settings(max_examples=2, deadline=None)
@given(
    n=st.integers(3, 16),
    m=st.integers(3, 16),
    d=st.integers(1, 4),
    log_eps=st.floats(-1.5, 0.5),
    seed=st.integers(0, 2**16),
)
def test_joint_hvp_matches_ott_on_random_problems(n, m, d, log_eps, seed):
    # Problems drawn fresh on every run: nothing here was tuned.
    epsilon = float(10**log_eps)
    x, y, a, b = problem(seed, n, m, d)
    coupling = om.solve(x, y, a, b, epsilon=epsilon, solver=TIGHT)
    assert bool(coupling.converged)
    tangent = tangents(seed, n, m, d)
    expected = ott_jvp_of_grad(epsilon, (x, y, a, b), tangent)
    actual = om.hvp(coupling, *tangent, linear_solver=CG)
    for i, (got, want) in enumerate(zip(actual, expected)):
        if i >= 2:
            got, want = centred(got), centred(want)
        assert rel_err(got, want) < RTOL, i


def test_float32_hvp_with_padded_blocks_is_finite():
    # Regression: n = 3,000 float32 pads its last block; zero tangents built as
    # constant arrays met a jaxlib CPU fusion bug (NaN). They are skipped now.
    n, d = 3000, 3
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.uniform(kx, (n, d), jnp.float32)
    y = jax.random.uniform(ky, (n, d), jnp.float32)
    v = jax.random.normal(kv, (n, d), jnp.float32)
    coupling = om.solve(x, y, epsilon=0.05, solver=om.Sinkhorn(tol=1e-5))
    sol = om.hvp_x_solution(coupling, v)
    hv, stats = sol.value, sol.stats
    assert bool(stats["converged"])
    assert jnp.all(jnp.isfinite(hv))
    expected = 2 * jnp.sum(coupling.a[:, None] * v, axis=0)
    assert rel_err(hv.sum(0), expected) < 1e-3
