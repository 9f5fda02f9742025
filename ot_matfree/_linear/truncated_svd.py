"""Li, Lu, Tao & Ye's truncated-SVD regularisation of the H-solve, matrix-free.

Which matrix the threshold refers to. Write `D = diag(a_hat, b_hat)` and
`Hn = D^-1/2 H D^-1/2 = [[I, Pt], [Pt^T, I]]`. With the SVD
`Pt = sum_i s_i u_i v_i^T`, `Hn` has the eigenpairs `1 +- s_i` on
`(u_i, +-v_i) / sqrt(2)` and 1 on the rest, so its largest eigenvalue is
exactly `1 + s_1 = 2` and its near-null directions are `(u_i, -v_i)` with
`s_i ~ 1`. The eigenvalues of `H` itself are those of `Hn` only when `D` is a
multiple of the identity (uniform weights and `n = m`: `H = Hn / n`); in
general the eigenvectors of `H` mix the `(u_i, +-v_i)`. The cut-off is
therefore defined on `Hn`:

    drop the eigen-directions of `Hn` with eigenvalue `<= threshold * 2`,
    i.e. the directions `(u_i, -v_i)` with `1 - s_i <= 2 * threshold`,

and the solution is `x = D^-1/2 Hn_tau^+ D^-1/2 rhs`. The dense reference
with the same definition is `DenseSolver(threshold, normalise=True)` (and
`hessian_x(..., solver=DenseSolver(threshold, normalise=True))`); for uniform
weights with `n = m` it coincides with the plain `DenseSolver(threshold)`,
Li et al.'s cut-off relative to `lambda_max(H)`.

Matrix-free: the captured directions with `1 - s_i <= 2 tau` (`i = 1` is the
null vector) are solved in closed form on their invariant planes
`span{(u_i, 0), (0, v_i)}`, keeping only the `(u_i, v_i)` half with
eigenvalue `1 + s_i`; the rest of the right-hand side lies in an invariant,
well-conditioned subspace, where CG on the normalised Schur complement runs
with those directions projected out and the captured kept directions
deflated (as in `SpectralCG`).
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .base import cg_result, default_rtol, fix_gauge, project_range
from .schur import NormalisedSchur
from .block_krylov import NUM_BLOCKS, OVERSAMPLE
from .spectral import AbstractSpectralSolver, spectral_result
from .cg import conjugate_gradient
from .spectral_cg import deflation


class TruncatedSVD(AbstractSpectralSolver):
    """Truncated-SVD regularised H-solve (Li, Lu, Tao & Ye), matrix-free.

    Drops the eigen-directions of the normalised H-matrix
    `Hn = D^-1/2 H D^-1/2` (`D = diag(a_hat, b_hat)`) with eigenvalue
    `<= threshold * lambda_max(Hn) = 2 * threshold`, i.e. the singular
    directions of `Pt` with `1 - s_i <= 2 * threshold`, among the `rank + 1`
    leading ones, and solves the rest with deflation-preconditioned CG (see
    `ot_matfree/_linear/truncated_svd.py` for why the cut-off is defined on `Hn`). Matches
    `DenseSolver(threshold, normalise=True)` when every direction below the
    cut-off is among the computed ones (`stats["truncation_complete"]`).
    Unbalanced (`tau_a tau_b = kappa < 1`), `D` is H's diagonal, `Hn`'s
    eigenvalues are `1 +- sqrt(kappa) s_i` and the cut-off is
    `threshold * (1 + sqrt(kappa))`; H is then nonsingular, and nothing is
    dropped unless `1 - sqrt(kappa)` is below it.

    **Arguments:**

    - `rank`: number of singular directions after `s_1 = 1` computed; must
      exceed the number of directions below the cut-off.
    - `threshold`: relative cut-off `tau` (Li et al. use 1e-8 to 1e-10 in
      float64). Must be in `[0, 0.5)`.
    - `rtol`, `atol`, `max_steps`: as for `CG`.
    - `oversample`, `num_blocks`, `key`: block Krylov settings (`spectrum`),
      run once in `init` (reuse the state as for `SpectralCG`).

    Stats: `num_steps` (CG iterations), `residual`, `converged`,
    `num_truncated` (dropped directions, the null vector included when
    balanced, as in `DenseSolver`), `num_deflated` (captured directions kept and deflated),
    `truncation_complete` (at least one computed direction was kept, so no
    direction below the cut-off was missed), `spectrum_residual`.
    """

    rank: int = eqx.field(static=True, default=20)
    threshold: float = 1e-8
    rtol: float | None = None
    atol: float = 0.0
    max_steps: int = 1000
    oversample: int = eqx.field(static=True, default=OVERSAMPLE)
    num_blocks: int = eqx.field(static=True, default=NUM_BLOCKS)
    key: PRNGKeyArray | None = None

    def __check_init__(self):
        if not 0 <= self.threshold < 0.5:
            raise ValueError(f"`threshold` must be in [0, 0.5), got {self.threshold}.")

    def solve_split(self, state, r, s, options=None):
        schur = NormalisedSchur.from_h(state.operator)
        balanced = schur.balanced
        if balanced:
            r, s = project_range(r, s, state.operator.support)
        spec = state.spectrum
        rtol = default_rtol(r.dtype) if self.rtol is None else self.rtol
        # Normalised by H's diagonal, the off-diagonal block is `root_k Pt`
        # (`root_k = sqrt(kappa)`, 1 when balanced): Hn's eigenvalues are
        # `1 +- sigma_i`, `sigma_i = root_k s_i`, the largest `1 + root_k`.
        root_k = 1.0 if balanced else schur.kappa**0.5
        root_p, root_q = schur.root_diagonal
        big, small = (s, r) if schur.swapped else (r, s)
        rho_big, rho_small = big / root_p, small / root_q

        sigma = root_k * spec.singular_values
        if balanced:
            drop = spec.one_minus_s <= 2 * self.threshold
            drop = drop.at[0].set(True)
        else:
            drop = 1 - sigma <= (1 + root_k) * self.threshold
        u, v = spec.u, spec.v
        c_big = jnp.where(drop, u.T @ rho_big, 0)
        c_small = jnp.where(drop, v.T @ rho_small, 0)
        # On each dropped plane keep the (u_i, v_i) half, eigenvalue 1 + sigma_i.
        coeff = (c_big + c_small) / (2 * (1 + sigma))
        rho_big = rho_big - u @ c_big
        rho_small = rho_small - v @ c_small

        v_drop = jnp.where(drop, 1, 0).astype(v.dtype) * v

        def restrict(z):
            return z - v_drop @ (v_drop.T @ z)

        def mv(z):
            return restrict(schur.mv(restrict(z)))

        keep = ~drop
        v_keep = jnp.where(keep, 1, 0).astype(v.dtype) * v
        precond = deflation(schur, v_keep, jnp.where(keep, schur.eigenvalues(spec.gaps), 1))

        def preconditioner(z):
            return restrict(precond(z))

        rhs = restrict(schur.project(rho_small - root_k * schur.pt_rmv(rho_big)))
        z, stats = conjugate_gradient(
            mv, rhs, rtol=rtol, atol=jnp.maximum(self.atol, schur.rounding_level(r, s)),
            max_steps=self.max_steps,
            preconditioner=preconditioner,
        )
        w_small = z + v @ coeff
        w_big = rho_big - root_k * schur.pt_mv(z) + u @ coeff
        d_big, d_small = w_big / root_p, w_small / root_q
        df, dg = (d_small, d_big) if schur.swapped else (d_big, d_small)
        if balanced:
            df, dg = fix_gauge(df, dg, state.operator.support)
        num_truncated = jnp.sum(drop)
        stats["num_truncated"] = num_truncated
        stats["num_deflated"] = jnp.sum(keep)
        stats["truncation_complete"] = num_truncated <= spec.rank
        stats["spectrum_residual"] = jnp.max(spec.residuals)
        return df, dg, spectral_result(cg_result(stats, self.max_steps), spec), stats
