"""ot_matfree: matrix-free gradients and Hessian-vector products of entropic OT."""

import importlib.metadata

from ._costs import AbstractCost as AbstractCost
from ._costs import FunctionCost as FunctionCost
from ._costs import SqEuclidean as SqEuclidean
from ._coupling import Coupling as Coupling
from ._coupling import from_ott as from_ott
from ._dense import hessian_x as hessian_x
from ._hvp import grad as grad
from ._hvp import grad_x as grad_x
from ._hvp import hvp as hvp
from ._hvp import hvp_x as hvp_x
from ._operators import CouplingOperator as CouplingOperator
from ._operators import HOperator as HOperator
from ._operators import coupling_operator as coupling_operator
from ._operators import h_operator as h_operator
from ._sinkhorn import Sinkhorn as Sinkhorn
from ._sinkhorn import solve as solve
from ._solver._base import AbstractLinearSolver as AbstractLinearSolver
from ._solver.cg import CG as CG
from ._solver.dense import DenseSolver as DenseSolver

try:
    __version__ = importlib.metadata.version("ot-matfree")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
