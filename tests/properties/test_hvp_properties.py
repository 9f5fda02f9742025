"""Properties of the HVP that need no reference, on Hypothesis-drawn problems.

Each example is a random OT problem (points, positive weights summing to 1,
epsilon log-uniform in [0.05, 2] x the mean squared distance) solved to a
marginal error of 1e-12, with H-solves at CG rtol 1e-12. Checked:

- symmetry of the joint Hessian in (x, y, a, b): `<U, H V> = <H U, V>`;
- the marginal identity of the squared Euclidean cost:
  `sum_i (H_xx v)_i = 2 sum_k a_k v_k`;
- linearity in the tangent: `H(alpha u + beta v) = alpha H u + beta H v`
  (CG is not linear in its right-hand side unless it converges);
- agreement of `hvp_x` with the dense analytic Hessian `hessian_x`;
- block-size invariance: the joint HVP of one coupling streamed in blocks of
  3 or 5 rows (padded last blocks) and of the default size (one block), also
  for an angular cost `1 - <x, y> / (|x| |y|)`, which is NaN at the origin
  (where a zero-padded row would put it); `solve` itself streamed in blocks
  of 3 rows.

`tests/oracles/test_derivatives.py` checks each property once on a fixed problem; here the
problems, tangents and weights are drawn. Shapes come from a small fixed set
(n, m <= 12, n < m and n > m, d in {1, 3}) so that compiled functions are
reused across examples; `derandomize=True` makes every CI run test the same
examples.
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ot_matfree as om

#: (n, m, d): few distinct shapes, so compiled functions are reused.
SHAPES = [(12, 7, 3), (5, 12, 1)]
SINKHORN = om.Sinkhorn(tol=1e-12, max_iters=100_000)
CG = om.CG(rtol=1e-12)
#: Relative tolerance of the properties (largest error over 40 drawn examples
#: per test: 1.9e-12, dense Hessian and marginal identity).
TOL = 1e-10
#: Block sizes against the default, same potentials (largest seen: 2.3e-14).
BLOCK_TOL = 1e-12

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def angular(u, w):
    """`1 - cos(u, w)`: smooth away from the origin, NaN (and NaN derivatives) at it."""
    return 1 - jnp.dot(u, w) / (jnp.linalg.norm(u) * jnp.linalg.norm(w))


@functools.lru_cache(maxsize=64)
def make_problem(shape, seed, log_eps_factor, spread, cost=None):
    """Points, weights, epsilon and a solved coupling for one drawn example.

    `spread` sets how uneven the weights are (log-normal with that standard
    deviation, normalised); `cost` is `None` (squared Euclidean) or `angular`.
    """
    # Data are made in NumPy: eager JAX ops would compile anew for every shape.
    n, m, d = shape
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = 1.5 * rng.normal(size=(m, d)) + rng.normal(size=d)
    a = np.exp(spread * rng.normal(size=n))
    b = np.exp(spread * rng.normal(size=m))
    a, b = a / a.sum(), b / b.sum()
    if cost is None:
        costs = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    else:
        unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
        costs = 1 - unit_x @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T
    epsilon = float(10.0**log_eps_factor * (a @ costs @ b))
    kwargs = {} if cost is None else {"cost": cost}
    coupling = om.solve(*map(jnp.asarray, (x, y, a, b)), epsilon=epsilon, solver=SINKHORN,
                        **kwargs)
    assert bool(coupling.converged), "Sinkhorn did not converge: the drawn range is wrong"
    return (x, y, a, b, epsilon), coupling


def tangent(rng, n, m, d):
    """A joint tangent (dx, dy, da, db), weight parts on the simplex's tangent space."""
    da, db = rng.normal(size=n), rng.normal(size=m)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)), da - da.mean(), db - db.mean()


def norm(t):
    """Euclidean norm of an array or of a tuple of arrays."""
    parts = t if isinstance(t, tuple) else (t,)
    return float(np.sqrt(sum(np.vdot(p, p) for p in parts)))


def hvp_x(coupling, v):
    """`H_xx v` as a NumPy array; the H-solve must have converged."""
    sol = om.hvp_x_solution(coupling, jnp.asarray(v), linear_solver=CG)
    assert sol.result == om.RESULTS.successful
    return np.asarray(sol.value)


def hvp(coupling, t):
    """The joint HVP as a tuple of NumPy arrays; the H-solve must have converged."""
    sol = om.hvp_solution(coupling, *map(jnp.asarray, t), linear_solver=CG)
    assert sol.result == om.RESULTS.successful
    return tuple(np.asarray(o) for o in sol.value)


problems = st.tuples(
    st.sampled_from(SHAPES),
    st.integers(0, 2**31 - 1),
    st.floats(float(np.log10(0.05)), float(np.log10(2.0))),  # log10(epsilon / mean cost)
    st.floats(0.0, 1.5),
)
seeds = st.integers(0, 2**31 - 1)


@SETTINGS
@given(problem=problems, tangent_seed=seeds)
def test_joint_hvp_is_symmetric(problem, tangent_seed):
    _, coupling = make_problem(*problem)
    rng = np.random.default_rng(tangent_seed)
    u, v = tangent(rng, *problem[0]), tangent(rng, *problem[0])
    hu, hv = hvp(coupling, u), hvp(coupling, v)
    lhs = sum(np.vdot(p, q) for p, q in zip(u, hv))  # <U, H V>
    rhs = sum(np.vdot(p, q) for p, q in zip(hu, v))  # <H U, V>
    # Scale: the Cauchy-Schwarz bound of either side (|lhs| itself can be ~0).
    scale = max(norm(u) * norm(hv), norm(hu) * norm(v))
    assert abs(lhs - rhs) <= TOL * scale, (lhs, rhs, scale)


@SETTINGS
@given(problem=problems, tangent_seed=seeds)
def test_marginal_identity(problem, tangent_seed):
    # SqEuclidean: sum_i grad_x_i = 2 (sum_i a_i x_i - sum_j b_j y_j) on the
    # coupling's constraint set, so its derivative along v is 2 sum_k a_k v_k.
    (_, _, a, _, _), coupling = make_problem(*problem)
    n, _, d = problem[0]
    v = np.random.default_rng(tangent_seed).normal(size=(n, d))
    hv = hvp_x(coupling, v)
    expected = 2 * np.sum(a[:, None] * v, axis=0)
    # Scale: the terms summed (the identity holds by cancellation among them).
    scale = norm(expected) + float(np.sum(np.linalg.norm(hv, axis=1)))
    assert norm(hv.sum(0) - expected) <= TOL * scale


@SETTINGS
@given(
    problem=problems,
    tangent_seed=seeds,
    alpha=st.floats(-3.0, 3.0).filter(lambda t: abs(t) > 1e-3),
    beta=st.floats(-3.0, 3.0).filter(lambda t: abs(t) > 1e-3),
)
def test_hvp_is_linear_in_the_tangent(problem, tangent_seed, alpha, beta):
    _, coupling = make_problem(*problem)
    n, _, d = problem[0]
    rng = np.random.default_rng(tangent_seed)
    u, v = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    hu, hv = hvp_x(coupling, u), hvp_x(coupling, v)
    combined = hvp_x(coupling, alpha * u + beta * v)
    scale = norm(alpha * hu) + norm(beta * hv)
    assert norm(combined - (alpha * hu + beta * hv)) <= TOL * scale


@SETTINGS
@given(problem=problems, tangent_seed=seeds)
def test_hvp_x_matches_dense_hessian(problem, tangent_seed):
    _, coupling = make_problem(*problem)
    n, _, d = problem[0]
    v = np.random.default_rng(tangent_seed).normal(size=(n, d))
    expected = np.einsum("iajb,jb->ia", np.asarray(om.hessian_x(coupling)), v)
    assert norm(hvp_x(coupling, v) - expected) <= TOL * norm(expected)


@SETTINGS
@given(problem=problems, tangent_seed=seeds, block_size=st.sampled_from([3, 5]))
def test_block_size_does_not_change_hvp(problem, tangent_seed, block_size):
    # 3 and 5 leave a padded last block in a pass of each shape (12 = 5 + 5 + 2
    # rows; 5 = 3 + 2; the Schur pass of (5, 12) streams 12 = 5 + 5 + 2).
    (x, y, a, b, epsilon), coupling = make_problem(*problem)
    # The joint tangent: padded rows of a last block reach the y and b outputs.
    u = tangent(np.random.default_rng(tangent_seed), *problem[0])
    want = hvp(coupling, u)  # default block size: one block at these n
    got = hvp(dataclasses.replace(coupling, block_size=block_size), u)
    assert norm(tuple(p - q for p, q in zip(got, want))) <= BLOCK_TOL * norm(want)


@SETTINGS
@given(problem=problems, tangent_seed=seeds)
def test_padding_is_harmless_for_a_cost_nan_at_the_origin(problem, tangent_seed):
    # The angular cost on the (12, 7, 3) shape, blocks of 5 rows (12 = 5 + 5 + 2):
    # the padded rows must not reach the y and b outputs as NaN (nor change them).
    _, seed, log_eps_factor, spread = problem
    _, coupling = make_problem(SHAPES[0], seed, log_eps_factor, spread, angular)
    u = tangent(np.random.default_rng(tangent_seed), *SHAPES[0])
    want = hvp(coupling, u)  # one block
    got = hvp(dataclasses.replace(coupling, block_size=5), u)
    assert norm(tuple(p - q for p, q in zip(got, want))) <= BLOCK_TOL * norm(want)


@SETTINGS
@given(problem=problems, tangent_seed=seeds)
def test_blocked_sinkhorn_gives_the_same_hvp(problem, tangent_seed):
    # Blocks of 3 rows: the last block is padded on one side of each shape
    # (and the blocked HVP reuses the previous test's compilation). The same
    # solution to Sinkhorn's tolerance (rounding may end it one iteration
    # apart, so not to BLOCK_TOL).
    (x, y, a, b, epsilon), coupling = make_problem(*problem)
    blocked = om.solve(*map(jnp.asarray, (x, y, a, b)), epsilon=epsilon, solver=SINKHORN,
                       block_size=3)
    u = tangent(np.random.default_rng(tangent_seed), *problem[0])
    got, want = hvp(blocked, u), hvp(coupling, u)
    assert norm(tuple(p - q for p, q in zip(got, want))) <= TOL * norm(want)
    cost, want_cost = float(blocked.reg_ot_cost), float(coupling.reg_ot_cost)
    assert abs(cost - want_cost) <= TOL * abs(want_cost)
