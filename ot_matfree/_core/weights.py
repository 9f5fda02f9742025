"""Zero weights: how a point without mass is stored, and the support mask.

Layer `_core`, below everything. `check_weights` stores a zero weight as
`zero_weight(dtype)`; the solvers use `support` where a shift must stay off
the points without mass (projections onto the H-matrix's range).
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float


def zero_weight(dtype) -> float:
    """The weight a zero weight is stored as: the cube root of the dtype's
    smallest normal number (2.8e-103 in float64, 2.3e-13 in float32).

    A zero weight has `log a_i = -inf`, and with it `f_i = -inf` and
    `f_i - eps log a_i` undefined. Stored as `ZERO = zero_weight(dtype)`,
    `log a_i` is finite and so is everything computed from it: `f_i` is
    `eps log ZERO` plus the c-transform `-eps LSE_j (g_j - C_ij) / eps`, the
    reduced potential `f_i - eps log a_i` is that c-transform (the gradient in
    `a_i`), and row `i` of `P` is `ZERO` times the conditional coupling
    `b_j exp((h_i + h_j - C_ij) / eps)`, so `P_ij / a_i` stays exact. The
    problem solved differs from the zero-weight one by a mass of `ZERO` per
    zero weight: a change of the value (and derivatives) of about `ZERO`
    times the costs, far below rounding (in float32, 100,000 zero weights
    add a mass of 2.3e-8, a third of float32's rounding of 1). Its square
    is still a normal number, so an entry of `P` between two zero-weight
    points (`ZERO^2` times a kernel value) is still resolved: the self terms
    of `sinkhorn_divergence` have one on the diagonal for each.
    """
    return float(np.cbrt(np.finfo(dtype).tiny))


def support(w: Float[Array, " n"]) -> Bool[Array, " n"]:
    """The points with mass: `w > zero_weight(w.dtype)`, a boolean mask (a
    zero weight is stored as `zero_weight`, so it is `False` exactly there)."""
    return w > zero_weight(w.dtype)


def store_zeros(w: Float[Array, " n"]) -> Float[Array, " n"]:
    """`w` with its zero entries replaced by `zero_weight(w.dtype)` (the
    derivative in `w` is that of `w` itself)."""
    return w + jnp.where(w > 0, 0.0, zero_weight(w.dtype)).astype(w.dtype)


def any_zero(*masks: Bool[Array, " n"]) -> Bool[Array, ""]:
    """Whether any of the `support` masks has a point without mass."""
    return ~jnp.all(jnp.stack([jnp.all(mask) for mask in masks]))
