"""How a differentiable OT function solves: the static options of the losses.

Derivative-rule layer: the losses (`_losses.py`) build one `Config` from
their keyword arguments and the custom JVP rules (`_implicit.py`,
`_losses.py`) read it. Failures are handled where they happen: `solve`
raises for Sinkhorn, `solve_h` for H-solves, both according to `throw`.
"""

import equinox as eqx
from jaxtyping import Array

from .._core.costs import AbstractCost
from .._core.coupling import BlockSize, Coupling
from .._core.relaxation import is_balanced
from .._core.sharding import RowSharding
from .lbfgs import LBFGS
from .sinkhorn import Sinkhorn, solve_placed
from .symmetric import solve_symmetric
from .._linear.base import AbstractHSolver


class Config(eqx.Module):
    """Static configuration shared by the differentiable functions.

    `sharding` is the placement of the clouds, read before `jit`
    (`_sharding.row_sharding`); every coupling built from this config follows it.
    `init` is the warm start `(f, g)` of the transport solve (`solve`; the
    self terms' symmetric solves start cold); it changes the iterations, not
    the solution, and is never differentiated.
    """

    cost: AbstractCost
    solver: Sinkhorn | LBFGS
    linear_solver: AbstractHSolver
    block_size: BlockSize = eqx.field(static=True)
    sharding: RowSharding | None = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    init: tuple[Array, Array] | None = None
    tau_a: float = eqx.field(static=True, default=1.0)
    tau_b: float = eqx.field(static=True, default=1.0)

    @property
    def balanced(self) -> bool:
        return is_balanced(self.tau_a, self.tau_b)

    def coupling(self, x, y, a, b, f, g, epsilon) -> Coupling:
        """The coupling of potentials `f`, `g` (no diagnostics)."""
        return Coupling(
            x, y, a, b, f, g, epsilon, self.cost, block_size=self.block_size,
            sharding=self.sharding, tau_a=self.tau_a, tau_b=self.tau_b,
        )

    def solve(self, x, y, a, b, epsilon) -> Coupling:
        """`OT_eps(x, y, a, b)`'s coupling."""
        return solve_placed(
            self.sharding, x, y, a, b, epsilon=epsilon, cost=self.cost, solver=self.solver,
            block_size=self.block_size, init=self.init, throw=self.throw, tau_a=self.tau_a,
            tau_b=self.tau_b,
        )

    def solve_self(self, x, a, epsilon, y=None) -> Coupling:
        """`OT_eps(x, x, a, a)`'s coupling, with symmetric updates where the cost
        allows (`y`: the column points when they are not `x`, as for a cost matrix).
        Unbalanced, both marginals take `tau_a` (the divergence needs
        `tau_a = tau_b`)."""
        # The averaged update needs no acceleration: it takes `tol` and `max_iters`.
        solver = self.solver
        if isinstance(solver, LBFGS):
            solver = Sinkhorn(tol=solver.tol, max_iters=10_000, progress=solver.progress,
                              progress_every=solver.progress_every)
        return solve_symmetric(
            x, a, epsilon=epsilon, cost=self.cost, solver=solver,
            block_size=self.block_size, sharding=self.sharding, throw=self.throw, y=y,
            tau=self.tau_a,
        )
