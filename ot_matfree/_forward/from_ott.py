"""A `Coupling` from an ott-jax Sinkhorn output (forward-solve layer)."""

import jax.numpy as jnp

from .._core.checks import check_block_size
from .._core.costs import as_cost
from .._core.coupling import BlockSize, Coupling
from .._core.results import RESULTS
from .._core.sharding import row_sharding
from .dual import marginal_error
from .sinkhorn import finish
from .._stream.engine import marginals


def from_ott(output, *, block_size: BlockSize = None, throw: bool = True) -> Coupling:
    """Build a `Coupling` from an ott-jax `SinkhornOutput` on a `PointCloud`.

    The potentials, points, weights, epsilon and cost function are taken over;
    the marginal error is recomputed with one streaming pass. Points sharded
    over a mesh axis give a sharded coupling, as for `solve`. ott-jax is not a
    dependency of ot_matfree: `from_ott` only reads the output's attributes
    and never imports it (`pip install ott-jax`, or `"ot-matfree[examples]"`).

    **Arguments:**

    - `output`: `ott.solvers.linear.sinkhorn.SinkhornOutput` of a balanced
      problem on an `ott.geometry.pointcloud.PointCloud` with `scale_cost=1`.
    - `block_size`: rows per streaming block for later operations.
    - `throw`: raise if ott-jax reports that its solve did not converge.

    **Returns:** a `Coupling` whose `result` is `successful` when ott-jax
    converged and `sinkhorn_max_iters_reached` otherwise.
    """
    geom = getattr(output, "geom", None)
    if geom is None or not hasattr(output, "ot_prob") or not hasattr(output, "f"):
        raise TypeError(
            "`from_ott` takes an ott-jax `SinkhornOutput` (the result of "
            f"`ott.solvers.linear.sinkhorn.Sinkhorn()(problem)`), got {type(output).__name__}."
        )
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
    f, g = jnp.asarray(output.f), jnp.asarray(output.g)
    sharding = row_sharding(x=x, y=y)
    if sharding is not None:
        x, y, a, b, f, g = sharding.place((x, y, a, b, f, g), sharding.rows)
    epsilon = jnp.asarray(geom.epsilon, x.dtype)
    block_size = check_block_size(block_size)
    coupling = Coupling(x, y, a, b, f, g, epsilon, as_cost(geom.cost_fn),
                        block_size=block_size, sharding=sharding)
    a_hat, b_hat = marginals(coupling)
    converged = jnp.asarray(output.converged)
    coupling = Coupling(
        x, y, a, b, f, g, epsilon, coupling.cost,
        num_iters=jnp.asarray(output.n_iters),
        marginal_error=marginal_error(a_hat, b_hat, a, b),
        reg_ot_cost=jnp.asarray(output.reg_ot_cost),
        result=RESULTS.where(converged, RESULTS.successful, RESULTS.sinkhorn_max_iters_reached),
        block_size=block_size, sharding=sharding,
    )
    return finish(coupling, bool(throw))
