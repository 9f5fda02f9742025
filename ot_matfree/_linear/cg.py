"""Conjugate gradients on the normalised Schur complement.

Why not `lineax.CG`: its stopping rule is componentwise (`|r_i| <= atol +
rtol |b_i|` plus a step-size test), not relative to `|b|`, and its breakdown
guard returns NaN, which is what makes ott-jax's float32 HVPs NaN from
n ~ 3,000. Here the rule is `|r| <= max(rtol |b|, atol)`, breakdown stops the
iteration with the last finite iterate, and the true final residual is
reported. The operators are still lineax operators.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .operators import HOperator
from .base import (
    AbstractHSolver,
    cg_result,
    check_cg_options,
    check_h_operator,
    default_rtol,
)
from .schur import reduced_system


#: Multiple of machine epsilon that counts as a backward error at rounding level.
BACKWARD_ERROR = 8


def conjugate_gradient(
    mv: Callable[[Array], Array],
    b: Float[Array, " k"],
    *,
    rtol: float,
    atol: float | Array,
    max_steps: int,
    preconditioner: Callable[[Array], Array] | None = None,
    x0: Float[Array, " k"] | None = None,
    final_product: Callable[[Array], tuple[Array, Any]] | None = None,
):
    """(Preconditioned) CG for a symmetric PSD `mv` with `|A| <= 1` on a consistent `b`.

    Stops when `|b - A x| <= max(rtol |b|, atol, BACKWARD_ERROR * eps * (|x| + |b|))`,
    after `max_steps`, or on breakdown (`p^T A p <= 0`, which happens once the
    residual is at rounding level). Never divides by zero. The third term is
    a normwise backward error at rounding level (valid because every operator
    here is a normalised Schur complement, `|A| <= 1`): `x` then solves a
    system perturbed at rounding level, as a dense backward-stable solver's
    answer does, and no iteration can do better. It only matters when the
    system is ill-conditioned (`|x| >> |b|`), in float32 or near a
    permutation coupling.

    **Arguments:**

    - `mv`: `z -> A z` (for example `NormalisedSchur.mv`, one pass each).
    - `b`: the right-hand side, in the range of `A` (`reduced_system` gives
      one).
    - `rtol`, `atol`: the stopping rule above (`default_rtol(dtype)` is the
      solvers' `rtol` when none is given; the solvers pass
      `max(atol, schur.rounding_level(r, s))` as `atol`).
    - `max_steps`: iteration cap.
    - `preconditioner`: `r -> M^-1 r`, symmetric positive definite on the
      range of `A` (for example `deflation(schur, v, gaps)`); `None`: none.
    - `x0`: starting point (`None`: zero).
    - `final_product`: `x -> (A x, aux)`, when given, makes the product of
      the true final residual and something else from the same pass (the
      normalised Schur complement's `mv_and_image`, whose `aux` the recovery
      of the solution needs).

    **Returns:** `(x, stats)`, or `(x, stats, aux)` with `final_product`;
    `stats` has `num_steps`, `residual` (the true final `|b - A x| / |b|`, one
    extra product) and `converged` (true residual within twice the tolerance).
    Turn it into a `lineax.RESULTS` with `cg_result(stats, max_steps)`.
    """
    precond = (lambda r: r) if preconditioner is None else preconditioner
    b_norm = jnp.linalg.norm(b)
    tol = jnp.maximum(rtol * b_norm, atol)
    zero = jnp.zeros((), b.dtype)
    eps = jnp.finfo(b.dtype).eps

    def tolerance(x):
        return jnp.maximum(tol, BACKWARD_ERROR * eps * (jnp.linalg.norm(x) + b_norm))

    def cond(state):
        k, x, r, _, _, broken = state
        return (k < max_steps) & (jnp.linalg.norm(r) > tolerance(x)) & ~broken

    def body(state):
        k, x, r, p, gamma, _ = state
        ap = mv(p)
        pap = jnp.vdot(p, ap)
        ok = jnp.isfinite(pap) & (pap > 0)
        alpha = jnp.where(ok, gamma / jnp.where(ok, pap, 1), zero)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        gamma_next = jnp.vdot(r, z)
        beta = jnp.where(gamma > 0, gamma_next / jnp.where(gamma > 0, gamma, 1), zero)
        return k + 1, x, r, z + beta * p, gamma_next, ~ok

    r0 = b if x0 is None else b - mv(x0)
    x0 = jnp.zeros_like(b) if x0 is None else x0
    z0 = precond(r0)
    init = (jnp.asarray(0), x0, r0, z0, jnp.vdot(r0, z0), jnp.asarray(False))
    num_steps, x, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    if final_product is None:
        ax, aux = mv(x), None
    else:
        ax, aux = final_product(x)
    residual_norm = jnp.linalg.norm(b - ax)
    residual = residual_norm / jnp.where(b_norm > 0, b_norm, 1)
    stats = {
        "num_steps": num_steps,
        "residual": residual,
        # Slack of 2: the recurrence residual that stops the loop drifts from
        # the true one by rounding.
        "converged": residual_norm <= 2 * tolerance(x),
    }
    return (x, stats) if final_product is None else (x, stats, aux)


class CGState(eqx.Module):
    """`CG`'s state: the operator (CG has no set-up)."""

    made_by: ClassVar[str] = "CG"
    operator: HOperator


class CG(AbstractHSolver):
    """Conjugate gradients on the normalised Schur complement of the smaller side.

    Each step costs one streaming pass over the coupling (`Pt^T Pt z`, each
    exp computed once; two on sharded clouds, see `_stream.engine.schur_apply`).
    The gauge (null vector) is projected out of every product; the solution
    returned is the minimum-norm one.

    **Arguments:**

    - `rtol`: stop when the residual of the normalised system is below
      `rtol` times its right-hand side. `None`: 1e-10 in float64, 1e-5 in
      float32.
    - `atol`: absolute residual floor (default 0).
    - `max_steps`: iteration cap; reaching it without converging is a
      failure (`lineax.RESULTS.max_steps_reached`).

    A residual at the rounding level of the right-hand side also counts as
    converged (`NormalisedSchur.rounding_level`): the reduced right-hand side
    can cancel to rounding noise (for example the symmetric tangents of a
    divergence's self term), and no iteration can then go below it.

    Stats: `num_steps`, `residual` (the true final residual relative to the
    reduced right-hand side), `converged`.
    """

    rtol: float | None = None
    atol: float = 0.0
    max_steps: int = 1000
    state_type = CGState

    def __check_init__(self):
        check_cg_options(self.rtol, self.atol, self.max_steps)

    def init(self, operator, options):
        return CGState(check_h_operator(operator))

    def solve_split(self, state, r, s, options=None):
        schur, r, s, b = reduced_system(state.operator, r, s, options)
        rtol = default_rtol(r.dtype) if self.rtol is None else self.rtol
        z, stats, image = conjugate_gradient(
            schur.mv, b, rtol=rtol,
            atol=jnp.maximum(self.atol, schur.rounding_level(r, s)), max_steps=self.max_steps,
            final_product=schur.mv_and_image,
        )
        df, dg = schur.recover(z, r, s, image)
        return df, dg, cg_result(stats, self.max_steps), stats
