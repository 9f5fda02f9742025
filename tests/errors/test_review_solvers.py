"""Issue 21 (reliability review), defects 2, 7 and 9: H-solver states, saddle
points of `NewtonCG`, and the messages of three failures that were unclear.

Tiny problems throughout: each test compiles a few small programs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

import ot_matfree as om

from ..helpers import problem

SOLVERS = [
    om.CG(rtol=1e-12),
    om.SpectralCG(rank=3, rtol=1e-12),
    om.TruncatedSVD(rank=3, threshold=0.0, rtol=1e-12),
    om.DenseSolver(),
]
IDS = ["CG", "SpectralCG", "TruncatedSVD", "DenseSolver"]


@pytest.fixture(scope="module")
def couplings():
    x, y, a, b = problem(3, 9, 7, 2)
    solve = lambda eps: om.solve(x, y, a, b, epsilon=eps, solver=om.Sinkhorn(tol=1e-12))
    return solve(0.3), solve(0.5)


# --- Defect 2: a solver state made from another coupling ------------------------


@pytest.mark.parametrize("solver", SOLVERS, ids=IDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_state_of_another_coupling_is_rejected(couplings, solver, jit):
    # `lineax.linear_solve(op, rhs, solver, state=...)` calls `compute(state,
    # ...)` without `op` (lineax 0.1.1), so it cannot be checked there (see
    # `AbstractHSolver`); `hvp(solver_state=...)` checks. The H-matrix depends
    # on the potentials, the points, epsilon and the cost: a state whose
    # coupling differs in epsilon alone, or in the cost alone, solves another
    # H (epsilon and the cost were not compared before).
    c1, c2 = couplings
    v = jnp.ones_like(c1.x)
    hvp = lambda c, st: om.hvp_x(c, v, linear_solver=solver, solver_state=st)
    hvp = eqx.filter_jit(hvp) if jit else hvp
    other_eps = eqx.tree_at(lambda c: c.epsilon, c1, 2 * c1.epsilon)
    cube = om.FunctionCost(lambda u, w: jnp.sum(jnp.abs(u - w) ** 3))
    other_cost = eqx.tree_at(lambda c: c.cost, c1, cube)
    for other in (c2, other_eps, other_cost):
        with pytest.raises(Exception, match="different coupling"):
            jax.block_until_ready(hvp(c1, solver.init(om.h_operator(other), {})))


# --- Defect 9 (b): a state of another solver ------------------------------------


@pytest.mark.parametrize(
    "solver, maker",
    [(om.SpectralCG(rank=3), om.CG()), (om.TruncatedSVD(rank=3), om.DenseSolver()),
     (om.DenseSolver(), om.SpectralCG(rank=3)), (om.CG(), om.DenseSolver())],
    ids=["SpectralCG<-CG", "TruncatedSVD<-DenseSolver", "DenseSolver<-SpectralCG",
         "CG<-DenseSolver"],
)
def test_state_of_another_solver_is_a_clear_type_error(couplings, solver, maker):
    c1, _ = couplings
    operator = om.h_operator(c1)
    state = maker.init(operator, {})
    wanted = type(solver).__name__
    made = type(maker).__name__
    rhs = jnp.ones(operator.in_structure().shape)
    with pytest.raises(TypeError, match=rf"{wanted}.*{made}|{made}.*{wanted}"):
        lx.linear_solve(operator, rhs, solver=solver, state=state)
    with pytest.raises(TypeError, match=rf"{wanted}.*{made}|{made}.*{wanted}"):
        om.hvp_x(c1, jnp.ones_like(c1.x), linear_solver=solver, solver_state=state)


# --- Defect 9 (a): the default rank on a coupling with too few points ------------


@pytest.mark.parametrize("solver_cls", [om.SpectralCG, om.TruncatedSVD])
def test_default_rank_too_large_names_rank_and_what_fits(solver_cls):
    x, y, a, b = problem(1, 5, 1, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.5)
    with pytest.raises(ValueError) as info:
        om.hvp_x(coupling, jnp.ones_like(x), linear_solver=solver_cls())
    message = str(info.value)
    assert "`rank=20`" in message and "default" in message
    assert "5 x 1" in message and "rank=0" in message and "CG()" in message
    assert "`k`" not in message
    # A rank the user passed is named as such (not as the default).
    with pytest.raises(ValueError, match=r"`rank=3` is too large .* at most 0") as info:
        solver_cls(rank=3).init(om.h_operator(coupling), {})
    assert "default" not in str(info.value)
    # rank=0 (= min(n, m) - 1) fits.
    solver_cls(rank=0).init(om.h_operator(coupling), {})


# --- Defect 9 (c): parameters of mixed dtypes --------------------------------------


def _mixed_fn(p, args):
    return jnp.sum(p[0].astype(jnp.float64) ** 2) + jnp.sum(p[1] ** 2)


def test_newton_cg_mixed_dtypes_named():
    y0 = (jnp.ones(2, jnp.float32), jnp.ones(3, jnp.float64))
    with pytest.raises(TypeError, match=r"float32.*float64"):
        optx.minimise(_mixed_fn, om.NewtonCG(1e-8, 1e-8), y0)
    with pytest.raises(TypeError, match=r"float32.*float64"):
        jax.jit(lambda y: optx.minimise(_mixed_fn, om.NewtonCG(1e-8, 1e-8), y).value)(y0)
    fn = lambda p, source, args: _mixed_fn(p, args)
    with pytest.raises(TypeError, match=r"float32.*float64"):
        om.sgd_newton(fn, y0, jnp.zeros((4, 1)), key=jax.random.PRNGKey(0), batch_size=2,
                      learning_rate=0.1, max_sgd_steps=1)
    # One dtype works.
    y0 = (jnp.ones(2), jnp.ones(3))
    sol = optx.minimise(_mixed_fn, om.NewtonCG(1e-8, 1e-8), y0)
    assert all(jnp.allclose(leaf, 0, atol=1e-8) for leaf in sol.value)


# --- Defect 7: NewtonCG at a maximum or a saddle -------------------------------------


def _double_well(p, args=None):
    return jnp.sum(p**4 - 2 * p**2)  # maximum at 0 (Hessian -4 I), minima at +-1


def _saddle(p, args=None):
    return p[0] ** 2 - p[1] ** 2 + jnp.sum(p**4)  # saddle at 0, minima at (0, +-1/sqrt 2)


def _assert_local_minimum(fn, p):
    assert float(jnp.max(jnp.abs(jax.grad(fn)(p)))) < 1e-7
    assert float(jnp.linalg.eigvalsh(jax.hessian(fn)(p))[0]) > 0.5


@pytest.mark.parametrize("search", [optx.BacktrackingArmijo(), optx.LearningRate(0.5)],
                         ids=["armijo", "relaxed"])
@pytest.mark.parametrize("fn, y0", [(_double_well, jnp.zeros(3)), (_saddle, jnp.zeros(2))],
                         ids=["maximum", "saddle"])
def test_newton_cg_leaves_a_maximum_or_saddle(fn, y0, search):
    solver = om.NewtonCG(1e-10, 1e-10, search=search)
    sol = optx.minimise(fn, solver, y0, throw=False, max_steps=200)
    assert sol.result == optx.RESULTS.successful
    _assert_local_minimum(fn, sol.value)
    assert int(sol.stats["num_saddle_escapes"]) == 1
    if isinstance(search, optx.BacktrackingArmijo):  # under jit, the same
        jitted = jax.jit(lambda y: optx.minimise(fn, solver, y, max_steps=200).value)(y0)
        assert jnp.allclose(jitted, sol.value, rtol=0, atol=1e-12)


def test_newton_cg_still_stops_at_a_degenerate_minimum():
    # A flat direction (zero curvature, rounding noise) is not a saddle: the
    # run stops where it did, with the same number of steps.
    fn = lambda p, args: (p[0] - p[1]) ** 2 + (p[2] - 1) ** 2
    solver = om.NewtonCG(1e-10, 1e-10)
    sol = optx.minimise(fn, solver, jnp.array([1.0, 0.0, 0.0]))
    assert sol.result == optx.RESULTS.successful
    assert int(sol.stats["num_steps"]) == 4
    assert jnp.allclose(sol.value, jnp.array([0.5, 0.5, 1.0]), atol=1e-12)


def test_sgd_newton_from_a_maximum_ends_at_a_minimum():
    fn = lambda p, source, args: _double_well(p) + 0 * jnp.sum(source)
    sol = om.sgd_newton(fn, jnp.zeros(3), jnp.zeros((4, 1)), key=jax.random.PRNGKey(0),
                        batch_size=2, learning_rate=0.1, max_sgd_steps=2)
    # Stage 1 cannot move (zero gradient) and reports the maximum ...
    assert not bool(sol.stats["positive_definite"])
    assert jnp.allclose(sol.stats["min_eigenvalue"], -4.0)
    # ... and stage 2 does not stop there.
    assert sol.result == optx.RESULTS.successful
    _assert_local_minimum(_double_well, sol.value)
