"""Leading singular triplets of the normalised coupling, matrix-free.

`Pt = diag(p)^-1/2 Q diag(q)^-1/2` (oriented (larger side) x (smaller side),
see `schur.py`) has `s_1 = 1` with known vectors `sqrt(q)`, `sqrt(p)`. The
spectral solvers need the next ones, `s_2 >= ... >= s_{k+1}`: the directions
in which the H-matrix is nearly singular.

Method: block Krylov (block Lanczos with full reorthogonalisation) on
`A = Pi Pt^T Pt Pi`, `Pi` the projector that deflates the known null vector,
from a random start block of `k + oversample` columns, followed by a
Rayleigh-Ritz step. Why not matfree's single-vector Lanczos
(`matfree.decomp.tridiag_sym` / `bidiag` + `matfree.eig`): a Krylov space
grown from one vector holds one direction per distinct eigenvalue, so it
cannot find both copies of a repeated singular value, and symmetric point
sets (the circle of Li et al.'s Example 12, any lattice) have every `s_k`
doubled. Missing one copy of a direction with `s_k ~ 1` is exactly what
makes a truncated solve blow up. A block start resolves multiplicities up to
the block size, and every block product is one streaming pass with a thin
matrix, which shares the `exp` of each block of `P` across all columns
(much cheaper per vector than a pass per Lanczos step).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._core.checks import error_if_failed
from .._core.coupling import Coupling, upstream_status
from .operators import HOperator, h_operator
from .._core.results import RESULTS
from .._core.sharding import auto_partitioned
from .schur import NormalisedSchur

#: Krylov depth (number of blocks) of `spectrum` and of the spectral solvers
#: when none is given: `2 * NUM_BLOCKS` thin passes per spectrum.
NUM_BLOCKS = 8
#: Extra columns of the Krylov block when none are given (the accuracy of the
#: `k`-th direction, and the multiplicity of a singular value resolved for sure).
OVERSAMPLE = 10


class Spectrum(eqx.Module):
    """Leading singular triplets of the normalised coupling `Pt`.

    `Pt = diag(a_hat)^-1/2 P diag(b_hat)^-1/2` when `m <= n`; when `n < m` the
    triplets are those of `Pt^T` (the "smaller side" is then `x`), which have
    the same singular values. Entry 0 is always the exact top triplet
    (`s_1 = 1`, `v_1 = sqrt(q) / |sqrt(q)|`).

    **Fields:**

    - `singular_values`: `(k + 1,)`, `1 = s_1 >= s_2 >= ... >= s_{k+1}`.
    - `gaps`: `(k + 1,)`, `1 - s_i^2`, the eigenvalues of the normalised
      Schur complement `N = I - Pt^T Pt`, computed without forming `s_i`
      (accurate to about machine epsilon in absolute terms).
    - `v`: `(small, k + 1)` orthonormal singular vectors on the smaller side.
    - `u`: `(big, k + 1)`, `Pt v / s` on the larger side.
    - `residuals`: `(k + 1,)`, `|Pi Pt^T Pt v_i - s_i^2 v_i|`, the Ritz
      residuals (0 for the exact entry 0); an eigenvalue estimate is within
      this of a true `s^2`.
    - `swapped`: `True` when the smaller side is `x` (`n < m`).
    - `result`: `RESULTS.successful`, `nonfinite_spectrum`, or (from
      `spectrum`) `coupling_not_converged`.

    The normalised H-matrix `D^-1/2 H D^-1/2`, `D = diag(a_hat, b_hat)`, has
    eigenvalues `1 +- s_i` (and 1), so its largest is `1 + s_1 = 2` and its
    smallest positive one is `1 - s_2`.
    """

    singular_values: Float[Array, " k1"]
    gaps: Float[Array, " k1"]
    v: Float[Array, "small k1"]
    u: Float[Array, "big k1"]
    residuals: Float[Array, " k1"]
    result: RESULTS
    swapped: bool = eqx.field(static=True)

    @property
    def rank(self) -> int:
        """Number of computed directions besides the exact top one."""
        return self.singular_values.shape[0] - 1

    @property
    def smallest_eigenvalue(self) -> Float[Array, ""]:
        """`1 - s_2`: smallest positive eigenvalue of the normalised H-matrix.

        For uniform weights and `n = m`, `H = (normalised H) / n`, so the
        smallest positive eigenvalue of `H` itself is this divided by `n`.
        """
        return self.one_minus_s[1]

    @property
    def one_minus_s(self) -> Float[Array, " k1"]:
        """`1 - s_i`, computed as `gaps / (1 + s_i)` (no cancellation)."""
        return self.gaps / (1 + self.singular_values)

    @property
    def condition_number(self) -> Float[Array, ""]:
        """`2 / (1 - s_2)`: the condition number of the normalised H-matrix on
        the complement of its null vector (largest eigenvalue `1 + s_1 = 2`
        over smallest positive `1 - s_2`).

        Plain `CG` runs on the normalised Schur complement, whose condition
        number is at most `1 / (1 - s_2^2)`, about a quarter of this when
        `s_2 ~ 1`. Values above ~1e8 (float64) or ~1e3 (float32) mean the
        solve is ill-conditioned: use `SpectralCG` or `TruncatedSVD`.
        Resolution: `1 - s_2` is only known to about machine epsilon.
        """
        return 2 / self.smallest_eigenvalue


def _thin(schur: NormalisedSchur):
    """`Pt` and `Pt^T` on thin matrices (columns are vectors)."""
    root_p, root_q = jnp.sqrt(schur.p)[:, None], jnp.sqrt(schur.q)[:, None]

    def pt_mv(z):
        return schur.q_op.mv(z / root_q) / root_p

    def pt_rmv(w):
        return schur.q_op.T.mv(w / root_p) / root_q

    return pt_mv, pt_rmv


def _orthogonalise(z, basis):
    """Orthonormal columns spanning `z` minus its part in `basis`'s span.

    Two Gram-Schmidt passes, QR, then once more: a block that has collapsed
    to rounding noise (the Krylov space became invariant, e.g. on a small
    problem) turns into harmless extra directions orthogonal to `basis`
    instead of NaNs or a loss of orthogonality.
    """
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    z, _ = jnp.linalg.qr(z)
    for _ in range(2):
        z = z - basis @ (basis.T @ z)
    z, _ = jnp.linalg.qr(z)
    return z


def compute_spectrum(
    operator: HOperator, k: int, *, oversample: int, num_blocks: int,
    key: PRNGKeyArray | None,
) -> Spectrum:
    """`Spectrum` of an H-matrix; see `spectrum` for the arguments."""
    key = jax.random.PRNGKey(0) if key is None else key
    schur = NormalisedSchur.from_h(operator)
    pt_mv, pt_rmv = _thin(schur)
    small = schur.q.shape[0]
    dtype = schur.q.dtype
    if not 0 <= k <= small - 1:
        raise ValueError(
            f"`k` must be between 0 and {small - 1} (the smaller side has {small} points, "
            f"one direction is the exact null vector), got {k}."
        )
    null = schur.null_vector[:, None]
    if k == 0:
        one, zero = jnp.ones((1,), dtype), jnp.zeros((1,), dtype)
        return Spectrum(one, zero, null, pt_mv(null), zero, RESULTS.successful, schur.swapped)
    # The Krylov basis lives in the (small - 1)-dimensional complement; when
    # it would fill it, take the whole complement (exact Rayleigh-Ritz).
    width = k + oversample
    if width * num_blocks >= small - 1:
        width, depth = small - 1, 0
    else:
        depth = num_blocks - 1
    total = width * (depth + 1)

    start = jax.random.normal(key, (small, width), dtype)
    basis = jnp.zeros((small, total), dtype)
    basis = basis.at[:, :width].set(_orthogonalise(start, null))

    def grow(j, basis):
        block = jax.lax.dynamic_slice_in_dim(basis, j * width, width, axis=1)
        z = schur.gram(block)  # Pt^T Pt in one pass
        z = _orthogonalise(z, jnp.concatenate([null, basis], axis=1))
        return jax.lax.dynamic_update_slice_in_dim(basis, z, (j + 1) * width, axis=1)

    basis = jax.lax.fori_loop(0, depth, grow, basis)
    # Rayleigh-Ritz on the whole Krylov basis: one thin pass.
    w = pt_mv(basis)
    gram = w.T @ w
    theta, y = jnp.linalg.eigh((gram + gram.T) / 2)
    theta, y = theta[::-1][:k], y[:, ::-1][:, :k]
    v = basis @ y
    wy = w @ y
    # N's Rayleigh quotients directly: 1 - |Pt v|^2, clipped to [0, 1].
    gaps = jnp.clip(1 - jnp.sum(wy * wy, axis=0), 0, 1)
    s = jnp.sqrt(1 - gaps)
    u = wy / jnp.where(s > 0, s, 1)
    av = pt_rmv(wy)
    av = av - null @ (null.T @ av)
    residuals = jnp.linalg.norm(av - v * theta, axis=0)
    zero = jnp.zeros((1,), dtype)
    u = jnp.concatenate([pt_mv(null), u], axis=1)
    v = jnp.concatenate([null, v], axis=1)
    finite = jnp.all(jnp.isfinite(u)) & jnp.all(jnp.isfinite(v)) & jnp.all(jnp.isfinite(s))
    return Spectrum(
        singular_values=jnp.concatenate([jnp.ones((1,), dtype), s]),
        gaps=jnp.concatenate([zero, gaps]),
        v=v,
        u=u,
        residuals=jnp.concatenate([zero, residuals]),
        result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite_spectrum),
        swapped=schur.swapped,
    )


@eqx.filter_jit
@auto_partitioned
def spectrum(
    coupling: Coupling | HOperator,
    k: int,
    *,
    oversample: int = OVERSAMPLE,
    num_blocks: int = NUM_BLOCKS,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
) -> Spectrum:
    """The `k + 1` leading singular triplets of the normalised coupling, matrix-free.

    `Pt = diag(a_hat)^-1/2 P diag(b_hat)^-1/2`; `s_1 = 1` is known exactly and
    deflated, block Krylov finds `s_2, ..., s_{k+1}` (the method and why it is
    a block method: `ot_matfree/_linear/block_krylov.py`).
    Costs `2 * num_blocks` streaming passes with thin matrices of
    `k + oversample` columns, plus two, and `O((n + m)(k + oversample)
    num_blocks)` memory. `SpectralCG` and `TruncatedSVD` compute it in their
    `init`, once per coupling.

    **Arguments:**

    - `coupling`: a solved `Coupling` (or its `h_operator`).
    - `k`: number of directions after the top one, `0 <= k < min(n, m)`.
    - `oversample`: extra columns in the Krylov block (accuracy of the `k`-th
      direction; also the largest multiplicity of a singular value that is
      resolved for sure).
    - `num_blocks`: Krylov depth (number of blocks, >= 1); the default is
      the spectral solvers' (`NUM_BLOCKS`, 8), so `spectrum` reports the
      directions `SpectralCG` and `TruncatedSVD` deflate. Fewer blocks are
      cheaper but can overestimate `1 - s_2` when it is small, and so
      underestimate the condition number (`benchmarks/float32_stress.py`
      records 4 blocks against 16 and 64). When the Krylov basis would reach
      `(k + oversample) * num_blocks >= min(n, m) - 1` columns, the whole
      complement of the null vector is used and the result is exact (small
      problems).
    - `key`: PRNG key for the random start block (default `PRNGKey(0)`).
    - `throw`: raise when the spectrum is not finite or when the coupling's
      own Sinkhorn solve did not converge; with `throw=False` the status is
      in `Spectrum.result`.

    **Returns:** a `Spectrum`: `singular_values`, `gaps = 1 - s^2`, vectors
    `v` (smaller side) and `u` (larger side), Ritz `residuals`, and the
    properties `smallest_eigenvalue` (`1 - s_2`, normalised H) and
    `condition_number` (`2 / (1 - s_2)`, normalised H on the complement of
    its null vector). For an unbalanced coupling the spectrum is the same
    (that of `Pt`, which `tau` does not change), and these two properties
    describe the balanced H-matrix; the unbalanced one's normalised Schur
    complement has eigenvalues `1 - tau_a tau_b s^2` in `[1 - tau_a tau_b, 1]`
    (`s_1 = 1` included), so its condition number is at most
    `1 / (1 - tau_a tau_b)` (docs/unbalanced.md).
    """
    if oversample < 0:
        raise ValueError(f"`oversample` must be >= 0, got {oversample}.")
    if num_blocks < 1:
        raise ValueError(f"`num_blocks` must be >= 1, got {num_blocks}.")
    operator = coupling if isinstance(coupling, HOperator) else h_operator(coupling)
    spec = compute_spectrum(operator, k, oversample=oversample, num_blocks=num_blocks, key=key)
    upstream = upstream_status(operator.coupling)
    spec = eqx.tree_at(
        lambda sp: sp.result, spec,
        RESULTS.where(upstream == RESULTS.successful, spec.result, upstream),
    )
    if throw:
        spec = error_if_failed(spec, spec.result)
    return spec
