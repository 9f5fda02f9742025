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
