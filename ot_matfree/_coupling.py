"""The solved entropic coupling, and conversion from ott-jax."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._costs import AbstractCost, as_cost
from ._streaming import Kernel, marginals


class Coupling(eqx.Module):
    """An entropic OT coupling `P_ij = exp((f_i + g_j - c(x_i, y_j)) / epsilon)`.

    Potentials follow ott-jax's convention (log-weights absorbed in `f`, `g`).
    `P` itself is never stored.

    **Fields:**

    - `x`, `y`, `a`, `b`: points and weights.
    - `f`, `g`: dual potentials.
    - `epsilon`, `cost`: the regularisation and the ground cost.
    - `num_iters`: Sinkhorn iterations used.
    - `converged`: whether the marginal error reached the solver's tolerance.
    - `marginal_error`: `|P 1 - a|_1 + |P^T 1 - b|_1` of this coupling.
    - `reg_ot_cost`: the regularised OT cost (ott-jax's `reg_ot_cost`).
    - `block_size`: rows per streaming block (`None`: chosen from a memory budget).
    """

    x: Float[Array, "n d"]
    y: Float[Array, "m d"]
    a: Float[Array, " n"]
    b: Float[Array, " m"]
    f: Float[Array, " n"]
    g: Float[Array, " m"]
    epsilon: Float[Array, ""]
    cost: AbstractCost
    num_iters: Int[Array, ""]
    converged: Bool[Array, ""]
    marginal_error: Float[Array, ""]
    reg_ot_cost: Float[Array, ""]
    block_size: int | None = eqx.field(static=True, default=None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.y.shape[0]

    @property
    def kernel(self) -> Kernel:
        return Kernel(self.x, self.y, self.f, self.g, self.epsilon, self.cost, self.block_size)


def from_ott(output, *, block_size: int | None = None) -> Coupling:
    """Build a `Coupling` from an ott-jax `SinkhornOutput` on a `PointCloud`.

    The potentials, points, weights, epsilon and cost function are taken over;
    the marginal error is recomputed with one streaming pass.

    **Arguments:**

    - `output`: `ott.solvers.linear.sinkhorn.SinkhornOutput` of a balanced
      problem on an `ott.geometry.pointcloud.PointCloud` with `scale_cost=1`.
    - `block_size`: rows per streaming block for later operations.
    """
    geom = output.geom
    if not (hasattr(geom, "x") and hasattr(geom, "y") and hasattr(geom, "cost_fn")):
        raise TypeError(f"`from_ott` needs an output on a PointCloud, got {type(geom).__name__}.")
    if geom._scale_cost not in (1, 1.0):
        raise ValueError(
            f"`from_ott` needs a PointCloud with scale_cost=1.0, got {geom._scale_cost!r}; "
            "rescale the points or epsilon instead."
        )
    prob = output.ot_prob
    if not prob.is_balanced:
        raise ValueError("`from_ott` supports balanced problems only (tau_a = tau_b = 1).")
    x, y = jnp.asarray(geom.x), jnp.asarray(geom.y)
    a, b = jnp.asarray(prob.a), jnp.asarray(prob.b)
    epsilon = jnp.asarray(geom.epsilon, x.dtype)
    cost = as_cost(geom.cost_fn)
    kernel = Kernel(x, y, output.f, output.g, epsilon, cost, block_size)
    a_hat, b_hat = marginals(kernel)
    error = jnp.sum(jnp.abs(a_hat - a)) + jnp.sum(jnp.abs(b_hat - b))
    return Coupling(
        x=x, y=y, a=a, b=b, f=output.f, g=output.g, epsilon=epsilon, cost=cost,
        num_iters=jnp.asarray(output.n_iters), converged=jnp.asarray(output.converged),
        marginal_error=error, reg_ot_cost=jnp.asarray(output.reg_ot_cost),
        block_size=block_size,
    )
