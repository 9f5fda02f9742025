"""Forward solver: log-domain Sinkhorn on streaming log-sum-exp reductions.

Why not ott-jax's solver: ott-jax's online `PointCloud(batch_size=...)`
crashes on jax 0.10, and differentiating its Sinkhorn in reverse mode keeps
O(nm) residuals. Here the forward solve only needs row log-sum-exps, which
stream in O((n + m) d + block * m) memory; derivatives never go through the
iterations (they use the implicit-function rules of `_hvp.py`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._checks import check_block_size, check_problem, error_if, error_if_failed
from ._costs import AbstractCost, SqEuclidean, as_cost
from ._coupling import Coupling
from ._results import RESULTS
from ._sharding import RowSharding, auto_partitioned, row_sharding
from ._streaming import row_logsumexp


class Sinkhorn(eqx.Module):
    """Log-domain Sinkhorn iterations (ott-jax's potential convention).

    Each iteration updates `g` (making the column marginals exact) and then
    `f`; the row-marginal error of the coupling `(f, g)` comes for free from
    the `f` update, so convergence is checked at every iteration.

    **Arguments:**

    - `tol`: stop when `|P 1 - a|_1 <= tol` (columns are exact up to rounding).
      Float32 cannot go much below `1e-6`.
    - `max_iters`: iteration cap; reaching it is a failure
      (`RESULTS.sinkhorn_max_iters_reached`: raised with `throw=True`).
    - `progress`: optional callable `progress(iteration, marginal_error)`
      called from inside the jitted loop every `progress_every` iterations
      (through `jax.debug.callback`), e.g. to drive a tqdm bar.
    - `progress_every`: how often `progress` is called.
    """

    tol: float = 1e-6
    max_iters: int = 10_000
    progress: Callable[[Array, Array], None] | None = eqx.field(static=True, default=None)
    progress_every: int = eqx.field(static=True, default=10)

    def __check_init__(self):
        if not self.tol > 0:
            raise ValueError(f"`tol` must be > 0, got {self.tol}.")
        if self.max_iters < 1:
            raise ValueError(f"`max_iters` must be >= 1, got {self.max_iters}.")


def report_progress(solver: Sinkhorn, iteration, error) -> None:
    """Call `solver.progress` from inside a jitted loop every `progress_every` iterations."""
    if solver.progress is not None:
        jax.lax.cond(
            iteration % solver.progress_every == 0,
            lambda: jax.debug.callback(solver.progress, iteration, error),
            lambda: None,
        )


def finish(coupling: Coupling, throw: bool) -> Coupling:
    """With `throw`, attach the status check to every array of `coupling`.

    Every output a caller may use (potentials, cost, gradients computed from
    them) then carries the check, so it also runs under `jit(grad(...))`,
    where JAX drops unused values.
    """
    if not throw:
        return coupling
    return error_if_failed(coupling, coupling.result)


def sinkhorn_status(err, solver: Sinkhorn) -> RESULTS:
    return RESULTS.where(err <= solver.tol, RESULTS.successful, RESULTS.sinkhorn_max_iters_reached)


@eqx.filter_jit
@auto_partitioned
def _solve(
    x, y, a, b, epsilon, cost, solver: Sinkhorn, f_init, block_size, sharding, throw
) -> Coupling:
    # The gauge (f + c, g - c) is free: centre the start so that potentials stay
    # of the size of the costs. A start like `full(n, 1e16)` otherwise makes
    # f - f_next round to 0, and the marginal error with it (false convergence).
    f_init = f_init - jnp.mean(f_init)
    g_init = jnp.zeros(y.shape[0], x.dtype)
    if sharding is not None:
        x, y, a, b, f_init, g_init = sharding.place((x, y, a, b, f_init, g_init), sharding.rows)
    geometry = Coupling(x, y, a, b, f_init, g_init, epsilon, cost, block_size=block_size,
                        sharding=sharding)
    geometry_t = geometry.transpose()
    log_a, log_b = jnp.log(a), jnp.log(b)

    def potential(geom, log_w, other):
        """`eps log w_i - eps LSE_j (other_j - C_ij) / eps`."""
        return epsilon * (log_w - row_logsumexp(geom, other))

    def cond(state):
        it, _, _, _, err = state
        return (it < solver.max_iters) & ~(err <= solver.tol)

    def body(state):
        it, f, _, _, _ = state
        g = potential(geometry_t, log_b, f)
        f_next = potential(geometry, log_a, g)
        # Row sums of the coupling (f, g): a_i exp((f_i - f_next_i) / eps).
        err = jnp.sum(jnp.abs(a * jnp.expm1((f - f_next) / epsilon)))
        report_progress(solver, it + 1, err)
        return it + 1, f_next, g, f, err

    inf = jnp.asarray(jnp.inf, x.dtype)
    init = (jnp.asarray(0), f_init, geometry.g, f_init, inf)
    it, f_next, g, f, err = jax.lax.while_loop(cond, body, init)
    if sharding is not None:
        f_next, g, f = sharding.place((f_next, g, f), sharding.rows)
    total_mass = jnp.sum(a * jnp.exp((f - f_next) / epsilon))
    reg_ot_cost = (
        jnp.sum(a * (f - epsilon * log_a))
        + jnp.sum(b * (g - epsilon * log_b))
        + epsilon * (1 - total_mass)
    )
    coupling = Coupling(
        x, y, a, b, f, g, epsilon, cost, num_iters=it, marginal_error=err,
        reg_ot_cost=reg_ot_cost, result=sinkhorn_status(err, solver), block_size=block_size,
        sharding=sharding,
    )
    return finish(coupling, throw)


def solve(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    cost: AbstractCost | Callable = SqEuclidean(),
    solver: Sinkhorn = Sinkhorn(),
    block_size: int | None = None,
    init: Float[Array, " n"] | None = None,
    throw: bool = True,
) -> Coupling:
    """Solve balanced entropic OT between two weighted point clouds.

    `min_{P in U(a, b)} <P, C> + epsilon KL(P | a b^T)`, with potentials in
    ott-jax's convention, so `Coupling.reg_ot_cost` equals ott-jax's
    `reg_ot_cost`. Memory is O((n + m) d + block_size * m).

    **Arguments:**

    - `x`, `y`: source (n, d) and target (m, d) points.
    - `a`, `b`: positive weights summing to one; uniform if `None`.
    - `epsilon`: absolute entropic regularisation (> 0).
    - `cost`: an `AbstractCost`, or any callable `c(x_i, y_j) -> scalar`
      (e.g. an ott-jax `CostFn`).
    - `solver`: a `Sinkhorn` instance (tolerance, iteration cap, progress).
    - `block_size`: rows per streaming block; `None` picks it from a memory
      budget (`ot_matfree._coupling.DEFAULT_BLOCK_BYTES`).
    - `init`: initial `f` potential (warm start), shape (n,); only its
      differences matter (it is centred, which removes the free gauge
      constant), and it must be finite.
    - `throw`: raise (`equinox.EquinoxRuntimeError`, also under `jit`) when
      Sinkhorn stops at `max_iters`. With `throw=False` the coupling is
      returned with `converged=False` and
      `result = RESULTS.sinkhorn_max_iters_reached`.

    Sharded inputs: when `x` or `y` has its rows split over a mesh axis
    (`jax.device_put(x, NamedSharding(mesh, P("points")))`), every device
    streams its own rows and the coupling records the placement
    (`Coupling.sharding`), so its derivatives run sharded too
    (docs/sharding.md).

    **Returns:** a `Coupling` with potentials and diagnostics
    (`num_iters`, `converged`, `result`, `marginal_error`, `reg_ot_cost`).
    """
    return solve_placed(
        row_sharding(x=x, y=y), x, y, a, b, epsilon=epsilon, cost=cost, solver=solver,
        block_size=block_size, init=init, throw=throw,
    )


def solve_placed(
    sharding: RowSharding | None, x, y, a, b, *, epsilon, cost, solver, block_size, init, throw
) -> Coupling:
    """`solve` with the clouds' placement given: the losses read it before their
    `jit`, where an `Auto`-axis placement is still visible (`_sharding.py`)."""
    x, y, a, b, epsilon = check_problem(x, y, a, b, epsilon)
    n = x.shape[0]
    if not isinstance(solver, Sinkhorn):
        raise TypeError(f"`solver` must be an ot_matfree.Sinkhorn, got {type(solver).__name__}.")
    f_init = jnp.zeros((n,), x.dtype) if init is None else jnp.asarray(init, x.dtype)
    if f_init.shape != (n,):
        raise ValueError(f"`init` must have shape ({n},), got {f_init.shape}.")
    f_init = error_if(f_init, ~jnp.all(jnp.isfinite(f_init)), "`init` contains NaN or inf.")
    block_size = check_block_size(block_size)
    return _solve(
        x, y, a, b, epsilon, as_cost(cost), solver, f_init, block_size, sharding, bool(throw)
    )
