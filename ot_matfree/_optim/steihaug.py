"""The Newton-CG descent: truncated (Steihaug) CG on Hessian-vector products.

Optimiser layer. `NewtonCGDescent` is an `optimistix.AbstractDescent`: given
the gradient `g` and the Hessian `H` as a linear operator (only `H.mv` is
used), it solves `H p = -g` by conjugate gradients, stopping

- when `|H p + g| <= eta |g|` (inexact Newton, forcing term `eta`);
- on non-positive curvature `<d, H d> <= 0` (Steihaug): the iterate so far is
  a descent direction, or `-g` if it happens on the first CG step
  (Nocedal & Wright, *Numerical Optimization*, Algorithm 7.1);
- after `max_steps` CG steps (the iterate is still a descent direction).

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
from jaxtyping import Array, Int, PyTree, Scalar

from ._tree import tree_axpy, tree_dot, tree_scale, tree_where

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
    result: optx.RESULTS


def steihaug_cg(hvp, grad, eta, max_steps: int):
    """Truncated CG for `H p = -grad`; returns `(p, num_hvps, num_steps, negative, finite)`."""
    g_norm = jnp.sqrt(tree_dot(grad, grad))
    dtype = g_norm.dtype
    zero = tree_scale(jnp.zeros((), dtype), grad)
    minus_g = tree_scale(-jnp.ones((), dtype), grad)
    tol = eta * g_norm

    def cond(carry):
        j, _, _, _, rr, done, *_ = carry
        return (j < max_steps) & ~done & ~(jnp.sqrt(rr) <= tol)

    def body(carry):
        j, z, r, d, rr, done, hvps, steps, negative, finite = carry
        hd = hvp(d)
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

    zero_i = jnp.array(0)
    init = (zero_i, zero, grad, minus_g, g_norm**2, jnp.array(False), zero_i, zero_i,
            jnp.array(False), jnp.isfinite(g_norm))
    _, z, _, _, _, _, hvps, steps, negative, finite = jax.lax.while_loop(cond, body, init)
    # Zero curvature before any step: fall back to steepest descent.
    p = tree_where(steps == 0, minus_g, z)
    return p, hvps, steps, negative, finite


class NewtonCGDescent(optx.AbstractDescent):
    """Inexact Newton direction by truncated CG on the operator `f_info.hessian`.

    **Arguments:**

    - `forcing`: `"eisenstat-walker"` (the default) or a fixed relative CG
      tolerance in (0, 1).
    - `eta_max`: cap of the Eisenstat-Walker forcing term.
    - `max_steps`: CG steps per direction; `None` means the number of
      parameters (CG is exact after that many steps in exact arithmetic).
    """

    forcing: str | float = eqx.field(static=True, default="eisenstat-walker")
    eta_max: float = eqx.field(static=True, default=0.9)
    max_steps: int | None = eqx.field(static=True, default=None)

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

    def init(self, y, f_info_struct) -> NewtonCGDescentState:
        del f_info_struct
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

    def query(self, y, f_info, state: NewtonCGDescentState) -> NewtonCGDescentState:
        if not isinstance(f_info, optx.FunctionInfo.EvalGradHessian):
            raise ValueError("`NewtonCGDescent` needs `FunctionInfo.EvalGradHessian`.")
        grad, hessian = f_info.grad, f_info.hessian
        grad_norm = jnp.sqrt(tree_dot(grad, grad))
        eta = self.forcing_term(grad_norm, state)
        size = sum(leaf.size for leaf in jax.tree.leaves(y))
        max_steps = size if self.max_steps is None else self.max_steps
        p, hvps, steps, negative, finite = steihaug_cg(hessian.mv, grad, eta, max_steps)
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
            result=result,
        )

    def step(self, step_size: Scalar, state: NewtonCGDescentState):
        return tree_scale(step_size, state.direction), state.result


def hessian_operator(hvp, y) -> lx.FunctionLinearOperator:
    """The symmetric operator `v -> H v` on pytrees shaped like `y`."""
    return lx.FunctionLinearOperator(hvp, jax.eval_shape(lambda: y), lx.symmetric_tag)

