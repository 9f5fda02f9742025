"""Symmetric Sinkhorn for the self-transport terms `OT(x, x)` of a divergence.

Why: alternating Sinkhorn on `OT(x, x, a, a)` converges very slowly when
epsilon is small against the point spacing (on the 17-point problem of the
divergence example it is still at a marginal error of 1e-7 after 100,000
iterations). The symmetric update of Feydy et al. (2019, eq. 25),
`f <- (f + T(f)) / 2` with `T(f) = eps log a - eps LSE_j (f_j - C_ij) / eps`,
keeps `f = g` and converges in tens of iterations. Same layer as
`_sinkhorn.py`; memory O(n d + block * n).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core.checks import check_block_size, check_epsilon, check_points, check_weights
from .._core.costs import AbstractCost, SqEuclidean
from .._core.coupling import Coupling
from .._core.sharding import RowSharding, auto_partitioned
from .sinkhorn import Sinkhorn, finish, report_progress, sinkhorn_status, solve_placed
from .._stream.engine import row_logsumexp


def is_symmetric(cost: AbstractCost) -> bool:
    """Whether `cost` is known to satisfy `c(x, x') = c(x', x)`."""
    return isinstance(cost, SqEuclidean)


@eqx.filter_jit
@auto_partitioned
def _solve_symmetric(
    x, a, epsilon, cost, solver: Sinkhorn, block_size, sharding, throw
) -> Coupling:
    n = x.shape[0]
    f0 = jnp.zeros((n,), x.dtype)
    if sharding is not None:
        x, a, f0 = sharding.place((x, a, f0), sharding.rows)
    log_a = jnp.log(a)

    def transform(f):
        geometry = Coupling(
            x, x, a, a, f, f, epsilon, cost, block_size=block_size, sharding=sharding
        )
        return epsilon * (log_a - row_logsumexp(geometry, f))

    def error(f, tf):
        # Row sums of the coupling (f, f) are a_i exp((f_i - T(f)_i) / eps);
        # column sums are the same by symmetry.
        return 2 * jnp.sum(jnp.abs(a * jnp.expm1((f - tf) / epsilon)))

    def cond(state):
        it, _, _, err = state
        return (it < solver.max_iters) & ~(err <= solver.tol)

    def body(state):
        it, f, tf, _ = state
        f = 0.5 * (f + tf)
        tf = transform(f)
        err = error(f, tf)
        report_progress(solver, it + 1, err)
        return it + 1, f, tf, err

    tf0 = transform(f0)
    it, f, tf, err = jax.lax.while_loop(cond, body, (jnp.asarray(0), f0, tf0, error(f0, tf0)))
    if sharding is not None:
        f, tf = sharding.place((f, tf), sharding.rows)
    total_mass = jnp.sum(a * jnp.exp((f - tf) / epsilon))
    reg_ot_cost = 2 * jnp.sum(a * (f - epsilon * log_a)) + epsilon * (1 - total_mass)
    coupling = Coupling(
        x, x, a, a, f, f, epsilon, cost, num_iters=it, marginal_error=err,
        reg_ot_cost=reg_ot_cost, result=sinkhorn_status(err, solver), block_size=block_size,
        sharding=sharding,
    )
    return finish(coupling, throw)


def solve_symmetric(
    x, a=None, *, epsilon, cost: AbstractCost = SqEuclidean(), solver: Sinkhorn = Sinkhorn(),
    block_size: int | None = None, sharding: RowSharding | None = None, throw: bool = True,
) -> Coupling:
    """`OT_eps(x, x, a, a)` with symmetric potentials `f = g`.

    Falls back to `solve(x, x, a, a, ...)` for costs not known to be symmetric.
    `reg_ot_cost` follows ott-jax's formula (`<f, a> + <g, b>` plus the
    mass correction of an unconverged coupling); `throw` as for `solve`;
    `sharding` is the placement of `x` (`_sharding.row_sharding`).
    Only `solver.tol`, `max_iters` and the progress options are used: the
    averaged update needs no momentum, Anderson or annealing.
    """
    if not is_symmetric(cost):
        return solve_placed(
            sharding, x, x, a, a, epsilon=epsilon, cost=cost, solver=solver,
            block_size=block_size, init=None, throw=throw,
        )
    x = check_points("x", x)
    a = check_weights("a", a, x.shape[0], x.dtype)
    epsilon = check_epsilon(epsilon, x.dtype)
    return _solve_symmetric(
        x, a, epsilon, cost, solver, check_block_size(block_size), sharding, bool(throw)
    )
