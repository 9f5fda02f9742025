import jax.numpy as jnp
import lineax as lx
import numpy as np

import ot_matfree as om

from ..helpers import problem


def dense_coupling(coupling):
    c = coupling.cost.matrix(coupling.x, coupling.y)
    return jnp.exp((coupling.f[:, None] + coupling.g[None, :] - c) / coupling.epsilon)


def test_coupling_operator_and_transpose():
    x, y, a, b = problem(0, 13, 9, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.1, block_size=4)
    p = dense_coupling(coupling)
    op = om.coupling_operator(coupling)
    v, u = jnp.arange(9.0), jnp.arange(13.0)
    np.testing.assert_allclose(op.mv(v), p @ v, rtol=1e-12)
    np.testing.assert_allclose(op.T.mv(u), p.T @ u, rtol=1e-12)
    np.testing.assert_allclose(op.as_matrix(), p, rtol=1e-12)
    assert op.in_structure().shape == (9,) and op.out_structure().shape == (13,)
    assert not lx.is_symmetric(op)


def test_h_operator_structure_and_null_vector():
    x, y, a, b = problem(1, 11, 7, 3)
    coupling = om.solve(x, y, a, b, epsilon=0.2, solver=om.Sinkhorn(tol=1e-3))
    p = dense_coupling(coupling)
    h = jnp.block([[jnp.diag(p.sum(1)), p], [p.T, jnp.diag(p.sum(0))]])
    op = om.h_operator(coupling)
    z = jnp.sin(jnp.arange(18.0))
    np.testing.assert_allclose(op.mv(z), h @ z, rtol=1e-12)
    np.testing.assert_allclose(op.as_matrix(), h, rtol=1e-12)
    np.testing.assert_allclose(lx.diagonal(op), jnp.diag(h), rtol=1e-12)
    assert lx.is_symmetric(op) and lx.is_positive_semidefinite(op)
    assert op.T is op
    # (1, -1) is an exact null vector because H uses the coupling's own marginals,
    # even for a loosely converged Sinkhorn.
    null = jnp.concatenate([jnp.ones(11), -jnp.ones(7)])
    assert jnp.linalg.norm(op.mv(null)) < 1e-14
    assert jnp.min(jnp.linalg.eigvalsh(h)) > -1e-14


def test_h_operator_works_with_lineax_solve():
    # Regularised H + I is positive definite: lineax's own CG applies to our operator.
    x, y, a, b = problem(2, 10, 8, 2)
    coupling = om.solve(x, y, a, b, epsilon=0.5)
    op = om.h_operator(coupling)
    shifted = op + lx.IdentityLinearOperator(op.in_structure())
    rhs = jnp.cos(jnp.arange(18.0))
    sol = lx.linear_solve(
        lx.TaggedLinearOperator(shifted, lx.positive_semidefinite_tag),
        rhs,
        lx.CG(rtol=1e-12, atol=1e-12),
    ).value
    np.testing.assert_allclose(op.mv(sol) + sol, rhs, atol=1e-10)
