"""A `Coupling` from an ott-jax Sinkhorn output (forward-solve layer)."""

import jax.numpy as jnp

from .._core.checks import check_block_size, check_cost_matrix
from .._core.costs import MatrixCost, as_cost, column_ids
from .._core.coupling import BlockSize, Coupling
from .._core.results import RESULTS
from .._core.sharding import row_sharding
from .._core.weights import store_zeros, zero_weight
from .dual import DualProblem, marginal_error
from .sinkhorn import finish
from .._stream.engine import marginals


def from_ott(output, *, block_size: BlockSize = None, throw: bool = True) -> Coupling:
    """Build a `Coupling` from an ott-jax `SinkhornOutput` on a `PointCloud`
    or on a `Geometry` with a cost matrix.

    The potentials, points (or the cost matrix), weights, epsilon and cost
    function are taken over; the marginal error is recomputed with one
    streaming pass. A `Geometry` gives a cost-matrix coupling, as
    `ot_matfree.matrix.solve` does (`x` is the cost matrix). Points sharded
    over a mesh axis give a sharded coupling, as for `solve`. ott-jax is not a
    dependency of ot_matfree: `from_ott` only reads the output's attributes
    and never imports it (`pip install ott-jax`, or `"ot-matfree[examples]"`).

    **Arguments:**

    - `output`: `ott.solvers.linear.sinkhorn.SinkhornOutput` of a balanced
      problem on an `ott.geometry.pointcloud.PointCloud` or an
      `ott.geometry.geometry.Geometry(cost_matrix=...)`, with `scale_cost=1`.
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
    cloud = hasattr(geom, "x") and hasattr(geom, "y") and hasattr(geom, "cost_fn")
    if not cloud and type(geom).__name__ != "Geometry":
        raise TypeError(
            "`from_ott` needs an output on a PointCloud or on a Geometry with a cost matrix, "
            f"got {type(geom).__name__}."
        )
    if geom._scale_cost not in (1, 1.0):
        raise ValueError(
            f"`from_ott` needs a geometry with scale_cost=1.0, got {geom._scale_cost!r}; "
            "rescale the costs or epsilon instead."
        )
    prob = output.ot_prob
    if not prob.is_balanced:
        raise ValueError(
            "`from_ott` supports balanced problems only (tau_a = tau_b = 1): ott-jax 0.6's "
            "unbalanced potentials are those of the problem with weights (a**tau_a, "
            "b**tau_b), not (a, b) (docs/unbalanced.md). Solve it here instead: "
            "`ot_matfree.solve(x, y, a, b, epsilon=..., tau_a=..., tau_b=...)`."
        )
    if cloud:
        x, y, cost = jnp.asarray(geom.x), jnp.asarray(geom.y), as_cost(geom.cost_fn)
    else:
        x = check_cost_matrix("cost_matrix", geom.cost_matrix)
        y, cost = column_ids(x.shape[1], x.dtype), MatrixCost()
    a, b = jnp.asarray(prob.a), jnp.asarray(prob.b)
    f, g = jnp.asarray(output.f), jnp.asarray(output.g)
    sharding = row_sharding(x=x, y=y)
    if sharding is not None:
        x, y, a, b, f, g = sharding.place((x, y, a, b, f, g), sharding.rows)
    epsilon = jnp.asarray(geom.epsilon, x.dtype)
    block_size = check_block_size(block_size)
    # Zero weights: ott-jax's potentials are -inf there. Stored as `zero_weight`
    # with their c-transforms (`DualProblem.zero_mass_potentials`), as `solve` does.
    a, b = store_zeros(a), store_zeros(b)
    # (A placeholder far below the others first, so that neither c-transform
    # counts the other side's zero-weight points.)
    low = 2 * epsilon * jnp.log(zero_weight(f.dtype))
    f, g = jnp.where(jnp.isfinite(f), f, low), jnp.where(jnp.isfinite(g), g, low)
    problem = DualProblem.create(x, y, a, b, epsilon, cost, block_size, sharding)
    f, g = problem.zero_mass_potentials(f, g)
    coupling = Coupling(x, y, a, b, f, g, epsilon, cost, block_size=block_size,
                        sharding=sharding)
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
