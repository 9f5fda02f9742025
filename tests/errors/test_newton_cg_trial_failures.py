"""NewtonCG when the objective fails (returns +inf or NaN) at some points.

A line search's trial point where the objective cannot be evaluated (for
ot_matfree: a Sinkhorn solve that did not converge, reported as `+inf` by the
caller) must be a rejected step: the search backtracks and the minimiser still
converges. A non-finite value at an accepted point (the start, or any point
of a search that accepts every step) must never be taken as progress: it is
`RESULTS.nonlinear_divergence`, raised with `throw=True`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import ot_matfree as om

CENTRE = jnp.array([0.5, -1.0])
RADIUS = 5.0


def _log_cosh(y, failed_value):
    """`sum log cosh(y - CENTRE)`, replaced by `failed_value` beyond `RADIUS`.

    From `CENTRE + 2` the full Newton step (`-sinh cosh` per coordinate, about
    -13.6) lands near `CENTRE - 11.6`, in the failed region; half of it
    lands inside.
    """
    r = y - CENTRE
    inside = jnp.max(jnp.abs(r)) < RADIUS
    value = jnp.sum(jnp.log(jnp.cosh(jnp.where(inside, r, 0.0))))
    return jnp.where(inside, value, failed_value)


@pytest.mark.parametrize("failed_value", [jnp.inf, jnp.nan])
@pytest.mark.parametrize("linearise", [True, False])
def test_failed_trial_point_is_rejected(failed_value, linearise):
    losses = []
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10, linearise=linearise,
                         progress=lambda info: losses.append(float(info["loss"])))
    fn = lambda y, args: _log_cosh(y, failed_value)
    sol = jax.jit(lambda y0: optx.minimise(fn, solver, y0, throw=False))(CENTRE + 2.0)
    assert sol.result == optx.RESULTS.successful
    assert jnp.allclose(sol.value, CENTRE, rtol=0, atol=1e-8)
    # The failed region was visited (a trial point with a non-finite value)
    # and every visit was a rejection.
    failed = sum(not jnp.isfinite(v) for v in losses)
    assert failed >= 1
    assert int(sol.stats["num_search_steps"]) >= failed


@pytest.mark.parametrize("failed_value", [jnp.inf, jnp.nan])
def test_failed_start_is_a_divergence(failed_value):
    # The first point is always accepted: a failure there must raise, at once.
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10)
    fn = lambda y, args: _log_cosh(y, failed_value)
    y0 = CENTRE + 2 * RADIUS
    sol = optx.minimise(fn, solver, y0, max_steps=50, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_divergence
    assert int(sol.stats["num_steps"]) == 1
    with pytest.raises(eqx.EquinoxRuntimeError, match="diverged"):
        optx.minimise(fn, solver, y0, max_steps=50)
    with pytest.raises(Exception, match="diverged"):
        jax.jit(lambda y: optx.minimise(fn, solver, y, max_steps=50).value)(y0)


def test_failed_point_accepted_by_a_fixed_step_is_a_divergence():
    # Relaxed Newton accepts every step: from CENTRE + 2 the first half Newton
    # step lands inside (near CENTRE - 4.8), the second far outside, and that
    # accepted failure must raise.
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10, search=optx.LearningRate(0.5))
    fn = lambda y, args: _log_cosh(y, jnp.inf)
    sol = optx.minimise(fn, solver, CENTRE + 2.0, max_steps=50, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_divergence
    assert int(sol.stats["num_steps"]) == 3
    with pytest.raises(eqx.EquinoxRuntimeError, match="diverged"):
        optx.minimise(fn, solver, CENTRE + 2.0, max_steps=50)


def _registration(n=12):
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 2))
    a_true = jnp.array([[1.2, 0.3], [-0.2, 0.9]])
    y = (x @ a_true)[jax.random.permutation(jax.random.PRNGKey(1), n)]
    return x, y, a_true


def _guarded_loss(solver):
    """`ot_cost` that is `+inf` where Sinkhorn does not converge within `solver`'s cap."""

    def loss(a, data):
        x, y = data
        probe = om.solve(jax.lax.stop_gradient(x @ a), y, epsilon=0.5, solver=solver,
                         throw=False)
        return jax.lax.cond(
            probe.converged,
            lambda: om.ot_cost(x @ a, y, epsilon=0.5, solver=solver, throw=False),
            lambda: jnp.array(jnp.inf, x.dtype),
        )

    return loss


def test_sinkhorn_failure_at_trial_point_backtracks_and_converges():
    # From A0 = A_true / 10 the second Newton step tries points where Sinkhorn
    # needs ~1e5 iterations (uncapped); capped at 3,000 they fail, are
    # rejected, and the search backtracks to points that converge.
    x, y, a_true = _registration()
    losses = []
    solver = om.NewtonCG(rtol=1e-9, atol=1e-9,
                         progress=lambda info: losses.append(float(info["loss"])))
    guarded = _guarded_loss(om.Sinkhorn(tol=1e-10, max_iters=3_000))
    sol = optx.minimise(guarded, solver, 0.1 * a_true, (x, y), max_steps=100)
    assert sum(v == jnp.inf for v in losses) >= 1
    assert int(sol.stats["num_search_steps"]) >= 1
    # A stationary point of the uncapped loss.
    loss = lambda a: om.ot_cost(x @ a, y, epsilon=0.5, solver=om.Sinkhorn(tol=1e-10))
    assert float(jnp.max(jnp.abs(jax.grad(loss)(sol.value)))) < 1e-8
    assert float(loss(sol.value)) < float(loss(0.1 * a_true))


def test_sinkhorn_failure_at_the_start_raises():
    x, y, a_true = _registration()
    failing = om.Sinkhorn(tol=1e-10, max_iters=2)
    with pytest.raises(eqx.EquinoxRuntimeError, match="diverged"):
        optx.minimise(_guarded_loss(failing), om.NewtonCG(rtol=1e-9, atol=1e-9), a_true,
                      (x, y), max_steps=100)
