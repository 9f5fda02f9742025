"""Dense pseudo-inverse solves of the H-matrix, for small problems.

Materialises H ((n + m)^2 memory, O((n + m)^3) time): this is the reference
the matrix-free solvers are checked against, and the truncated-SVD
regularisation of Li, Lu, Tao & Ye in its original, dense form.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._operators import HOperator
from ._base import AbstractLinearSolver, fix_gauge, project_range


def pinv_apply(
    h: Float[Array, "k k"],
    rhs: Float[Array, "k *c"],
    threshold: float | None,
    scale: Float[Array, " k"] | None = None,
) -> tuple[Float[Array, "k *c"], Array]:
    """`H^+ rhs` keeping the eigen-directions with `lambda > threshold * lambda_max`.

    `threshold=None` uses `k * machine epsilon` (numpy's `lstsq` default),
    which drops only the exact null vector. With `scale` (the diagonal `D`,
    positive), the cut-off is applied to `Hn = D^-1/2 H D^-1/2` instead and
    the result is `D^-1/2 Hn_tau^+ D^-1/2 rhs` (identical without
    truncation). Returns the solution and the number of dropped directions.
    """
    cutoff = h.shape[0] * jnp.finfo(h.dtype).eps if threshold is None else threshold
    if scale is not None:
        root = jnp.sqrt(scale)
        sol, dropped = pinv_apply(h / root[:, None] / root[None, :],
                                  rhs / root.reshape(-1, *([1] * (rhs.ndim - 1))), threshold)
        return sol / root.reshape(-1, *([1] * (rhs.ndim - 1))), dropped
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
    - `normalise`: apply the cut-off to the normalised H-matrix
      `Hn = D^-1/2 H D^-1/2`, `D = diag(a_hat, b_hat)` (largest eigenvalue
      exactly 2, eigenvalues `1 +- s_i` of the normalised coupling) and return
      `D^-1/2 Hn_tau^+ D^-1/2 rhs`: the definition `TruncatedSVD` implements
      matrix-free. Same as the default for uniform weights with `n = m`
      (then `H = Hn / n`).

    Stats: `num_steps` (0), `residual`, `converged`, `num_truncated` (dropped
    directions, the null vector included).
    """

    threshold: float | None = None
    normalise: bool = eqx.field(static=True, default=False)

    def solve(self, operator: HOperator, r, s):
        r, s = project_range(r, s)
        h = operator.as_matrix()
        rhs = jnp.concatenate([r, s])
        scale = jnp.concatenate([operator.a_hat, operator.b_hat]) if self.normalise else None
        sol, dropped = pinv_apply(h, rhs, self.threshold, scale)
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
