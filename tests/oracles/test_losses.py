"""Differentiable losses against ott-jax (implicit differentiation) and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om

from ..helpers import RTOL, SINKHORN_TOL, centred, ott_cost, problem, rel_err

EPS = 0.5
N, M, D = 7, 6, 2
SOLVER = om.Sinkhorn(tol=SINKHORN_TOL, max_iters=100_000)


def ours(loss=om.ot_cost, **kwargs):
    def fn(x, y, a, b):
        return loss(x, y, a, b, epsilon=EPS, solver=SOLVER, **kwargs)

    return fn


def ott_divergence(x, y, a, b):
    cost = ott_cost(EPS)
    return cost(x, y, a, b) - 0.5 * (cost(x, x, a, a) + cost(y, y, b, b))


def projector(n):
    return jnp.eye(n) - jnp.ones((n, n)) / n


def flat_hessian(hess, sizes, project):
    """Nested `jax.hessian` blocks -> one matrix; weight blocks projected by `I - 11^T/n`."""
    rows = []
    for i, row in enumerate(hess):
        blocks = []
        for j, block in enumerate(row):
            blk = jnp.reshape(block, (sizes[i], sizes[j]))
            if project[i]:
                blk = projector(sizes[i]) @ blk
            if project[j]:
                blk = blk @ projector(sizes[j])
            blocks.append(blk)
        rows.append(jnp.concatenate(blocks, axis=1))
    return jnp.concatenate(rows, axis=0)


def assert_joint_close(got, want, tol):
    """`(x, y, a, b)` derivatives agree; weight parts compared after removing their mean."""
    assert rel_err(got[0], want[0]) < tol
    assert rel_err(got[1], want[1]) < tol
    assert rel_err(centred(got[2]), centred(want[2])) < tol
    assert rel_err(centred(got[3]), centred(want[3])) < tol


def tangents(seed, x, y, a, b):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (
        jax.random.normal(k[0], x.shape),
        jax.random.normal(k[1], y.shape),
        centred(jax.random.normal(k[2], a.shape)),
        centred(jax.random.normal(k[3], b.shape)),
    )


def test_value_and_gradient():
    x, y, a, b = problem(0, N, M, D)
    value, grads = jax.jit(jax.value_and_grad(ours(), argnums=(0, 1, 2, 3)))(x, y, a, b)
    ref_value, ref = jax.jit(jax.value_and_grad(ott_cost(EPS), argnums=(0, 1, 2, 3)))(x, y, a, b)
    assert abs(float(value - ref_value)) <= RTOL * abs(float(ref_value))
    assert_joint_close(grads, ref, RTOL)


def test_hessian_joint_and_each_argument():
    """`jax.hessian` in (x, y, a, b): the joint matrix and each diagonal block."""
    x, y, a, b = problem(1, N, M, D)
    args = (0, 1, 2, 3)
    hess = jax.jit(jax.hessian(ours(), argnums=args))(x, y, a, b)
    ref = jax.jit(jax.hessian(ott_cost(EPS), argnums=args))(x, y, a, b)
    sizes, project = (N * D, M * D, N, M), (False, False, True, True)
    assert rel_err(flat_hessian(hess, sizes, project), flat_hessian(ref, sizes, project)) < RTOL
    for k in args:
        ours_k = flat_hessian(((hess[k][k],),), (sizes[k],), (project[k],))
        ref_k = flat_hessian(((ref[k][k],),), (sizes[k],), (project[k],))
        assert rel_err(ours_k, ref_k) < RTOL, f"argument {k}"
    # A single-argument hessian takes the same path with symbolic-zero tangents.
    hess_x = jax.jit(jax.hessian(ours(), argnums=0))(x, y, a, b)
    assert rel_err(hess_x, ref[0][0]) < RTOL


def test_hvp_forward_over_reverse():
    """`jax.jvp(jax.grad(...))` with a joint tangent that stays on the simplex."""
    x, y, a, b = problem(2, N, M, D)
    t = tangents(0, x, y, a, b)

    def hvp(fn):
        grad = jax.grad(fn, argnums=(0, 1, 2, 3))
        return jax.jit(lambda *p: jax.jvp(grad, p, t)[1])(x, y, a, b)

    out, ref = hvp(ours()), hvp(ott_cost(EPS))
    assert_joint_close(out, ref, RTOL)


@pytest.mark.slow  # 14 s
def test_uniform_weights_default():
    x, y, _, _ = problem(3, N, M, D)
    a, b = jnp.full((N,), 1 / N), jnp.full((M,), 1 / M)
    hess = jax.jit(jax.hessian(lambda x: om.ot_cost(x, y, epsilon=EPS, solver=SOLVER)))(x)
    ref = jax.jit(jax.hessian(lambda x: ott_cost(EPS)(x, y, a, b)))(x)
    assert rel_err(hess, ref) < RTOL


# Both with --runslow only (34 s and 22 s, mostly ott-jax's Hessian): in CI,
# test_unbalanced.py's test_sinkhorn_divergence_hvp[1.0] checks the balanced
# divergence's HVP in (x, a) against differences of a dense oracle, and
# test_derivatives.py checks weight Hessians against ott-jax.
@pytest.mark.parametrize("arg", [pytest.param(0, marks=pytest.mark.slow),
                                 pytest.param(2, marks=pytest.mark.slow)], ids=["x", "a"])
def test_divergence_hessian(arg):
    x, y, a, b = problem(4, N, M, D)
    hess = jax.jit(jax.hessian(ours(om.sinkhorn_divergence), argnums=arg))(x, y, a, b)
    ref = jax.jit(jax.hessian(ott_divergence, argnums=arg))(x, y, a, b)
    if arg == 2:
        q = projector(N)
        hess, ref = q @ hess @ q, q @ ref @ q
        # Positive semidefinite on the simplex's tangent space.
        assert float(jnp.min(jnp.linalg.eigvalsh(hess))) > -1e-10
    assert rel_err(hess, ref) < RTOL


def test_divergence_value():
    x, y, a, b = problem(4, N, M, D)
    value = ours(om.sinkhorn_divergence)(x, y, a, b)
    ref = jax.jit(ott_divergence)(x, y, a, b)
    assert abs(float(value - ref)) <= RTOL * abs(float(ref))


@pytest.mark.slow  # 17 s; NewtonCG's registration tests differentiate through parameters too
def test_composition_with_parameters():
    """`theta -> x = z @ theta`: gradient and Hessian by JAX's chain rule."""
    z, y, a, b = problem(5, N, M, D)
    theta = jnp.array([[1.0, 0.3], [-0.2, 0.8]])

    def loss(cost):
        return lambda theta: cost(z @ theta, y, a, b)

    grad = jax.jit(jax.grad(loss(ours())))(theta)
    ref_grad = jax.jit(jax.grad(loss(ott_cost(EPS))))(theta)
    assert rel_err(grad, ref_grad) < RTOL
    hess = jax.jit(jax.hessian(loss(ours())))(theta)
    ref = jax.jit(jax.hessian(loss(ott_cost(EPS))))(theta)
    assert rel_err(hess, ref) < RTOL


def test_vmap_over_problems():
    """`vmap` over 4 problems of gradients and forward-over-reverse HVPs."""
    problems = [problem(10 + k, N, M, D) for k in range(4)]
    xs, ys, as_, bs = (jnp.stack(p) for p in zip(*problems))
    dxs = jnp.stack([tangents(k, *p)[0] for k, p in enumerate(problems)])

    def grad_and_hvp(fn):
        grad = jax.grad(fn)
        return lambda x, y, a, b, dx: jax.jvp(lambda x: grad(x, y, a, b), (x,), (dx,))

    grads, hvps = jax.jit(jax.vmap(grad_and_hvp(ours())))(xs, ys, as_, bs, dxs)
    ref_fn = jax.jit(grad_and_hvp(ott_cost(EPS)))
    for k in range(4):
        ref_grad, ref_hvp = ref_fn(xs[k], ys[k], as_[k], bs[k], dxs[k])
        assert rel_err(grads[k], ref_grad) < RTOL
        assert rel_err(hvps[k], ref_hvp) < RTOL


def test_jit_and_eager_agree():
    x, y, a, b = problem(6, N, M, D)
    grad = jax.grad(ours(), argnums=(0, 2))
    eager, jitted = grad(x, y, a, b), jax.jit(grad)(x, y, a, b)
    for e, j in zip(eager, jitted):
        assert rel_err(j, e) < 1e-12


def central_difference(fn, args, direction, h):
    plus = fn(*(p + h * t for p, t in zip(args, direction)))
    minus = fn(*(p - h * t for p, t in zip(args, direction)))
    return jax.tree_util.tree_map(lambda u, v: (u - v) / (2 * h), plus, minus)


def test_sinkhorn_distance_gradient_finite_differences():
    x, y, a, b = problem(7, N, M, D)
    fn = jax.jit(ours(om.sinkhorn_distance))
    grads = jax.jit(jax.grad(fn, argnums=(0, 1, 2, 3)))(x, y, a, b)
    # Weight directions are scaled down to keep a +- h t positive.
    t = tuple(s * v for s, v in zip((1.0, 1.0, 0.01, 0.01), tangents(1, x, y, a, b)))
    directional = sum(jnp.vdot(g, v) for g, v in zip(grads, t))
    fd = central_difference(fn, (x, y, a, b), t, 1e-5)
    assert abs(float(directional - fd)) <= 1e-7 * abs(float(fd))
    # Each argument separately (coordinate-free: a random direction each).
    for k in range(4):
        t_k = tuple(v if i == k else jnp.zeros_like(v) for i, v in enumerate(t))
        fd_k = central_difference(fn, (x, y, a, b), t_k, 1e-5)
        assert abs(float(jnp.vdot(grads[k], t[k]) - fd_k)) <= 1e-7 * abs(float(fd_k)), k


def test_sinkhorn_distance_hvp_finite_differences():
    """Forward over reverse (three H-solves) against central differences of the gradient."""
    x, y, a, b = problem(8, N, M, D)
    grad = jax.jit(jax.grad(ours(om.sinkhorn_distance), argnums=(0, 1, 2, 3)))
    t = tuple(s * v for s, v in zip((1.0, 1.0, 0.01, 0.01), tangents(2, x, y, a, b)))
    hv = jax.jit(lambda *p: jax.jvp(grad, p, t)[1])(x, y, a, b)
    fd = central_difference(grad, (x, y, a, b), t, 1e-5)
    assert_joint_close(hv, fd, 1e-7)


def test_reverse_over_reverse_raises():
    x, y, a, b = problem(9, N, M, D)

    def grad_norm(x):
        return jnp.sum(jax.grad(ours())(x, y, a, b) ** 2)

    with pytest.raises(Exception, match="forward over reverse"):
        jax.grad(grad_norm)(x)


def test_epsilon_tangent_raises():
    x, y, a, b = problem(9, N, M, D)
    with pytest.raises(ValueError, match="epsilon"):
        jax.grad(lambda eps: om.ot_cost(x, y, a, b, epsilon=eps, solver=SOLVER))(EPS)


def test_nonconvergence_raises():
    x, y, a, b = problem(9, N, M, D)
    with pytest.raises(Exception, match="Sinkhorn did not reach"):
        om.ot_cost(x, y, a, b, epsilon=EPS, solver=om.Sinkhorn(tol=1e-13, max_iters=2))
    value = om.ot_cost(x, y, a, b, epsilon=EPS, solver=om.Sinkhorn(max_iters=2), throw=False)
    assert np.isfinite(float(value))


def test_symmetric_self_term_matches_alternating_sinkhorn():
    """The divergence's self terms use symmetric updates; same coupling as `solve(x, x)`."""
    from ot_matfree._forward.symmetric import solve_symmetric

    x, _, a, _ = problem(11, N, M, D)
    sym = solve_symmetric(x, a, epsilon=EPS, solver=SOLVER)
    ref = om.solve(x, x, a, a, epsilon=EPS, solver=SOLVER, throw=False)
    assert bool(sym.converged)
    assert abs(float(sym.reg_ot_cost - ref.reg_ot_cost)) <= 1e-12 * abs(float(ref.reg_ot_cost))
    # Alternating Sinkhorn may stop short on self-transport (that is why the
    # symmetric solver exists); the symmetric coupling's marginals are exact.
    p = om.coupling_operator(sym).as_matrix()
    assert rel_err(p.sum(1), a) < 1e-12
    assert rel_err(p.sum(0), a) < 1e-12


@pytest.mark.slow  # 28 s; test_derivatives.py checks the per-pair path (Cosine) against ott-jax
def test_hessian_with_a_non_euclidean_cost():
    """`jax.hessian` in x and the joint HVP with ott-jax's `SqPNorm(3)` (the per-pair autodiff path)."""
    from ott.geometry import costs

    x, y, a, b = problem(12, N, M, D)
    fn, ott_fn = ours(cost=costs.SqPNorm(3.0)), ott_cost(EPS, costs.SqPNorm(3.0))
    hess = jax.jit(jax.hessian(fn))(x, y, a, b)
    assert rel_err(hess, jax.jit(jax.hessian(ott_fn))(x, y, a, b)) < RTOL
    t = tangents(3, x, y, a, b)

    def hvp(f):
        grad = jax.grad(f, argnums=(0, 1, 2, 3))
        return jax.jit(lambda *p: jax.jvp(grad, p, t)[1])(x, y, a, b)

    out, want = hvp(fn), hvp(ott_fn)
    assert_joint_close(out, want, RTOL)


def test_divergence_with_a_non_euclidean_cost_finite_differences():
    """Divergence gradient and HVP in x with `SqPNorm(3)`, against central differences.

    Not against ott-jax: with this cost, its gradient of `reg_ot_cost` is
    wrong whenever a point of x coincides with a point of y, as in the self
    terms (ott-jax 0.6.0, these 7 points: -0.158 against -0.111 from finite
    differences of its own value; shifting y by 1e-8 makes it agree). Ours
    agrees with the finite differences in both cases.
    """
    from ott.geometry import costs

    x, y, a, b = problem(13, N, M, D)

    def fn(x_):
        return ours(om.sinkhorn_divergence, cost=costs.SqPNorm(3.0))(x_, y, a, b)

    v = jax.random.normal(jax.random.PRNGKey(4), x.shape)
    grad = jax.jit(jax.grad(fn))
    fd_value = central_difference(jax.jit(fn), (x,), (v,), 1e-5)
    assert abs(float(jnp.vdot(grad(x), v) - fd_value)) <= 1e-7 * abs(float(fd_value))
    hv = jax.jit(lambda x_: jax.jvp(grad, (x_,), (v,))[1])(x)
    assert rel_err(hv, central_difference(grad, (x,), (v,), 1e-5)) < 1e-7


@pytest.mark.slow  # 29 s; test_derivatives.py checks float32 HVPs against float64
def test_float32_sinkhorn_distance_hvp_is_finite_and_close_to_float64():
    # n = 3,000 pads the last block in float32, the configuration in which
    # materialised zero tangents met the jaxlib CPU fusion bug (NaN); the
    # distance's second derivative differentiates H-products in forward mode.
    n, d = 3000, 3
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(1), 3)
    x, y = jax.random.uniform(kx, (n, d)), jax.random.uniform(ky, (n, d))
    v = jax.random.normal(kv, (n, d))

    def hvp(dtype, tol):
        def loss(x_):
            return om.sinkhorn_distance(
                x_, y.astype(dtype), epsilon=0.05, solver=om.Sinkhorn(tol=tol)
            )

        return jax.jit(lambda x_, v_: jax.jvp(jax.grad(loss), (x_,), (v_,))[1])(
            x.astype(dtype), v.astype(dtype)
        )

    hv32, hv64 = hvp(jnp.float32, 1e-5), hvp(jnp.float64, 1e-10)
    assert hv32.dtype == jnp.float32
    assert jnp.all(jnp.isfinite(hv32))
    assert rel_err(hv32.astype(jnp.float64), hv64) < 1e-3


@pytest.mark.parametrize("loss", [om.ot_cost, pytest.param(om.sinkhorn_distance, marks=pytest.mark.slow)])
def test_warm_start_and_returned_potentials(loss):
    x, y, a, b = problem(31, N, M, D)
    t = tangents(31, x, y, a, b)
    value, (f, g) = ours(loss, return_potentials=True)(x, y, a, b)
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=SOLVER)
    assert rel_err(f, coupling.f) < 1e-12 and rel_err(g, coupling.g) < 1e-12
    assert float(value) == float(ours(loss)(x, y, a, b))
    # From a nearby point's potentials (a pair or its Coupling): the same value,
    # gradient and HVP as a cold start (all taken at the converged solution).
    moved = (x + 0.05, y, a, b)
    assert rel_err(ours(loss, init=coupling)(*moved), ours(loss)(*moved)) < 1e-12
    jvp_grad = lambda fn: jax.jvp(jax.grad(fn, argnums=(0, 1, 2, 3)), moved, t)  # noqa: E731
    (warm_grad, warm_hvp), (cold_grad, cold_hvp) = (
        jvp_grad(ours(loss, init=(f, g))), jvp_grad(ours(loss))
    )
    assert_joint_close(warm_grad, cold_grad, 1e-10)
    assert_joint_close(warm_hvp, cold_hvp, 1e-9)
    # The potentials are a warm start, not a differentiable output.
    d_potentials = jax.jvp(lambda *z: ours(loss, return_potentials=True)(*z)[1], moved, t)[1]
    assert all(float(jnp.max(jnp.abs(leaf))) == 0.0 for leaf in d_potentials)
    with pytest.raises(ValueError, match="init"):
        ours(loss, init=(f[:-1], g))(x, y, a, b)
