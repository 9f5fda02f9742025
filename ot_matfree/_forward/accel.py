"""Vector algebra of the accelerated Sinkhorn variants (forward-solve layer).

Pure functions of potentials and marginal errors, no streaming passes: the
step objects of `steps.py` call them between their two half-iterations.

- Over-relaxation ("momentum"): `g <- g + w (T_g(f) - g)`, then
  `f <- f + w (T_f(g) - f)`, `w` in (0, 2) (Thibault et al. 2021). Sinkhorn
  is block Gauss-Seidel on the dual, so this is SOR: if plain Sinkhorn
  contracts by `rho` per iteration, `w = 2 / (1 + sqrt(1 - rho))` gives
  `w - 1`, i.e. `1 - O(sqrt(1 - rho))` instead of `rho` (Lehmann et al.
  2021, eq. 5; Young's SOR theory for 2 x 2 block systems).
- The adaptive rule measures the contraction over windows of `WINDOW`
  iterations and, as long as the over-relaxed iteration contracts, inverts
  Young's relation `(lambda + w - 1)^2 = lambda w^2 rho` for `rho`; `w` only
  grows (an over-estimate costs a rate of `w - 1`, an under-estimate much
  more). A window in which the error grew halves `w - 1` (the safe step),
  and once `w - 1` would fall below `PLAIN_BELOW` sets `w` to exactly 1:
  the loop then takes `T_g(f)` itself, so those iterations are plain
  Sinkhorn bit for bit, with exact columns, and the error reaches plain
  Sinkhorn's rounding floor (halving alone never reached 1 and stalled at
  twice that floor, 1.9e-14 against 9.4e-15 at n = 12). `w` is estimated
  again from the next windows. The window right after a change of `w` is
  not measured (transient).
- Anderson acceleration (type II, Walker & Ni 2011) of the fixed-point map
  `f -> T_f(T_g(f))`: extrapolate from the last `memory` iterates, with a
  small ridge; the history restarts whenever the marginal error grows.
"""

import jax.numpy as jnp

#: Iterations per window of the adaptive momentum rule.
WINDOW = 10
#: Plain iterations (at the target epsilon) before the first estimate.
START = 2 * WINDOW
#: Upper bound on the estimated contraction of plain Sinkhorn (caps `w` at 1.99).
RHO_MAX = 1 - 2.5e-5
#: The safe step halves `w - 1`, and sets `w` to exactly 1 (plain Sinkhorn)
#: once `w - 1` would fall below this.
PLAIN_BELOW = 0.2
#: Ridge of Anderson's normalised Gram system.
RIDGE = 1e-10


def sor_weight(rho):
    """Young's optimal over-relaxation for a Gauss-Seidel contraction `rho`."""
    rho = jnp.clip(rho, 0.0, RHO_MAX)
    return 2 / (1 + jnp.sqrt(1 - rho))


def adapt_momentum(w, err, err_ref, k, settling):
    """`(w, err_ref, settling)` after an iteration at the target epsilon.

    `k` counts the iterations at the target (this one included), `err_ref` is
    the marginal error at the start of the current window of `WINDOW`
    iterations, all of which ran with the same `w`. The window after a change
    of `w` is `settling`: its error mixes the two regimes, so it is not used.
    """
    window_end = k % WINDOW == 0
    rate = (err / err_ref) ** (1.0 / WINDOW)
    contracting = rate < 1  # False on NaN too
    # Young: an eigenvalue `lambda` of SOR with weight w comes from a plain
    # Gauss-Seidel eigenvalue rho = (lambda + w - 1)^2 / (lambda w^2).
    rho = (rate + w - 1) ** 2 / (rate * w**2)
    grown = jnp.maximum(w, sor_weight(rho))
    half = (w - 1) / 2
    backed_off = jnp.where(half < PLAIN_BELOW, 1.0, 1 + half)
    new_w = jnp.where(contracting, grown, backed_off)
    update = window_end & (k >= START) & ~settling
    changed = update & (new_w != w)
    w = jnp.where(update, new_w, w)
    err_ref = jnp.where(window_end, err, err_ref)
    settling = jnp.where(window_end, changed, settling)
    return w, err_ref, settling


def anderson_push(history, count, f, f_mapped):
    """Append the pair `(f, T(f))` to the histories `(F, TF)` (columns, oldest first)."""
    fs, mapped = history
    fs = jnp.concatenate([fs[:, 1:], f[:, None]], axis=1)
    mapped = jnp.concatenate([mapped[:, 1:], f_mapped[:, None]], axis=1)
    return (fs, mapped), jnp.minimum(count + 1, fs.shape[1])


def anderson_mix(history, count, weights):
    """Anderson's extrapolation `TF alpha`, `alpha` minimising `|R alpha|_a` with
    `sum(alpha) = 1`, `R = TF - F`, over the `count` newest columns."""
    fs, mapped = history
    memory = fs.shape[1]
    valid = jnp.arange(memory) >= memory - count
    residuals = jnp.where(valid[None, :], mapped - fs, 0.0)
    gram = residuals.T @ (weights[:, None] * residuals)
    scale = jnp.maximum(jnp.max(jnp.abs(gram)), jnp.finfo(gram.dtype).tiny)
    both = valid[:, None] & valid[None, :]
    eye = jnp.eye(memory, dtype=gram.dtype)
    system = jnp.where(both, gram / scale + RIDGE * eye, eye)
    alpha = jnp.linalg.solve(system, valid.astype(gram.dtype))
    alpha = alpha / jnp.sum(alpha)
    mix = jnp.where(valid[None, :], mapped, 0.0) @ alpha
    # A singular system (NaN weights) falls back to the plain step.
    return jnp.where(jnp.all(jnp.isfinite(alpha)), mix, mapped[:, -1])
