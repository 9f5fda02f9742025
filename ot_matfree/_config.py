"""How a differentiable OT function solves: the static options of the losses.

Derivative-rule layer: the losses (`_losses.py`) build one `Config` from
their keyword arguments and the custom JVP rules (`_implicit.py`,
`_losses.py`) read it. Failures are handled where they happen: `solve`
raises for Sinkhorn, `solve_h` for H-solves, both according to `throw`.
"""

import equinox as eqx

from ._costs import AbstractCost
from ._coupling import Coupling
from ._sinkhorn import Sinkhorn, solve
from ._sinkhorn_symmetric import solve_symmetric
from ._solver._base import AbstractHSolver


class Config(eqx.Module):
    """Static configuration shared by the differentiable functions."""

    cost: AbstractCost
    solver: Sinkhorn
    linear_solver: AbstractHSolver
    block_size: int | None = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def solve(self, x, y, a, b, epsilon) -> Coupling:
        """`OT_eps(x, y, a, b)`'s coupling."""
        return solve(
            x, y, a, b, epsilon=epsilon, cost=self.cost, solver=self.solver,
            block_size=self.block_size, throw=self.throw,
        )

    def solve_self(self, x, a, epsilon) -> Coupling:
        """`OT_eps(x, x, a, a)`'s coupling, with symmetric updates where the cost allows."""
        return solve_symmetric(
            x, a, epsilon=epsilon, cost=self.cost, solver=self.solver,
            block_size=self.block_size, throw=self.throw,
        )
