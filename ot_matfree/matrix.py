"""Entropic OT on a given cost matrix `C` (n x m) instead of two point clouds.

The same solver, derivative rules and losses as for point clouds, for users
who have a cost matrix (ott-jax's `Geometry(cost_matrix=...)`, POT's `M`):

```python
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import ot_matfree as om

C = jax.random.uniform(jax.random.PRNGKey(0), (60, 40))
coupling = om.matrix.solve(C, epsilon=0.1)                 # a Coupling, as om.solve's
dist = lambda C: om.matrix.sinkhorn_distance(C, epsilon=0.1)
G = jax.grad(dist)(C)                                      # Qiu et al.'s analytic gradient
V = jax.random.normal(jax.random.PRNGKey(1), C.shape)
_, HV = jax.jvp(jax.grad(dist), (C,), (V,))                # an HVP w.r.t. C
```

How: the cost comes from a `MatrixCost`, whose "points" are the rows of
`C` and the column indices (`ot_matfree._core.costs`), so every streaming
pass slices `C` in the row blocks in which it streams a cloud, and
everything above the passes is shared. A matrix coupling holds `C` as its
`x` and the column indices `0, ..., m - 1` (shape (m, 1)) as its `y`;
derivatives with respect to `x` are derivatives with respect to `C`
(`om.grad(coupling)[0]` is `P`, `om.hvp(coupling, dx=dC)[0]` is `dP`).

Memory is O(nm) by nature: `C` itself is n x m (and so are gradients with
respect to it); the passes add O(block x m), no other n x m array.
"""

from jaxtyping import Array, Float

from ._core.checks import cost_matrix_and_ids
from ._core.costs import MatrixCost
from ._core.coupling import BlockSize, Coupling
from ._core.sharding import row_sharding
from ._forward.lbfgs import LBFGS
from ._forward.sinkhorn import Sinkhorn, solve_placed
from ._linear.base import AbstractHSolver
from ._linear.cg import CG
from ._losses import _evaluate, _ot_value, _sharp_value, matrix_divergence

__all__ = ["solve", "ot_cost", "sinkhorn_distance", "sinkhorn_divergence"]


def solve(
    C: Float[Array, "n m"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    block_size: BlockSize = None,
    init: Float[Array, " n"] | tuple[Float[Array, " n"], Float[Array, " m"]] | Coupling
    | None = None,
    throw: bool = True,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Coupling:
    """Solve entropic OT, balanced or unbalanced, with the cost matrix `C`.

    `min_{P in U(a, b)} <P, C> + epsilon KL(P | a b^T)`, as `ot_matfree.solve`
    with `C_ij` in place of `c(x_i, y_j)`: the same `Sinkhorn` (every
    acceleration; the annealing starts from `C`'s largest entry), the same
    diagnostics and statuses, `reg_ot_cost` equal to ott-jax's on
    `Geometry(cost_matrix=C, epsilon=epsilon)`.

    **Arguments:**

    - `C`: the cost matrix, shape (n, m), finite, float32 or float64.
    - `a`, `b`: positive weights summing to one (any positive masses when
      unbalanced); uniform if `None`.
    - `epsilon`, `solver`, `block_size`, `init`, `throw`, `tau_a`, `tau_b`,
      `relative_epsilon`: as for `ot_matfree.solve` (`"mean"`: `epsilon`
      times `mean(C)`).

    **Returns:** a `Coupling` whose `x` is `C` and whose `y` holds the column
    indices (shape (m, 1)); `om.grad`, `om.hvp`, `om.spectrum` and the
    H-solvers take it as they take a point-cloud coupling, with `x`'s
    derivatives being `C`'s.
    """
    C, ids = cost_matrix_and_ids("C", C)
    return solve_placed(
        row_sharding(C=C), C, ids, a, b, epsilon=epsilon, cost=MatrixCost(), solver=solver,
        block_size=block_size, init=init, throw=throw, tau_a=tau_a, tau_b=tau_b,
        relative_epsilon=relative_epsilon,
    )


_LOSS_ARGS = """
    **Arguments:**

    - `C`: the cost matrix, shape (n, m), finite, float32 or float64.
    - `a`, `b`: positive weights summing to one (any positive masses when
      unbalanced); uniform (and not differentiated) if `None`.
    - `epsilon`, `solver`, `linear_solver`, `block_size`, `throw`, `init`,
      `return_potentials`, `tau_a`, `tau_b`, `relative_epsilon`: as for
      `ot_matfree.ot_cost` (`"mean"`: `epsilon` times `mean(C)`, differentiated).
"""


def ot_cost(
    C: Float[Array, "n m"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    init: Coupling | tuple[Array, Array] | None = None,
    return_potentials: bool = False,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""] | tuple[Float[Array, ""], tuple[Array, Array]]:
    """The regularised OT cost of the cost matrix `C` (ott-jax's `reg_ot_cost`).

    Derivatives (`jax.grad`, `jax.jvp(jax.grad)`, `jax.hessian`) with respect
    to `C`, `a` and `b`, as `ot_matfree.ot_cost`'s: `grad_C = P` (Danskin),
    `grad_a = f - eps log a`, `grad_b = g - eps log b`; the HVP in `C`'s
    direction `dC` is `dP = P o (df (+) dg - dC) / eps`, with `(df, dg)` from
    one H-solve (docs/math.md).
    """
    C, ids = cost_matrix_and_ids("C", C)
    return _evaluate(
        _ot_value, C, ids, a, b, epsilon, MatrixCost(), solver, linear_solver, block_size,
        throw, init, return_potentials, tau_a, tau_b, relative_epsilon,
    )


ot_cost.__doc__ += _LOSS_ARGS


def sinkhorn_distance(
    C: Float[Array, "n m"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    init: Coupling | tuple[Array, Array] | None = None,
    return_potentials: bool = False,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""] | tuple[Float[Array, ""], tuple[Array, Array]]:
    """The sharp Sinkhorn distance `<P*, C>` of the cost matrix `C` (Qiu, Yin & Wang's loss).

    `jax.grad` with respect to `C` is Qiu et al.'s analytic gradient
    `grad_C S = P + (u (+) v - C) o P / eps`, with `[u; v] = H^+ [(P o C) 1;
    (P o C)^T 1]` from one H-solve (their `s_u`, `s_v`; they fix the gauge by
    dropping the last column, here the minimum-norm solution is used, and
    `u (+) v` is the same). `grad_a = u`, `grad_b = v`; HVPs by
    `jax.jvp(jax.grad)` (three H-solves per direction), as
    `ot_matfree.sinkhorn_distance`'s.
    """
    C, ids = cost_matrix_and_ids("C", C)
    return _evaluate(
        _sharp_value, C, ids, a, b, epsilon, MatrixCost(), solver, linear_solver, block_size,
        throw, init, return_potentials, tau_a, tau_b, relative_epsilon,
    )


sinkhorn_distance.__doc__ += _LOSS_ARGS


def sinkhorn_divergence(
    C_xy: Float[Array, "n m"],
    C_xx: Float[Array, "n n"],
    C_yy: Float[Array, "m m"],
    a: Float[Array, " n"] | None = None,
    b: Float[Array, " m"] | None = None,
    *,
    epsilon: float | Float[Array, ""],
    solver: Sinkhorn | LBFGS = Sinkhorn(),
    linear_solver: AbstractHSolver = CG(),
    block_size: BlockSize = None,
    throw: bool = True,
    tau_a: float = 1.0,
    tau_b: float = 1.0,
    relative_epsilon: str | None = None,
) -> Float[Array, ""]:
    """The Sinkhorn divergence `OT(C_xy, a, b) - OT(C_xx, a, a) / 2 - OT(C_yy, b, b) / 2`.

    The self terms use the symmetric update (as `ot_matfree.sinkhorn_divergence`),
    which needs `C_xx` and `C_yy` symmetric: they must be, to within
    `sqrt(machine epsilon)` of their largest entry (a run-time error
    otherwise). Derivatives with respect to all three matrices and both
    weights, as for `ot_cost`.

    **Arguments:**

    - `C_xy`, `C_xx`, `C_yy`: the cost matrices between the two sides and
      within each, shapes (n, m), (n, n), (m, m).
    - `a`, `b`, `epsilon`, `solver`, `linear_solver`, `block_size`,
      `throw`: as for `ot_cost`.
    - `tau_a`, `tau_b`: equal marginal relaxations in (0, 1]; below 1 the
      unbalanced divergence, with the mass term `eps (sum a - sum b)^2 / 2`
      (as `ot_matfree.sinkhorn_divergence`).
    - `relative_epsilon`: `None` or `"mean"`: `epsilon` times `mean(C_xy)`,
      one scale for the three terms, differentiated.
    """
    return matrix_divergence(
        C_xy, C_xx, C_yy, a, b, epsilon=epsilon, solver=solver, linear_solver=linear_solver,
        block_size=block_size, throw=throw, tau_a=tau_a, tau_b=tau_b,
        relative_epsilon=relative_epsilon,
    )

