"""The entropic coupling in factored form: points, weights, potentials, cost.

`P_ij = exp((f_i + g_j - c(x_i, y_j)) / epsilon)` is never stored: the
streaming reductions (`_streaming.py`) evaluate it block by block from this
object. The same type is the output of the forward solvers, which fill in
their diagnostics.
"""

import equinox as eqx
from jaxtyping import Array, Bool, Float, Int

from ._costs import AbstractCost
from ._results import RESULTS
from ._sharding import RowSharding

#: Working memory a single block may use, in bytes, when no block size is given.
DEFAULT_BLOCK_BYTES = 64 * 2**20


def block_rows(n: int, m: int, width: int, itemsize: int, block_size: int | None) -> int:
    """Rows per block: `block_size` if given, else as many as fit the budget.

    `width` is the number of `block x m` arrays a reduction keeps alive.
    """
    if block_size is not None:
        return min(block_size, n)
    rows = DEFAULT_BLOCK_BYTES // max(1, m * width * itemsize)
    return int(min(n, max(1, rows)))


class Coupling(eqx.Module):
    """An entropic OT coupling `P_ij = exp((f_i + g_j - c(x_i, y_j)) / epsilon)`.

    Potentials follow ott-jax's convention (log-weights absorbed in `f`, `g`).
    `P` itself is never stored.

    **Fields:**

    - `x`, `y`, `a`, `b`: points (n, d), (m, d) and weights (n,), (m,).
    - `f`, `g`: dual potentials.
    - `epsilon`, `cost`: the regularisation and the ground cost.
    - `num_iters`: Sinkhorn iterations used.
    - `marginal_error`: `|P 1 - a|_1 + |P^T 1 - b|_1` of this coupling (`solve`
      ends on a `g` update, so its column term is zero up to rounding).
    - `reg_ot_cost`: the regularised OT cost (ott-jax's `reg_ot_cost`).
    - `result`: an `ot_matfree.RESULTS` status (`successful`, or
      `sinkhorn_max_iters_reached`).
    - `block_size`: rows per streaming block (`None`: chosen from a memory budget).
    - `sharding`: how the rows of `x` and `y` are split over devices (a
      `RowSharding`, read by `solve` and `from_ott` from the inputs'
      placement; `None`: one device). Every streaming pass follows it.

    The diagnostics (`num_iters`, `marginal_error`, `reg_ot_cost`, `result`)
    are `None` for a coupling built directly from potentials rather than by
    `solve` or `from_ott`.
    """

    x: Float[Array, "n d"]
    y: Float[Array, "m d"]
    a: Float[Array, " n"]
    b: Float[Array, " m"]
    f: Float[Array, " n"]
    g: Float[Array, " m"]
    epsilon: Float[Array, ""]
    cost: AbstractCost
    num_iters: Int[Array, ""] | None = None
    marginal_error: Float[Array, ""] | None = None
    reg_ot_cost: Float[Array, ""] | None = None
    result: RESULTS | None = None
    block_size: int | None = eqx.field(static=True, default=None)
    sharding: RowSharding | None = eqx.field(static=True, default=None)

    @property
    def converged(self) -> Bool[Array, ""]:
        """Whether the marginal error reached the solver's tolerance."""
        if self.result is None:
            raise ValueError("This coupling was not produced by a solver; it has no status.")
        return self.result == RESULTS.successful

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.y.shape[0]

    def transpose(self) -> "Coupling":
        """The coupling `P^T` (source and target swapped; diagnostics dropped)."""
        return Coupling(
            self.y, self.x, self.b, self.a, self.g, self.f, self.epsilon, self.cost.transpose(),
            block_size=self.block_size, sharding=self.sharding,
        )

    def block(self, width: int) -> int:
        """Rows per block for a reduction keeping `width` arrays of `block x m` alive.

        Sharded over `D` devices, a block is `block x (m / D)` (one chunk of
        the columns) and each device has `n / D` rows.
        """
        n, m = self.shape
        if self.sharding is not None:
            n, m = n // self.sharding.size, m // self.sharding.size
        return block_rows(n, m, width, self.x.dtype.itemsize, self.block_size)


def upstream_status(coupling: Coupling) -> RESULTS:
    """`coupling_not_converged` when the coupling's own solve failed, else `successful`.

    For computations that take a coupling as input (HVPs, spectra): their
    result is only the OT problem's if the coupling is.
    """
    if coupling.result is None:
        return RESULTS.successful
    return RESULTS.where(coupling.converged, RESULTS.successful, RESULTS.coupling_not_converged)
