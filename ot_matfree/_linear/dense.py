"""Dense pseudo-inverse solves of the H-matrix, for small problems.

Materialises H ((n + m)^2 memory, O((n + m)^3) time): this is the reference
the matrix-free solvers are checked against, and the truncated-SVD
regularisation of Li, Lu, Tao & Ye in its original, dense form.
"""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .operators import HOperator
from .._core.sharding import auto_partitioned
from .base import AbstractHSolver, check_h_operator, fix_gauge, project_range


class DenseState(eqx.Module):
    """`DenseSolver`'s state: the eigendecomposition of (normalised) H, truncated."""

    made_by: ClassVar[str] = "DenseSolver"
    operator: HOperator
    evecs: Float[Array, "k k"]
    inv_evals: Float[Array, " k"]  # 0 on dropped directions
    root_scale: Float[Array, " k"]  # sqrt(diag(a_hat, b_hat)) when normalised, else 1 on the support

    def pinv(self, rhs: Float[Array, "k *c"]) -> Float[Array, "k *c"]:
        """`H_tau^+ rhs` for one right-hand side or a matrix of them (columns)."""
        col = (-1,) + (1,) * (rhs.ndim - 1)
        rhs = rhs / self.root_scale.reshape(col)
        coeffs = jnp.tensordot(self.evecs.T, rhs, axes=1) * self.inv_evals.reshape(col)
        sol = jnp.tensordot(self.evecs, coeffs, axes=1)
        return sol / self.root_scale.reshape(col)


class DenseSolver(AbstractHSolver):
    """Dense eigendecomposition of H with a relative cut-off; small problems only.

    **Arguments:**

    - `threshold`: drop eigen-directions of H with eigenvalue below
      `threshold * lambda_max` (Li et al. use 1e-8 to 1e-10 in float64);
      must be in `[0, 0.5)`. `None`: `(n + m) * machine epsilon`, i.e. only
      the null vector.
    - `normalise`: apply the cut-off to the normalised H-matrix
      `Hn = D^-1/2 H D^-1/2`, `D` H's diagonal (`diag(a_hat, b_hat)` when
      balanced; largest eigenvalue
      exactly 2, eigenvalues `1 +- s_i` of the normalised coupling) and return
      `D^-1/2 Hn_tau^+ D^-1/2 rhs`: the definition `TruncatedSVD` implements
      matrix-free. Same as the default for uniform weights with `n = m`
      (then `H = Hn / n`).

    `init` materialises H and computes its eigendecomposition (once per
    coupling); `compute` is then two matrix products.

    Stats: `num_steps` (0), `residual` (`|H x - rhs| / |rhs|`, which includes
    the part of the right-hand side a truncation drops on purpose),
    `converged` (the solution is finite: the eigendecomposition is backward
    stable, so there is no other failure), `num_truncated` (dropped
    directions, the null vector included).
    """

    threshold: float | None = None
    normalise: bool = eqx.field(static=True, default=False)
    state_type = DenseState

    def __check_init__(self):
        if self.threshold is not None and not 0 <= self.threshold < 0.5:
            raise ValueError(
                f"`threshold` must be in [0, 0.5) (a cut-off relative to the largest "
                f"eigenvalue) or None, got {self.threshold}."
            )

    @auto_partitioned
    def init(self, operator, options) -> DenseState:
        h = check_h_operator(operator).as_matrix()
        root = jnp.sqrt(jnp.concatenate(operator.diagonal))
        if not self.normalise:
            # Rows of zero-weight points (`_core/weights.py`) are of the size
            # of `ZERO`: scaled to the mean diagonal of the others (so that
            # `lambda_max` and the cut-off stay), they are not cut off as rounding.
            mass = jnp.concatenate(operator.support)
            mean = jnp.sum(jnp.where(mass, root**2, 0)) / jnp.sum(mass).astype(root.dtype)
            root = jnp.where(mass, 1.0, root / jnp.sqrt(mean))
        h = h / root[:, None] / root[None, :]
        evals, evecs = jnp.linalg.eigh(h)
        cutoff = h.shape[0] * jnp.finfo(h.dtype).eps if self.threshold is None else self.threshold
        keep = evals > cutoff * jnp.max(evals)
        inv = jnp.where(keep, 1 / jnp.where(keep, evals, 1), 0)
        return DenseState(operator, evecs, inv, root)

    def solve_split(self, state: DenseState, r, s, options=None):
        balanced = state.operator.balanced
        if balanced:
            r, s = project_range(r, s, state.operator.support)
        rhs = jnp.concatenate([r, s])
        sol = state.pinv(rhs)
        n = r.shape[0]
        df, dg = sol[:n], sol[n:]
        if balanced:
            df, dg = fix_gauge(df, dg, state.operator.support)
        rhs_norm = jnp.linalg.norm(rhs)
        residual = jnp.linalg.norm(state.operator.mv(sol) - rhs)
        residual = residual / jnp.where(rhs_norm > 0, rhs_norm, 1)
        finite = jnp.all(jnp.isfinite(sol))
        stats = {
            "num_steps": jnp.asarray(0),
            "residual": residual,
            "converged": finite,
            "num_truncated": jnp.sum(state.inv_evals == 0),
        }
        return df, dg, lx.RESULTS.where(finite, lx.RESULTS.successful, lx.RESULTS.singular), stats
