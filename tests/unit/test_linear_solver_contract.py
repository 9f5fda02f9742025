"""The H-solvers follow lineax's `AbstractLinearSolver` contract."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import ot_matfree as om

from ..helpers import problem, rel_err

SOLVERS = [
    om.CG(rtol=1e-12),
    om.SpectralCG(rank=8, rtol=1e-12),
    om.TruncatedSVD(rank=8, threshold=0.0, rtol=1e-12),
    om.DenseSolver(),
    om.DenseSolver(normalise=True),
]
IDS = ["CG", "SpectralCG", "TruncatedSVD", "DenseSolver", "DenseSolver-normalised"]


@pytest.fixture(scope="module", params=[(30, 24), (24, 30)], ids=["n>m", "n<m"])
def operator(request):
    n, m = request.param
    x, y, a, b = problem(3, n, m, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.3, solver=om.Sinkhorn(tol=1e-13))
    return om.h_operator(coupling)


def _rhs(operator, seed, consistent):
    rhs = jax.random.normal(jax.random.PRNGKey(seed), operator.in_structure().shape)
    if consistent:  # remove the null vector (1_n, -1_m): rhs in the range of H
        n = operator.a_hat.shape[0]
        null = jnp.concatenate([jnp.ones(n), -jnp.ones(rhs.shape[0] - n)])
        rhs = rhs - jnp.vdot(rhs, null) / jnp.vdot(null, null) * null
    return rhs


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
@pytest.mark.parametrize("consistent", [True, False], ids=["range", "least-squares"])
def test_linear_solve_is_the_pseudo_inverse(operator, solver, consistent):
    pinv = jnp.linalg.pinv(operator.as_matrix(), hermitian=True)
    state = solver.init(operator, {})
    for seed in (0, 1):  # one state, several right-hand sides
        rhs = _rhs(operator, seed, consistent)
        sol = lx.linear_solve(operator, rhs, solver=solver, state=state)
        assert isinstance(sol, lx.Solution)
        assert sol.result == lx.RESULTS.successful
        assert rel_err(sol.value, pinv @ rhs) < 1e-8
        assert bool(sol.stats["converged"])
    # Without a state, linear_solve calls init itself.
    fresh = lx.linear_solve(operator, rhs, solver=solver)
    assert rel_err(fresh.value, pinv @ rhs) < 1e-8


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
def test_contract_methods(operator, solver):
    state = solver.init(operator, {})
    assert solver.transpose(state, {}) == (state, {})
    assert solver.conj(state, {}) == (state, {})
    assert solver.assume_full_rank() is False
    with pytest.raises(TypeError, match="h_operator"):
        solver.init(om.coupling_operator(state.operator.coupling), {})


def test_linear_solve_reports_failure(operator):
    rhs = _rhs(operator, 0, True)
    solver = om.CG(rtol=1e-14, max_steps=1)
    sol = lx.linear_solve(operator, rhs, solver=solver, throw=False)
    assert sol.result == lx.RESULTS.max_steps_reached
    assert not bool(sol.stats["converged"])
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of solver steps"):
        lx.linear_solve(operator, rhs, solver=solver)


# SpectralCG's state (18 s) is TruncatedSVD's kind (`AbstractSpectralSolver`),
# whose case covers the reuse of a spectral state: it runs with --runslow only.
@pytest.mark.parametrize("solver", [
    pytest.param(s, marks=pytest.mark.slow) if i == "SpectralCG" else s
    for s, i in zip(SOLVERS[1:4], IDS[1:4])
], ids=IDS[1:4])
def test_hvp_reuses_a_state(solver):
    x, y, a, b = problem(4, 40, 30, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.2, solver=om.Sinkhorn(tol=1e-13))
    state = solver.init(om.h_operator(coupling), {})
    vs = jax.random.normal(jax.random.PRNGKey(5), (3, 40, 2))
    batched = jax.vmap(
        lambda v: om.hvp_x(coupling, v, linear_solver=solver, solver_state=state)
    )(vs)
    reference = jax.vmap(lambda v: om.hvp_x(coupling, v, linear_solver=om.DenseSolver()))(vs)
    assert rel_err(batched, reference) < 1e-8
    jitted = eqx.filter_jit(om.hvp_x)(coupling, vs[0], linear_solver=solver, solver_state=state)
    assert rel_err(jitted, reference[0]) < 1e-8


def test_state_of_another_coupling_is_rejected():
    x, y, a, b = problem(4, 40, 30, 2)
    c1 = om.solve(x, y, a, b, epsilon=0.2)
    c2 = om.solve(x + 0.1, y, a, b, epsilon=0.2)
    solver = om.TruncatedSVD(rank=4)
    state = solver.init(om.h_operator(c1), {})
    with pytest.raises(eqx.EquinoxRuntimeError, match="different coupling"):
        om.hvp_x(c2, x, linear_solver=solver, solver_state=state)
    with pytest.raises(ValueError, match="solver_state"):
        om.hvp_x(om.solve(x[:20], y, epsilon=0.2), x[:20], linear_solver=solver,
                 solver_state=state)


def test_linear_solver_type_is_checked():
    x, y, _, _ = problem(4, 10, 8, 2)
    coupling = om.solve(x, y, epsilon=0.5)
    with pytest.raises(TypeError, match="linear_solver"):
        om.hvp_x(coupling, x, linear_solver=om.Sinkhorn())
    with pytest.raises(TypeError, match="linear_solver"):
        om.ot_cost(x, y, epsilon=0.5, linear_solver=lx.CG(rtol=1e-6, atol=1e-6))
