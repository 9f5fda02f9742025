"""ot_matfree: matrix-free gradients and Hessian-vector products of entropic OT."""

import importlib.metadata as _metadata

from ._costs import AbstractCost as AbstractCost
from ._costs import FunctionCost as FunctionCost
from ._costs import SqEuclidean as SqEuclidean
from ._coupling import Coupling as Coupling
from ._from_ott import from_ott as from_ott
from ._hessian_dense import hessian_x as hessian_x
from ._hvp import grad as grad
from ._hvp import grad_x as grad_x
from ._hvp import hvp as hvp
from ._hvp import hvp_x as hvp_x
from ._losses import ot_cost as ot_cost
from ._losses import sinkhorn_distance as sinkhorn_distance
from ._losses import sinkhorn_divergence as sinkhorn_divergence
from ._operators import CouplingOperator as CouplingOperator
from ._operators import HOperator as HOperator
from ._operators import coupling_operator as coupling_operator
from ._operators import h_operator as h_operator
from ._optim.lanczos import min_hessian_eigenvalue as min_hessian_eigenvalue
from ._optim.newton_cg import NewtonCG as NewtonCG
from ._optim.sgd_newton import sgd_newton as sgd_newton
from ._optim.steihaug import NewtonCGDescent as NewtonCGDescent
from ._results import RESULTS as RESULTS
from ._sinkhorn import Sinkhorn as Sinkhorn
from ._sinkhorn import solve as solve
from ._solver._base import AbstractHSolver as AbstractHSolver
from ._solver._block_krylov import Spectrum as Spectrum
from ._solver._block_krylov import spectrum as spectrum
from ._solver.cg import CG as CG
from ._solver.dense import DenseSolver as DenseSolver
from ._solver.spectral_cg import SpectralCG as SpectralCG
from ._solver.truncated_svd import TruncatedSVD as TruncatedSVD

try:
    __version__ = _metadata.version("ot-matfree")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
