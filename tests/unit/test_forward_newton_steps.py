"""Newton steps on the dual after Sinkhorn (`Sinkhorn(newton=...)`) and the
default iteration of `Sinkhorn()`.

Oracles: ott-jax's Sinkhorn at 1e-13 and our plain Sinkhorn at 1e-14; the
reported marginal error is checked against the dense coupling of the returned
potentials, converged or not, so a wrong answer cannot pass as converged.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om
from ot_matfree._forward import newton as _sinkhorn_newton

from ..helpers import ott_output, problem
from .test_forward_accel import check_variant, dense_marginal_error

#: Same shape as test_forward_accel's problem (one compilation per option).
N, M, D = 13, 11, 2
NEWTON = {
    "plain entry": dict(momentum=None, newton=0.1),
    "adaptive entry": dict(momentum="adaptive", newton=0.1),
    "anderson entry": dict(anderson=5, newton=0.5),
}


@pytest.fixture(scope="module")
def references():
    x, y, a, b = problem(N + M + D, N, M, D)
    plain = om.solve(x, y, a, b, epsilon=0.1, solver=om.Sinkhorn(tol=1e-14, momentum=None))
    return (x, y, a, b), ott_output(x, y, a, b, 0.1), plain


def test_options_compose():
    """`Sinkhorn()` is adaptive momentum; every option not given keeps its
    default, so `newton` and `epsilon_scaling` add to the default momentum,
    and `anderson` replaces it (momentum then defaults to None)."""
    assert om.Sinkhorn() == om.Sinkhorn(momentum="adaptive")
    assert om.Sinkhorn(tol=1e-3).momentum == "adaptive"
    assert om.Sinkhorn().newton is None
    assert not om.Sinkhorn().is_plain and om.Sinkhorn(momentum=None).is_plain
    plain = om.Sinkhorn(momentum=None)
    assert (plain.momentum, plain.anderson, plain.epsilon_scaling, plain.newton) == (
        None, None, None, None
    )
    assert om.Sinkhorn(newton=0.1) == om.Sinkhorn(momentum="adaptive", newton=0.1)
    assert om.Sinkhorn(epsilon_scaling=0.5) == om.Sinkhorn(momentum="adaptive",
                                                           epsilon_scaling=0.5)
    assert om.Sinkhorn(momentum=None, newton=0.1).momentum is None
    anderson = om.Sinkhorn(anderson=5, newton=0.1)
    assert anderson.momentum is None and anderson.newton == 0.1
    assert om.Sinkhorn(anderson=5).newton is None
    assert om.Sinkhorn(anderson=None).momentum == "adaptive"
    with pytest.raises(ValueError, match="cannot be combined"):
        om.Sinkhorn(anderson=5, momentum="adaptive")
    for bad in [dict(newton=0.0), dict(newton=-1.0), dict(newton=True), dict(newton="yes")]:
        with pytest.raises(ValueError, match="newton"):
            om.Sinkhorn(**bad)


def test_step_objects():
    """The options pick one step object of the Sinkhorn loop."""
    from ot_matfree._forward import steps

    assert isinstance(om.Sinkhorn().step, steps.AdaptiveMomentum)
    assert isinstance(om.Sinkhorn(newton=0.1).step, steps.AdaptiveMomentum)
    assert om.Sinkhorn(momentum=1.5).step == steps.FixedMomentum(1.5)
    assert isinstance(om.Sinkhorn(momentum=None, epsilon_scaling=0.5).step, steps.PlainStep)
    assert om.Sinkhorn(anderson=4).step == steps.AndersonStep(4)
    with pytest.raises(TypeError):
        steps.AbstractStep()


#: CI runs the recommended entry; the other two are slow-marked (CI time).
CI_ENTRY = "adaptive entry"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=() if name == CI_ENTRY else pytest.mark.slow) for name in NEWTON
])
def test_newton(name, references):
    """As every Sinkhorn variant: same potentials and cost as ott-jax and plain
    Sinkhorn, reported error true, failures reported and raised, under `jit`
    too; 15 iterations leave the hand-over's 10 so the Newton phase runs."""
    check_variant(NEWTON[name], references, short_iters=15)


def test_newton_takes_over_and_saves_passes():
    """Small epsilon against the point spacing: the Newton phase runs and takes
    fewer streaming passes than adaptive momentum alone (load-independent)."""
    x = jax.random.uniform(jax.random.PRNGKey(0), (150, 2))
    y = jax.random.uniform(jax.random.PRNGKey(1), (150, 2))
    counts = {}
    for name, options in [("adaptive", dict(momentum="adaptive")),
                          ("newton", dict(momentum="adaptive", newton=0.1)),
                          ("plain", dict(momentum=None))]:
        c = om.solve(x, y, epsilon=2e-3, solver=om.Sinkhorn(tol=1e-8, **options))
        assert dense_marginal_error(c) <= 1e-8
        counts[name] = int(c.num_passes)
        # Iterations are in units of two passes, whatever the variant.
        assert int(c.num_iters) == (int(c.num_passes) + 1) // 2
    assert counts["newton"] < 0.75 * counts["adaptive"] < 0.3 * counts["plain"], counts


def test_newton_budget_bounds_the_work():
    """`max_iters` caps the passes of the Newton phase too (CG is cut to the
    budget): the count never exceeds it by more than one step's line search."""
    x = jax.random.uniform(jax.random.PRNGKey(2), (80, 2))
    y = jax.random.uniform(jax.random.PRNGKey(3), (80, 2))
    for max_iters in [12, 30]:
        solver = om.Sinkhorn(tol=1e-14, max_iters=max_iters, momentum=None, newton=0.5)
        c = om.solve(x, y, epsilon=1e-3, solver=solver, throw=False)
        assert int(c.num_iters) <= max_iters + (_sinkhorn_newton.MAX_BACKTRACKS + 2) // 2
        np.testing.assert_allclose(c.marginal_error, dense_marginal_error(c), rtol=1e-6,
                                   atol=1e-15)
        assert bool(c.converged) == bool(c.marginal_error <= 1e-14)


def test_failed_line_search_falls_back_to_sinkhorn(monkeypatch):
    """With no step length allowed, every Newton step is replaced by a Sinkhorn
    iteration: the solve still converges to the same answer (never a wrong
    answer reported as converged)."""
    monkeypatch.setattr(_sinkhorn_newton, "MAX_BACKTRACKS", -1)
    x, y, a, b = problem(11, 17, 9, 2)  # a shape of its own: traced with the patch
    solver = om.Sinkhorn(tol=1e-12, momentum=None, newton=0.5)
    c = om.solve(x, y, a, b, epsilon=0.1, solver=solver)
    ref = om.solve(x, y, a, b, epsilon=0.1, solver=om.Sinkhorn(tol=1e-13, momentum=None))
    assert bool(c.converged) and dense_marginal_error(c) <= 1e-12
    np.testing.assert_allclose(c.reg_ot_cost, ref.reg_ot_cost, rtol=1e-11)
    # Three passes per fallback iteration (two updates and the marginals).
    assert int(c.num_passes) > 2 * 3


@pytest.mark.parametrize("mode", ["value", "jit(value)", "grad", "jit(grad)"])
def test_loss_raises_when_newton_solve_fails(mode):
    """A failed Newton-phase solve raises through a loss, eagerly, under `jit`
    and under `jit(grad)`; converged, its gradient is plain Sinkhorn's."""
    x, y, a, b = problem(12, 14, 10, 2)
    short = om.Sinkhorn(tol=1e-14, max_iters=20, momentum=None, newton=0.5)

    def loss(x, solver, epsilon):
        return om.ot_cost(x, y, a, b, epsilon=epsilon, solver=solver)

    run = {
        "value": lambda s, e: loss(x, s, e),
        "jit(value)": lambda s, e: jax.jit(lambda x: loss(x, s, e))(x),
        "grad": lambda s, e: jax.grad(loss)(x, s, e),
        "jit(grad)": lambda s, e: jax.jit(jax.grad(lambda x: loss(x, s, e)))(x),
    }[mode]
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError),
                       match="Sinkhorn did not reach"):
        jax.block_until_ready(run(short, 0.01))
    # Plain Sinkhorn does not reach 1e-12 at epsilon 0.01 on this problem in
    # 10,000 iterations (Newton does, in 226): compare at 0.1.
    ok = jax.block_until_ready(run(om.Sinkhorn(tol=1e-12, momentum=None, newton=0.5), 0.1))
    ref = run(om.Sinkhorn(tol=1e-13, momentum=None), 0.1)
    np.testing.assert_allclose(ok, ref, rtol=1e-8, atol=1e-12)


def test_progress_every_multiple_of_progress_every():
    """A Newton step spans several iteration units; progress is still called
    once at every multiple of `progress_every`."""
    calls = []
    x, y, a, b = problem(4, 15, 15, 2)
    solver = om.Sinkhorn(tol=1e-12, progress=lambda it, err: calls.append(int(it)),
                         progress_every=5, momentum=None, newton=0.5)
    coupling = om.solve(x, y, a, b, epsilon=0.05, solver=solver)
    jax.effects_barrier()
    assert calls == list(range(5, int(coupling.num_iters) + 1, 5))
    plain = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-12, momentum=None),
                     throw=False)
    assert int(coupling.num_iters) < int(plain.num_iters)  # Newton ran


def test_float32():
    x, y, a, b = problem(6, 200, 150, 3)
    c64 = om.solve(x, y, a, b, epsilon=0.05, solver=om.Sinkhorn(tol=1e-10, momentum=None))
    x32, y32, a32, b32 = (v.astype(jnp.float32) for v in (x, y, a, b))
    c32 = om.solve(x32, y32, a32, b32, epsilon=0.05,
                   solver=om.Sinkhorn(tol=1e-5, momentum="adaptive", newton=0.1))
    assert c32.f.dtype == jnp.float32 and bool(c32.converged)
    np.testing.assert_allclose(c32.reg_ot_cost, c64.reg_ot_cost, rtol=1e-5)
    np.testing.assert_allclose(c32.marginal_error, dense_marginal_error(c32), rtol=1e-2,
                               atol=1e-7)
