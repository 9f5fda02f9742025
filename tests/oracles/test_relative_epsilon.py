"""`relative_epsilon="mean"`: epsilon times the unweighted mean cost, as
ott-jax's `relative_epsilon="mean"`, differentiated through the scale's
dependence on the points (`_core/scale.py`: `OT_{s m}(C) = m OT_s(C / m)`).

Oracles: ott-jax's `PointCloud(..., relative_epsilon="mean")` (its epsilon
and value), and central differences of the dense NumPy value of
`_unbalanced_dense` with the absolute epsilon recomputed from the moved
points, so that the scale's derivative is part of what is differenced.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import problem
from ..helpers import rel_err
from . import _unbalanced_dense as dense

REL = 0.3
SOLVER = om.Sinkhorn(tol=1e-12, max_iters=100_000)
LINEAR = om.CG(rtol=1e-12)


def dense_value(x, y, a, b, tau):
    """The oracle's `OT` at `epsilon = REL x mean |x_i - y_j|^2` of these points."""
    eps = REL * float(np.mean(dense.sq_euclidean(x, y)))
    return dense.ot_cost(x, y, a, b, eps, tau, tau)


def clouds(seed, tau):
    x, y, a, b = problem(seed, 7, 5, 2)
    x = x + 3.0  # away from y and from the origin: the scale matters
    if tau < 1:
        a, b = 1.3 * a, 0.7 * b
    return x, y, a, b


def test_epsilon_and_value_match_ott():
    """The absolute epsilon (`Coupling.epsilon`) and the value equal ott-jax's
    with `relative_epsilon="mean"` (1e-12, 1e-10)."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    x, y, a, b = clouds(1, 1.0)
    c = om.solve(x, y, a, b, epsilon=REL, relative_epsilon="mean", solver=SOLVER)
    with jax.numpy_dtype_promotion("standard"):
        geom = pointcloud.PointCloud(x, y, epsilon=REL, relative_epsilon="mean")
        out = sinkhorn.Sinkhorn(threshold=1e-13, max_iterations=100_000)(
            linear_problem.LinearProblem(geom, a, b))
        eps = float(geom.epsilon)
    assert abs(float(c.epsilon) - eps) <= 1e-12 * eps
    assert rel_err(c.reg_ot_cost, out.reg_ot_cost) < 1e-10


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_gradient_and_hvp(tau):
    """`jax.grad(om.ot_cost(..., relative_epsilon="mean"))` in `x` and `y`
    equals central differences of the oracle value with epsilon recomputed
    from the moved points (1e-7); without the scale's derivative it would
    not (the check below that the two differ). The HVP in `x` equals central
    differences of that gradient (1e-6)."""
    x, y, a, b = clouds(2, tau)
    fn = functools.partial(om.ot_cost, epsilon=REL, relative_epsilon="mean", tau_a=tau,
                           tau_b=tau, solver=SOLVER, linear_solver=LINEAR)
    gx, gy = jax.jit(jax.grad(fn, argnums=(0, 1)))(x, y, a, b)
    xn, yn, an, bn = (np.asarray(z) for z in (x, y, a, b))
    fx = dense.central_difference_gradient(lambda z: dense_value(z, yn, an, bn, tau), xn)
    fy = dense.central_difference_gradient(lambda z: dense_value(xn, z, an, bn, tau), yn)
    assert rel_err(gx, fx) < 1e-7
    assert rel_err(gy, fy) < 1e-7
    # The same value at the absolute epsilon, whose gradient misses the scale's part.
    eps = float(REL * jnp.mean(om.SqEuclidean().matrix(x, y)))
    frozen = functools.partial(om.ot_cost, epsilon=eps, tau_a=tau, tau_b=tau, solver=SOLVER)
    assert rel_err(frozen(x, y, a, b), fn(x, y, a, b)) < 1e-12
    assert rel_err(jax.grad(frozen)(x, y, a, b), fx) > 1e-3
    v = jax.random.normal(jax.random.PRNGKey(3), x.shape)
    grad = jax.grad(fn)
    _, hv = jax.jit(lambda x: jax.jvp(lambda x: grad(x, y, a, b), (x,), (v,)))(x)
    h = 1e-5
    fd = (grad(x + h * v, y, a, b) - grad(x - h * v, y, a, b)) / (2 * h)
    assert rel_err(hv, fd) < 1e-6


def test_cost_matrix():
    """`matrix.ot_cost(C, relative_epsilon="mean")` equals the cloud loss at
    `C = c(x, y)` (1e-12), its gradient in `C` central differences of the oracle
    with epsilon `REL x mean(C)` (1e-7)."""
    x, y, a, b = clouds(4, 1.0)
    kw = {"epsilon": REL, "relative_epsilon": "mean", "solver": SOLVER, "linear_solver": LINEAR}
    C = om.SqEuclidean().matrix(x, y)
    value, grad_C = jax.value_and_grad(lambda C: om.matrix.ot_cost(C, a, b, **kw))(C)
    assert rel_err(value, om.ot_cost(x, y, a, b, **kw)) < 1e-12
    dC = np.asarray(jax.random.normal(jax.random.PRNGKey(5), C.shape))
    fd = dense.central_difference(
        lambda Z: dense.matrix_ot_cost(Z, a, b, REL * float(np.mean(Z))), np.asarray(C), dC)
    assert abs(float(jnp.vdot(grad_C, dC)) - fd) < 1e-7 * abs(fd)


@pytest.mark.slow  # 9 s (CI time); test_cost_matrix covers the matrices' scale
def test_divergence_matrix_equals_clouds():
    """`matrix.sinkhorn_divergence` with one scale, `mean(C_xy)`, equals the
    cloud divergence, value and gradient in `x` through the matrices (1e-10)."""
    x, y, a, b = clouds(4, 1.0)
    cost = om.SqEuclidean()
    kw = {"epsilon": REL, "relative_epsilon": "mean", "solver": SOLVER, "linear_solver": LINEAR}
    div = lambda x: om.sinkhorn_divergence(x, y, a, b, **kw)
    mat = lambda x: om.matrix.sinkhorn_divergence(
        cost.matrix(x, y), cost.matrix(x, x), cost.matrix(y, y), a, b, **kw)
    assert rel_err(mat(x), div(x)) < 1e-10
    assert rel_err(jax.grad(mat)(x), jax.grad(div)(x)) < 1e-10


def test_returned_potentials_are_the_problems():
    """`return_potentials=True` gives the potentials of the problem at the
    absolute epsilon (not of the divided one): those `om.solve` returns
    (1e-9), so they warm-start the next call."""
    x, y, a, b = clouds(6, 1.0)
    value, (f, g) = om.ot_cost(x, y, a, b, epsilon=REL, relative_epsilon="mean", solver=SOLVER,
                               return_potentials=True)
    c = om.solve(x, y, a, b, epsilon=REL, relative_epsilon="mean", solver=SOLVER)
    assert rel_err(f, c.f) < 1e-9 and rel_err(g, c.g) < 1e-9
    again = om.ot_cost(x, y, a, b, epsilon=REL, relative_epsilon="mean", solver=SOLVER,
                       init=(f, g))
    assert rel_err(again, value) < 1e-12


def test_errors():
    """An unknown spelling and a cost whose scale does not divide out raise
    `ValueError` at call time; points with a zero mean cost raise at run time,
    eagerly and under `jit`."""
    x, y, a, b = clouds(7, 1.0)
    with pytest.raises(ValueError, match="relative_epsilon"):
        om.ot_cost(x, y, epsilon=REL, relative_epsilon="std")
    with pytest.raises(ValueError, match="squared Euclidean"):
        om.ot_cost(x, y, epsilon=REL, relative_epsilon="mean", cost=lambda u, v: jnp.sum(
            jnp.abs(u - v)))
    same = jnp.ones((4, 2))
    fn = lambda x: om.ot_cost(x, x, epsilon=REL, relative_epsilon="mean")
    for call in (fn, jax.jit(fn)):
        with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError),
                           match="mean cost is 0"):
            jax.block_until_ready(call(same))
