"""The dual of one entropic OT problem, shared by the forward solvers.

In ott-jax's convention (log-weights inside the potentials) the coupling of
potentials `(f, g)` is `P_ij = exp((f_i + g_j - C_ij) / eps)`, and

- the Sinkhorn updates (c-transforms) are
  `T_f(g)_i = eps log a_i - eps LSE_j (g_j - C_ij) / eps` and
  `T_g(f)_j = eps log b_j - eps LSE_i (f_i - C_ij) / eps`;
- the row sums of `P` are `a_i exp((f_i - T_f(g)_i) / eps)`, so the row
  error `|P 1 - a|_1` comes from an update at no extra pass;
- `reg_ot_cost = <a, f - eps log a> + <b, g - eps log b> + eps (1 - sum P)`
  (ott-jax's `reg_ot_cost`, with the mass correction of an unconverged
  coupling). Writing `w_ij = (f_i + g_j - C_ij) / eps - log a_i - log b_j`
  (so `P = a b^T exp(w)`), the same value is
  `<a b^T, C> - eps sum_ij a_i b_j (expm1(w_ij) - w_ij)`, exactly, for any
  potentials. The first form cancels when epsilon is large: `f` holds
  `eps log a` (size eps log n) plus a part of the size of the costs, so
  float32 at epsilon 1e6 keeps that part to +-0.25 only, and float64 at
  1e300 not at all (0.3.0 reported -23.6 and 3.7e284 for 5.26). The second
  has no such term (`w` is small there and `expm1(w) - w` is of order
  `w^2`). `streamed_value` streams it;
  `DualProblem.reg_ot_cost` keeps the first unless the magnitudes it sums
  are `CANCELLATION` times its result (so the usual problems get the same
  value, bit for bit, as before, at no extra pass).

Unbalanced OT (`tau_a`, `tau_b` < 1, `_core/relaxation.py`): the updates
become `f <- tau_a T_f(g) + (1 - tau_a) eps log a` (the exact maximiser of
the dual in `f`; ott-jax 0.6 omits the second term, docs/unbalanced.md), the
marginal error is measured against the optimal marginals
`a exp(-(f - eps log a) / rho_a)`, and the value is the dual
`<a, Phi_a(f - eps log a)> + <b, Phi_b(g - eps log b)> + eps (sum a sum b - sum P)`.

`DualProblem` holds the data of one solve; plain Sinkhorn (`steps.py`),
Newton steps (`newton.py`) and the symmetric solve (`symmetric.py`) all
update and measure potentials through it.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.costs import AbstractCost, SqEuclidean
from .._core.coupling import BlockSize, Coupling
from .._core.relaxation import conjugate, is_balanced, target
from .._core.sharding import RowSharding
from .._core.weights import any_zero, support
from .._stream.engine import row_logsumexp, stream

#: `DualProblem.reg_ot_cost` switches to the streamed form of the value when
#: the rounding bound of the direct form is this many times larger.
CANCELLATION = 16.0


def marginal_error(row, col, a, b) -> Float[Array, ""]:
    """`|row - a|_1 + |col - b|_1`: the L1 marginal error of a coupling whose
    row and column sums are `row`, `col`."""
    return jnp.sum(jnp.abs(row - a)) + jnp.sum(jnp.abs(col - b))


def settle_zero_mass(potential, sums, weights, log_weights, epsilon):
    """`(potential, sums)` with the entries of zero-weight points
    (`_core/weights.py`) at their c-transforms: `h + eps (log w - log sums)`,
    exact given the other side's potential (a row's sum is `exp(h_i / eps)`
    times a factor without `h_i`), and their sums then equal to their weights.
    No pass: `sums` are the coupling's marginals on this side. Balanced only.

    A zero-weight point's potential does not enter any marginal error (its
    row is of the size of `ZERO`), so the quasi-Newton solvers (Newton
    steps, L-BFGS) keep it out of their steps and settle it this way.
    """
    fix = ~support(weights) & (sums > 0)
    safe = jnp.where(fix, sums, 1.0)
    potential = jnp.where(fix, potential + epsilon * (log_weights - jnp.log(safe)), potential)
    return potential, jnp.where(fix, weights, sums)


def update_error(weights, f, f_next, epsilon, tau: float = 1.0) -> Float[Array, ""]:
    """`|P 1 - a_opt|_1` of the coupling `(f, g)` from `f_next`, the update of
    `f` for this `g` (`weights` is `a`).

    Balanced: `a_opt = a`, `f_next = T_f(g)` and the row sums are
    `a_i exp((f_i - f_next_i) / eps)`. Unbalanced: `a_opt = a exp(-h / rho)`
    (`h = f - eps log a`) and `f_next = tau T_f(g) + (1 - tau) eps log a`, so
    the row sums are `a_opt_i exp((f_i - f_next_i) / (tau eps))`.
    """
    return jnp.sum(jnp.abs(weights * jnp.expm1((f - f_next) / (tau * epsilon))))


def dual_cost(a, log_a, f, b, log_b, g, epsilon, total_mass) -> Float[Array, ""]:
    """`<a, f - eps log a> + <b, g - eps log b> + eps (1 - total_mass)`:
    ott-jax's `reg_ot_cost` of potentials `(f, g)` whose coupling has mass
    `total_mass`."""
    return (
        jnp.sum(a * (f - epsilon * log_a))
        + jnp.sum(b * (g - epsilon * log_b))
        + epsilon * (1 - total_mass)
    )


class DualProblem(eqx.Module):
    """The data of one balanced OT solve, and its c-transforms.

    `coupling(f, g, eps)` is the coupling of potentials `(f, g)` at
    regularisation `eps` (the annealing solves at several); the updates
    `update_f`, `update_g` are one streaming log-sum-exp pass each.
    """

    x: Float[Array, "n d"]
    y: Float[Array, "m d"]
    a: Float[Array, " n"]
    b: Float[Array, " m"]
    log_a: Float[Array, " n"]
    log_b: Float[Array, " m"]
    epsilon: Float[Array, ""]
    cost: AbstractCost
    block_size: BlockSize = eqx.field(static=True)
    sharding: RowSharding | None = eqx.field(static=True)
    tau_a: float = eqx.field(static=True, default=1.0)
    tau_b: float = eqx.field(static=True, default=1.0)

    @classmethod
    def create(cls, x, y, a, b, epsilon, cost, block_size, sharding, tau_a=1.0,
               tau_b=1.0) -> "DualProblem":
        """The problem of `solve`: `log a`, `log b` computed once."""
        return cls(x, y, a, b, jnp.log(a), jnp.log(b), epsilon, cost, block_size, sharding,
                   tau_a, tau_b)

    @property
    def balanced(self) -> bool:
        return is_balanced(self.tau_a, self.tau_b)

    def coupling(self, f, g, epsilon=None, **diagnostics) -> Coupling:
        """The `Coupling` of `(f, g)` at `epsilon` (the target by default)."""
        eps = self.epsilon if epsilon is None else epsilon
        return Coupling(self.x, self.y, self.a, self.b, f, g, eps, self.cost,
                        block_size=self.block_size, sharding=self.sharding, tau_a=self.tau_a,
                        tau_b=self.tau_b, **diagnostics)

    def update_f(self, geometry: Coupling, g, epsilon) -> Float[Array, " n"]:
        """The maximiser of the dual in `f` for this `g`, on `geometry` (a
        coupling of this problem at `epsilon`; its potentials are unused):
        `T_f(g) = eps log a - eps LSE_j (g_j - C_ij) / eps`, or with
        `tau_a < 1`, `tau_a T_f(g) + (1 - tau_a) eps log a`."""
        return _relaxed(epsilon * (self.log_a - row_logsumexp(geometry, g)), self.log_a,
                        epsilon, self.tau_a)

    def update_g(self, geometry: Coupling, f, epsilon) -> Float[Array, " m"]:
        """The maximiser in `g`, on `geometry` as for `update_f` (not transposed)."""
        return _relaxed(epsilon * (self.log_b - row_logsumexp(geometry.transpose(), f)),
                        self.log_b, epsilon, self.tau_b)

    def row_target(self, f, epsilon) -> Float[Array, " n"]:
        """The optimal row sums for `f`: `a`, or `a exp(-(f - eps log a) / rho_a)`."""
        return target(self.a, f - epsilon * self.log_a, epsilon, self.tau_a)

    def column_target(self, g, epsilon) -> Float[Array, " m"]:
        """The optimal column sums for `g` (`row_target`'s)."""
        return target(self.b, g - epsilon * self.log_b, epsilon, self.tau_b)

    def row_error(self, f, f_next, epsilon) -> Float[Array, ""]:
        """`|P 1 - a_opt|_1` of `(f, g)` from `f_next`, the update of `f` for
        this `g` (`update_error`)."""
        return update_error(self.row_target(f, epsilon), f, f_next, epsilon, self.tau_a)

    def column_error(self, g, g_next, epsilon) -> Float[Array, ""]:
        """`|P^T 1 - b_opt|_1` of `(f, g)` from `g_next`, the update of `g` for this `f`."""
        return update_error(self.column_target(g, epsilon), g, g_next, epsilon, self.tau_b)

    def row_sums(self, f, f_next) -> Float[Array, " n"]:
        """`P 1` of `(f, g)` at the target epsilon from `f_next`, the update of
        `f` for this `g` (no pass)."""
        eps = self.epsilon
        return self.row_target(f, eps) * jnp.exp((f - f_next) / (self.tau_a * eps))

    def zero_mass_potentials(self, f, g):
        """`(f, g)` with the entries of zero-weight points replaced by their
        updates (the c-transforms `update_f`, `update_g`: the maximisers of
        the dual there), two passes only when there are zero weights.

        The marginal error weighs a zero-weight point's row by `ZERO`
        (`_core/weights.py`), so no convergence test sees its potential;
        Sinkhorn's own last half-step sets `f` there exactly, but an
        extrapolated step (momentum, Anderson, Newton, L-BFGS) need not.
        The gradient in `a_i` is that potential (less `eps log a_i`).
        """
        mass_a, mass_b = support(self.a), support(self.b)

        def transforms(f, g):
            geometry = self.coupling(f, g)
            f = jnp.where(mass_a, f, self.update_f(geometry, g, self.epsilon))
            g = jnp.where(mass_b, g, self.update_g(geometry, f, self.epsilon))
            return f, g

        return jax.lax.cond(any_zero(mass_a, mass_b), transforms, lambda f, g: (f, g), f, g)

    def marginal_error(self, row, col) -> Float[Array, ""]:
        """`marginal_error` against this problem's weights."""
        return marginal_error(row, col, self.a, self.b)

    def reg_ot_cost(self, f, g, total_mass) -> Float[Array, ""]:
        """ott-jax's `reg_ot_cost` of `(f, g)` at the target epsilon:
        `dual_cost`, or the streamed form (`streamed_value`, one more pass) where
        `dual_cost` cancels, i.e. where its rounding bound (the magnitudes
        it sums) is `CANCELLATION` times its result or more (large epsilon,
        where `f` carries `eps log a`).

        Unbalanced: the dual `relaxed_dual_cost` (no streamed form)."""
        if not self.balanced:
            return relaxed_dual_cost(self, f, g, total_mass)
        direct = dual_cost(self.a, self.log_a, f, self.b, self.log_b, g, self.epsilon, total_mass)
        eps = self.epsilon
        bound = (
            jnp.dot(self.a, jnp.abs(f) + eps * jnp.abs(self.log_a))
            + jnp.dot(self.b, jnp.abs(g) + eps * jnp.abs(self.log_b))
            + eps * (1 + jnp.abs(total_mass))
        )
        cancels = bound > CANCELLATION * jnp.abs(direct)
        return jax.lax.cond(cancels, lambda: streamed_value(self, f, g), lambda: direct)


def _relaxed(update, log_w, epsilon, tau: float):
    """`tau update + (1 - tau) eps log w` (`update` itself at `tau = 1`)."""
    if tau == 1.0:
        return update
    return tau * update + (1 - tau) * epsilon * log_w


def relaxed_dual_cost(problem: DualProblem, f, g, total_mass) -> Float[Array, ""]:
    """The unbalanced dual `<a, Phi_a(h_f)> + <b, Phi_b(h_g)> + eps (sum a sum b - total_mass)`,
    `h_f = f - eps log a`: the regularised cost (the primal
    `<P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)`)
    at the optimal potentials. Equals `dual_cost` when both `tau` are 1."""
    eps, a, b = problem.epsilon, problem.a, problem.b
    return (
        jnp.dot(a, conjugate(f - eps * problem.log_a, eps, problem.tau_a))
        + jnp.dot(b, conjugate(g - eps * problem.log_b, eps, problem.tau_b))
        + eps * (jnp.sum(a) * jnp.sum(b) - total_mass)
    )


def streamed_value(problem: DualProblem, f, g) -> Float[Array, ""]:
    """`<a b^T, C> - eps sum_ij a_i b_j (expm1(w_ij) - w_ij)`: ott-jax's
    `reg_ot_cost` of `(f, g)` at the target epsilon without the cancellation
    of `dual_cost` at large epsilon (module docstring), in one streaming pass."""
    coupling = problem.coupling(f, g)
    direct = isinstance(problem.cost, SqEuclidean)

    def block_fn(blk, rows, cols):
        (log_a,), (b, log_b) = rows, cols
        if direct:
            # `|x_i - y_j|^2` itself, not the iterations' `|x|^2 + |y|^2 - 2 x y^T`,
            # whose rounding is relative to `|x|^2 + |y|^2`.
            diff = blk.x[:, None, :] - blk.y[None, :, :]
            c = jnp.sum(diff * diff, axis=-1)
        else:
            c = blk.cost_matrix()
        w = (blk.f[:, None] + blk.g[None, :] - c) / blk.epsilon - log_a[:, None] - log_b[None, :]
        return (c @ b, (jnp.expm1(w) - w) @ b), jnp.zeros_like(b)

    m = g.shape[0]
    width = 4 + (problem.x.shape[1] if direct else 0)
    (cost_b, gap_b), _ = stream(
        coupling, block_fn, (problem.log_a,), (problem.b, problem.log_b),
        jnp.zeros((m,), f.dtype), width=width, kind="pairs",
    )
    return jnp.dot(problem.a, cost_b) - problem.epsilon * jnp.dot(problem.a, gap_b)
