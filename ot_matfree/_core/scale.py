"""Relative epsilon: the scale of a cost, and the problem divided by it.

ott-jax's default regularisation is relative, `epsilon = 0.05 x mean cost`
(`relative_epsilon="mean"`): the unweighted mean of `c(x_i, y_j)` over all
pairs. The scale depends on the points, so it must be differentiated. This
module does it by homogeneity rather than by an epsilon derivative. Every
term of the entropic problem is linear in `(C, epsilon, rho)` jointly (`tau`
fixed), so

    OT_{s m}(C) = m OT_s(C / m),     m = mean(C),

and `C / m` is the cost of the points divided by `sqrt(m)` for the squared
Euclidean cost, and the matrix divided by `m` for a cost matrix. The losses
evaluate the right-hand side with the absolute `epsilon = s`. JAX then
differentiates `m` and the division, and the loss's own rules do the rest:
gradients, HVPs and Hessians include the dependence of the scale on the
points.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float

from .checks import error_if
from .costs import AbstractCost, SqEuclidean, is_matrix

#: The values `relative_epsilon=` accepts.
RELATIVE = ("mean",)


def check_relative(relative_epsilon, cost: AbstractCost) -> bool:
    """Whether `epsilon` is relative; `ValueError` for an unknown spelling or
    a cost whose scale cannot be divided out."""
    if relative_epsilon is None:
        return False
    if relative_epsilon not in RELATIVE:
        raise ValueError(
            f"`relative_epsilon` must be None or 'mean' (epsilon times the mean cost, "
            f"ott-jax's convention), got {relative_epsilon!r}."
        )
    if not (isinstance(cost, SqEuclidean) or is_matrix(cost)):
        raise ValueError(
            "`relative_epsilon='mean'` needs the squared Euclidean cost or a cost matrix, "
            f"whose scale divides out of the problem; got {cost!r}. Pass an absolute "
            "epsilon instead (e.g. 0.05 times the mean of your costs)."
        )
    return True


def mean_cost(x, y, cost: AbstractCost) -> Float[Array, ""]:
    """The unweighted mean of `c(x_i, y_j)` over all pairs, differentiable.

    Squared Euclidean: `mean |x - x_bar|^2 + mean |y - y_bar|^2 + |x_bar - y_bar|^2`
    (exact, no `n x m` array, no cancellation for clouds far from the
    origin). A cost matrix (`x` is `C`): its mean.
    """
    if is_matrix(cost):
        return jnp.mean(x)
    x_bar, y_bar = jnp.mean(x, axis=0), jnp.mean(y, axis=0)
    spread_x = jnp.mean(jnp.sum((x - x_bar) ** 2, axis=1))
    spread_y = jnp.mean(jnp.sum((y - y_bar) ** 2, axis=1))
    return spread_x + spread_y + jnp.sum((x_bar - y_bar) ** 2)


def scale_problem(x, y, cost: AbstractCost):
    """`(x', y', m)`: the problem with its cost divided by its mean `m`
    (`mean_cost`), which is checked finite and > 0 at run time."""
    m = mean_cost(x, y, cost)
    m = error_if(
        m, ~(jnp.isfinite(m) & (m > 0)),
        "`relative_epsilon='mean'`: the mean cost is 0 or not finite (all points equal?), so "
        "epsilon relative to it is not defined; pass an absolute epsilon.",
    )
    if is_matrix(cost):
        return x / m, y, m
    root = jnp.sqrt(m)
    return x / root, y / root, m
