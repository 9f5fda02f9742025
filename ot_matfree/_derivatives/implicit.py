"""Forward-mode (JVP) rules for the Sinkhorn potentials and for H-solves.

Derivative-rule layer, like `hvp.py`. These make JAX's own forward mode
correct through code that uses the potentials: the potentials' tangent is the
implicit-function solution (one H-solve, docs/math.md "Joint Hessian-vector
product", steps 1-3) instead of a differentiation of the Sinkhorn loop, and
the tangent of `H^+ rhs` is `H^+ (d rhs - dH H^+ rhs)` (one more H-solve; the
null vector `(1_n, -1_m)` of H does not move, so this is exact for the
pseudo-inverse). Everything else (streaming reductions) is differentiated by
JAX in forward mode, which keeps memory O((n + m) d + block * m).

Both rules are forward-only: their tangents contain an iterative solve (a
`while_loop`), which JAX cannot transpose. Reverse mode through them raises
`REVERSE_OVER_REVERSE_MSG`.
"""

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp

from .._forward.config import Config
from .hvp import check_zero_mass_tangents, potential_tangents, solve_h, weight_ratios
from .._linear.operators import HOperator, h_operator
from .._stream.pair import schur_rhs

#: Raised when a second derivative is requested in reverse mode.
REVERSE_OVER_REVERSE_MSG = (
    "ot_matfree: reverse mode over a first derivative (jax.grad(jax.grad(f)), "
    "jax.jacrev(jax.grad(f)), jax.vjp of a gradient) is not supported: second derivatives "
    "contain an iterative linear solve (a while_loop) that JAX cannot transpose. Use forward "
    "over reverse instead: jax.jvp(jax.grad(f), ...), jax.jacfwd(jax.grad(f)) or "
    "jax.hessian(f) (which is jacfwd(jacrev(f)))."
)

_EPS_TANGENT_MSG = (
    "ot_matfree does not differentiate with respect to `epsilon`; pass it as a constant "
    "(wrap it in jax.lax.stop_gradient if it is computed from differentiated values)."
)


def check_no_epsilon_tangent(t_eps) -> None:
    if t_eps is not None:
        raise ValueError(_EPS_TANGENT_MSG)


def forward_only(tangents):
    """Identity on tangents; raises `REVERSE_OVER_REVERSE_MSG` if transposed."""
    return eqxi.nondifferentiable_backward(tangents, msg=REVERSE_OVER_REVERSE_MSG)


def _zeros(t, p):
    return jnp.zeros_like(p) if t is None else t


@eqx.filter_custom_jvp
def potentials(x, y, a, b, epsilon, *, config: Config):
    """Sinkhorn potentials `(f, g)` whose JVP is the implicit-function tangent."""
    coupling = config.solve(x, y, a, b, epsilon)
    return coupling.f, coupling.g


@potentials.def_jvp
def _potentials_jvp(primals, tangents, *, config: Config):
    x, y, a, b, epsilon = primals
    tx, ty, ta, tb, t_eps = tangents
    check_no_epsilon_tangent(t_eps)
    coupling = config.solve(x, y, a, b, epsilon)
    # `None` tangents: terms skipped. H's marginals and the product reducing
    # the H-system to its smaller side come from the same pass.
    ta, tb = check_zero_mass_tangents(coupling, ta, tb, "`sinkhorn_distance`'s HVP")
    # Solved in the reduced potentials (`weight_ratios`), then `df = dh_f + eps da / a`.
    r, s, a_hat, b_hat, pushed = schur_rhs(coupling, tx, ty, *weight_ratios(coupling, ta, tb))
    dh_f, dh_g, _ = solve_h(
        coupling, r, s, linear_solver=config.linear_solver, throw=config.throw,
        operator=HOperator(coupling, a_hat, b_hat), pushed=pushed,
    )
    df, dg = potential_tangents(coupling, dh_f, dh_g, ta, tb)
    return (coupling.f, coupling.g), forward_only((df, dg))


def _h_apply(x, y, f, g, a, b, epsilon, u, v, config: Config):
    """`H [u; v]` for the coupling of `(x, y, f, g)`, differentiable in all."""
    h = h_operator(config.coupling(x, y, a, b, f, g, epsilon))
    out = h.mv(jnp.concatenate([u, v]))
    return out[: u.shape[0]], out[u.shape[0] :]


@eqx.filter_custom_jvp
def h_solve(x, y, f, g, a, b, epsilon, r, s, *, config: Config):
    """`[u; v] = H^+ [r; s]` (minimum-norm least squares) for the coupling `(x, y, f, g)`.

    `a`, `b` only complete the `Coupling`; H depends on them through `f`, `g`.
    """
    coupling = config.coupling(x, y, a, b, f, g, epsilon)
    u, v, _ = solve_h(coupling, r, s, linear_solver=config.linear_solver, throw=config.throw)
    return u, v


@h_solve.def_jvp
def _h_solve_jvp(primals, tangents, *, config: Config):
    x, y, f, g, a, b, epsilon, r, s = primals
    tx, ty, tf, tg, _, _, t_eps, tr, ts = tangents
    check_no_epsilon_tangent(t_eps)
    u, v = h_solve(x, y, f, g, a, b, epsilon, r, s, config=config)
    # d(H^+ rhs) = H^+ (d rhs - dH u): H's null vector is constant, and both
    # d rhs (when sum(r) = sum(s) identically) and dH u are orthogonal to it.
    # Only arguments with a tangent are differentiated: zero tangents are
    # never materialised (see `_stream/pair.py` on the float32 CPU bug).
    primal_args, tangent_args = (x, y, f, g), (tx, ty, tf, tg)
    live = [i for i, t in enumerate(tangent_args) if t is not None]

    def h_times_uv(*live_args):
        args = list(primal_args)
        for i, arg in zip(live, live_args):
            args[i] = arg
        return _h_apply(*args, a, b, epsilon, u, v, config)

    if live:
        _, (dhu, dhv) = jax.jvp(
            h_times_uv,
            tuple(primal_args[i] for i in live),
            tuple(tangent_args[i] for i in live),
        )
    else:
        dhu, dhv = jnp.zeros_like(u), jnp.zeros_like(v)
    rhs = (_zeros(tr, r) - dhu, _zeros(ts, s) - dhv)
    du, dv = h_solve(x, y, f, g, a, b, epsilon, *rhs, config=config)
    return (u, v), forward_only((du, dv))
