"""Unbalanced entropic OT (`tau_a`, `tau_b` < 1) against a dense NumPy oracle
(`_unbalanced_dense`): values, potentials, gradients, HVPs, the sharp
distance, the divergence, cost matrices, the H-operator and the errors.

Convention (KL reference `a b^T`, Séjourné et al. 2019; `rho = eps tau / (1 - tau)`):
`OT = min_P <P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)`,
potentials `P_ij = exp((f_i + g_j - C_ij) / eps)` as in ott-jax.

The `test_oracle_*` tests check the oracle itself (primal = dual, first-order
conditions, the balanced limit, ott-jax's relation to it, Danskin's gradients,
the implicit-function derivative of the potentials, all against central
differences); they use no unbalanced ot_matfree API. Select them with
`-k test_oracle` (`-k oracle` also matches this directory's name).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import problem as balanced_problem
from ..helpers import rel_err
from . import _unbalanced_dense as dense

EPS = 0.5
SOLVER = om.Sinkhorn(tol=1e-12, max_iters=100_000)
LINEAR = om.CG(rtol=1e-12)
#: Derivatives against central differences (step 1e-5: truncation ~1e-10,
#: rounding ~1e-11 relative; the oracle solves to a marginal error of 1e-15).
FD_RTOL = 1e-7
HVP_RTOL = 1e-6

TAUS = [(0.7, 0.5), (1.0, 0.6), (0.8, 1.0)]
SHAPES = [(8, 5), (5, 8)]
#: Every relaxation with both orientations (cheap: one solve each).
ALL = [pytest.param(t, s, id=f"tau{t[0]}-{t[1]}-{s[0]}x{s[1]}") for t in TAUS for s in SHAPES]
#: One orientation per relaxation, for the derivative tests (a compile each):
#: the soft-soft pair with n > m, the hard side on the smaller cloud (a, n < m)
#: and on the larger (b, n < m).
CASES = [pytest.param(t, s, id=f"tau{t[0]}-{t[1]}-{s[0]}x{s[1]}")
         for t, s in zip(TAUS, [(8, 5), (5, 8), (5, 8)])]


def problem(seed, shape, taus=(0.7, 0.5)):
    """Gaussian clouds in 2-d; unbalanced (a `tau < 1`): masses 1.3 and 0.7,
    otherwise weights summing to 1."""
    x, y, a, b = balanced_problem(seed, *shape, 2)
    if taus != (1.0, 1.0):
        a, b = 1.3 * a, 0.7 * b
    return x, y, a, b


def loss(fn=om.ot_cost, taus=(0.7, 0.5)):
    """`fn(x, y, a, b)` with this file's epsilon, relaxation and solvers."""
    tau_a, tau_b = taus
    return functools.partial(fn, epsilon=EPS, tau_a=tau_a, tau_b=tau_b, solver=SOLVER,
                             linear_solver=LINEAR)


@functools.cache
def fd_gradient(seed, shape, taus):
    """Central differences of the oracle's `OT` in each coordinate of `(x, y, a, b)`."""
    x, y, a, b = (np.asarray(z) for z in problem(seed, shape, taus))
    value = functools.partial(dense.ot_cost, eps=EPS, tau_a=taus[0], tau_b=taus[1])
    return (
        dense.central_difference_gradient(lambda z: value(z, y, a, b), x),
        dense.central_difference_gradient(lambda z: value(x, z, a, b), y),
        dense.central_difference_gradient(lambda z: value(x, y, z, b), a),
        dense.central_difference_gradient(lambda z: value(x, y, a, z), b),
    )


def random_tangents(seed, *arrays):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(arrays))
    return tuple(jax.random.normal(k, z.shape) for k, z in zip(keys, arrays))


# --------------------------------------------------------------------------
# 1. The oracle itself.


@pytest.mark.parametrize("taus, shape", ALL)
def test_oracle_primal_equals_dual_and_first_order_conditions(taus, shape):
    """At the NumPy Sinkhorn's fixed point: the primal objective at `P` equals
    the dual `D` (1e-12); `P 1 = a exp(-phi / rho_a)`, `P^T 1 = b exp(-psi /
    rho_b)` (or `= a`, `= b` on a hard side); the fixed-point equation
    `f = tau_a T_f(g) + (1 - tau_a) eps log a` holds; perturbed potentials
    lower `D` and a perturbed plan raises the primal (weak duality)."""
    tau_a, tau_b = taus
    x, y, a, b = (np.asarray(z) for z in problem(0, shape, taus))
    C = dense.sq_euclidean(x, y)
    f, g, P = dense.sinkhorn(C, a, b, EPS, tau_a, tau_b)
    D = dense.dual_value(C, a, b, EPS, tau_a, tau_b, f, g)
    primal = dense.primal_value(C, a, b, EPS, tau_a, tau_b, P)
    assert abs(primal - D) <= 1e-12 * abs(D)
    phi, psi = f - EPS * np.log(a), g - EPS * np.log(b)
    assert rel_err(P.sum(1), a * dense.mass_ratio(phi, EPS, tau_a)) < 1e-13
    assert rel_err(P.sum(0), b * dense.mass_ratio(psi, EPS, tau_b)) < 1e-13
    if tau_a < 1:  # the mass really moved: P 1 is not a
        assert rel_err(P.sum(1), a) > 1e-3
    lse = lambda z: z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1))
    T_f = EPS * np.log(a) - EPS * lse((g[None, :] - C) / EPS)
    assert rel_err(f, tau_a * T_f + (1 - tau_a) * EPS * np.log(a)) < 1e-13
    T_g = EPS * np.log(b) - EPS * lse((f[None, :] - C.T) / EPS)
    assert rel_err(g, tau_b * T_g + (1 - tau_b) * EPS * np.log(b)) < 1e-13
    rng = np.random.default_rng(1)
    for _ in range(3):
        df, dg = 1e-3 * rng.normal(size=f.shape), 1e-3 * rng.normal(size=g.shape)
        assert dense.dual_value(C, a, b, EPS, tau_a, tau_b, f + df, g + dg) < D
        if tau_a < 1 and tau_b < 1:  # a hard side's primal needs a feasible plan
            Q = P * np.exp(1e-3 * rng.normal(size=P.shape))
            assert dense.primal_value(C, a, b, EPS, tau_a, tau_b, Q) > D


def test_oracle_balanced_limit():
    """At `tau = (1, 1)` with weights summing to 1 the oracle's value equals an
    independent balanced dense Sinkhorn's (`test_matrix.dense_reg_ot_cost`,
    1e-12), and the unbalanced values increase to it as `tau -> 1` (relaxing
    the constraints lowers the minimum; the gap is O(1 - tau))."""
    from .test_matrix import dense_reg_ot_cost

    x, y, a, b = problem(2, (7, 6), (1.0, 1.0))
    value = dense.ot_cost(x, y, a, b, EPS, 1.0, 1.0)
    C = dense.sq_euclidean(x, y)
    assert abs(value - dense_reg_ot_cost(C, a, b, EPS)) <= 1e-12 * abs(value)
    relaxed = [dense.ot_cost(x, y, a, b, EPS, tau, tau) for tau in (0.9, 0.99)]
    assert relaxed[0] < relaxed[1] < value
    assert value - relaxed[1] < 0.2 * (value - relaxed[0])


@pytest.mark.parametrize("taus, shape", CASES)
def test_oracle_ott_jax_solves_the_problem_at_powered_weights(taus, shape):
    """ott-jax 0.6 iterates `f = tau_a T_f(g)` (no `(1 - tau_a) eps log a`), so
    its potentials are the oracle's for weights `(a**tau_a, b**tau_b)` (1e-12),
    and its `reg_ot_cost` is the dual `D(a, b)` at those potentials (1e-12):
    not `OT(a, b)` (checked to differ) except at weights of one."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    tau_a, tau_b = taus
    x, y, a, b = problem(3, shape, taus)

    @jax.jit
    def ott_solve(x, y, a, b):
        prob = linear_problem.LinearProblem(pointcloud.PointCloud(x, y, epsilon=EPS), a, b,
                                            tau_a=tau_a, tau_b=tau_b)
        return sinkhorn.Sinkhorn(threshold=1e-14, max_iterations=100_000)(prob)

    with jax.numpy_dtype_promotion("standard"):  # ott-jax mixes int and float arrays
        out = ott_solve(x, y, a, b)
    assert bool(out.converged)
    x, y, a, b = (np.asarray(z) for z in (x, y, a, b))
    C = dense.sq_euclidean(x, y)
    f, g, _ = dense.sinkhorn(C, a**tau_a, b**tau_b, EPS, tau_a, tau_b)
    assert rel_err(np.asarray(out.f), f) < 1e-12
    assert rel_err(np.asarray(out.g), g) < 1e-12
    at_ott = dense.dual_value(C, a, b, EPS, tau_a, tau_b, np.asarray(out.f), np.asarray(out.g))
    assert abs(float(out.reg_ot_cost) - at_ott) <= 1e-12 * abs(at_ott)
    ours = dense.matrix_ot_cost(C, a, b, EPS, tau_a, tau_b)
    assert abs(float(out.reg_ot_cost) - ours) > 1e-6 * abs(ours)


@pytest.mark.parametrize("taus, shape", CASES)
def test_oracle_danskin_gradients_match_central_differences(taus, shape):
    """Danskin's `grad_x_i = sum_j P_ij grad_1 c(x_i, y_j)` and
    `grad_a_i = Phi_a(phi_i) + eps (sum b - s_i)` (and in `y`, `b`) equal
    central differences of the oracle value in every coordinate (weights off
    the simplex: the relaxed problem is defined for any mass)."""
    x, y, a, b = problem(4, shape, taus)
    got = dense.danskin_gradient(x, y, a, b, EPS, *taus)
    for k, (g, fd) in enumerate(zip(got, fd_gradient(4, shape, taus))):
        assert rel_err(g, fd) < FD_RTOL, k


@pytest.mark.parametrize("taus, shape", CASES)
def test_oracle_implicit_potential_derivative_and_h_matrix(taus, shape):
    """`H_u` is symmetric positive definite (a `tau < 1`); central differences
    of the oracle potentials `(f, g)` along `(dx, dy)` equal
    `H_u^-1 [(P o dC) 1; (P o dC)^T 1]`; the closed-form `grad_C <P*, C>`
    (`dense.distance_gradient_C`) and `grad_C OT = P` equal central differences
    of the oracle along a random matrix; the Hessian from differences of
    Danskin's gradient is symmetric."""
    tau_a, tau_b = taus
    x, y, a, b = (np.asarray(z) for z in problem(5, shape, taus))
    dx, dy, da, db = (np.asarray(z) for z in random_tangents(6, x, y, a, b))
    C = dense.sq_euclidean(x, y)
    _, _, P = dense.sinkhorn(C, a, b, EPS, tau_a, tau_b)
    H = dense.h_matrix(P, tau_a, tau_b)
    assert np.array_equal(H, H.T)
    assert np.linalg.eigvalsh(H).min() > 1e-3 * np.linalg.eigvalsh(H).max()
    pots = lambda s: dense.sinkhorn(dense.sq_euclidean(x + s * dx, y + s * dy), a, b, EPS,
                                    tau_a, tau_b)[:2]
    fd = dense.central_difference(pots, 0.0, 1.0)
    want = dense.potential_tangent(x, y, a, b, EPS, tau_a, tau_b, dx, dy)
    assert rel_err(want[0], fd[0]) < FD_RTOL
    assert rel_err(want[1], fd[1]) < FD_RTOL

    V = np.asarray(jax.random.normal(jax.random.PRNGKey(7), C.shape))
    fd = dense.central_difference(lambda C: dense.matrix_distance(C, a, b, EPS, *taus), C, V)
    assert abs(np.vdot(dense.distance_gradient_C(C, a, b, EPS, *taus), V) - fd) < FD_RTOL * abs(fd)
    fd = dense.central_difference(lambda C: dense.matrix_ot_cost(C, a, b, EPS, *taus), C, V)
    assert abs(np.vdot(P, V) - fd) < FD_RTOL * abs(fd)

    grad = lambda v: lambda s: dense.danskin_gradient(
        *(z + s * t for z, t in zip((x, y, a, b), v)), EPS, tau_a, tau_b)
    v, w = (dx, dy, da, db), tuple(np.asarray(t) for t in random_tangents(8, x, y, a, b))
    Hv = dense.central_difference(grad(v), 0.0, 1.0)
    Hw = dense.central_difference(grad(w), 0.0, 1.0)
    pair = lambda u, t: sum(np.vdot(p, q) for p, q in zip(u, t))
    assert abs(pair(Hv, w) - pair(Hw, v)) < 1e-7 * abs(pair(Hv, w))


def test_oracle_divergence_symmetric_and_nonnegative():
    """The oracle's unbalanced divergence (`OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2
    + eps/2 (sum a - sum b)^2`) is symmetric in its two measures, zero on equal
    ones and positive on different ones, masses different or not."""
    x, y, a, b = (np.asarray(z) for z in problem(9, (7, 6)))
    for tau in (0.5, 0.8):
        S = dense.sinkhorn_divergence(x, y, a, b, EPS, tau)
        assert abs(S - dense.sinkhorn_divergence(y, x, b, a, EPS, tau)) < 1e-12 * abs(S)
        assert abs(dense.sinkhorn_divergence(x, x, a, a, EPS, tau)) < 1e-13
        assert S > 0
        assert dense.sinkhorn_divergence(x, x + 1e-2, a, a * 0.9, EPS, tau) > 0
        assert dense.sinkhorn_divergence(x, x, a, a * 0.9, EPS, tau) > 0


# --------------------------------------------------------------------------
# 2. Values and potentials.


# The other orientation of each relaxation under --runslow (CI time); CASES
# has each relaxation once, the hard side on both the smaller and the larger cloud.
@pytest.mark.parametrize("taus, shape", [
    p if p in CASES else pytest.param(*p.values, id=p.id, marks=pytest.mark.slow) for p in ALL
])
def test_solve_value_and_potentials(taus, shape):
    """`om.solve(..., tau_a, tau_b)`: `reg_ot_cost` equals the oracle's `OT`
    (1e-10), `f`, `g` the oracle's potentials (1e-9), the reported marginal
    error is small and equals the oracle's at the returned potentials, and
    the coupling records its relaxation (masses 1.3 and 0.7 accepted);
    `om.h_operator(coupling).as_matrix()` equals the dense
    `H_u = [[diag(P 1) / tau_a, P], [P^T, diag(P^T 1) / tau_b]]` at the
    oracle's plan (1e-9)."""
    x, y, a, b = problem(10, shape, taus)
    coupling = om.solve(x, y, a, b, epsilon=EPS, tau_a=taus[0], tau_b=taus[1], solver=SOLVER)
    assert bool(coupling.converged)
    assert (coupling.tau_a, coupling.tau_b) == taus
    C = dense.sq_euclidean(x, y)
    f, g, P = dense.sinkhorn(C, a, b, EPS, *taus)
    value = dense.dual_value(C, a, b, EPS, *taus, f, g)
    assert abs(float(coupling.reg_ot_cost) - value) <= 1e-10 * abs(value)
    assert rel_err(coupling.f, f) < 1e-9
    assert rel_err(coupling.g, g) < 1e-9
    err = dense.marginal_error(C, a, b, EPS, *taus, coupling.f, coupling.g)
    assert float(coupling.marginal_error) < 1e-11
    assert abs(float(coupling.marginal_error) - err) < 1e-13
    assert rel_err(om.h_operator(coupling).as_matrix(), dense.h_matrix(P, *taus)) < 1e-9


# --------------------------------------------------------------------------
# 3-4. The gradient and HVP of ot_cost.


@pytest.mark.parametrize("taus, shape", CASES)
def test_ot_cost_value_gradient_and_hvp(taus, shape):
    """`jax.jvp(jax.value_and_grad(om.ot_cost, argnums=(0, 1, 2, 3)))` along a
    random `(dx, dy, da, db)`, compiled once: the value equals the oracle's
    (1e-10); each gradient central differences of the oracle value in every
    coordinate (1e-7; the weights' full gradient, not only its centred part);
    the HVP central differences of the oracle's Danskin gradient along the
    tangent, block by block (1e-6)."""
    x, y, a, b = problem(4, shape, taus)
    tangents = random_tangents(12, x, y, a, b)
    value_and_grad = jax.value_and_grad(loss(taus=taus), argnums=(0, 1, 2, 3))
    (value, grads), (_, hvp) = jax.jit(
        lambda p, t: jax.jvp(lambda p: value_and_grad(*p), (p,), (t,))
    )((x, y, a, b), tangents)
    want = dense.ot_cost(x, y, a, b, EPS, *taus)
    assert abs(float(value) - want) <= 1e-10 * abs(want)
    for k, (g, fd) in enumerate(zip(grads, fd_gradient(4, shape, taus))):
        assert rel_err(g, fd) < FD_RTOL, k
    primals, tangents = [np.asarray(z) for z in (x, y, a, b)], [np.asarray(t) for t in tangents]
    fd = dense.central_difference(
        lambda s: dense.danskin_gradient(*(z + s * t for z, t in zip(primals, tangents)),
                                         EPS, *taus),
        0.0, 1.0)
    for k in range(4):
        assert rel_err(hvp[k], fd[k]) < HVP_RTOL, k


# --------------------------------------------------------------------------
# 5-6. The sharp distance and the divergence.


@pytest.mark.parametrize("taus, shape", CASES[:1])
def test_sinkhorn_distance_value_and_gradient(taus, shape):
    """`om.sinkhorn_distance`: the value equals the oracle's `<P*, C>` (1e-10),
    its gradient in `(x, a)` central differences of it (1e-7)."""
    x, y, a, b = problem(13, shape, taus)
    value, (gx, ga) = jax.jit(jax.value_and_grad(loss(om.sinkhorn_distance, taus),
                                                 argnums=(0, 2)))(x, y, a, b)
    want = dense.sinkhorn_distance(x, y, a, b, EPS, *taus)
    assert abs(float(value) - want) <= 1e-10 * abs(want)
    fx = dense.central_difference_gradient(
        lambda z: dense.sinkhorn_distance(z, y, a, b, EPS, *taus), x)
    fa = dense.central_difference_gradient(
        lambda z: dense.sinkhorn_distance(x, y, z, b, EPS, *taus), a)
    assert rel_err(gx, fx) < FD_RTOL
    assert rel_err(ga, fa) < FD_RTOL


@pytest.mark.parametrize("tau, shape", [(0.6, (8, 5))])
def test_sinkhorn_divergence_value_and_gradient(tau, shape):
    """`om.sinkhorn_divergence` with `tau_a = tau_b`: the value equals the
    oracle's three solves plus `eps/2 (sum a - sum b)^2` (1e-10), its gradient
    in `(x, a)` central differences of it (1e-7)."""
    x, y, a, b = problem(14, shape)
    value, (gx, ga) = jax.jit(jax.value_and_grad(loss(om.sinkhorn_divergence, (tau, tau)),
                                                 argnums=(0, 2)))(x, y, a, b)
    want = dense.sinkhorn_divergence(x, y, a, b, EPS, tau)
    assert abs(float(value) - want) <= 1e-10 * abs(want)
    fx = dense.central_difference_gradient(
        lambda z: dense.sinkhorn_divergence(z, y, a, b, EPS, tau), x)
    fa = dense.central_difference_gradient(
        lambda z: dense.sinkhorn_divergence(x, y, z, b, EPS, tau), a)
    assert rel_err(gx, fx) < FD_RTOL
    assert rel_err(ga, fa) < FD_RTOL


# --------------------------------------------------------------------------
# 7. Cost matrices.


@pytest.mark.parametrize("taus, shape", CASES[1:2])
def test_matrix_losses(taus, shape):
    """At `C = c(x, y)`: `matrix.ot_cost` and `matrix.sinkhorn_distance` equal the
    cloud losses (1e-12); `grad_C matrix.ot_cost` is the oracle's `P` (1e-9);
    `grad_C matrix.sinkhorn_distance` the closed form
    `dense.distance_gradient_C` (1e-8, itself checked by differences)."""
    x, y, a, b = problem(15, shape, taus)
    C = om.SqEuclidean().matrix(x, y)
    kw = {"epsilon": EPS, "tau_a": taus[0], "tau_b": taus[1], "solver": SOLVER,
          "linear_solver": LINEAR}
    cost, grad_cost = jax.jit(jax.value_and_grad(lambda C: om.matrix.ot_cost(C, a, b, **kw)))(C)
    dist, grad_dist = jax.jit(jax.value_and_grad(
        lambda C: om.matrix.sinkhorn_distance(C, a, b, **kw)))(C)
    assert rel_err(cost, loss(taus=taus)(x, y, a, b)) < 1e-12
    assert rel_err(dist, loss(om.sinkhorn_distance, taus)(x, y, a, b)) < 1e-12
    Cn = np.asarray(C)
    assert rel_err(grad_cost, dense.sinkhorn(Cn, a, b, EPS, *taus)[2]) < 1e-9
    assert rel_err(grad_dist, dense.distance_gradient_C(Cn, a, b, EPS, *taus)) < 1e-8


# --------------------------------------------------------------------------
# 9. Errors.


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, float("nan")])
@pytest.mark.parametrize("side", ["tau_a", "tau_b"])
def test_invalid_tau_raises_eagerly(bad, side):
    """`tau` outside (0, 1] (or NaN) is a ValueError at call time, in `solve`
    and in the losses."""
    x, y, a, b = problem(16, (6, 5))
    with pytest.raises(ValueError, match="tau"):
        om.solve(x, y, a, b, epsilon=EPS, **{side: bad})
    with pytest.raises(ValueError, match="tau"):
        om.ot_cost(x, y, a, b, epsilon=EPS, **{side: bad})


def test_divergence_requires_equal_taus():
    x, y, a, b = problem(16, (6, 5))
    with pytest.raises(ValueError, match="tau"):
        om.sinkhorn_divergence(x, y, a, b, epsilon=EPS, tau_a=0.7, tau_b=0.5)


@pytest.mark.parametrize("solver", [om.Sinkhorn(newton=0.1), om.LBFGS()],
                         ids=["newton", "LBFGS"])
@pytest.mark.parametrize("taus", [(0.7, 1.0), (1.0, 0.6)])
def test_dual_solvers_rejected_when_unbalanced(solver, taus):
    """Newton steps and L-BFGS solve the balanced dual only: a ValueError at
    call time when a `tau < 1`."""
    x, y, a, b = problem(16, (6, 5), taus)
    with pytest.raises(ValueError):
        om.solve(x, y, a, b, epsilon=EPS, tau_a=taus[0], tau_b=taus[1], solver=solver)


def test_balanced_weights_must_still_sum_to_one():
    """Both `tau = 1`: weights of mass 1.3 and 0.7 still raise (the balanced
    check is a run-time one, so an Equinox error is accepted too)."""
    x, y, a, b = problem(16, (6, 5))  # masses 1.3 and 0.7
    errors = (ValueError, eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
    with pytest.raises(errors, match="must sum to 1"):
        jax.block_until_ready(om.solve(x, y, a, b, epsilon=EPS).reg_ot_cost)


@pytest.mark.parametrize("mode", ["eager", "jit", "jit_grad"])
def test_nan_points_raise_when_unbalanced(mode):
    """NaN in `x` with `tau_a = 0.7`: the run-time check fires eagerly, under
    `jax.jit` and under `jax.jit(jax.grad(...))`."""
    x, y, a, b = problem(17, (6, 5), (0.7, 1.0))
    x = x.at[1, 0].set(jnp.nan)
    fn = lambda x: om.ot_cost(x, y, a, b, epsilon=EPS, tau_a=0.7)
    call = {"eager": fn, "jit": jax.jit(fn), "jit_grad": jax.jit(jax.grad(fn))}[mode]
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError),
                       match="`x` contains NaN or inf"):
        jax.block_until_ready(call(x))


# --------------------------------------------------------------------------
# 10. Transformations.


def test_jit_and_vmap():
    """`jax.jit` of `om.ot_cost` (relaxation static through `functools.partial`)
    equals the eager value (1e-12); `jax.vmap` over a batch of two `x` clouds
    equals the loop (1e-12)."""
    taus = (0.7, 0.5)
    x, y, a, b = problem(18, (7, 5), taus)
    fn = loss(taus=taus)
    eager = fn(x, y, a, b)
    assert rel_err(jax.jit(fn)(x, y, a, b), eager) < 1e-12
    batch = jnp.stack([x, 0.9 * x + 0.1])
    looped = jnp.stack([fn(z, y, a, b) for z in batch])
    assert rel_err(jax.vmap(fn, in_axes=(0, None, None, None))(batch, y, a, b), looped) < 1e-12


# --------------------------------------------------------------------------
# 11. What the loss tests leave out: the divergence's HVP, every forward
# variant and H-solver, the symmetric self term, NewtonCG, matrix divergence.


def _dense_divergence_gradient(x, y, a, b, tau):
    """The divergence's `(grad_x, grad_a)` from the oracle's Danskin gradients:
    `OT(x, y)`'s, minus half of each self term's two arguments' parts, plus the
    mass term's `eps (sum a - sum b)`."""
    gx, _, ga, _ = dense.danskin_gradient(x, y, a, b, EPS, tau, tau)
    sx, sy, sa, sb = dense.danskin_gradient(x, x, a, a, EPS, tau, tau)
    return gx - 0.5 * (sx + sy), ga - 0.5 * (sa + sb) + EPS * (np.sum(a) - np.sum(b))


# `tau = 1` is the balanced divergence (weights summing to 1, a weight tangent
# summing to 0, weight outputs compared centred: their constant is a gauge);
# it stands in CI for the Hessian in x against ott-jax's (34 s, --runslow,
# tests/oracles/test_losses.py).
@pytest.mark.parametrize("tau", [0.6, 1.0])
def test_sinkhorn_divergence_hvp(tau):
    """`jax.jvp(jax.grad(om.sinkhorn_divergence))` in `(x, a)` (the self terms'
    joint tangent, the weight fold and the mass term's Hessian
    `eps 1 1^T`) equals central differences of the oracle's divergence
    gradient along the tangent (1e-6); that gradient equals the oracle's
    finite differences (checked in `test_sinkhorn_divergence_value_and_gradient`)."""
    x, y, a, b = problem(21, (7, 5), (tau, tau))
    dx, da = random_tangents(22, x, a)
    if tau == 1.0:
        da = da - jnp.mean(da)
    grad = jax.grad(loss(om.sinkhorn_divergence, (tau, tau)), argnums=(0, 2))
    _, (hx, ha) = jax.jit(lambda x, a: jax.jvp(lambda x, a: grad(x, y, a, b), (x, a),
                                               (dx, da)))(x, a)
    xn, an, yn, bn = (np.asarray(z) for z in (x, a, y, b))
    # Balanced, the third derivative along this tangent is large: the difference's
    # error is 6e-6 at h = 1e-5, 6e-8 at h = 1e-6 (O(h^2), measured).
    fd = dense.central_difference(
        lambda s: _dense_divergence_gradient(xn + s * np.asarray(dx), yn,
                                             an + s * np.asarray(da), bn, tau), 0.0, 1.0,
        h=1e-5 if tau < 1 else 1e-6)
    assert rel_err(hx, fd[0]) < HVP_RTOL
    fd_a = fd[1]
    if tau == 1.0:
        ha, fd_a = ha - jnp.mean(ha), fd_a - np.mean(fd_a)
    assert rel_err(ha, fd_a) < HVP_RTOL


@pytest.mark.parametrize("solver", [
    om.Sinkhorn(tol=1e-12, momentum=None), om.Sinkhorn(tol=1e-12, momentum=1.5),
    om.Sinkhorn(tol=1e-12, anderson=5), om.Sinkhorn(tol=1e-12, epsilon_scaling=0.5),
], ids=["plain", "fixed-momentum", "anderson", "annealing"])
def test_forward_variants(solver):
    """Each iteration variant reaches the oracle's potentials (1e-9) and value
    (1e-10) on a semi-unbalanced problem, converged."""
    taus = (1.0, 0.6)
    x, y, a, b = problem(23, (6, 8), taus)
    c = om.solve(x, y, a, b, epsilon=EPS, tau_a=taus[0], tau_b=taus[1], solver=solver)
    f, g, _ = dense.sinkhorn(dense.sq_euclidean(x, y), a, b, EPS, *taus)
    assert bool(c.converged) and float(c.marginal_error) <= 1e-12
    assert np.max(np.abs(np.asarray(c.f) - f)) < 1e-9
    assert np.max(np.abs(np.asarray(c.g) - g)) < 1e-9
    want = dense.ot_cost(x, y, a, b, EPS, *taus)
    assert abs(float(c.reg_ot_cost) - want) <= 1e-10 * abs(want)


@pytest.mark.parametrize("solver", [
    om.CG(rtol=1e-13), om.SpectralCG(rank=3, rtol=1e-13),
    # TruncatedSVD's unbalanced cut-off: 10 s of compilation, under --runslow.
    pytest.param(om.TruncatedSVD(rank=3, rtol=1e-13), marks=pytest.mark.slow),
], ids=["CG", "SpectralCG", "TruncatedSVD"])
def test_h_solvers_agree(solver):
    """On an unbalanced coupling, `hvp` by `CG`, `SpectralCG` (its top
    direction, the balanced null vector, deflated with eigenvalue
    `1 - tau_a tau_b`) and `TruncatedSVD` (nothing below its cut-off) equals
    `DenseSolver`'s (1e-9), with the solver state reused."""
    x, y, a, b = problem(24, (8, 6))
    c = om.solve(x, y, a, b, epsilon=EPS, tau_a=0.7, tau_b=0.5, solver=SOLVER)
    dx, dy, da, db = random_tangents(25, x, y, a, b)
    reference = om.hvp(c, dx, dy, da, db, linear_solver=om.DenseSolver())
    state = solver.init(om.h_operator(c), {})
    sol = om.hvp_solution(c, dx, dy, da, db, linear_solver=solver, solver_state=state)
    assert sol.result == om.RESULTS.successful
    for got, want in zip(sol.value, reference):
        assert rel_err(got, want) < 1e-9


def test_symmetric_self_term():
    """The divergence's self term: the symmetric update with the relaxed `T`
    gives `om.solve(x, x, a, a)`'s potentials and value (1e-10)."""
    from ot_matfree._forward.symmetric import solve_symmetric

    x, _, a, _ = problem(26, (7, 5))
    sym = solve_symmetric(x, a, epsilon=EPS, solver=SOLVER, tau=0.6)
    alt = om.solve(x, x, a, a, epsilon=EPS, tau_a=0.6, tau_b=0.6, solver=SOLVER)
    assert np.max(np.abs(np.asarray(sym.f - alt.f))) < 1e-10
    assert rel_err(sym.reg_ot_cost, alt.reg_ot_cost) < 1e-10


def test_matrix_divergence_equals_cloud_divergence():
    """`matrix.sinkhorn_divergence` at `C = c(x, y)`, `c(x, x)`, `c(y, y)` equals
    the cloud divergence with the same `tau` (value 1e-12, gradient in `a` 1e-10)."""
    tau = 0.6
    x, y, a, b = problem(27, (6, 5))
    cost = om.SqEuclidean()
    kw = {"epsilon": EPS, "tau_a": tau, "tau_b": tau, "solver": SOLVER, "linear_solver": LINEAR}
    mat = jax.value_and_grad(lambda a: om.matrix.sinkhorn_divergence(
        cost.matrix(x, y), cost.matrix(x, x), cost.matrix(y, y), a, b, **kw))(a)
    cloud = jax.value_and_grad(lambda a: om.sinkhorn_divergence(x, y, a, b, **kw))(a)
    assert rel_err(mat[0], cloud[0]) < 1e-12
    assert rel_err(mat[1], cloud[1]) < 1e-10


def test_newton_cg_on_an_unbalanced_loss():
    """`NewtonCG` on a translation `t` of `x` under the unbalanced `ot_cost`
    converges, and the oracle's central-difference gradient in `t` is zero at
    its answer (1e-7 against the gradient at the start)."""
    import optimistix as optx

    taus = (0.8, 0.8)
    x, y, a, b = problem(28, (7, 6), taus)
    objective = lambda t, _: loss(taus=taus)(x + t, y, a, b)
    sol = optx.minimise(objective, om.NewtonCG(rtol=1e-10, atol=1e-10), jnp.zeros(2),
                        max_steps=30)
    value = lambda t: dense.ot_cost(np.asarray(x) + t, y, a, b, EPS, *taus)
    start = dense.central_difference_gradient(value, np.zeros(2))
    end = dense.central_difference_gradient(value, np.asarray(sol.value))
    assert np.linalg.norm(end) < 1e-7 * np.linalg.norm(start)
