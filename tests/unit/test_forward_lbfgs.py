"""`LBFGS`, the semi-dual forward solver: the same solution as Sinkhorn, the
marginal error it reports is the returned coupling's (dense check), failures
are reported and raised, and it works wherever a forward solver is taken."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import problem, rel_err


def dense_error(coupling):
    """`|P 1 - a|_1 + |P^T 1 - b|_1` of `coupling` from its dense `P`, in float64."""
    x, y = (np.asarray(z, np.float64) for z in (coupling.x, coupling.y))
    C = np.asarray(coupling.cost.matrix(jnp.asarray(x), jnp.asarray(y)), np.float64)
    f, g = (np.asarray(z, np.float64) for z in (coupling.f, coupling.g))
    P = np.exp((f[:, None] + g[None, :] - C) / float(coupling.epsilon))
    a, b = (np.asarray(z, np.float64) for z in (coupling.a, coupling.b))
    return np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()


@pytest.mark.parametrize("epsilon", [0.5, 0.02])
def test_lbfgs_solves_the_sinkhorn_problem(epsilon):
    """Same `reg_ot_cost` and potentials (up to the gauge) as Sinkhorn at a tight
    tolerance, a block size that does not divide n, and a reported error that
    is the dense error of the returned potentials."""
    x, y, a, b = problem(3, 23, 17, 2)
    ref = om.solve(x, y, a, b, epsilon=epsilon, solver=om.Sinkhorn(tol=1e-13))
    c = om.solve(x, y, a, b, epsilon=epsilon, solver=om.LBFGS(tol=1e-12), block_size=5)
    assert bool(c.converged) and c.marginal_error <= 1e-12
    np.testing.assert_allclose(c.marginal_error, dense_error(c), rtol=1e-3, atol=1e-15)
    np.testing.assert_allclose(c.reg_ot_cost, ref.reg_ot_cost, rtol=1e-12)
    shift = jnp.mean(c.f - ref.f)
    np.testing.assert_allclose(c.f - shift, ref.f, atol=1e-9)
    np.testing.assert_allclose(c.g + shift, ref.g, atol=1e-9)
    assert int(c.num_passes) >= int(c.num_iters) >= 1


def test_lbfgs_in_losses_matrix_and_warm_starts():
    """`LBFGS` as the losses' forward solver (the divergence's self terms take the
    symmetric update), on a cost matrix, and warm-started from a coupling."""
    x, y, a, b = problem(4, 15, 12, 2)
    eps = 0.3

    def divergence(solver):
        return om.sinkhorn_divergence(x, y, a, b, epsilon=eps, solver=solver)

    assert rel_err(divergence(om.LBFGS(tol=1e-12)), divergence(om.Sinkhorn(tol=1e-12))) < 1e-12
    C = om.SqEuclidean().matrix(x, y)
    c = om.matrix.solve(C, a, b, epsilon=eps, solver=om.LBFGS(tol=1e-12))
    ref = om.solve(x, y, a, b, epsilon=eps, solver=om.LBFGS(tol=1e-12))
    np.testing.assert_allclose(c.reg_ot_cost, ref.reg_ot_cost, rtol=1e-12)
    cold = om.solve(x + 1e-3, y, a, b, epsilon=eps, solver=om.LBFGS(tol=1e-10))
    warm = om.solve(x + 1e-3, y, a, b, epsilon=eps, solver=om.LBFGS(tol=1e-10), init=ref)
    assert int(warm.num_passes) < int(cold.num_passes)


def test_lbfgs_failures_are_reported_and_raised():
    """An iteration cap, and a tolerance below float64's floor, are failures:
    reported with `throw=False`, raised eagerly and under `jit(grad)`."""
    x, y, a, b = problem(5, 30, 20, 2)
    capped = om.solve(x, y, a, b, epsilon=0.01, solver=om.LBFGS(max_iters=2), throw=False)
    assert capped.result == om.RESULTS.lbfgs_max_iters_reached and not bool(capped.converged)
    assert int(capped.num_iters) == 2
    floor = om.solve(x, y, a, b, epsilon=0.05, solver=om.LBFGS(tol=1e-18), throw=False)
    assert not bool(floor.converged)
    assert floor.result in (om.RESULTS.lbfgs_line_search_failed,
                            om.RESULTS.lbfgs_max_iters_reached)
    with pytest.raises(eqx.EquinoxRuntimeError, match="L-BFGS did not reach"):
        om.solve(x, y, a, b, epsilon=0.01, solver=om.LBFGS(max_iters=2))
    loss = jax.jit(jax.grad(
        lambda x: om.ot_cost(x, y, a, b, epsilon=0.01, solver=om.LBFGS(max_iters=2))
    ))
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError),
                       match="L-BFGS did not reach"):
        jax.block_until_ready(loss(x))


def test_lbfgs_float32_claim_holds_in_float64():
    """A float32 solve reported converged at 1e-4 has that error in float64 too."""
    x, y, a, b = problem(6, 40, 30, 2, dtype=jnp.float32)
    c = om.solve(x, y, a, b, epsilon=0.05, solver=om.LBFGS(tol=1e-4))
    assert bool(c.converged) and c.f.dtype == jnp.float32
    assert dense_error(c) <= 1e-4


@pytest.mark.parametrize("bad", [dict(tol=0.0), dict(tol=float("nan")), dict(max_iters=0),
                                 dict(memory=0), dict(max_iters=2.5)])
def test_lbfgs_options_are_checked(bad):
    with pytest.raises(ValueError):
        om.LBFGS(**bad)
