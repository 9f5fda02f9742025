"""What every H-matrix solver shares: lineax's solver contract on `HOperator`.

A solver is an `lineax.AbstractLinearSolver`:
`init(operator, options) -> state` does the set-up that depends on the
operator only (nothing for `CG`, the block Lanczos spectrum for the spectral
solvers, an eigendecomposition for `DenseSolver`), and
`compute(state, vector, options) -> (solution, result, stats)` solves one
right-hand side. So `lineax.linear_solve(h_operator(c), rhs, solver, state=...)`
works, and one state serves many solves.

H is singular (null vector `(1_n, -1_m)`): every solver returns the
minimum-norm least-squares solution (the pseudo-inverse applied to the
right-hand side), and `assume_full_rank()` is `False`.
"""

import abc
from typing import Any, ClassVar

import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .operators import HOperator
from .._core.sharding import auto_partitioned


def default_rtol(dtype) -> float:
    """CG tolerance when none is given: tight in float64, reachable in float32."""
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def check_cg_options(rtol: float | None, atol: float, max_steps: int) -> None:
    """The checks on the CG stopping options that every CG-based solver takes."""
    if rtol is not None and not rtol >= 0:
        raise ValueError(f"`rtol` must be >= 0, got {rtol}.")
    if not atol >= 0:
        raise ValueError(f"`atol` must be >= 0, got {atol}.")
    if max_steps < 1:
        raise ValueError(f"`max_steps` must be >= 1, got {max_steps}.")


def check_h_operator(operator) -> HOperator:
    """`operator` itself if it is an `HOperator` (from `ot_matfree.h_operator`),
    else a `TypeError` that says how to make one: the first line of every
    solver's `init`."""
    if not isinstance(operator, HOperator):
        raise TypeError(
            "ot_matfree's solvers solve the H-matrix of a coupling: pass "
            f"`ot_matfree.h_operator(coupling)`, got {type(operator).__name__}."
        )
    return operator


def range_shift(r: Float[Array, " n"], s: Float[Array, " m"], support=None) -> Float[Array, ""]:
    """The `c` with `[r - c u; s + c v]` orthogonal to the null vector
    `(1_n, -1_m)`: `(u, v)` are ones, or the masks `support` (the points with
    mass, `Coupling.support`)."""
    n, m = r.shape[0], s.shape[0]
    shift = (jnp.sum(r) - jnp.sum(s)) / (n + m)
    if support is None:
        return shift
    count = (jnp.sum(support[0]) + jnp.sum(support[1])).astype(r.dtype)
    # (Bit for bit the unmasked shift when every point has mass.)
    return jnp.where(count == n + m, shift, (jnp.sum(r) - jnp.sum(s)) / count)


def project_range(
    r: Float[Array, " n"], s: Float[Array, " m"], support=None,
) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """Remove the component of `[r; s]` along H's null vector `(1_n, -1_m)`.

    H is symmetric, so this is the orthogonal projection onto its range. On
    a right-hand side it makes the system consistent (`sum(r) = sum(s)`;
    a no-op when it already is), and solving the projected system gives the
    least-squares solution. On a solution `(df, dg)` it moves it along the
    null vector to the minimum-norm one, leaving every `df_i + dg_j`
    unchanged.

    `support`: for a right-hand side, the masks of the points with mass
    (`Coupling.support`); the shift stays off the others. Their rows of H
    are of the size of `ZERO` (a zero weight, `_core/weights.py`), and so
    are their entries of a right-hand side: a shift of the size of rounding
    there would move their potentials by rounding over `ZERO`. (With exact
    zero weights those rows vanish and `e_i` joins the null space: this is
    the projection onto that H's range.)
    """
    shift = range_shift(r, s, support)
    if support is None:
        return r - shift, s + shift
    return r - jnp.where(support[0], shift, 0), s + jnp.where(support[1], shift, 0)


def fix_gauge(
    df: Float[Array, " n"], dg: Float[Array, " m"], support=None,
) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """The solution `(df - c, dg + c)` of least norm on the points with mass
    (`support`, `Coupling.support`; all points when `None`): moved along
    the null vector `(1_n, -1_m)`, every `df_i + dg_j` unchanged. The entries
    of zero-weight points are left out of `c`: a solver resolves them only
    to its absolute accuracy over `ZERO` (`_core/weights.py`), and they are
    recomputed afterwards (`_derivatives/hvp.py`)."""
    if support is None:
        return project_range(df, dg)
    mass_a, mass_b = support
    count = (jnp.sum(mass_a) + jnp.sum(mass_b)).astype(df.dtype)
    masked = (jnp.sum(jnp.where(mass_a, df, 0)) - jnp.sum(jnp.where(mass_b, dg, 0))) / count
    # (Bit for bit `project_range` when every point has mass.)
    shift = jnp.where(count == df.shape[0] + dg.shape[0], range_shift(df, dg), masked)
    return df - shift, dg + shift


def cg_result(stats: dict[str, Array], max_steps: int) -> lx.RESULTS:
    """`successful`, or why CG stopped short: `max_steps_reached` or `breakdown`.

    `stats` as `conjugate_gradient` returns them (`converged`, `num_steps`).
    """
    failure = lx.RESULTS.where(
        stats["num_steps"] >= max_steps, lx.RESULTS.max_steps_reached, lx.RESULTS.breakdown
    )
    return lx.RESULTS.where(stats["converged"], lx.RESULTS.successful, failure)


class AbstractHSolver(lx.AbstractLinearSolver):
    """A solver for `H [df; dg] = [r; s]`, the H-matrix of a coupling.

    Follows lineax's `AbstractLinearSolver` contract on an `HOperator` (from
    `ot_matfree.h_operator`) and a flat right-hand side `[r; s]` of size
    `n + m`, so `lineax.linear_solve(h_operator(coupling), rhs, solver)` and
    `hvp(..., linear_solver=solver)` both work. The solution is the
    minimum-norm least-squares one (the component of the right-hand side
    along the null vector `(1_n, -1_m)` is removed first, `project_range`).

    A new solver is a final `equinox.Module` subclass that declares its
    options as fields and implements two methods (the rest of lineax's
    contract, `compute`, `transpose`, `conj` and `assume_full_rank`, is
    done here):

    - `init(operator, options) -> state`: the set-up on the operator alone
      (call `check_h_operator(operator)` first). The state is an
      `equinox.Module` that holds the operator as `state.operator`: `hvp`
      checks a `solver_state` against its coupling through it. Declare its
      class as the class attribute `state_type` (optional): `compute` and
      `hvp` then reject the state of another solver with a `TypeError`
      (`check_state`).
    - `solve_split(state, r, s, options) -> (df, dg, result, stats)`:
      `result` a `lineax.RESULTS`, `successful` only when
      `stats["converged"]` is true; `stats` a dict of arrays with at least
      `num_steps`, `residual` (relative) and `converged`, the same keys
      whatever the input (batched HVPs `vmap` it).

    The pieces the built-in solvers are made of (`NormalisedSchur`,
    `reduced_system`, `conjugate_gradient`, `cg_result`, ...) are in
    `ot_matfree.internal`.

    **A state is trusted by `lineax.linear_solve`.** lineax calls
    `compute(state, vector, options)` without the operator (lineax 0.1.1,
    `lineax/_solve.py`: `_linear_solve_impl(_, state, ...)`), so
    `lineax.linear_solve(h_operator(c1), rhs, solver, state=solver.init(
    h_operator(c2), {}))` solves with `c2`'s H-matrix, as it does for
    lineax's own solvers: make the state from the operator you solve with.
    ot_matfree's own entry points (`hvp(..., solver_state=...)` and the
    functions built on it) check that a state was made from the coupling
    they differentiate, and raise otherwise.
    """

    #: The class of the state `init` returns, or `None` (no check).
    state_type: ClassVar[type | None] = None

    def check_state(self, state):
        """`state` if it can be this solver's state (an instance of
        `state_type` holding an `HOperator` as `state.operator`), else a
        `TypeError` naming the solver and the state's maker."""
        expected = type(self).state_type
        name = type(self).__name__
        if expected is not None and not isinstance(state, expected):
            made_by = getattr(type(state), "made_by", None)
            origin = f", the state of `{made_by}`" if made_by else ""
            raise TypeError(
                f"`{name}` was given a solver state of type `{type(state).__name__}`{origin}; "
                f"`{name}` needs a `{expected.__name__}`. Make it with "
                f"`{name}(...).init(h_operator(coupling), {{}})`, or solve with the solver "
                "that made the state."
            )
        if not isinstance(getattr(state, "operator", None), HOperator):
            raise TypeError(
                f"`{name}` was given a solver state without an `HOperator` as "
                f"`state.operator` (got `{type(state).__name__}`); make it with "
                f"`{name}(...).init(h_operator(coupling), {{}})`."
            )
        return state

    @abc.abstractmethod
    def init(self, operator: HOperator, options: dict[str, Any]):
        """Set-up on the operator alone; the state it returns holds the operator
        as `state.operator`."""

    @abc.abstractmethod
    def solve_split(
        self, state, r: Float[Array, " n"], s: Float[Array, " m"],
        options: dict[str, Any] | None = None,
    ) -> tuple[Float[Array, " n"], Float[Array, " m"], lx.RESULTS, dict[str, Array]]:
        """`(df, dg, result, stats)` for the right-hand side `[r; s]`, split
        into its `n` and `m` parts (what `compute` calls with lineax's vector cut
        in two).

        `options`: lineax's options dict, as given to `compute` (`None` is
        `{}`). ot_matfree's derivative rules put in it, under a private key,
        a product they computed in their own streaming pass; solvers that
        reduce to the Schur complement pass `options` on to
        `reduced_system`, which uses it instead of a pass of its own. Others
        ignore it.
        """

    @auto_partitioned
    def compute(self, state, vector, options):
        state = self.check_state(state)
        n = state.operator.a_hat.shape[0]
        df, dg, result, stats = self.solve_split(state, vector[:n], vector[n:], options)
        return jnp.concatenate([df, dg]), result, stats

    def transpose(self, state, options):
        return state, options  # H is symmetric

    def conj(self, state, options):
        return state, options  # H is real

    def assume_full_rank(self) -> bool:
        return False  # null vector (1_n, -1_m)
