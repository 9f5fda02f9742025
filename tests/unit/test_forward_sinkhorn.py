import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import ott_output, problem


@pytest.mark.parametrize(
    "n, m, d, epsilon, uniform",
    [(13, 11, 2, 0.1, False), (20, 31, 3, 0.5, True), (9, 9, 5, 1.0, False)],
)
def test_solve_matches_ott(n, m, d, epsilon, uniform):
    x, y, a, b = problem(n + m + d, n, m, d, uniform=uniform)
    coupling = om.solve(x, y, a, b, epsilon=epsilon, solver=om.Sinkhorn(tol=1e-14))
    out = ott_output(x, y, a, b, epsilon)
    assert bool(coupling.converged)
    assert coupling.marginal_error <= 1e-14
    # Potentials are defined up to the gauge (f + c, g - c).
    shift = jnp.mean(coupling.f - out.f)
    scale = jnp.max(jnp.abs(out.f)) + jnp.max(jnp.abs(out.g))
    np.testing.assert_allclose(coupling.f - shift, out.f, atol=1e-10 * scale)
    np.testing.assert_allclose(coupling.g + shift, out.g, atol=1e-10 * scale)
    np.testing.assert_allclose(coupling.reg_ot_cost, out.reg_ot_cost, rtol=1e-10)


def test_marginals_of_returned_coupling():
    x, y, a, b = problem(0, 30, 20, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-6))
    p = om.coupling_operator(coupling).as_matrix()
    error = jnp.sum(jnp.abs(p.sum(1) - a)) + jnp.sum(jnp.abs(p.sum(0) - b))
    # The reported error is that of the returned (f, g), not of a later iterate.
    np.testing.assert_allclose(coupling.marginal_error, error, rtol=1e-6, atol=1e-15)
    assert coupling.marginal_error <= 1e-6


def test_block_size_does_not_change_result():
    x, y, a, b = problem(1, 23, 17, 3)
    full = om.solve(x, y, a, b, epsilon=0.2)
    blocked = om.solve(x, y, a, b, epsilon=0.2, block_size=4)  # 23 = 5 x 4 + 3: padding
    np.testing.assert_allclose(blocked.f, full.f, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocked.g, full.g, rtol=1e-12, atol=1e-14)
    assert blocked.num_iters == full.num_iters


def test_non_converged_is_reported():
    x, y, a, b = problem(2, 40, 40, 2)
    coupling = om.solve(
        x, y, a, b, epsilon=0.01, solver=om.Sinkhorn(tol=1e-12, max_iters=3), throw=False
    )
    assert not bool(coupling.converged)
    assert coupling.result == om.RESULTS.sinkhorn_max_iters_reached
    assert int(coupling.num_iters) == 3
    assert coupling.marginal_error > 1e-12
    assert jnp.all(jnp.isfinite(coupling.f)) and jnp.all(jnp.isfinite(coupling.g))


def test_warm_start_converges_faster():
    x, y, a, b = problem(3, 30, 25, 2)
    cold = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-10))
    warm = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-10), init=cold.f)
    assert warm.num_iters < cold.num_iters
    np.testing.assert_allclose(warm.reg_ot_cost, cold.reg_ot_cost, rtol=1e-10)


def test_progress_callback_is_called():
    calls = []
    x, y, a, b = problem(4, 15, 15, 2)
    solver = om.Sinkhorn(tol=1e-12, progress=lambda it, err: calls.append(int(it)), progress_every=5)
    coupling = om.solve(x, y, a, b, epsilon=0.1, solver=solver)
    jax.effects_barrier()
    assert calls and calls == list(range(5, int(coupling.num_iters) + 1, 5))


def test_from_ott_roundtrip():
    x, y, a, b = problem(5, 12, 10, 3)
    out = ott_output(x, y, a, b, 0.3)
    coupling = om.from_ott(out)
    assert coupling.marginal_error < 1e-12
    np.testing.assert_allclose(coupling.reg_ot_cost, out.reg_ot_cost, rtol=1e-14)
    np.testing.assert_allclose(om.grad_x(coupling), om.grad_x(om.solve(x, y, a, b, epsilon=0.3,
                               solver=om.Sinkhorn(tol=1e-14))), rtol=1e-9)


def test_float32_solve_is_finite_and_close():
    x, y, a, b = problem(6, 200, 150, 3)
    c64 = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-10))
    x32, y32, a32, b32 = (v.astype(jnp.float32) for v in (x, y, a, b))
    # tol 2e-5: these float32 potentials resolve the marginals to about 1.1e-5
    # (measured in float64); 0.3's claim of 1e-5 was the loop's own estimate.
    c32 = om.solve(x32, y32, a32, b32, epsilon=0.05, solver=om.Sinkhorn(tol=2e-5))
    assert c32.f.dtype == jnp.float32
    assert bool(c32.converged)
    np.testing.assert_allclose(c32.reg_ot_cost, c64.reg_ot_cost, rtol=1e-5)


@pytest.mark.parametrize("offset", [1e8, 1e16])
def test_init_gauge_does_not_fake_convergence(offset):
    """A constant in `init` is a gauge: it must not change the answer (0.1
    reported `converged=True` with reg_ot_cost 4.0 against 6.56 at 1e16)."""
    x, y, a, b = problem(1, 12, 10, 3)
    solver = om.Sinkhorn(tol=1e-12)
    ref = om.solve(x, y, a, b, epsilon=0.5, solver=solver)
    out = om.solve(x, y, a, b, epsilon=0.5, solver=solver, init=jnp.full(12, offset))
    assert bool(out.converged)
    np.testing.assert_allclose(out.reg_ot_cost, ref.reg_ot_cost, rtol=1e-12)
    warm = om.solve(x, y, a, b, epsilon=0.5, solver=solver, init=ref.f + offset)
    np.testing.assert_allclose(warm.reg_ot_cost, ref.reg_ot_cost, rtol=1e-12)
