"""Zero weights (issue 19, item 2b): points without mass, as padded batches of
clouds of different sizes need them.

Oracles: the same problem without the zero-weight points (values, gradients
and HVPs on the points with mass); the dense c-transform of that problem's
potentials (the gradient in a zero weight); forward differences of the
Danskin weight gradient, extrapolated (HVPs that move mass onto a
zero-weight point); ott-jax's solve of the problem with zero weights
(`from_ott`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

import ot_matfree as om

from ..helpers import rel_err

EPS = 0.3
TIGHT = om.Sinkhorn(tol=1e-13, max_iters=100_000, momentum=None)
CG = om.CG(rtol=1e-13)


def padded(seed=0, n=7, m=6, d=2):
    """A problem with `a[0] = b[3] = 0` (ott-jax's fixtures' pattern) and its masks."""
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    x = jax.random.normal(k[0], (n, d))
    y = jax.random.normal(k[1], (m, d)) + 0.5
    a = (jax.random.uniform(k[2], (n,)) + 0.5).at[0].set(0.0)
    b = (jax.random.uniform(k[3], (m,)) + 0.5).at[3].set(0.0)
    a, b = a / a.sum(), b / b.sum()
    return x, y, a, b, np.asarray(a > 0), np.asarray(b > 0)


def value_grad_hvp(loss, x, y, a, b, v, da, **kw):
    """`(value, (grad_x, grad_a), (hvp_x, hvp_a))` along `(v, da)`, one compile."""
    def fn(x, a):
        return loss(x, y, a, b, epsilon=EPS, linear_solver=CG, **kw)

    @jax.jit
    def run(x, a):
        value, grads = jax.value_and_grad(fn, argnums=(0, 1))(x, a)
        hvps = jax.jvp(jax.grad(fn, argnums=(0, 1)), (x, a), (v, da))[1]
        return value, grads, hvps

    return run(x, a)


@pytest.mark.parametrize("loss, kw", [
    (om.ot_cost, {}),
    (om.sinkhorn_distance, {}),
    (om.sinkhorn_divergence, {}),
    (om.ot_cost, {"tau_a": 0.8, "tau_b": 0.9}),
], ids=["ot_cost", "sinkhorn_distance", "sinkhorn_divergence", "unbalanced"])
def test_losses_equal_the_problem_without_the_zero_weights(loss, kw):
    """Value, gradients and an HVP (tangents zero on the zero-weight points)
    equal those of the problem without those points (1e-9; weight gradients
    up to the balanced gauge constant); a zero-weight point's own gradient in
    `x` is zero."""
    x, y, a, b, sa, sb = padded()
    v = jax.random.normal(jax.random.PRNGKey(5), x.shape)
    da = jnp.where(sa, jax.random.normal(jax.random.PRNGKey(6), a.shape), 0.0)
    if "tau_a" not in kw:
        da = jnp.where(sa, da - da.sum() / float(sa.sum()), 0.0)
    kw = {"solver": om.Sinkhorn(tol=1e-12, max_iters=100_000), **kw}
    value, (gx, ga), (hx, ha) = value_grad_hvp(loss, x, y, a, b, v, da, **kw)
    ref, (rgx, rga), (rhx, rha) = value_grad_hvp(loss, x[sa], y[sb], a[sa], b[sb], v[sa],
                                                 da[sa], **kw)
    gauge = (lambda z: z - z.mean()) if "tau_a" not in kw else (lambda z: z)
    assert abs(float(value - ref)) < 1e-9 * abs(float(ref))
    assert rel_err(gx[sa], rgx) < 1e-9
    assert float(jnp.max(jnp.abs(gx[~sa]))) < 1e-90
    assert rel_err(gauge(ga[sa]), gauge(rga)) < 1e-8
    assert rel_err(hx[sa], rhx) < 1e-8
    assert float(jnp.max(jnp.abs(hx[~sa]))) < 1e-90
    assert rel_err(gauge(ha[sa]), gauge(rha)) < 1e-7


def test_weight_gradient_at_a_zero_weight_is_the_c_transform():
    """`grad_a` at `a_0 = 0` is the c-transform of the other side's potential
    (dense NumPy, from the problem without the zero-weight points), and
    `Coupling.f` holds it plus `eps log zero_weight`; every potential is finite."""
    x, y, a, b, sa, sb = padded()
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=TIGHT)
    assert bool(coupling.converged)
    assert bool(jnp.all(jnp.isfinite(coupling.f))) and bool(jnp.all(jnp.isfinite(coupling.g)))
    ref = om.solve(x[sa], y[sb], a[sa], b[sb], epsilon=EPS, solver=TIGHT)
    C = np.asarray(((x[:, None, :] - y[None, sb, :]) ** 2).sum(-1))
    psi = np.asarray(ref.g) - EPS * np.log(np.asarray(b[sb]))
    z = np.log(np.asarray(b[sb]))[None, :] + (psi[None, :] - C) / EPS
    top = z.max(axis=1)
    phi = -EPS * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))  # all rows of x
    ga = np.asarray(om.grad(coupling)[2])
    assert np.max(np.abs((ga - ga[1]) - (phi - phi[1]))) < 1e-10
    zero = om.internal.zero_weight(jnp.float64)
    assert float(coupling.a[0]) == zero
    assert abs(float(coupling.f[0] - EPS * np.log(zero)) - (ga[0])) < 1e-10


@pytest.mark.parametrize("solver", [CG, om.SpectralCG(rank=3, rtol=1e-13),
                                    om.TruncatedSVD(rank=5, threshold=0.0), om.DenseSolver()],
                         ids=["CG", "SpectralCG", "TruncatedSVD", "DenseSolver"])
def test_hvp_moving_mass_onto_a_zero_weight(solver):
    """`hvp` along `da = e_0 - e_1` (mass onto the zero-weight point 0): the
    weight outputs equal forward differences of the Danskin weight gradient
    at `a + h da`, extrapolated (`2 D(h / 2) - D(h)`, error O(h^2)), to 1e-6,
    with every H-solver; the point outputs equal those differences too."""
    x, y, a, b, _, _ = padded()
    n = a.shape[0]
    da = jnp.zeros(n).at[0].set(1.0).at[1].set(-1.0)
    coupling = om.solve(x, y, a, b, epsilon=EPS, solver=TIGHT)

    def gradients(w):
        gx, _, ga, _ = om.grad(om.solve(x, y, w, b, epsilon=EPS, solver=TIGHT))
        return np.asarray(gx), np.asarray(ga - ga[1])  # the gauge of `hvp`'s output below

    def forward(h):
        (gx1, ga1), (gx0, ga0) = gradients(a + h * da), gradients(a)
        return (gx1 - gx0) / h, (ga1 - ga0) / h

    (fx1, fa1), (fx2, fa2) = forward(1e-5), forward(5e-6)
    fd_x, fd_a = 2 * fx2 - fx1, 2 * fa2 - fa1
    hx, _, ha, _ = om.hvp(coupling, da=da, linear_solver=solver)
    assert rel_err(ha - ha[1], fd_a) < 1e-6
    assert rel_err(hx, fd_x) < 1e-6


@pytest.mark.parametrize("solver", [om.Sinkhorn(tol=1e-12, newton=0.1), om.LBFGS(tol=1e-12)],
                         ids=["newton", "lbfgs"])
def test_quasi_newton_solvers_on_a_self_problem_with_a_zero_weight(solver):
    """`solve(x, x, a, a)` with `a[0] = 0` (one entry of `P` with a zero
    weight on both sides): Newton steps and L-BFGS converge in about the
    iterations of the problem without the point (before the zero-weight
    potentials were settled at their c-transforms, they stalled at 4.8e-4
    and 1.3e-7), to its value (1e-10)."""
    x, _, a, _, sa, _ = padded()
    coupling = om.solve(x, x, a, a, epsilon=EPS, solver=solver)
    ref = om.solve(x[sa], x[sa], a[sa], a[sa], epsilon=EPS, solver=solver)
    assert bool(coupling.converged)
    assert int(coupling.num_iters) <= int(ref.num_iters) + 5
    assert abs(float(coupling.reg_ot_cost - ref.reg_ot_cost)) < 1e-10


def test_padded_ragged_batch_under_vmap():
    """Two clouds of 5 and 6 points, padded to 7 with zero weights and stacked:
    `jit(vmap(value_and_grad))` equals each unpadded problem (1e-9)."""
    key = jax.random.PRNGKey(7)
    y = jax.random.normal(key, (6, 2))
    sizes, width = (5, 6), 7
    clouds = [jax.random.normal(jax.random.PRNGKey(10 + i), (k, 2)) for i, k in enumerate(sizes)]
    xs = jnp.stack([jnp.pad(c, ((0, width - c.shape[0]), (0, 0))) for c in clouds])
    ws = jnp.stack([jnp.where(jnp.arange(width) < k, 1.0 / k, 0.0) for k in sizes])

    def loss(x, a):
        return om.sinkhorn_divergence(x, y, a, epsilon=EPS, solver=om.Sinkhorn(tol=1e-12))

    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(xs, ws)
    for i, (cloud, k) in enumerate(zip(clouds, sizes)):
        ref, ref_grad = jax.value_and_grad(loss)(cloud, jnp.full(k, 1.0 / k))
        assert abs(float(values[i] - ref)) < 1e-9 * abs(float(ref))
        assert rel_err(grads[i, :k], ref_grad) < 1e-9
        assert float(jnp.max(jnp.abs(grads[i, k:]))) < 1e-90


def test_float32_zero_weights_checked_in_float64():
    """float32 with zero weights: converged, and the value and `grad_x`
    within float32 accuracy (1e-4) of the float64 problem without them."""
    x, y, a, b, sa, sb = padded()
    low = [z.astype(jnp.float32) for z in (x, y, a, b)]
    coupling = om.solve(*low, epsilon=EPS, solver=om.Sinkhorn(tol=1e-5))
    assert bool(coupling.converged)
    ref = om.solve(x[sa], y[sb], a[sa], b[sb], epsilon=EPS, solver=TIGHT)
    assert abs(float(coupling.reg_ot_cost) - float(ref.reg_ot_cost)) < 1e-4
    gx = om.grad_x(coupling).astype(jnp.float64)
    assert rel_err(gx[sa], om.grad_x(ref)) < 1e-4
    assert bool(jnp.all(jnp.isfinite(om.hvp_x(coupling, low[0]))))


def test_from_ott_with_zero_weights():
    """ott-jax's solve of the padded problem (its potentials are -inf at the
    zero weights) through `from_ott`: finite potentials; the weight gradient
    is ott-jax's `f - eps log a` on the support (1e-12) and, at the zero
    weight, the dense c-transform of ott-jax's `g` (1e-10)."""
    x, y, a, b, sa, sb = padded()
    geom = pointcloud.PointCloud(x, y, epsilon=EPS)
    with jax.numpy_dtype_promotion("standard"):
        out = ott_sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=100_000)(
            linear_problem.LinearProblem(geom, a, b))
    assert not bool(jnp.isfinite(out.f[0]))
    coupling = om.from_ott(out)
    assert bool(jnp.all(jnp.isfinite(coupling.f))) and bool(jnp.all(jnp.isfinite(coupling.g)))
    ga = np.asarray(om.grad(coupling)[2])
    f, g = np.asarray(out.f), np.asarray(out.g)
    an = np.asarray(a)
    assert np.max(np.abs(ga[sa] - (f[sa] - EPS * np.log(an[sa])))) < 1e-12
    C = np.asarray(((x[:1, None, :] - y[None, sb, :]) ** 2).sum(-1))[0]
    z = (g[sb] - C) / EPS
    top = z.max()
    assert abs(ga[0] - (-EPS * (top + np.log(np.exp(z - top).sum())))) < 1e-10


@pytest.mark.parametrize("mode", ["eager", "jit", "jit_grad"])
def test_bad_weights_and_unsupported_tangents_raise(mode):
    """Negative weights and all-zero weights raise a clear error eagerly,
    under `jit` and under `jit(grad)`; so do the second derivatives of
    `sinkhorn_distance` and `sinkhorn_divergence` along a weight tangent at a
    zero weight (which `ot_cost` supports)."""
    x, y, a, b, _, _ = padded()

    def value(a, loss=om.ot_cost):
        return loss(x, y, a, b, epsilon=EPS)

    run = {"eager": value, "jit": jax.jit(value), "jit_grad": jax.jit(jax.grad(value))}[mode]
    with pytest.raises(Exception, match="must be non-negative"):
        run(a.at[2].set(-0.01))
    with pytest.raises(Exception, match="all zeros"):
        run(jnp.zeros_like(a))
    da = jnp.zeros_like(a).at[0].set(1.0).at[1].set(-1.0)
    for loss in (om.sinkhorn_distance, om.sinkhorn_divergence):
        def hvp(a, loss=loss):
            return jax.jvp(jax.grad(lambda w: value(w, loss)), (a,), (da,))[1]
        with pytest.raises(Exception, match="non-zero at a zero-weight point"):
            (jax.jit(hvp) if mode != "eager" else hvp)(a)
