"""What every H-matrix solver shares: lineax's solver contract on `HOperator`.

A solver is an `lineax.AbstractLinearSolver`:
`init(operator, options) -> state` does the set-up that depends on the
operator only (nothing for `CG`, the block Lanczos spectrum for the spectral
solvers, an eigendecomposition for `DenseSolver`), and
`compute(state, vector, options) -> (solution, result, stats)` solves one
right-hand side. So `lineax.linear_solve(h_operator(c), rhs, solver, state=...)`
works, and one state serves many solves.

H is singular (null vector `(1_n, -1_m)`): every solver returns the
minimum-norm least-squares solution (the pseudo-inverse applied to the
right-hand side), and `assume_full_rank()` is `False`.
"""

import abc
from typing import Any

import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .operators import HOperator
from .._core.sharding import auto_partitioned


def default_rtol(dtype) -> float:
    """CG tolerance when none is given: tight in float64, reachable in float32."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def check_cg_options(rtol: float | None, atol: float, max_steps: int) -> None:
    """The checks on the CG stopping options that every CG-based solver takes."""
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"`rtol` must be >= 0, got {rtol}.")
    if not atol >= 0:
        raise ValueError(f"`atol` must be >= 0, got {atol}.")
    if max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1, got {max_steps}.")


def check_h_operator(operator) -> HOperator:
    if not isinstance(operator, HOperator):
        raise TypeError(
            "ot_matfree's solvers solve the H-matrix of a coupling: pass "
            f"`ot_matfree.h_operator(coupling)`, got {type(operator).__name__}."
        )
    return operator


def range_shift(r: Float[Array, " n"], s: Float[Array, " m"]) -> Float[Array, ""]:
    """The `c` with `[r - c; s + c]` orthogonal to the null vector `(1_n, -1_m)`."""
    n, m = r.shape[0], s.shape[0]
    return (jnp.sum(r) - jnp.sum(s)) / (n + m)


def project_range(r: Float[Array, " n"], s: Float[Array, " m"]):
    """Remove the component of `[r; s]` along the null vector `(1_n, -1_m)`.

    Makes the system consistent (`sum(r) = sum(s)`); a no-op when it already
    is. Solving the projected system gives the least-squares solution.
    """
    shift = range_shift(r, s)
    return r - shift, s + shift


def fix_gauge(df: Float[Array, " n"], dg: Float[Array, " m"]):
    """Move a solution along `(1_n, -1_m)` so it is orthogonal to it (the
    minimum-norm solution); `df_i + dg_j` is unchanged."""
    n, m = df.shape[0], dg.shape[0]
    shift = (jnp.sum(df) - jnp.sum(dg)) / (n + m)
    return df - shift, dg + shift


def cg_result(stats: dict[str, Array], max_steps: int) -> lx.RESULTS:
    """`successful`, or why CG stopped short: `max_steps_reached` or `breakdown`."""
    failure = lx.RESULTS.where(
        stats["num_steps"] >= max_steps, lx.RESULTS.max_steps_reached, lx.RESULTS.breakdown
    )
    return lx.RESULTS.where(stats["converged"], lx.RESULTS.successful, failure)


class AbstractHSolver(lx.AbstractLinearSolver):
    """A solver for `H [df; dg] = [r; s]`, the H-matrix of a coupling.

    Follows lineax's `AbstractLinearSolver` contract on an `HOperator` (from
    `ot_matfree.h_operator`) and a flat right-hand side `[r; s]` of size
    `n + m`. The solution is the minimum-norm least-squares one (the component
    of the right-hand side along the null vector `(1_n, -1_m)` is removed
    first). Stats hold at least `num_steps`, `residual` (relative) and
    `converged`; the returned `lineax.RESULTS` is `successful` exactly when
    `converged` is true.
    """

    @abc.abstractmethod
    def init(self, operator: HOperator, options: dict[str, Any]):
        """Set-up on the operator alone; the state it returns holds the operator."""

    @abc.abstractmethod
    def solve_split(
        self, state, r: Float[Array, " n"], s: Float[Array, " m"], pushed=None
    ) -> tuple[Float[Array, " n"], Float[Array, " m"], lx.RESULTS, dict[str, Array]]:
        """`(df, dg, result, stats)` for the right-hand side `[r; s]`.

        `pushed`: `(Q^T (big / p), Q^T (1 / p))` for this `[r; s]` when the
        caller computed it in its own pass (`_pair_reductions.schur_rhs`);
        solvers that reduce to the Schur complement use it instead of a pass
        (`_schur.reduced_system`), the others ignore it.
        """

    @auto_partitioned
    def compute(self, state, vector, options):
        n = state.operator.a_hat.shape[0]
        df, dg, result, stats = self.solve_split(state, vector[:n], vector[n:])
        return jnp.concatenate([df, dg]), result, stats

    def transpose(self, state, options):
        return state, options  # H is symmetric

    def conj(self, state, options):
        return state, options  # H is real

    def assume_full_rank(self) -> bool:
        return False  # null vector (1_n, -1_m)
