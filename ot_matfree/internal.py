"""Extension points for code that builds on ot_matfree, as `lineax.internal`
and `optimistix.internal` are for theirs.

Everything here is what the library's own solvers and reductions are made
of, documented well enough to write a new one; it may change between minor
versions more readily than the main namespace (the CHANGELOG says when).

**A new H-matrix solver** (for `hvp(..., linear_solver=...)` and
`lineax.linear_solve(h_operator(coupling), ...)`): subclass
`AbstractHSolver` (or `AbstractSpectralSolver`, whose `init` computes the
top singular triplets of the normalised coupling) and implement `init` and
`solve_split`. CG on the normalised Schur complement, for example, is three
calls (`tests/unit/test_linear_extension.py` runs this block):

```python
import equinox as eqx
import ot_matfree as om
from ot_matfree.internal import (
    AbstractHSolver, cg_result, check_h_operator, conjugate_gradient, reduced_system,
)


class SchurState(eqx.Module):
    operator: om.HOperator  # every state holds its operator as `.operator`


class SchurCG(AbstractHSolver):
    rtol: float = 1e-12
    max_steps: int = 500

    def init(self, operator, options):
        return SchurState(check_h_operator(operator))

    def solve_split(self, state, r, s, options=None):
        schur, r, s, b = reduced_system(state.operator, r, s, options)
        z, stats, image = conjugate_gradient(
            schur.mv, b, rtol=self.rtol, atol=schur.rounding_level(r, s),
            max_steps=self.max_steps, final_product=schur.mv_and_image,
        )
        df, dg = schur.recover(z, r, s, image)
        return df, dg, cg_result(stats, self.max_steps), stats
```

Passing `options` on to `reduced_system` keeps an HVP at one streaming
pass per CG step: the derivative rules put in it a product they computed in
their own pass.

**A new streaming reduction**: one call of `stream` with a `block_fn` that
maps a `Block` (rows of the coupling against its columns) to a per-row and a
per-column result; `apply`, `schur_apply`, `marginals` and `row_logsumexp`
are the library's, and their source is the pattern to follow.
"""

from ._linear.base import AbstractHSolver as AbstractHSolver
from ._linear.base import cg_result as cg_result
from ._linear.base import check_cg_options as check_cg_options
from ._linear.base import check_h_operator as check_h_operator
from ._linear.base import default_rtol as default_rtol
from ._linear.base import fix_gauge as fix_gauge
from ._linear.base import project_range as project_range
from ._linear.base import range_shift as range_shift
from ._linear.block_krylov import NUM_BLOCKS as NUM_BLOCKS
from ._linear.block_krylov import OVERSAMPLE as OVERSAMPLE
from ._linear.cg import conjugate_gradient as conjugate_gradient
from ._linear.schur import NormalisedSchur as NormalisedSchur
from ._linear.schur import reduced_system as reduced_system
from ._linear.spectral import AbstractSpectralSolver as AbstractSpectralSolver
from ._linear.spectral import SpectralState as SpectralState
from ._linear.spectral import spectral_result as spectral_result
from ._linear.spectral_cg import deflation as deflation
from ._core.weights import support as support
from ._core.weights import zero_weight as zero_weight
from ._stream.engine import LOGSUMEXP as LOGSUMEXP
from ._stream.engine import SUM as SUM
from ._stream.engine import Block as Block
from ._stream.engine import apply as apply
from ._stream.engine import marginals as marginals
from ._stream.engine import row_logsumexp as row_logsumexp
from ._stream.engine import schur_apply as schur_apply
from ._stream.engine import stream as stream

__all__ = [
    # Linear solvers of the H-matrix.
    "AbstractHSolver",
    "AbstractSpectralSolver",
    "SpectralState",
    "NormalisedSchur",
    "reduced_system",
    "conjugate_gradient",
    "deflation",
    "cg_result",
    "spectral_result",
    "check_h_operator",
    "check_cg_options",
    "default_rtol",
    "range_shift",
    "project_range",
    "fix_gauge",
    "NUM_BLOCKS",
    "OVERSAMPLE",
    # Streaming reductions.
    "stream",
    "Block",
    "SUM",
    "LOGSUMEXP",
    "apply",
    "schur_apply",
    "marginals",
    "row_logsumexp",
    # Zero weights.
    "zero_weight",
    "support",
]
