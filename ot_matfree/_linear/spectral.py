"""What the spectral solvers (`SpectralCG`, `TruncatedSVD`) share: options,
checks, and the block Lanczos spectrum computed once in `init`."""

import dataclasses
from typing import ClassVar

import equinox as eqx
import lineax as lx
from jaxtyping import PRNGKeyArray

from .operators import HOperator
from .._core.results import RESULTS
from .._core.sharding import auto_partitioned
from .base import AbstractHSolver, check_cg_options, check_h_operator
from .block_krylov import Spectrum, compute_spectrum


# Compiled even when `init` is called eagerly: the block Lanczos is many small
# operations (QRs, thin products, a `fori_loop`), each dispatched on its own
# when run op by op, which is many times slower than the compiled program.
_jit_spectrum = eqx.filter_jit(auto_partitioned(compute_spectrum))


class SpectralState(eqx.Module):
    """A spectral solver's state: the operator and the top singular triplets of its `Pt`."""

    made_by: ClassVar[str] = "SpectralCG or TruncatedSVD"
    operator: HOperator
    spectrum: Spectrum


class AbstractSpectralSolver(AbstractHSolver):
    """A solver that uses the top `rank` singular triplets of `Pt` (after `s_1 = 1`).

    Concrete solvers declare the fields: `rank`, `rtol`, `atol`, `max_steps`
    (as for `CG`), `oversample`, `num_blocks`, `key` (block Krylov settings,
    see `spectrum`; defaults `OVERSAMPLE` and `NUM_BLOCKS`), and implement
    `solve_split` (see `AbstractHSolver`). `init` is done here: it runs the
    block Lanczos method (`2 * num_blocks` thin streaming passes) and returns
    a `SpectralState` whose `spectrum` is a `Spectrum` (`v` on the smaller
    side, `u` on the larger, `gaps = 1 - s^2`). Reuse the state for every
    solve with the same coupling. Report the solve's status through
    `spectral_result`, which turns a non-finite spectrum into `breakdown`.
    """

    rank: eqx.AbstractVar[int]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    oversample: eqx.AbstractVar[int]
    num_blocks: eqx.AbstractVar[int]
    key: eqx.AbstractVar[PRNGKeyArray | None]
    state_type = SpectralState

    def __check_init__(self):
        if self.rank < 0:
            raise ValueError(f"`rank` must be >= 0, got {self.rank}.")
        if self.oversample < 0:
            raise ValueError(f"`oversample` must be >= 0, got {self.oversample}.")
        if self.num_blocks < 1:
            raise ValueError(f"`num_blocks` must be >= 1, got {self.num_blocks}.")
        check_cg_options(self.rtol, self.atol, self.max_steps)

    def check_rank(self, operator: HOperator) -> None:
        """A `ValueError` that names `rank` (and whether it is the default) and
        the largest rank that fits when this coupling has too few points."""
        n, m = operator.a_hat.shape[0], operator.b_hat.shape[0]
        fits = min(n, m) - 1
        if self.rank <= fits:
            return
        name = type(self).__name__
        default = {f.name: f.default for f in dataclasses.fields(self)}.get("rank")
        given = (f"`rank={self.rank}` (the default when no `rank` is passed)"
                 if self.rank == default else f"`rank={self.rank}`")
        raise ValueError(
            f"`{name}`: {given} is too large for this {n} x {m} coupling: it computes "
            f"`rank` singular directions besides the exact null vector, so at most {fits} "
            f"(min(n, m) - 1). Pass `{name}(rank={fits})`"
            + (" (rank=0 deflates nothing: plain CG)" if fits == 0 else "") + ", or use `CG()`."
        )

    def init(self, operator, options) -> SpectralState:
        self.check_rank(check_h_operator(operator))
        spec = _jit_spectrum(
            check_h_operator(operator), self.rank, oversample=self.oversample,
            num_blocks=self.num_blocks, key=self.key,
        )
        return SpectralState(operator, spec)


def spectral_result(cg: lx.RESULTS, spec: Spectrum) -> lx.RESULTS:
    """CG's status, or `breakdown` when the spectrum it was deflated with is not finite."""
    return lx.RESULTS.where(spec.result == RESULTS.successful, cg, lx.RESULTS.breakdown)
