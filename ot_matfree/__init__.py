"""ot_matfree: matrix-free gradients and Hessian-vector products of entropic OT."""

import importlib.metadata as _metadata

from ._core.costs import AbstractCost as AbstractCost
from ._core.costs import FunctionCost as FunctionCost
from ._core.costs import MatrixCost as MatrixCost
from ._core.costs import SqEuclidean as SqEuclidean
from ._core.coupling import Coupling as Coupling
from ._forward.from_ott import from_ott as from_ott
from ._derivatives.hessian_dense import hessian_x as hessian_x
from ._derivatives.hvp import grad as grad
from ._derivatives.hvp import grad_x as grad_x
from ._derivatives.hvp import HVPSolution as HVPSolution
from ._derivatives.hvp import hvp as hvp
from ._derivatives.hvp import hvp_solution as hvp_solution
from ._derivatives.hvp import hvp_x as hvp_x
from ._derivatives.hvp import hvp_x_solution as hvp_x_solution
from ._losses import ot_cost as ot_cost
from ._losses import sinkhorn_distance as sinkhorn_distance
from ._losses import sinkhorn_divergence as sinkhorn_divergence
from ._linear.operators import CouplingOperator as CouplingOperator
from ._linear.operators import HOperator as HOperator
from ._linear.operators import coupling_operator as coupling_operator
from ._linear.operators import h_operator as h_operator
from ._optim.lanczos import min_hessian_eigenvalue as min_hessian_eigenvalue
from ._optim.newton_cg import NewtonCG as NewtonCG
from ._optim.sgd_newton import sgd_newton as sgd_newton
from ._optim.steihaug import NewtonCGDescent as NewtonCGDescent
from ._core.results import RESULTS as RESULTS
from ._forward.lbfgs import LBFGS as LBFGS
from ._forward.sinkhorn import Sinkhorn as Sinkhorn
from ._forward.sinkhorn import solve as solve
from ._linear.base import AbstractHSolver as AbstractHSolver
from ._linear.block_krylov import Spectrum as Spectrum
from ._linear.block_krylov import spectrum as spectrum
from ._linear.cg import CG as CG
from ._linear.dense import DenseSolver as DenseSolver
from ._linear.spectral_cg import SpectralCG as SpectralCG
from ._linear.truncated_svd import TruncatedSVD as TruncatedSVD
from . import internal as internal
from . import matrix as matrix

try:
    __version__ = _metadata.version("ot-matfree")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
