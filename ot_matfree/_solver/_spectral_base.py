"""What the spectral solvers (`SpectralCG`, `TruncatedSVD`) share: options,
checks, and a spectrum computed once per coupling (`prepare`)."""

from typing import Self

import equinox as eqx
from jaxtyping import PRNGKeyArray

from .._coupling import Coupling
from .._operators import HOperator
from ._base import AbstractLinearSolver, check_cg_options
from ._spectral_basis import Spectrum, compute_spectrum, spectrum


class AbstractSpectralSolver(AbstractLinearSolver):
    """A solver that uses the top `rank` singular triplets of `Pt` (after `s_1 = 1`).

    Concrete solvers declare the fields: `rank`, `rtol`, `atol`, `max_steps`
    (as for `CG`), `oversample`, `num_blocks`, `key` (block Krylov settings,
    see `spectrum`) and `spectrum` (a precomputed `Spectrum` or `None`).
    """

    rank: eqx.AbstractVar[int]
    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float]
    max_steps: eqx.AbstractVar[int]
    oversample: eqx.AbstractVar[int]
    num_blocks: eqx.AbstractVar[int]
    key: eqx.AbstractVar[PRNGKeyArray | None]
    spectrum: eqx.AbstractVar[Spectrum | None]

    def __check_init__(self):
        if self.rank < 0:
            raise ValueError(f"`rank` must be >= 0, got {self.rank}.")
        if self.oversample < 0:
            raise ValueError(f"`oversample` must be >= 0, got {self.oversample}.")
        if self.num_blocks < 1:
            raise ValueError(f"`num_blocks` must be >= 1, got {self.num_blocks}.")
        check_cg_options(self.rtol, self.atol, self.max_steps)
        if self.spectrum is not None and self.spectrum.rank != self.rank:
            raise ValueError(
                f"`spectrum` has rank {self.spectrum.rank}, the solver `rank={self.rank}`."
            )

    def prepare(self, coupling: Coupling | HOperator) -> Self:
        """This solver with the spectrum of `coupling` precomputed (reuse it
        for every solve with this coupling)."""
        spec = spectrum(
            coupling, self.rank, oversample=self.oversample, num_blocks=self.num_blocks,
            key=self.key,
        )
        return eqx.tree_at(lambda s: s.spectrum, self, spec, is_leaf=lambda x: x is None)

    def spectrum_for(self, operator: HOperator) -> Spectrum:
        """The precomputed spectrum, checked against `operator`, or a fresh one."""
        if self.spectrum is None:
            return compute_spectrum(
                operator, self.rank, oversample=self.oversample,
                num_blocks=self.num_blocks, key=self.key,
            )
        spec = self.spectrum
        n, m = operator.a_hat.shape[0], operator.b_hat.shape[0]
        small, big = (n, m) if m > n else (m, n)
        if spec.v.shape[0] != small or spec.u.shape[0] != big or spec.swapped != (m > n):
            raise ValueError(
                f"The solver holds a spectrum for a problem with sides {spec.u.shape[0]}/"
                f"{spec.v.shape[0]}, but the coupling has n={n}, m={m}; call `prepare` with "
                "this coupling."
            )
        return spec
