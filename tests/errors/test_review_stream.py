"""Streaming-layer defects of the reliability review (issue 21: 1, 3, 8, 11).

- 1: the last row block's padding must not put NaN into column sums when
  the cost is not differentiable (or not even defined) at the origin: every
  reduction with an angular cost and a block size that does not divide n,
  against one block.
- 3: `block_size="auto"` with a `FunctionCost` (a plain Python callable).
- 8: NumPy integer block sizes at every entry point.
- 11: first-order gradients of a cost with a `jax.custom_vjp` inside (ott-jax's
  `Bures`) need reverse mode only; its HVPs raise an error that says why.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ot_matfree as om
from ot_matfree._core import coupling as _coupling

from ..helpers import problem, rel_err

SINKHORN = om.Sinkhorn(tol=1e-12)
CG = om.CG(rtol=1e-12)


def angular(u, w):
    """`1 - <u, w> / (|u| |w|)`: NaN at `u = 0`, with NaN derivatives there."""
    return 1 - jnp.dot(u, w) / (jnp.linalg.norm(u) * jnp.linalg.norm(w))


@pytest.fixture(scope="module")
def clouds():
    x, y, _, _ = problem(3, 10, 7, 3)
    return x, y


# ------------------------------------------------------------------ 1: padding


@pytest.fixture(scope="module")
def angular_couplings(clouds):
    """One coupling with the angular cost, streamed in one block and in blocks
    of 4 rows (4, 4, 2 and two padded rows)."""
    x, y = clouds
    one_block = om.solve(x, y, epsilon=0.3, cost=angular, solver=SINKHORN, block_size=10)
    return one_block, dataclasses.replace(one_block, block_size=4)


def test_padding_keeps_gradients_finite_for_a_cost_nan_at_the_origin(angular_couplings):
    one_block, blocked = angular_couplings
    # Raised "a derivative is not finite": NaN from the padded rows in grad_y.
    for want, got in zip(om.grad(one_block), om.grad(blocked)):
        assert rel_err(got, want) < 1e-12


def test_padding_keeps_hvps_finite_for_a_cost_nan_at_the_origin(angular_couplings):
    one_block, blocked = angular_couplings
    dx = jnp.asarray(np.random.default_rng(0).normal(size=(10, 3)))
    # Both reductions of an HVP (right-hand side, output) sum over the padded
    # rows into per-column results: the joint HVP's y part, and the right-hand
    # side of `hvp_x`'s H-solve.
    want = om.hvp(one_block, dx, linear_solver=CG)
    for got, w in zip(om.hvp(blocked, dx, linear_solver=CG), want):
        assert rel_err(got, w) < 1e-10
    assert rel_err(om.hvp_x(blocked, dx, linear_solver=CG), want[0]) < 1e-10


@pytest.mark.parametrize("loss", [om.ot_cost, om.sinkhorn_divergence, om.sinkhorn_distance])
def test_padding_keeps_loss_gradients_finite_for_a_cost_nan_at_the_origin(
    clouds, angular_couplings, loss
):
    x, y = clouds

    def grads(block_size):
        return jax.grad(
            lambda x, y: loss(x, y, epsilon=0.3, cost=angular, solver=SINKHORN,
                              linear_solver=CG, block_size=block_size),
            argnums=(0, 1),
        )(x, y)

    # Raised "a derivative is not finite" (sinkhorn_distance: "H-matrix solve
    # did not reach its tolerance"). The gradient of `ot_cost` is `om.grad`'s.
    want = om.grad(angular_couplings[0])[:2] if loss is om.ot_cost else grads(10)
    for got, w in zip(grads(4), want):
        assert rel_err(got, w) < 1e-9


# ------------------------------------------------------- 3: "auto" and FunctionCost


@pytest.fixture
def fresh_autotune(monkeypatch):
    """An empty tuning cache, and no candidates besides the budget's size (one
    compilation per tuned pass)."""
    from ot_matfree._stream import engine

    monkeypatch.setattr(_coupling, "TUNED_BYTES", {})
    monkeypatch.setattr(engine, "TUNED_BYTES", _coupling.TUNED_BYTES)
    monkeypatch.setattr(engine, "TUNE_CANDIDATES", ())


def test_block_size_auto_works_with_a_function_cost(clouds, fresh_autotune):
    x, y = clouds

    def cost(u, w):  # a plain callable: a `FunctionCost` with a non-array leaf
        return jnp.sum((u - w) ** 2) + 0.1 * jnp.sum((u - w) ** 4)

    # Tunes the log-sum-exp pass both ways (the g update streams the transposed
    # cost, whose callable sits at `cost.cost.fn`), then `P @ v` for grad_x.
    auto = om.solve(x, y, epsilon=0.3, cost=cost, solver=SINKHORN, block_size="auto")
    assert auto.block_size == "auto"
    tuned = {k[:3] for k in _coupling.TUNED_BYTES}
    assert {("logsumexp", 10, 7), ("logsumexp", 7, 10)} <= tuned
    fixed = dataclasses.replace(auto, block_size=10)
    assert rel_err(om.grad_x(auto), om.grad_x(fixed)) < 1e-12
    assert ("apply", 10, 7) in {k[:3] for k in _coupling.TUNED_BYTES}


# -------------------------------------------------- 8: NumPy integer block sizes


@pytest.mark.parametrize("np_int", [np.int64, np.int32])
def test_numpy_integer_block_sizes_in_solve_and_coupling(clouds, np_int):
    x, y = clouds
    coupling = om.solve(x, y, epsilon=0.5, solver=SINKHORN, block_size=np_int(4))
    assert coupling.block_size == 4 and type(coupling.block_size) is int
    # A coupling built directly: its block size becomes a Python int, used as
    # given (a NumPy one fell through to the memory budget: 10 rows here).
    c = om.Coupling(x, y, coupling.a, coupling.b, coupling.f, coupling.g, coupling.epsilon,
                    coupling.cost, block_size=np_int(4))
    assert type(c.block_size) is int and c.block(2) == 4
    with pytest.raises(ValueError, match="block_size"):
        om.Coupling(x, y, coupling.a, coupling.b, coupling.f, coupling.g, coupling.epsilon,
                    coupling.cost, block_size=np_int(0))


@pytest.mark.parametrize("np_int", [np.int64, np.int32])
def test_numpy_integer_block_sizes_in_from_ott(clouds, np_int):
    from ..helpers import ott_output

    x, y = clouds
    a, b = jnp.full((10,), 0.1), jnp.full((7,), 1 / 7)
    c = om.from_ott(ott_output(x, y, a, b, 0.5), block_size=np_int(4))
    assert type(c.block_size) is int and c.block(2) == 4


@pytest.mark.parametrize("np_int", [np.int64, np.int32])
@pytest.mark.parametrize("loss", [om.ot_cost, om.sinkhorn_divergence, om.sinkhorn_distance])
def test_numpy_integer_block_sizes_in_the_losses(clouds, loss, np_int):
    x, y = clouds
    kw = {"epsilon": 0.5, "solver": SINKHORN}
    # Raised "got JitTracer(int64[]) ... cannot be traced". The same static
    # configuration as a Python int: the same program, the same value.
    got = loss(x, y, block_size=np_int(4), **kw)
    assert float(got) == float(loss(x, y, block_size=4, **kw))


# ------------------------------------------- 11: gradients need reverse mode only


@jax.custom_vjp
def _sq_custom(u, w):
    return jnp.sum((u - w) ** 2) + 0.1 * jnp.sum(jnp.sin(u * w))


def _sq_fwd(u, w):
    return _sq_custom(u, w), (u, w)


def _sq_bwd(res, t):
    u, w = res
    gu = 2 * (u - w) + 0.1 * w * jnp.cos(u * w)
    gw = -2 * (u - w) + 0.1 * u * jnp.cos(u * w)
    return t * gu, t * gw


_sq_custom.defvjp(_sq_fwd, _sq_bwd)


def _sq_plain(u, w):
    return jnp.sum((u - w) ** 2) + 0.1 * jnp.sum(jnp.sin(u * w))


def test_gradients_of_a_custom_vjp_cost_need_reverse_mode_only(clouds):
    x, y = clouds
    plain = om.solve(x, y, epsilon=0.5, cost=_sq_plain, solver=SINKHORN, block_size=4)
    custom = om.solve(x, y, epsilon=0.5, cost=_sq_custom, solver=SINKHORN, block_size=4)
    # `om.grad` is also the gradient of `ot_cost` and `sinkhorn_divergence`.
    for got, want in zip(om.grad(custom), om.grad(plain)):  # raised: jvp of custom_vjp
        assert rel_err(got, want) < 1e-10


def test_sinkhorn_distance_gradient_of_a_custom_vjp_cost(clouds):
    x, y = clouds

    def grads(cost):  # `sharp_gradients`: another contraction with grad c
        return jax.grad(
            lambda x, y: om.sinkhorn_distance(x, y, epsilon=0.5, cost=cost, solver=SINKHORN,
                                              linear_solver=CG),
            argnums=(0, 1),
        )(x, y)

    for got, want in zip(grads(_sq_custom), grads(_sq_plain)):
        assert rel_err(got, want) < 1e-9


def test_hvp_of_a_custom_vjp_cost_says_why_it_fails(clouds):
    x, y = clouds
    custom = om.solve(x, y, epsilon=0.5, cost=_sq_custom, solver=SINKHORN)
    with pytest.raises(TypeError, match="(?s)forward-over-reverse.*custom_vjp"):
        om.hvp_x(custom, jnp.ones_like(x))


@pytest.mark.slow  # compiling ott-jax's matrix square root: ~10 s
def test_ott_bures_gradient_matches_finite_differences():
    from ott.geometry import costs

    d = 2
    rng = np.random.default_rng(1)

    def gaussians(k):
        means = rng.normal(size=(k, d))
        roots = rng.normal(size=(k, d, d)) * 0.4
        covs = roots @ np.swapaxes(roots, 1, 2) + 0.5 * np.eye(d)
        return jnp.asarray(np.concatenate([means, covs.reshape(k, d * d)], axis=1))

    x, y = gaussians(5), gaussians(4)
    v = jnp.asarray(rng.normal(size=x.shape))
    v = v.at[:, d:].set(0.05 * (v[:, d:] + v[:, d:][:, [0, 2, 1, 3]]))  # symmetric moves

    def solve(x):
        return om.solve(x, y, epsilon=0.5, cost=costs.Bures(dimension=d), solver=SINKHORN)

    with jax.numpy_dtype_promotion("standard"):  # ott-jax's matrix square root mixes dtypes
        gx = om.grad_x(solve(x))  # raised: forward mode through a custom_vjp
        h = 1e-5
        fd = (solve(x + h * v).reg_ot_cost - solve(x - h * v).reg_ot_cost) / (2 * h)
    assert abs(float(jnp.vdot(gx, v)) - float(fd)) < 1e-7 * abs(float(fd))
