"""Smallest Hessian eigenvalue by Lanczos on Hessian-vector products.

Optimiser layer. Used by `sgd_newton` to decide when the Hessian is positive
definite without forming it. Lanczos with full reorthogonalisation; unlike
matfree's `tridiag_sym` it stops cleanly when the Krylov space is invariant
(repeated eigenvalues, an isotropic quadratic), where a normalised zero
vector would give NaNs.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar


@eqx.filter_jit
def min_hessian_eigenvalue(
    fn, params: PyTree[Array], *, key: PRNGKeyArray, num_steps: int = 20
) -> Scalar:
    """Smallest Ritz value of the Hessian of `fn` at `params` after `num_steps` Lanczos steps.

    The Hessian is applied through one `jax.linearize(jax.grad(fn))` (for
    ot_matfree's losses: one set of Sinkhorn solves, then one H-solve per
    step). Ritz values lie in the spectrum's range, so the result is an upper
    bound of the smallest eigenvalue, exact (up to rounding) when `num_steps`
    is at least the number of parameters or the Krylov space becomes
    invariant; the extreme Ritz values converge first.

    **Arguments:**

    - `fn`: scalar function of the pytree `params`.
    - `params`: where the Hessian is taken.
    - `key`: JAX random key for the Lanczos start vector.
    - `num_steps`: Lanczos steps (Hessian-vector products), capped at the
      number of parameters.

    **Returns:** the smallest Ritz value (a scalar).
    """
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1, got {num_steps}.")
    flat, unravel = ravel_pytree(params)
    size = flat.shape[0]
    k = min(num_steps, size)
    _, lin = jax.linearize(jax.grad(fn), params)

    def matvec(v):
        return ravel_pytree(lin(unravel(v)))[0]

    q0 = jax.random.normal(key, (size,), flat.dtype)
    basis = jnp.zeros((k + 1, size), flat.dtype).at[0].set(q0 / jnp.linalg.norm(q0))
    tiny = jnp.sqrt(jnp.finfo(flat.dtype).eps)

    def step(j, carry):
        basis, alphas, betas, scale, active = carry
        w = matvec(basis[j])
        alpha = jnp.vdot(basis[j], w)
        for _ in range(2):  # full reorthogonalisation, twice (Kahan's rule)
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        alphas = alphas.at[j].set(jnp.where(active, alpha, jnp.nan))
        # An invariant Krylov space (beta ~ 0) ends the recursion.
        keep = active & (beta > tiny * scale)
        betas = betas.at[j].set(jnp.where(keep, beta, 0))
        basis = basis.at[j + 1].set(jnp.where(keep, w / jnp.where(keep, beta, 1), 0))
        return basis, alphas, betas, scale, keep

    init = (basis, jnp.zeros(k, flat.dtype), jnp.zeros(k, flat.dtype),
            jnp.zeros((), flat.dtype), jnp.array(True))
    _, alphas, betas, _, _ = jax.lax.fori_loop(0, k, step, init)
    # Steps after a breakdown are decoupled (beta = 0); give them a diagonal
    # no smaller than an active Ritz value so they cannot lower the minimum.
    alphas = jnp.where(jnp.isnan(alphas), jnp.nanmax(alphas), alphas)
    tridiag = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(tridiag)[0]
