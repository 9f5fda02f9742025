"""Dense pseudo-inverse solves of the H-matrix, for small problems.

Materialises H ((n + m)^2 memory, O((n + m)^3) time): this is the reference
the matrix-free solvers are checked against, and the truncated-SVD
regularisation of Li, Lu, Tao & Ye in its original, dense form.
"""

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._operators import HOperator
from ._base import AbstractLinearSolver, fix_gauge, project_range


def pinv_apply(
    h: Float[Array, "k k"], rhs: Float[Array, "k *c"], threshold: float | None
) -> tuple[Float[Array, "k *c"], Array]:
    """`H^+ rhs` keeping the eigen-directions with `lambda > threshold * lambda_max`.

    `threshold=None` uses `k * machine epsilon` (numpy's `lstsq` default),
    which drops only the exact null vector. Returns the solution and the
    number of dropped directions.
    """
    cutoff = h.shape[0] * jnp.finfo(h.dtype).eps if threshold is None else threshold
    evals, evecs = jnp.linalg.eigh(h)
    keep = evals > cutoff * jnp.max(evals)
    inv = jnp.where(keep, 1 / jnp.where(keep, evals, 1), 0)
    coeffs = jnp.tensordot(evecs.T, rhs, axes=1)
    coeffs = coeffs * inv.reshape(-1, *([1] * (rhs.ndim - 1)))
    return jnp.tensordot(evecs, coeffs, axes=1), jnp.sum(~keep)


class DenseSolver(AbstractLinearSolver):
    """Dense eigendecomposition of H with a relative cut-off; small problems only.

    **Arguments:**

    - `threshold`: drop eigen-directions of H with eigenvalue below
      `threshold * lambda_max` (Li et al. use 1e-8 to 1e-10 in float64).
      `None`: `(n + m) * machine epsilon`, i.e. only the null vector.

    Stats: `num_steps` (0), `residual`, `converged`, `num_truncated` (dropped
    directions, the null vector included).
    """

    threshold: float | None = None

    def solve(self, operator: HOperator, r, s):
        r, s = project_range(r, s)
        h = operator.as_matrix()
        rhs = jnp.concatenate([r, s])
        sol, dropped = pinv_apply(h, rhs, self.threshold)
        n = r.shape[0]
        df, dg = fix_gauge(sol[:n], sol[n:])
        rhs_norm = jnp.linalg.norm(rhs)
        residual = jnp.linalg.norm(h @ sol - rhs) / jnp.where(rhs_norm > 0, rhs_norm, 1)
        stats = {
            "num_steps": jnp.asarray(0),
            "residual": residual,
            "converged": jnp.asarray(True),
            "num_truncated": dropped,
        }
        return df, dg, stats
