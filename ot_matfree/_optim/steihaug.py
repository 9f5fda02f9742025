"""The Newton-CG descent: truncated (Steihaug) CG on Hessian-vector products.

Optimiser layer. `NewtonCGDescent` is an `optimistix.AbstractDescent`: given
the gradient `g` and the Hessian `H` as a linear operator (only `H.mv` is
used), it solves `H p = -g` by conjugate gradients, stopping

- when `|H p + g| <= eta |g|` (inexact Newton, forcing term `eta`);
- on non-positive curvature `<d, H d> <= 0` (Steihaug): the iterate so far is
  a descent direction, or `-g` if it happens on the first CG step
  (Nocedal & Wright, *Numerical Optimization*, Algorithm 7.1);
- after `max_steps` CG steps (the iterate is still a descent direction).

Where the minimiser would stop (`query(..., probe=True)`), the loop runs a
few Lanczos steps from a random start instead of CG: a stationary point with
clearly negative curvature (a saddle, a maximum; the gradient, zero or
confined to a subspace by symmetry, shows no curvature to CG) gets a
negative-curvature direction in place of the Newton step. The probe shares
CG's loop, so `H.mv` is traced once.

The forcing term is Eisenstat & Walker's choice 2 (SIAM J. Sci. Comput. 17,
1996): `eta_k = gamma (|g_k| / |g_{k-1}|)^2`, safeguarded by
`gamma eta_{k-1}^2` when that exceeds 0.1 and capped at `eta_max`, or a fixed
relative tolerance.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Int, PyTree, Scalar

from ._tree import check_one_dtype, tree_axpy, tree_dot, tree_scale, tree_where

_EW_GAMMA, _EW_ETA0 = 0.9, 0.5


class NewtonCGDescentState(eqx.Module):
    """`NewtonCGDescent`'s state: the last direction, the forcing-term history
    and the inner CG counters (the minimiser's own state, `NewtonCGState`,
    holds it as `descent_state`)."""

    direction: PyTree[Array]
    grad_norm: Scalar
    eta: Scalar
    num_queries: Int[Array, ""]
    num_hvps: Int[Array, ""]
    num_cg_steps: Int[Array, ""]
    num_negative_curvature: Int[Array, ""]
    num_saddle_escapes: Int[Array, ""]
    result: optx.RESULTS


def _cg_body(hd, carry):
    """One Steihaug CG update of `carry` given the product `hd = H d`."""
    j, z, r, d, rr, _, hvps, steps, negative, finite = carry
    curv = tree_dot(d, hd)
    is_finite = jnp.isfinite(curv)
    stop = (curv <= 0) | ~is_finite
    # Negative curvature on the first step: steepest descent scaled by
    # |g|^2 / |<g, H g>| (as scipy's Newton-CG), not the raw gradient.
    first = (j == 0) & (curv < 0)
    z = tree_where(first, tree_scale(rr / jnp.where(first, -curv, 1), d), z)
    alpha = rr / jnp.where(stop, 1, curv)
    z_new = tree_axpy(alpha, d, z)
    r_new = tree_axpy(alpha, hd, r)
    rr_new = tree_dot(r_new, r_new)
    d_new = tree_axpy(rr_new / jnp.where(rr > 0, rr, 1), d, tree_scale(-1, r_new))
    return (
        j + 1,
        tree_where(stop, z, z_new),
        tree_where(stop, r, r_new),
        tree_where(stop, d, d_new),
        jnp.where(stop, rr, rr_new),
        stop,
        hvps + 1,
        steps + jnp.where(stop & ~first, 0, 1),
        negative | (curv <= 0),
        finite & is_finite,
    )


def steihaug_cg(hvp, grad, eta, max_steps: int):
    """Truncated CG for `H p = -grad`; returns `(p, num_hvps, num_steps, negative, finite)`."""
    p, hvps, steps, negative, finite, _ = _steihaug_or_probe(hvp, grad, eta, max_steps)
    return p, hvps, steps, negative, finite


def saddle_threshold(dtype) -> float:
    """Relative curvature below which the probe calls a point a saddle:
    `eps ** (1/4)` of the dtype (1.2e-4 in float64, 1.9e-2 in float32), far
    above the rounding of Hessian-vector products (for ot_matfree's losses:
    of their H-solves), so a flat direction of a minimum is never one."""
    return float(jnp.finfo(dtype).eps) ** 0.25


def _lanczos_step(j, w_flat, lz, k: int):
    """One step of the curvature probe's Lanczos recursion (full
    reorthogonalisation) given `w_flat = H q_j`: the next basis vector,
    `alpha_j`, `beta_j`, and whether the recursion goes on."""
    basis, alphas, betas, scale, active, finite = lz
    tiny = jnp.sqrt(jnp.finfo(w_flat.dtype).eps)
    finite = finite & jnp.all(jnp.isfinite(w_flat))
    alpha = jnp.vdot(basis[j], w_flat)
    w = w_flat
    for _ in range(2):  # full reorthogonalisation, twice (Kahan's rule)
        w = w - basis.T @ (basis @ w)
    beta = jnp.linalg.norm(w)
    scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
    alphas = alphas.at[j].set(jnp.where(active, alpha, jnp.nan))
    # An invariant Krylov space (beta ~ 0) ends the recursion.
    keep = active & (beta > tiny * scale) & (j + 1 < k)
    betas = betas.at[j].set(jnp.where(keep, beta, 0))
    basis = basis.at[j + 1].set(jnp.where(keep, w / jnp.where(keep, beta, 1), 0))
    return basis, alphas, betas, scale, keep & finite, finite


def _escape(lz, k: int, flat_g, probe, y_norm, min_decrease):
    """From the probe's Lanczos state: `(saddle, step, finite)`, whether it
    found negative curvature worth a step (`_steihaug_or_probe`), and that
    step (flat): the Ritz vector of the smallest Ritz value, of length
    `max(y_norm, 1)`, with the sign that does not ascend along `flat_g`."""
    basis, alphas, betas, _, _, finite = lz
    dtype = flat_g.dtype
    # Steps after a breakdown are decoupled (beta = 0); give them a
    # diagonal no smaller than an active Ritz value (as `min_hessian_eigenvalue`).
    filled = jnp.where(jnp.isnan(alphas), jnp.nanmax(alphas), alphas)
    filled = jnp.where(finite, filled, 0)
    tridiag = jnp.diag(filled) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, vecs = jnp.linalg.eigh(tridiag)
    scale = jnp.max(jnp.abs(theta))
    length = jnp.maximum(y_norm, 1).astype(dtype)
    saddle = probe & finite & (theta[0] < -saddle_threshold(dtype) * scale)
    saddle = saddle & (-theta[0] * length**2 / 2 > min_decrease)
    u = basis[:k].T @ vecs[:, 0]
    u = u / jnp.where(saddle, jnp.linalg.norm(u), 1)
    sign = jnp.where(jnp.vdot(flat_g, u) > 0, -1, 1).astype(dtype)
    return saddle, sign * length * u, finite


def _steihaug_or_probe(hvp, grad, eta, max_steps: int, probe=None, probe_steps: int = 0,
                       key=None, y_norm=None, min_decrease=0.0):
    """Steihaug CG for `H p = -grad`, or (where `probe` is true) a curvature probe.

    The probe is `probe_steps` Lanczos steps (full reorthogonalisation) from
    a random start, in the same loop as CG (so `hvp` is traced once). When
    its smallest Ritz value `theta` is below `-saddle_threshold * (largest
    |Ritz value|)`, and the decrease the quadratic model predicts along it,
    `|theta| L^2 / 2` for the length `L = max(y_norm, 1)`, exceeds
    `min_decrease` (rounding-level curvature predicts none), `p` is that
    Ritz vector, scaled to length `L`, with the sign that does not ascend
    along `grad`: a negative-curvature step out of a saddle or a maximum.

    Returns `(p, num_hvps, num_steps, negative, finite, saddle)`.
    """
    g_norm = jnp.sqrt(tree_dot(grad, grad))
    dtype = g_norm.dtype
    zero = tree_scale(jnp.zeros((), dtype), grad)
    minus_g = tree_scale(-jnp.ones((), dtype), grad)
    tol = eta * g_norm
    zero_i = jnp.array(0)
    cg_init = (zero_i, zero, grad, minus_g, g_norm**2, jnp.array(False), zero_i, zero_i,
               jnp.array(False), jnp.isfinite(g_norm))

    def cg_going(cg):
        j, _, _, _, rr, done, *_ = cg
        return (j < max_steps) & ~done & ~(jnp.sqrt(rr) <= tol)

    if probe is None or probe_steps == 0:
        def body(cg):
            return _cg_body(hvp(cg[3]), cg)

        cg = jax.lax.while_loop(cg_going, body, cg_init)
        saddle = jnp.array(False)
    else:
        flat_g, unravel = ravel_pytree(grad)
        size = flat_g.shape[0]
        k = min(probe_steps, size)
        q0 = jax.random.normal(key, (size,), dtype)
        basis = jnp.zeros((k + 1, size), dtype).at[0].set(q0 / jnp.linalg.norm(q0))
        lz_init = (basis, jnp.full(k, jnp.nan, dtype), jnp.zeros(k, dtype),
                   jnp.zeros((), dtype), jnp.array(True), jnp.array(True))

        def cond(carry):
            cg, lz = carry
            return jnp.where(probe, (cg[0] < k) & lz[4], cg_going(cg))

        def body(carry):
            cg, lz = carry
            j = cg[0]
            v = tree_where(probe, unravel(lz[0][jnp.minimum(j, k)]), cg[3])
            hv = hvp(v)
            cg_next = _cg_body(hv, cg)
            lz_next = _lanczos_step(jnp.minimum(j, k - 1), ravel_pytree(hv)[0], lz, k)
            # A probe step only counts the product; a CG step leaves the probe alone.
            probed = cg[:6] + (cg[6] + 1,) + cg[7:]
            probed = (j + 1,) + probed[1:]
            cg = jax.tree.map(lambda a, b: jnp.where(probe, a, b), probed, cg_next)
            lz = jax.tree.map(lambda a, b: jnp.where(probe, a, b), lz_next, lz)
            return cg, lz

        cg, lz = jax.lax.while_loop(cond, body, (cg_init, lz_init))
        saddle, u, finite_probe = _escape(lz, k, flat_g, probe, y_norm, min_decrease)
        escape = unravel(u)
        cg = cg[:9] + (jnp.where(probe, finite_probe, cg[9]),)
    _, z, _, _, _, _, hvps, steps, negative, finite = cg
    # Zero curvature before any step: fall back to steepest descent.
    p = tree_where(steps == 0, minus_g, z)
    if probe is not None and probe_steps != 0:
        p = tree_where(saddle, escape, p)
    return p, hvps, steps, negative, finite, saddle


class NewtonCGDescent(optx.AbstractDescent):
    """Inexact Newton direction by truncated CG on the operator `f_info.hessian`.

    **Arguments:**

    - `forcing`: `"eisenstat-walker"` (the default) or a fixed relative CG
      tolerance in (0, 1).
    - `eta_max`: cap of the Eisenstat-Walker forcing term.
    - `max_steps`: CG steps per direction; `None` means the number of
      parameters (CG is exact after that many steps in exact arithmetic).
    - `probe_steps`: Lanczos steps of the curvature probe that
      `query(..., probe=True)` runs instead of CG (`NewtonCG` asks for it
      where it would stop); `0` turns the probe off.

    `query(y, f_info, state, probe=False, min_decrease=0.0)`: with `probe` (a
    boolean, traceable) the direction is not a Newton step: `probe_steps`
    Lanczos steps on `H` from a random start (capped at the number of
    parameters, where they are exact) look for curvature below
    `-saddle_threshold` times the largest, along which a step of length
    `L = max(|y|, 1)` decreases the quadratic model by more than
    `min_decrease`; found, the direction is that negative-curvature vector,
    of length `L`, pointing downhill along the gradient, and
    `num_saddle_escapes` counts it. A stationary point where `H` has a
    clearly negative eigenvalue is a saddle or a maximum, not a minimum.
    """

    forcing: str | float = eqx.field(static=True, default="eisenstat-walker")
    eta_max: float = eqx.field(static=True, default=0.9)
    max_steps: int | None = eqx.field(static=True, default=None)
    probe_steps: int = eqx.field(static=True, default=10)

    def __check_init__(self):
        if isinstance(self.forcing, str):
            if self.forcing != "eisenstat-walker":
                raise ValueError(
                    f"`forcing` must be 'eisenstat-walker' or a float in (0, 1), got "
                    f"{self.forcing!r}."
                )
        elif not 0 < self.forcing < 1:
            raise ValueError(f"`forcing` must be in (0, 1), got {self.forcing}.")
        if not 0 < self.eta_max < 1:
            raise ValueError(f"`eta_max` must be in (0, 1), got {self.eta_max}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(
                f"`max_steps` (`cg_max_steps` of NewtonCG) must be >= 1 or None, got "
                f"{self.max_steps}."
            )
        if not (isinstance(self.probe_steps, int) and self.probe_steps >= 0):
            raise ValueError(
                f"`probe_steps` (`saddle_probe_steps` of NewtonCG) must be an int >= 0, got "
                f"{self.probe_steps!r}."
            )

    def init(self, y, f_info_struct) -> NewtonCGDescentState:
        del f_info_struct
        check_one_dtype(y, "NewtonCGDescent")
        dtype = jnp.result_type(*jax.tree.leaves(y))
        zero_i = jnp.array(0)
        return NewtonCGDescentState(
            direction=jax.tree.map(jnp.zeros_like, y),
            grad_norm=jnp.zeros((), dtype),
            eta=jnp.asarray(_EW_ETA0, dtype),
            num_queries=zero_i,
            num_hvps=zero_i,
            num_cg_steps=zero_i,
            num_negative_curvature=zero_i,
            num_saddle_escapes=zero_i,
            result=optx.RESULTS.successful,
        )

    def forcing_term(self, grad_norm: Scalar, state: NewtonCGDescentState) -> Scalar:
        dtype = grad_norm.dtype
        if not isinstance(self.forcing, str):
            return jnp.asarray(self.forcing, dtype)
        ratio = grad_norm / jnp.where(state.grad_norm > 0, state.grad_norm, 1)
        eta = _EW_GAMMA * ratio**2
        floor = _EW_GAMMA * state.eta**2
        eta = jnp.where(floor > 0.1, jnp.maximum(eta, floor), eta)
        eta = jnp.minimum(eta, self.eta_max)
        return jnp.where(state.num_queries == 0, jnp.asarray(_EW_ETA0, dtype), eta)

    def query(
        self, y, f_info, state: NewtonCGDescentState, probe=False, min_decrease=0.0
    ) -> NewtonCGDescentState:
        if not isinstance(f_info, optx.FunctionInfo.EvalGradHessian):
            raise ValueError("`NewtonCGDescent` needs `FunctionInfo.EvalGradHessian`.")
        grad, hessian = f_info.grad, f_info.hessian
        grad_norm = jnp.sqrt(tree_dot(grad, grad))
        eta = self.forcing_term(grad_norm, state)
        size = sum(leaf.size for leaf in jax.tree.leaves(y))
        max_steps = size if self.max_steps is None else self.max_steps
        if probe is False or self.probe_steps == 0:
            probe = None
        key = jax.random.fold_in(jax.random.PRNGKey(0), state.num_queries)
        p, hvps, steps, negative, finite, saddle = _steihaug_or_probe(
            hessian.mv, grad, eta, max_steps, probe, self.probe_steps, key,
            jnp.sqrt(tree_dot(y, y)), min_decrease,
        )
        result = optx.RESULTS.where(
            finite, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence
        )
        return NewtonCGDescentState(
            direction=p,
            grad_norm=grad_norm,
            eta=eta,
            num_queries=state.num_queries + 1,
            num_hvps=state.num_hvps + hvps,
            num_cg_steps=state.num_cg_steps + steps,
            num_negative_curvature=state.num_negative_curvature + jnp.where(negative, 1, 0),
            num_saddle_escapes=state.num_saddle_escapes + jnp.where(saddle, 1, 0),
            result=result,
        )

    def step(self, step_size: Scalar, state: NewtonCGDescentState):
        return tree_scale(step_size, state.direction), state.result


def hessian_operator(hvp, y) -> lx.FunctionLinearOperator:
    """The symmetric operator `v -> H v` on pytrees shaped like `y`."""
    return lx.FunctionLinearOperator(hvp, jax.eval_shape(lambda: y), lx.symmetric_tag)

