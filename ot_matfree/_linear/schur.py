"""The normalised Schur complement of the H-matrix on its smaller side.

With `Q` the coupling oriented as (larger side) x (smaller side), `p` the
larger side's marginal and `q` the smaller side's, eliminating the larger
side leaves `S = diag(q) - Q^T diag(1/p) Q`. In the variable `z = sqrt(q) dv`
this is `N = I - Pt^T Pt` with `Pt = diag(p)^-1/2 Q diag(q)^-1/2`, whose
eigenvalues are `1 - s_k^2` for the singular values `s_k` of `Pt`
(`s_1 = 1`, null vector `sqrt(q)`). CG on `N` is CG on `S` with a Jacobi
preconditioner; the spectral solvers work with `Pt` directly.

`Pt^T Pt z` is one streaming pass (`_stream.engine.schur_apply`): the coupling
`Q` is streamed with the larger side as its rows (`P` itself, or
`Coupling.transpose()` when `m > n`), so each row block's `Q_b y` is
complete in its block, `diag(1/p)` applies there, and `Q_b^T (Q_b y / p_b)`
accumulates over the smaller side; every exp is computed once per CG step.

Unbalanced (`tau_a` or `tau_b` < 1, docs/unbalanced.md): H's diagonal blocks
are `p / tau_p` and `q / tau_q`, and normalising by them instead gives
`N = I - kappa Pt^T Pt` with the same `Pt` and `kappa = tau_a tau_b < 1`:
eigenvalues `1 - kappa s_k^2 >= 1 - kappa > 0`, no null vector (nothing is
projected out), and the spectrum of `Pt` (`block_krylov.py`) serves both.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .operators import CouplingOperator, HOperator
from .._stream.engine import schur_apply
from .base import fix_gauge, range_shift

#: Key of lineax's `options` under which ot_matfree's derivative rules hand the
#: solver `(Q^T (big / p), Q^T (1 / p))` for the right-hand side, computed in
#: their own pass (`_stream.pair.schur_rhs`). Private: set by `share_pass`,
#: read by `reduced_system`; not part of any public signature.
_PUSHED = "ot_matfree:schur_rhs_pushed"


def share_pass(pushed) -> dict:
    """lineax `options` carrying `pushed` (the output of `schur_rhs`, or `None`)."""
    return {} if pushed is None else {_PUSHED: pushed}


class NormalisedSchur(eqx.Module):
    """`N = I - Pt^T Pt`, the normalised Schur complement of an H-matrix on its
    smaller side, `Pt = diag(p)^-1/2 Q diag(q)^-1/2`.

    Symmetric PSD with `|N| <= 1`, eigenvalues `1 - s_k^2` for the singular
    values `s_k` of `Pt`, and null vector `sqrt(q)` (projected out of every
    product). Build it with `NormalisedSchur.from_h(h_operator(coupling))`
    (or `reduced_system`, which also reduces a right-hand side); CG on `N`
    (`conjugate_gradient(schur.mv, b, ...)`) is CG on the Schur complement
    with a Jacobi preconditioner. Each `mv` or `gram` is one streaming pass.

    **Fields:**

    - `q_op`: `Q`, the coupling oriented (larger side) x (smaller side), as a
      `CouplingOperator`.
    - `p`, `q`: the marginals of the larger and of the smaller side.
    - `swapped`: `True` when the smaller side is the source `x` (`n < m`).
    - `tau_p`, `tau_q`: the marginal relaxations of the two sides (1:
      balanced); `N = I - kappa Pt^T Pt` with `kappa = tau_p tau_q`.
    """

    q_op: CouplingOperator
    p: Float[Array, " big"]
    q: Float[Array, " small"]
    swapped: bool = eqx.field(static=True)
    tau_p: float = eqx.field(static=True, default=1.0)
    tau_q: float = eqx.field(static=True, default=1.0)

    @classmethod
    def from_h(cls, operator: HOperator) -> "NormalisedSchur":
        """`N` of the H-matrix `operator`, on whichever side is smaller."""
        n, m = operator.a_hat.shape[0], operator.b_hat.shape[0]
        tau_a, tau_b = operator.coupling.tau_a, operator.coupling.tau_b
        if m <= n:
            return cls(operator.p, operator.a_hat, operator.b_hat, False, tau_a, tau_b)
        return cls(operator.p.T, operator.b_hat, operator.a_hat, True, tau_b, tau_a)

    @property
    def balanced(self) -> bool:
        """`kappa = 1`: `N` is singular with null vector `sqrt(q)`."""
        return self.tau_p == 1.0 and self.tau_q == 1.0

    @property
    def kappa(self) -> float:
        """`tau_p tau_q`: `N = I - kappa Pt^T Pt`."""
        return self.tau_p * self.tau_q

    def eigenvalues(self, gaps: Float[Array, " k"]) -> Float[Array, " k"]:
        """`N`'s eigenvalues `1 - kappa s^2` on singular directions of `Pt`
        with `gaps = 1 - s^2` (the gaps themselves when balanced)."""
        if self.balanced:
            return gaps
        return (1 - self.kappa) + self.kappa * gaps

    @property
    def null_vector(self) -> Float[Array, " small"]:
        """The top right singular vector of `Pt` (`s_1 = 1`), unit: it spans
        the null space of `N` when balanced (unbalanced, `N`'s eigenvalue
        there is `1 - kappa`)."""
        root = jnp.sqrt(self.q)
        return root / jnp.linalg.norm(root)

    def project(self, z: Float[Array, " small"]) -> Float[Array, " small"]:
        """Remove the null-vector component (balanced; unbalanced, `z` itself)."""
        if not self.balanced:
            return z
        u = self.null_vector
        return z - jnp.vdot(u, z) * u

    @property
    def support(self):
        """The points with mass, `(on x, on y)` (`Coupling.support`)."""
        big, small = self.q_op.coupling.support
        return (small, big) if self.swapped else (big, small)

    @property
    def root_diagonal(self) -> tuple[Float[Array, " big"], Float[Array, " small"]]:
        """`(sqrt(p / tau_p), sqrt(q / tau_q))`: the square roots of H's diagonal
        on the larger and the smaller side, by which `N` is normalised."""
        return jnp.sqrt(self.p / self.tau_p), jnp.sqrt(self.q / self.tau_q)

    def pt_mv(self, z: Float[Array, " small"]) -> Float[Array, " big"]:
        """`Pt z` (one pass)."""
        return self.q_op.mv(z / jnp.sqrt(self.q)) / jnp.sqrt(self.p)

    def pt_rmv(self, w: Float[Array, " big"]) -> Float[Array, " small"]:
        """`Pt^T w` (one pass)."""
        return self.q_op.T.mv(w / jnp.sqrt(self.p)) / jnp.sqrt(self.q)

    def _products(self, z: Float[Array, " small *k"]):
        """`(Q y, Pt^T Pt z)` with `y = z / sqrt(q)`, in one streaming pass."""
        root_q = jnp.sqrt(self.q).reshape((-1,) + (1,) * (z.ndim - 1))
        q_y, out = schur_apply(self.q_op.coupling, z / root_q, 1 / self.p)
        return q_y, out / root_q

    def gram(self, z: Float[Array, " small *k"]) -> Float[Array, " small *k"]:
        """`Pt^T Pt z` (one pass; `z` a vector or a thin matrix of columns)."""
        return self._products(z)[1]

    def _gram_scaled(self, gram):
        return gram if self.balanced else self.kappa * gram

    def mv(self, z: Float[Array, " small"]) -> Float[Array, " small"]:
        """`N z`, the null vector projected out when balanced (one pass)."""
        return self.project(z - self._gram_scaled(self.gram(z)))

    def mv_and_image(self, z: Float[Array, " small"]):
        """`(N z, Q (z / sqrt(q / tau_q)))` in one pass: the product and what
        `recover` needs of the same `z` (CG's final residual and the recovery
        share it)."""
        q_y, out = self._products(z)
        if not self.balanced:
            q_y = q_y * jnp.sqrt(self.tau_q)
        return self.project(z - self._gram_scaled(out)), q_y

    def reduce(
        self, r: Float[Array, " n"], s: Float[Array, " m"],
        moved: Float[Array, " small"] | None = None,
    ) -> Float[Array, " small"]:
        """Right-hand side of the normalised system (orthogonal to the null
        vector when balanced): `(small - tau_p Q^T (big / p)) / sqrt(q / tau_q)`.

        `moved`: `Q^T (big / p)` when already computed, else one pass.
        """
        big, small = (s, r) if self.swapped else (r, s)
        moved = self.q_op.T.mv(big / self.p) if moved is None else moved
        if not self.balanced:
            moved = self.tau_p * moved
        return self.project((small - moved) / self.root_diagonal[1])

    def rounding_level(self, r: Float[Array, " n"], s: Float[Array, " m"]) -> Float[Array, ""]:
        """Absolute residual below which the reduced right-hand side is rounding noise.

        `reduce` subtracts two terms of norm up to `|D^-1/2 [r; s]|` (`D` H's
        diagonal); its result carries rounding error of a few machine
        epsilons times that.
        """
        big, small = (s, r) if self.swapped else (r, s)
        scale = jnp.sqrt(
            jnp.sum(big**2 * self.tau_p / self.p) + jnp.sum(small**2 * self.tau_q / self.q)
        )
        return 4 * jnp.finfo(scale.dtype).eps * scale

    def recover(
        self, z: Float[Array, " small"], r: Float[Array, " n"], s: Float[Array, " m"],
        image: Float[Array, " big"] | None = None,
    ):
        """`(df, dg)` from the normalised solution `z`, gauge fixed when
        balanced. `image`: `Q (z / sqrt(q / tau_q))` when already computed
        (`mv_and_image`), else one pass."""
        big = s if self.swapped else r
        d_small = z / self.root_diagonal[1]
        image = self.q_op.mv(d_small) if image is None else image
        d_big = self.tau_p * (big - image) / self.p
        df, dg = (d_small, d_big) if self.swapped else (d_big, d_small)
        if not self.balanced:
            return df, dg
        return fix_gauge(df, dg, self.support)


def reduced_system(
    operator: HOperator, r: Float[Array, " n"], s: Float[Array, " m"],
    options: dict | None = None,
) -> tuple[NormalisedSchur, Float[Array, " n"], Float[Array, " m"], Float[Array, " small"]]:
    """`(schur, r, s, b)`: the normalised Schur complement of `operator`,
    `[r; s]` moved into H's range (`project_range`), and the reduced
    right-hand side `b = schur.reduce(r, s)`, the system a Schur-based solver
    iterates on. Recover `(df, dg)` from its solution `z` with
    `schur.recover(z, r, s)`.

    `options`: the solver's lineax options (`solve_split`'s). When an
    ot_matfree derivative rule computed `Q^T (big / p)` and `Q^T (1 / p)`
    for this `[r; s]` in its own pass (`share_pass`), they replace
    `reduce`'s pass: moving into the range shifts `big` by a constant `c`,
    and `Q^T ((big + c) / p) = Q^T (big / p) + c Q^T (1 / p)`.
    """
    pushed = None if options is None else options.get(_PUSHED)
    schur = NormalisedSchur.from_h(operator)
    if not schur.balanced:
        # H is nonsingular: every right-hand side is in its range.
        moved = None if pushed is None else pushed[0]
        return schur, r, s, schur.reduce(r, s, moved)
    # Shifted on the points with mass only (`project_range`).
    mask_r, mask_s = operator.support
    shift = range_shift(r, s, (mask_r, mask_s))
    r, s = r - jnp.where(mask_r, shift, 0), s + jnp.where(mask_s, shift, 0)
    moved = None
    if pushed is not None:
        # `Q^T ((big + c 1_supp) / p)`: the zero-mass rows of `Q` are not shifted.
        to_big, to_one = pushed
        moved = to_big + (shift if schur.swapped else -shift) * to_one
    return schur, r, s, schur.reduce(r, s, moved)
