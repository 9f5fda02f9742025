"""Small pytree arithmetic shared by the optimisers (parameters are any pytree of arrays)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree, Scalar


def tree_dot(u: PyTree[Array], v: PyTree[Array]) -> Scalar:
    """`sum_k <u_k, v_k>` over the leaves."""
    terms = [jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v))]
    return sum(terms[1:], terms[0])


def tree_axpy(alpha, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    """`alpha x + y` leafwise."""
    return jax.tree.map(lambda a, b: alpha * a + b, x, y)


def tree_scale(alpha, x: PyTree[Array]) -> PyTree[Array]:
    return jax.tree.map(lambda a: alpha * a, x)


def tree_where(pred, x: PyTree[Array], y: PyTree[Array]) -> PyTree[Array]:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), x, y)


def check_one_dtype(y: PyTree[Array], who: str) -> None:
    """A `TypeError` naming the dtypes when the leaves of `y` mix floating dtypes.

    The optimisers combine the leaves (inner products, one flat Lanczos
    vector), and optimistix's closure conversion needs the iterate to keep
    its dtypes, so a pytree of, say, float32 and float64 arrays fails deep
    inside them; this says so up front.
    """
    leaves = jax.tree_util.tree_leaves_with_path(y)
    dtypes = {}
    for path, leaf in leaves:
        dtypes.setdefault(jnp.result_type(leaf), []).append(
            f"y{jax.tree_util.keystr(path)}: {jnp.result_type(leaf)}{list(jnp.shape(leaf))}"
        )
    if len(dtypes) > 1:
        listed = ", ".join(entry for entries in dtypes.values() for entry in entries)
        names = " and ".join(str(d) for d in dtypes)
        raise TypeError(
            f"{who} needs parameters of one dtype, got {names} ({listed}). Cast them "
            "to one, e.g. `jax.tree.map(lambda p: p.astype(jnp.float64), params)`."
        )
