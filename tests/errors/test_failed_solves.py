"""Failures are never silent: `throw=True` raises whichever output is used,
eagerly, under `jit` and under `jit(grad)`; `throw=False` returns a status."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import problem, rel_err

SHORT = om.Sinkhorn(max_iters=3)
EPS = 0.5


def raises(match):
    # Eager calls (and equinox.filter_jit) raise EquinoxRuntimeError; under a
    # plain jax.jit the same message arrives wrapped in a JaxRuntimeError.
    return pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError), match=match)


@pytest.fixture(scope="module")
def data():
    x, y, a, b = problem(0, 30, 20, 3)
    return x, y + 1.0, a, b


LOSSES = [om.ot_cost, om.sinkhorn_divergence, om.sinkhorn_distance]
LOSS_IDS = ["ot_cost", "sinkhorn_divergence", "sinkhorn_distance"]


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("mode", ["value", "grad", "jit(value)", "jit(grad)", "hvp"])
def test_loss_raises_when_sinkhorn_fails(data, loss, mode):
    x, y, a, b = data
    f = lambda z: loss(z, y, a, b, epsilon=EPS, solver=SHORT)  # noqa: E731
    run = {
        "value": lambda: f(x),
        "grad": lambda: jax.grad(f)(x),
        "jit(value)": lambda: jax.jit(f)(x),
        "jit(grad)": lambda: jax.jit(jax.grad(f))(x),
        "hvp": lambda: jax.jit(lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1])(x),
    }[mode]
    with raises("Sinkhorn did not reach"):
        jax.block_until_ready(run())


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_loss_with_throw_false_returns(data, loss):
    x, y, a, b = data
    f = lambda z: loss(z, y, a, b, epsilon=EPS, solver=SHORT, throw=False)  # noqa: E731
    value, g = jax.jit(jax.value_and_grad(f))(x)
    assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(g)))


@pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
def test_loss_hvp_raises_when_the_h_solve_fails(data, loss):
    x, y, a, b = data
    cg = om.CG(rtol=1e-14, max_steps=1)
    f = lambda z: loss(z, y, a, b, epsilon=EPS, linear_solver=cg)  # noqa: E731
    with raises("H-matrix solve"):
        jax.block_until_ready(jax.jit(lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1])(x))


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_solve(data, wrap):
    x, y, a, b = data
    with raises("Sinkhorn did not reach"):
        jax.block_until_ready(wrap(lambda x: om.solve(x, y, epsilon=EPS, solver=SHORT).f)(x))
    with raises("Sinkhorn did not reach"):  # only the cost is used
        jax.block_until_ready(
            wrap(lambda x: om.solve(x, y, epsilon=EPS, solver=SHORT).reg_ot_cost)(x)
        )
    coupling = wrap(lambda x: om.solve(x, y, epsilon=EPS, solver=SHORT, throw=False))(x)
    assert coupling.result == om.RESULTS.sinkhorn_max_iters_reached
    assert not bool(coupling.converged)


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_hvp_raises_when_cg_stops_short(data, wrap):
    x, y, a, b = data
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=om.Sinkhorn(tol=1e-12))
    cg = om.CG(max_steps=1)
    with raises("H-matrix solve"):
        jax.block_until_ready(wrap(lambda v: om.hvp_x(coupling, v, linear_solver=cg))(x))
    with raises("H-matrix solve"):  # only one output of the joint HVP is used
        jax.block_until_ready(wrap(lambda v: om.hvp(coupling, dy=v, linear_solver=cg)[1])(y))
    sol = wrap(lambda v: om.hvp_x_solution(coupling, v, linear_solver=cg, throw=False))(x)
    hv, stats = sol.value, sol.stats
    assert sol.result == om.RESULTS.linear_solve_failed
    assert not bool(stats["converged"])
    exact = om.hvp_x(coupling, x)
    assert rel_err(hv, exact) > 1e-3  # the wrong answer that used to pass silently


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_hvp_raises_on_a_non_converged_coupling(data, wrap):
    x, y, a, b = data
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=SHORT, throw=False)
    with raises("coupling passed in did not converge"):
        jax.block_until_ready(wrap(lambda v: om.hvp_x(coupling, v))(x))
    sol = wrap(lambda v: om.hvp_x_solution(coupling, v, throw=False))(x)
    assert sol.result == om.RESULTS.coupling_not_converged


def test_dense_hessian_raises_on_a_non_converged_coupling(data):
    x, y, a, b = data
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=SHORT, throw=False)
    with raises("coupling passed in did not converge"):
        om.hessian_x(coupling)
    assert bool(jnp.all(jnp.isfinite(om.hessian_x(coupling, throw=False))))


def test_spectrum_status(data):
    x, y, a, b = data
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=SHORT, throw=False)
    with raises("coupling passed in did not converge"):
        om.spectrum(coupling, 3)
    spec = om.spectrum(coupling, 3, throw=False)
    assert spec.result == om.RESULTS.coupling_not_converged
    good = om.spectrum(om.solve(x, y, a, b, epsilon=EPS), 3)
    assert good.result == om.RESULTS.successful


def test_dense_solver_rejects_a_threshold_that_drops_everything():
    with pytest.raises(ValueError, match="threshold"):
        om.DenseSolver(threshold=2.0)
    with pytest.raises(ValueError, match="threshold"):
        om.DenseSolver(threshold=-1e-8)


# The Hessian in y (10 s) takes the same self-term path as in x: --runslow only.
@pytest.mark.parametrize("arg", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_divergence_hessian_with_cancelling_right_hand_sides(arg):
    """n = 3, m = 4, epsilon = 0.05: in the self terms the coupling is nearly
    the identity and the symmetric tangents' reduced right-hand sides cancel
    to rounding noise; an absolute test on them used to raise. The answer
    must match the dense solver's."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(8))
    x, y = jax.random.normal(k1, (3, 2)), jax.random.normal(k2, (4, 2))

    def f(z, solver):
        args = (z, y) if arg == 0 else (x, z)
        return om.sinkhorn_divergence(*args, epsilon=0.05, linear_solver=solver)

    point = (x, y)[arg]
    hess = jax.hessian(f)(point, om.CG())
    dense = jax.hessian(f)(point, om.DenseSolver())
    assert bool(jnp.all(jnp.isfinite(hess)))
    assert rel_err(hess, dense) < 1e-10
