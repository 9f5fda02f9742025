import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import ot_matfree as om

from ..helpers import problem


@pytest.fixture
def data():
    return problem(0, 6, 5, 2)


def test_shape_errors(data):
    x, y, a, b = data
    with pytest.raises(ValueError, match="`x` must have shape"):
        om.solve(x[0], y, epsilon=0.1)
    with pytest.raises(ValueError, match="same dimension"):
        om.solve(x, y[:, :1], epsilon=0.1)
    with pytest.raises(ValueError, match="`a` must have shape"):
        om.solve(x, y, a[:3], b, epsilon=0.1)
    with pytest.raises(ValueError, match="`epsilon` must be a scalar"):
        om.solve(x, y, epsilon=jnp.ones(2))
    with pytest.raises(TypeError, match="floating-point"):
        om.solve(jnp.ones((3, 2), jnp.int32), y, epsilon=0.1)
    with pytest.raises(TypeError, match="same dtype"):
        om.solve(x.astype(jnp.float32), y, epsilon=0.1)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y, a, b: (x.at[0, 0].set(jnp.nan), y, a, b), "`x` contains NaN"),
        (lambda x, y, a, b: (x, y.at[1, 1].set(jnp.inf), a, b), "`y` contains NaN"),
        (lambda x, y, a, b: (x, y, a.at[0].set(-a[0]), b), "`a` must be non-negative"),
        (lambda x, y, a, b: (x, y, a, 2 * b), "`b` must sum to 1"),
    ],
)
def test_value_errors(data, change, message):
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        om.solve(*change(*data), epsilon=0.1)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, jnp.nan])
def test_epsilon_errors(data, epsilon):
    with pytest.raises(eqx.EquinoxRuntimeError, match="epsilon"):
        om.solve(*data, epsilon=epsilon)


def test_tangent_errors(data):
    coupling = om.solve(*data, epsilon=0.5)
    with pytest.raises(ValueError, match="`dx` must have shape"):
        om.hvp(coupling, dx=jnp.ones((5, 2)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`v|dx` contains NaN"):
        om.hvp_x(coupling, jnp.full((6, 2), jnp.nan))


def test_option_errors():
    with pytest.raises(ValueError, match="tol"):
        om.Sinkhorn(tol=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        om.CG(max_steps=0)
    with pytest.raises(ValueError, match="block_size"):
        om.solve(jnp.ones((3, 2)), jnp.ones((3, 2)), epsilon=1.0, block_size=0)
    with pytest.raises(TypeError, match="cost"):
        om.solve(jnp.ones((3, 2)), jnp.ones((3, 2)), epsilon=1.0, cost="euclidean")


@pytest.mark.parametrize("bad", [2.5, 3.0, True, jnp.asarray(3)])
def test_block_size_type_errors(data, bad):
    with pytest.raises(TypeError, match="block_size"):
        om.solve(*data, epsilon=0.5, block_size=bad)
    with pytest.raises(TypeError, match="block_size"):
        om.ot_cost(*data, epsilon=0.5, block_size=bad)


def test_block_size_accepts_numpy_integers(data):
    import numpy as np

    ref = om.solve(*data, epsilon=0.5, block_size=3)
    out = om.solve(*data, epsilon=0.5, block_size=np.int64(3))
    assert out.block_size == 3 and isinstance(out.block_size, int)
    assert jnp.array_equal(out.f, ref.f)


def test_from_ott_rejects_other_objects(data):
    coupling = om.solve(*data, epsilon=0.5)
    with pytest.raises(TypeError, match="SinkhornOutput"):
        om.from_ott(coupling)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_points_are_rejected(dtype):
    with pytest.raises(TypeError, match="float32"):
        om.solve(jnp.ones((3, 2), dtype), jnp.ones((4, 2), dtype), epsilon=0.5)


def test_complex_epsilon_is_rejected(data):
    with pytest.raises(TypeError, match="`epsilon` must be real"):
        om.solve(*data, epsilon=0.5 + 0.1j)
    with pytest.raises(TypeError, match="`epsilon` must be real"):
        jax.jit(lambda e: om.ot_cost(*data, epsilon=e))(jnp.asarray(0.5 + 0.1j))
