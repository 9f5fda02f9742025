"""The interface every H-matrix solver implements."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._operators import HOperator


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


def project_range(r: Float[Array, " n"], s: Float[Array, " m"]):
    """Remove the component of `[r; s]` along the null vector `(1_n, -1_m)`.

    Makes the system consistent (`sum(r) = sum(s)`); a no-op when it already
    is. Solving the projected system gives the least-squares solution.
    """
    n, m = r.shape[0], s.shape[0]
    shift = (jnp.sum(r) - jnp.sum(s)) / (n + m)
    return r - shift, s + shift


def fix_gauge(df: Float[Array, " n"], dg: Float[Array, " m"]):
    """Move a solution along `(1_n, -1_m)` so it is orthogonal to it (the
    minimum-norm solution); `df_i + dg_j` is unchanged."""
    n, m = df.shape[0], dg.shape[0]
    shift = (jnp.sum(df) - jnp.sum(dg)) / (n + m)
    return df - shift, dg + shift


class AbstractLinearSolver(eqx.Module):
    """Solves `H [df; dg] = [r; s]` for the H-matrix of a coupling.

    Implementations return the minimum-norm least-squares solution (the
    component of the right-hand side along the null vector `(1_n, -1_m)` is
    removed first) and a stats dict with at least `num_steps`, `residual`
    (relative) and `converged`.
    """

    @abc.abstractmethod
    def solve(
        self, operator: HOperator, r: Float[Array, " n"], s: Float[Array, " m"]
    ) -> tuple[Float[Array, " n"], Float[Array, " m"], dict[str, Array]]:
        """Return `(df, dg, stats)`."""
