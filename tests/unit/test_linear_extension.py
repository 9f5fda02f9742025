"""`ot_matfree.internal` is enough to write a new H-solver.

Two solvers built from `ot_matfree.internal` and public names only, checked
against `om.DenseSolver` through `om.hvp_x` and `lineax.linear_solve`: the
example of the module's docstring (CG on the normalised Schur complement,
executed from the docstring itself), and Jacobi-preconditioned CG on the
whole H-matrix, defined here. Plus: every name of the surface is documented,
in its docstring and on the API page.
"""

import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import pytest
from jaxtyping import Array, Float

import ot_matfree as om
from ot_matfree import internal

from ..helpers import problem, rel_err
from .test_stream_passes import _scans

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "api" / "internal.md"


class JacobiState(eqx.Module):
    operator: om.HOperator
    diagonal: Float[Array, " k"]


class JacobiCG(internal.AbstractHSolver):
    """CG on `H` itself, preconditioned by its diagonal `(a_hat, b_hat)`."""

    rtol: float = 1e-12
    max_steps: int = 500

    def init(self, operator, options):
        operator = internal.check_h_operator(operator)
        return JacobiState(operator, lx.diagonal(operator))

    def solve_split(self, state, r, s, options=None):
        r, s = internal.project_range(r, s)  # consistent: the least-squares solution
        n = r.shape[0]
        x, stats = internal.conjugate_gradient(
            state.operator.mv, jnp.concatenate([r, s]), rtol=self.rtol, atol=0.0,
            max_steps=self.max_steps, preconditioner=lambda z: z / state.diagonal,
        )
        # CG's iterates may drift along the null vector: the minimum-norm solution.
        df, dg = internal.project_range(x[:n], x[n:])
        return df, dg, internal.cg_result(stats, self.max_steps), stats


def _docstring_solver():
    """The `SchurCG` class of `ot_matfree.internal`'s docstring, run as written."""
    (code,) = re.findall(r"```python\n(.*?)```", internal.__doc__, flags=re.S)
    namespace = {"__name__": "internal_docstring_example"}
    exec(compile(code, "ot_matfree.internal docstring", "exec"), namespace)
    return namespace["SchurCG"]()


@pytest.fixture(scope="module", params=[(30, 24), (24, 30)], ids=["n>m", "n<m"])
def coupling(request):
    n, m = request.param
    x, y, a, b = problem(7, n, m, 2)
    return om.solve(x, y, a, b, epsilon=0.3, solver=om.Sinkhorn(tol=1e-13))


@pytest.mark.parametrize("make", [JacobiCG, _docstring_solver], ids=["jacobi", "docstring"])
def test_new_solver_matches_dense(coupling, make):
    solver = make()
    n, m = coupling.shape
    v = jax.random.normal(jax.random.PRNGKey(1), (n, 2))
    dense = om.hvp_x(coupling, v, linear_solver=om.DenseSolver())
    sol = om.hvp_x_solution(coupling, v, linear_solver=solver)
    assert sol.result == om.RESULTS.successful
    assert rel_err(sol.value, dense) < 1e-8
    assert 0 < int(sol.stats["num_steps"]) <= n + m
    # A batch of tangents vmaps the new solver like the built-in ones.
    batched = om.hvp_x(coupling, jnp.stack([v, -2 * v]), linear_solver=solver)
    assert rel_err(batched, jnp.stack([dense, -2 * dense])) < 1e-8

    operator = om.h_operator(coupling)
    rhs = jax.random.normal(jax.random.PRNGKey(3), (n + m,))  # not in H's range
    out = lx.linear_solve(operator, rhs, solver=solver, state=solver.init(operator, {}))
    reference = lx.linear_solve(operator, rhs, solver=om.DenseSolver())
    assert out.result == lx.RESULTS.successful and bool(out.stats["converged"])
    assert rel_err(out.value, reference.value) < 1e-8


def test_new_solver_reports_failure():
    x, y, a, b = problem(7, 20, 16, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.3, solver=om.Sinkhorn(tol=1e-13))
    v = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    sol = om.hvp_x_solution(coupling, v, linear_solver=JacobiCG(max_steps=2), throw=False)
    assert sol.result == om.RESULTS.linear_solve_failed
    assert not bool(sol.stats["converged"]) and int(sol.stats["num_steps"]) == 2
    with pytest.raises(eqx.EquinoxRuntimeError, match="H-matrix solve"):
        om.hvp_x(coupling, v, linear_solver=JacobiCG(max_steps=2))


def test_docstring_solver_shares_the_right_hand_sides_pass(coupling):
    """Passing `options` on to `reduced_system` gives a new Schur-based solver
    `CG`'s pass count: three passes around the loop and one per CG step."""
    solver = _docstring_solver()
    v = jnp.ones((coupling.shape[0], 2))
    jaxpr = jax.make_jaxpr(lambda v: om.hvp_x(coupling, v, linear_solver=solver))(v).jaxpr
    assert _scans(jaxpr) == (3, 1)


def test_surface_is_documented():
    assert om.internal is internal
    assert internal.AbstractHSolver is om.AbstractHSolver
    page = DOCS.read_text()
    constants = {"SUM", "LOGSUMEXP", "NUM_BLOCKS", "OVERSAMPLE"}
    for name in internal.__all__:
        obj = getattr(internal, name)
        assert f"`{name}`" in page or f"ot_matfree.internal.{name}" in page, name
        if name not in constants:
            doc = obj.__doc__ or ""
            assert len(doc.split()) >= 8, f"{name} needs a docstring to build on"
    assert sorted(internal.__all__) == sorted(
        name for name in vars(internal) if not name.startswith("_")
    )
