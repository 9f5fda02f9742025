"""Cost matrices (`ot_matfree.matrix`) against dense oracles: Qiu, Yin & Wang's
closed-form gradient, central differences of a tight dense Sinkhorn, ott-jax's
values on `Geometry(cost_matrix=...)`, and the point-cloud losses at the
clouds' cost matrix."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import SINKHORN_TOL, centred, rel_err

EPS = 0.3
SOLVER = om.Sinkhorn(tol=SINKHORN_TOL)
#: Derivatives against central differences of the dense Sinkhorn (step 1e-5:
#: truncation error ~1e-10, rounding ~1e-11 relative).
FD_RTOL = 1e-6


def cost_problem(seed, n, m):
    """A cost matrix with entries of size 1, and positive weights."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    C = jax.random.uniform(k1, (n, m), minval=0.0, maxval=2.0)
    a = jax.random.uniform(k2, (n,), minval=0.5, maxval=1.5)
    b = jax.random.uniform(k3, (m,), minval=0.5, maxval=1.5)
    return C, a / a.sum(), b / b.sum()


def dense_sinkhorn(C, a, b, eps, tol=1e-15, max_iters=100_000):
    """Log-domain Sinkhorn on the dense matrix, in NumPy float64: `(f, g, P)`."""
    C, a, b = (np.asarray(z, np.float64) for z in (C, a, b))
    f, g = np.zeros(len(a)), np.zeros(len(b))

    def lse(z, axis):
        top = z.max(axis=axis, keepdims=True)
        return (top + np.log(np.exp(z - top).sum(axis=axis, keepdims=True))).squeeze(axis)

    for _ in range(max_iters):
        g = eps * np.log(b) - eps * lse((f[:, None] - C) / eps, 0)
        f = eps * np.log(a) - eps * lse((g[None, :] - C) / eps, 1)
        P = np.exp((f[:, None] + g[None, :] - C) / eps)
        if np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() < tol:
            return f, g, P
    raise AssertionError("dense Sinkhorn did not converge")


def dense_reg_ot_cost(C, a, b, eps):
    f, g, P = dense_sinkhorn(C, a, b, eps)
    return a @ (f - eps * np.log(a)) + b @ (g - eps * np.log(b)) + eps * (1 - P.sum())


def dense_distance(C, a, b, eps):
    return np.sum(dense_sinkhorn(C, a, b, eps)[2] * np.asarray(C))


def qiu_gradient(C, a, b, eps):
    """Qiu, Yin & Wang's analytic gradient of `<P*, C>` w.r.t. `C`, as on their
    slides: `T + lam (s_u (+) s_v - M) o T`, `lam = 1 / eps`, the last column
    removed (`beta_m = 0`) to make `D` invertible."""
    M = np.asarray(C, np.float64)
    T = dense_sinkhorn(M, a, b, eps)[2]
    a, b = T.sum(1), T.sum(0)
    mu_r, mu_c = (M * T).sum(1), (M * T).sum(0)
    Tt, bt, mu_ct = T[:, :-1], b[:-1], mu_c[:-1]
    D = np.diag(bt) - Tt.T @ (Tt / a[:, None])
    s_vt = np.linalg.solve(D, mu_ct - Tt.T @ (mu_r / a))
    s_u = (mu_r - Tt @ s_vt) / a
    s_v = np.append(s_vt, 0.0)
    return T + (s_u[:, None] + s_v[None, :] - M) * T / eps


def central_difference(fn, z, v, h=1e-5):
    z, v = np.asarray(z, np.float64), np.asarray(v, np.float64)
    return (fn(z + h * v) - fn(z - h * v)) / (2 * h)


@pytest.mark.parametrize("shape", [(9, 13), (13, 9)])
def test_distance_gradient_is_qius_formula(shape):
    """`jax.grad` of `matrix.sinkhorn_distance` w.r.t. `C` equals Qiu et al.'s
    dense closed form, and both equal central differences of the dense value,
    on both orientations (more columns: the H-system reduced to the rows)."""
    C, a, b = cost_problem(0, *shape)
    loss = jax.jit(jax.value_and_grad(
        lambda C: om.matrix.sinkhorn_distance(C, a, b, epsilon=EPS, solver=SOLVER, block_size=4)
    ))
    value, grad = loss(C)
    assert rel_err(value, dense_distance(C, a, b, EPS)) < 1e-12
    assert rel_err(grad, qiu_gradient(C, a, b, EPS)) < 1e-9
    v = jax.random.normal(jax.random.PRNGKey(5), C.shape)
    fd = central_difference(lambda C: dense_distance(C, a, b, EPS), C, v)
    assert rel_err(jnp.vdot(grad, v), fd) < FD_RTOL


def test_ot_cost_gradient_and_hvp_against_dense_sinkhorn():
    """`grad_C reg_ot_cost = P`, its HVP `dP`, and the weight gradients, against
    the dense Sinkhorn's plan and central differences of it (eagerly)."""
    C, a, b = cost_problem(1, 11, 8)
    fn = lambda C, a, b: om.matrix.ot_cost(C, a, b, epsilon=EPS, solver=SOLVER)
    value = fn(C, a, b)
    assert rel_err(value, dense_reg_ot_cost(C, a, b, EPS)) < 1e-12
    (gC, ga, gb), (hC, ha, hb) = jax.jvp(
        jax.grad(fn, argnums=(0, 1, 2)), (C, a, b),
        (V := jax.random.normal(jax.random.PRNGKey(2), C.shape), jnp.zeros_like(a),
         jnp.zeros_like(b)),
    )
    assert rel_err(gC, dense_sinkhorn(C, a, b, EPS)[2]) < 1e-12
    dP = central_difference(lambda C: dense_sinkhorn(C, a, b, EPS)[2], C, V)
    assert rel_err(hC, dP) < FD_RTOL
    # Weights on the simplex: tangents summing to zero give exact directional derivatives.
    da = centred(jax.random.normal(jax.random.PRNGKey(3), a.shape))
    fd = central_difference(lambda a: dense_reg_ot_cost(C, a, b, EPS), a, da)
    assert rel_err(jnp.vdot(ga, da), fd) < FD_RTOL


def test_matrix_losses_equal_cloud_losses_at_the_clouds_cost():
    """At `C = c(x, y)`, the matrix divergence's value, gradient and HVP in
    `(x, a)` (by the chain rule through `C`) equal the point-cloud
    divergence's: the same solves, self terms by the symmetric update on
    `C_xx`, `C_yy`, whose tangents and weight derivatives (`a` on both sides)
    fold as the clouds' do."""
    kx, ky, ka, kv = jax.random.split(jax.random.PRNGKey(4), 4)
    x, y = jax.random.normal(kx, (10, 2)), jax.random.normal(ky, (7, 2)) + 0.5
    a = jax.random.uniform(ka, (10,), minval=0.5, maxval=1.5)
    a = a / a.sum()
    sq = om.SqEuclidean().matrix
    cloud = lambda x, a: om.sinkhorn_divergence(x, y, a, epsilon=EPS, solver=SOLVER)
    matrix = lambda x, a: om.matrix.sinkhorn_divergence(
        sq(x, y), sq(x, x), sq(y, y), a, epsilon=EPS, solver=SOLVER
    )
    tangent = (jax.random.normal(kv, x.shape), centred(jax.random.normal(kv, a.shape)))

    def value_grad_hvp(fn):
        value_and_grad = jax.value_and_grad(fn, argnums=(0, 1))
        return jax.jit(lambda p, t: jax.jvp(lambda p: value_and_grad(*p), (p,), (t,)))

    (want, want_grad), (_, want_hvp) = value_grad_hvp(cloud)((x, a), tangent)
    (got, got_grad), (_, got_hvp) = value_grad_hvp(matrix)((x, a), tangent)
    assert rel_err(got, want) < 1e-12
    for k in range(2):  # weights: the part orthogonal to 1 (docs/math.md)
        project = (lambda z: z) if k == 0 else centred
        assert rel_err(project(got_grad[k]), project(want_grad[k])) < 1e-10, k
        assert rel_err(project(got_hvp[k]), project(want_hvp[k])) < 1e-9, k


def test_matrix_value_equals_ott_geometry_and_from_ott():
    """`matrix.solve`'s `reg_ot_cost` equals ott-jax's on `Geometry(cost_matrix=C)`,
    and `from_ott` of that output gives a matrix coupling with the same gradient."""
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    C, a, b = cost_problem(6, 12, 10)
    geom = geometry.Geometry(cost_matrix=C, epsilon=EPS)
    with jax.numpy_dtype_promotion("standard"):  # ott-jax mixes int and float arrays
        out = jax.jit(
            lambda g: sinkhorn.Sinkhorn(threshold=SINKHORN_TOL, max_iterations=10_000)(
                linear_problem.LinearProblem(g, a, b)
            )
        )(geom)
    ours = om.matrix.solve(C, a, b, epsilon=EPS, solver=SOLVER)
    assert rel_err(ours.reg_ot_cost, out.reg_ot_cost) < 1e-12
    imported = om.from_ott(out)
    assert isinstance(imported.cost, om.MatrixCost)
    assert rel_err(om.grad(imported)[0], om.grad(ours)[0]) < 1e-9
    assert rel_err(om.grad(ours)[0], out.matrix) < 1e-10


# CG in CI; the spectral solvers (7 s more) with --runslow: they take the same operator.
SLOW = pytest.mark.slow


@pytest.mark.parametrize("solver", [om.CG(), pytest.param(om.SpectralCG(rank=3), marks=SLOW),
                                    pytest.param(om.TruncatedSVD(rank=5), marks=SLOW)],
                         ids=["CG", "SpectralCG", "TruncatedSVD"])
def test_matrix_hvp_every_linear_solver(solver):
    """`om.hvp` on a matrix coupling (the HVP w.r.t. `C` is `dP`) is the dense
    solver's with every H-solver."""
    C, a, b = cost_problem(7, 9, 6)
    coupling = om.matrix.solve(C, a, b, epsilon=EPS, solver=SOLVER)
    V = jax.random.normal(jax.random.PRNGKey(8), C.shape)
    want = om.hvp(coupling, dx=V, linear_solver=om.DenseSolver())[0]
    assert rel_err(om.hvp(coupling, dx=V, linear_solver=solver)[0], want) < 1e-8


def test_matrix_losses_under_vmap():
    """`vmap` over a batch of matrices equals the loop."""
    C, a, b = cost_problem(7, 9, 6)
    batch = jnp.stack([C, C * 1.1, C + 0.2])
    fn = lambda C: om.matrix.ot_cost(C, a, b, epsilon=EPS, solver=SOLVER)
    assert rel_err(jax.vmap(fn)(batch), jnp.stack([fn(c) for c in batch])) < 1e-12


@pytest.mark.parametrize("mode", ["eager", "jit", "jit_grad"])
def test_bad_cost_matrices_raise(mode):
    C, a, b = cost_problem(9, 6, 5)
    bad = C.at[2, 3].set(jnp.nan)
    fn = lambda C: om.matrix.sinkhorn_distance(C, a, b, epsilon=EPS)
    call = {"eager": fn, "jit": jax.jit(fn), "jit_grad": jax.jit(jax.grad(fn))}[mode]
    # Under a plain `jax.jit` the message arrives wrapped in a JaxRuntimeError.
    errors = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
    with pytest.raises(errors, match="`C` contains NaN or inf"):
        jax.block_until_ready(call(bad))


def test_bad_cost_matrix_shapes_and_asymmetric_self_costs_raise():
    C, a, b = cost_problem(10, 6, 5)
    with pytest.raises(ValueError, match=r"`C` must have shape \(n, m\)"):
        om.matrix.solve(C[0], epsilon=EPS)
    with pytest.raises(TypeError, match="floating-point"):
        om.matrix.ot_cost(jnp.ones((3, 4), jnp.int32), epsilon=EPS)
    with pytest.raises(ValueError, match=r"`b` must have shape \(5,\)"):
        om.matrix.solve(C, a, a, epsilon=EPS)
    with pytest.raises(ValueError, match=r"`C_xx` must have shape \(6, 6\)"):
        om.matrix.sinkhorn_divergence(C, C, C[:5, :5], epsilon=EPS)
    asym = jnp.abs(jax.random.normal(jax.random.PRNGKey(0), (6, 6)))
    sym = C[:5, :5] + C[:5, :5].T
    with pytest.raises(eqx.EquinoxRuntimeError, match="`C_xx` must be symmetric"):
        om.matrix.sinkhorn_divergence(C, asym, sym, epsilon=EPS)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`C_xy` contains NaN or inf"):
        om.matrix.sinkhorn_divergence(C.at[0, 0].set(jnp.inf), asym + asym.T, sym, epsilon=EPS)
