"""What the spectral solvers (`SpectralCG`, `TruncatedSVD`) share: options,
checks, and the block Lanczos spectrum computed once in `init`."""

import equinox as eqx
import lineax as lx
from jaxtyping import PRNGKeyArray

from .operators import HOperator
from .._core.results import RESULTS
from .._core.sharding import auto_partitioned
from .base import AbstractHSolver, check_cg_options, check_h_operator
from .block_krylov import Spectrum, compute_spectrum


# Compiled even when `init` is called eagerly: the block Lanczos is many small
# operations, 20x slower op by op (0.68 s against 0.03 s at n = 400, rank 20).
_jit_spectrum = eqx.filter_jit(auto_partitioned(compute_spectrum))


class SpectralState(eqx.Module):
    """A spectral solver's state: the operator and the top singular triplets of its `Pt`."""

    operator: HOperator
    spectrum: Spectrum


class AbstractSpectralSolver(AbstractHSolver):
    """A solver that uses the top `rank` singular triplets of `Pt` (after `s_1 = 1`).

    Concrete solvers declare the fields: `rank`, `rtol`, `atol`, `max_steps`
    (as for `CG`), `oversample`, `num_blocks`, `key` (block Krylov settings,
    see `spectrum`). `init` runs the block Lanczos method (`2 * num_blocks`
    thin streaming passes); reuse its state for every solve with the same
    coupling.
    """

    rank: eqx.AbstractVar[int]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    oversample: eqx.AbstractVar[int]
    num_blocks: eqx.AbstractVar[int]
    key: eqx.AbstractVar[PRNGKeyArray | None]

    def __check_init__(self):
        if self.rank < 0:
            raise ValueError(f"`rank` must be >= 0, got {self.rank}.")
        if self.oversample < 0:
            raise ValueError(f"`oversample` must be >= 0, got {self.oversample}.")
        if self.num_blocks < 1:
            raise ValueError(f"`num_blocks` must be >= 1, got {self.num_blocks}.")
        check_cg_options(self.rtol, self.atol, self.max_steps)

    def init(self, operator, options) -> SpectralState:
        spec = _jit_spectrum(
            check_h_operator(operator), self.rank, oversample=self.oversample,
            num_blocks=self.num_blocks, key=self.key,
        )
        return SpectralState(operator, spec)


def spectral_result(cg: lx.RESULTS, spec: Spectrum) -> lx.RESULTS:
    """CG's status, or `breakdown` when the spectrum it was deflated with is not finite."""
    return lx.RESULTS.where(spec.result == RESULTS.successful, cg, lx.RESULTS.breakdown)
