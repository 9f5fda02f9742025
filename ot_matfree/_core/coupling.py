"""The entropic coupling in factored form: points, weights, potentials, cost.

`P_ij = exp((f_i + g_j - c(x_i, y_j)) / epsilon)` is never stored: the
streaming reductions (`ot_matfree/_stream/`) evaluate it block by block from this
object. The same type is the output of the forward solvers, which fill in
their diagnostics.
"""

from typing import Literal, TypeAlias

import equinox as eqx
import jax
from jaxtyping import Array, Bool, Float, Int

from .costs import AbstractCost
from .relaxation import is_balanced
from .results import RESULTS
from .sharding import RowSharding
from .weights import support

#: What every `block_size=` argument accepts: rows per streaming block, `"auto"`
#: (measured once per reduction and shape, `ot_matfree._stream.engine.autotune`)
#: or `None` (from a memory budget per reduction, `Coupling.block`).
BlockSize: TypeAlias = int | Literal["auto"] | None

#: Working memory a single block may use, in bytes, when no block size is given,
#: on backends other than the CPU (GPU, TPU): large blocks keep the device
#: busy; unmeasured (no GPU was available when the CPU budgets were set).
DEFAULT_BLOCK_BYTES = 64 * 2**20

#: CPU budgets per reduction kind, in bytes per block, from
#: `benchmarks/block_sizes.py` (time per element of each pass against rows per
#: block at n = m = 10,000, 2-core CPU under load; results/block_sizes_cpu.md).
#: Blocks far larger than the caches spend their time moving `exp` results
#: through memory: from 32 to 4,096 rows every pass got 3x to 11x slower. The
#: optimum was one block of about 5 MB: 32 rows in float64 (log-sum-exp,
#: `P @ v`, the one-pass Schur product) and 64 rows in float32 (`P @ v`,
#: Schur); the log-sum-exp pass then ran at the speed of the bare exps. The
#: per-pair reductions keep 4 or more arrays per block and get 10 MiB (32 rows
#: of float64 at m = 10,000 for the squared Euclidean cost). On an idle
#: machine the matrix-product passes may prefer somewhat larger blocks (two
#: cores to share a block); `block_size="auto"` measures that.
CPU_BLOCK_BYTES = {
    "logsumexp": 5 * 2**20,
    "apply": 5 * 2**20,
    "schur": 5 * 2**20,
    "pairs": 10 * 2**20,
}

#: Bytes per block chosen by `block_size="auto"`, filled by
#: `ot_matfree._stream.engine.autotune` and keyed by `tune_key`.
TUNED_BYTES: dict[tuple, int] = {}


def tune_key(kind: str, n: int, m: int, d: int, dtype, cost, backend: str) -> tuple:
    """The key of `TUNED_BYTES`: one choice per reduction, shape, dtype, cost type
    and backend."""
    return (kind, n, m, d, str(dtype), type(cost).__name__, backend)


def block_rows(
    n: int, m: int, width: int, itemsize: int, block_size: BlockSize,
    kind: str = "pairs", tuned_bytes: int | None = None,
) -> int:
    """Rows per block: `block_size` if it is an integer, else as many as fit
    the budget.

    `width` is the number of `block x m` arrays a reduction keeps alive and
    `kind` picks the budget: `CPU_BLOCK_BYTES[kind]` on the CPU,
    `DEFAULT_BLOCK_BYTES` elsewhere, or `tuned_bytes` (measured by
    `autotune` for `block_size="auto"`) when given.
    """
    if isinstance(block_size, int):
        return min(block_size, n)
    if tuned_bytes is not None:
        budget = tuned_bytes
    elif jax.default_backend() == "cpu":
        budget = CPU_BLOCK_BYTES.get(kind, DEFAULT_BLOCK_BYTES)
    else:
        budget = DEFAULT_BLOCK_BYTES
    rows = budget // max(1, m * width * itemsize)
    return int(min(n, max(1, rows)))


class Coupling(eqx.Module):
    """An entropic OT coupling `P_ij = exp((f_i + g_j - c(x_i, y_j)) / epsilon)`.

    Potentials follow ott-jax's convention (log-weights absorbed in `f`, `g`).
    `P` itself is never stored.

    **Fields:**

    - `x`, `y`, `a`, `b`: points (n, d), (m, d) and weights (n,), (m,). For
      a cost matrix (`MatrixCost`, `ot_matfree.matrix`), `x` is the matrix
      `C` (n, m) and `y` its column indices (m, 1).
    - `f`, `g`: dual potentials.
    - `epsilon`, `cost`: the regularisation and the ground cost.
    - `num_iters`: Sinkhorn iterations used (a Newton step counts as half its
      streaming passes, rounded up), or L-BFGS steps (`solver=LBFGS()`).
    - `marginal_error`: `|P 1 - a|_1 + |P^T 1 - b|_1` of this coupling (`solve`
      ends on a `g` update, so its column term is zero up to rounding).
    - `reg_ot_cost`: the regularised OT cost (ott-jax's `reg_ot_cost`).
    - `result`: an `ot_matfree.RESULTS` status (`successful`,
      `sinkhorn_max_iters_reached`, `sinkhorn_nonfinite`).
    - `num_passes`: streaming passes over the coupling the solve took (two
      per Sinkhorn iteration; a Newton step's CG steps and line search
      included): the load-independent measure of its cost. `None` where
      not counted (`from_ott`, the symmetric self-term solve).
    - `block_size`: rows per streaming block (`None`: chosen per reduction
      from a memory budget; `"auto"`: measured once per reduction and shape,
      see `ot_matfree._stream.engine.autotune`).
    - `sharding`: how the rows of `x` and `y` are split over devices (a
      `RowSharding`, read by `solve` and `from_ott` from the inputs'
      placement; `None`: one device). Every streaming pass follows it.
    - `tau_a`, `tau_b`: marginal relaxations in (0, 1] (ott-jax's
      convention, `tau = rho / (rho + epsilon)`; 1: the marginal is a hard
      constraint, the balanced problem). Below 1 the marginal is penalised
      by `rho KL(P 1 | a)` (docs/unbalanced.md); Python floats, static.

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
    num_passes: Int[Array, ""] | None = None
    block_size: BlockSize = eqx.field(static=True, default=None)
    sharding: RowSharding | None = eqx.field(static=True, default=None)
    tau_a: float = eqx.field(static=True, default=1.0)
    tau_b: float = eqx.field(static=True, default=1.0)

    def __post_init__(self):
        # A NumPy integer (`np.int64(16)`) becomes a Python `int`: a static
        # field must not be an array, and `block_rows` reads Python ints.
        from .checks import check_block_size  # checks imports this module

        self.block_size = check_block_size(self.block_size)

    @property
    def converged(self) -> Bool[Array, ""]:
        """Whether the marginal error reached the solver's tolerance."""
        if self.result is None:
            raise ValueError("This coupling was not produced by a solver; it has no status.")
        return self.result == RESULTS.successful

    @property
    def balanced(self) -> bool:
        """Both marginals are hard constraints (`tau_a = tau_b = 1`)."""
        return is_balanced(self.tau_a, self.tau_b)

    @property
    def support(self) -> tuple[Bool[Array, " n"], Bool[Array, " m"]]:
        """The points with mass on each side (`a > ZERO`, `b > ZERO`;
        `_core/weights.py`): a zero weight is stored as `zero_weight`."""
        return support(self.a), support(self.b)

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.y.shape[0]

    def transpose(self) -> "Coupling":
        """The coupling `P^T` (source and target swapped; diagnostics dropped)."""
        return Coupling(
            self.y, self.x, self.b, self.a, self.g, self.f, self.epsilon, self.cost.transpose(),
            block_size=self.block_size, sharding=self.sharding, tau_a=self.tau_b,
            tau_b=self.tau_a,
        )

    def block(self, width: int, kind: str = "pairs") -> int:
        """Rows per block for a reduction of `kind` keeping `width` arrays of
        `block x m` alive (`block_rows`).

        Sharded over `D` devices, a block is `block x (m / D)` (one chunk of
        the columns) and each device has `n / D` rows.
        """
        n, m = self.shape
        if self.sharding is not None:
            n, m = n // self.sharding.size, m // self.sharding.size
        tuned = None
        if self.block_size == "auto" and self.sharding is None:
            key = self.tune_key(kind)
            # Reductions that were not timed themselves (per-pair ones) take the
            # bytes per block measured for `P @ v`.
            tuned = TUNED_BYTES.get(key, TUNED_BYTES.get(self.tune_key("apply")))
        return block_rows(n, m, width, self.x.dtype.itemsize, self.block_size, kind, tuned)

    def tune_key(self, kind: str) -> tuple:
        n, m = self.shape
        return tune_key(kind, n, m, self.x.shape[1], self.x.dtype, self.cost,
                        jax.default_backend())


def upstream_status(coupling: Coupling) -> RESULTS:
    """`coupling_not_converged` when the coupling's own solve failed, else `successful`.

    For computations that take a coupling as input (HVPs, spectra): their
    result is only the OT problem's if the coupling is.
    """
    if coupling.result is None:
        return RESULTS.successful
    return RESULTS.where(coupling.converged, RESULTS.successful, RESULTS.coupling_not_converged)
