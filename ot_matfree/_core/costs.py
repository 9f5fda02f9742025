"""Ground costs `c(x_i, y_j)` evaluated on blocks of point pairs.

A cost is called on single points; `matrix` evaluates it on a block of rows
against all columns. Squared Euclidean evaluates blocks with a matrix product;
any other twice-differentiable JAX callable (ott-jax `CostFn` instances
included) is evaluated pair by pair with `vmap`.

A cost is also where the costs come from: `MatrixCost` reads them from a
given n x m matrix `C`, whose rows are then the "points" `x_i` and whose
column indices `j` the points `y_j` (`c(C_i, j) = C_ij`). Everything above
the streaming reductions (operators, solvers, derivative rules, losses) is
the same for both; the reductions that differentiate the cost
(`_stream/pair.py`) take its derivatives, which for a matrix select entries.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractCost(eqx.Module):
    """A twice-differentiable ground cost `c(x, y)` between two points."""

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " d"], y: Float[Array, " d"]) -> Float[Array, ""]:
        """The cost between one source point and one target point."""

    @abc.abstractmethod
    def matrix(self, x: Float[Array, "k d"], y: Float[Array, "m d"]) -> Float[Array, "k m"]:
        """The cost block `C_ij = c(x_i, y_j)` for a block of rows."""

    @abc.abstractmethod
    def transpose(self) -> "AbstractCost":
        """The cost with its arguments swapped, `(y, x) -> c(x, y)`."""


def pairwise(fn: Callable, x: Array, y: Array) -> Array:
    """Evaluate `fn(x_i, y_j)` on every pair of rows of `x` and `y`."""
    return jax.vmap(lambda xi: jax.vmap(lambda yj: fn(xi, yj))(y))(x)


class SqEuclidean(AbstractCost):
    """`c(x, y) = |x - y|^2` (ott-jax's `SqEuclidean`, no factor 1/2).

    Blocks are evaluated as `|x|^2 + |y|^2 - 2 x y^T` (matrix products, the
    form ott-jax uses) after both clouds are shifted by the mean of `y`
    (`centre`): the cost is translation invariant, and without the shift the
    form loses every digit when the clouds sit far from the origin (float32,
    both clouds at 1e3 from it: gradients 8% off, 1e4: 95%).
    """

    def __call__(self, x, y):
        return jnp.sum((x - y) ** 2)

    @staticmethod
    def centre(x: Float[Array, "k d"], y: Float[Array, "m d"]):
        """`(x - c, y - c)` with `c` the mean of `y`: a common shift, so every
        cost, gradient and Hessian term is unchanged in exact arithmetic."""
        c = jnp.mean(y, axis=0)
        return x - c, y - c

    def matrix(self, x, y):
        x, y = self.centre(x, y)
        sq_x = jnp.sum(x**2, axis=-1)
        sq_y = jnp.sum(y**2, axis=-1)
        return sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.T)

    def transpose(self):
        return self


class FunctionCost(AbstractCost):
    """Any JAX callable `fn(x_i, y_j) -> scalar` on single points.

    **Arguments:**

    - `fn`: twice differentiable in both arguments (its second derivatives are
      needed by Hessian-vector products). ott-jax `CostFn` objects qualify.
      Gradients differentiate `fn` in reverse mode only (`jax.grad`); HVPs
      take its second derivatives forward-over-reverse (`jax.jvp` of
      `jax.grad`), so a `fn` with a `jax.custom_vjp` inside (ott-jax's
      `Bures`, `UnbalancedBures`) has gradients but no HVPs (they raise a
      `TypeError` that says so).
    """

    fn: Callable

    def __call__(self, x, y):
        return self.fn(x, y)

    def matrix(self, x, y):
        return pairwise(self.fn, x, y)

    def transpose(self):
        return _TransposedCost(self)


class _TransposedCost(AbstractCost):
    cost: AbstractCost

    def __call__(self, y, x):
        return self.cost(x, y)

    def matrix(self, y, x):
        return self.cost.matrix(x, y).T

    def transpose(self):
        return self.cost


class MatrixCost(AbstractCost):
    """Costs read from a matrix: `c(C_i, j) = C_ij`.

    A coupling of this cost holds `C` (n, m) as its `x` (row `i` of `C` is
    the "point" `x_i`) and the column indices `0, ..., m - 1` as its `y`
    (shape (m, 1), in `C`'s floating dtype: exact below 2^24 columns in
    float32); `ot_matfree.matrix` builds both. A block of rows is a slice of
    `C`'s rows, so the streaming reductions slice `C` in the same row blocks
    in which they stream a point cloud, and a sharded `C` (rows split over
    devices) passes its column indices round the ring like a cloud.

    The cost is linear in `C`: its gradient with respect to the row `C_i` at
    column `j` is the unit vector `e_j`, its gradient with respect to the
    index is zero, and its second derivatives are zero. So the gradient of
    a loss with respect to `C` is a matrix of the entries the reductions
    contract (`sum_j W_ij grad_1 c_ij` puts `W_ij` at `(i, j)`), and the
    HVP's per-pair second-order terms vanish.
    """

    def __call__(self, x, y):
        return jnp.take(x, column_index(y)[0])

    def matrix(self, x, y):
        return select_columns(x, y)

    def transpose(self):
        return TransposedMatrixCost()


class TransposedMatrixCost(AbstractCost):
    """`MatrixCost` with its arguments swapped: `c(j, C_i) = C_ij`, the cost of
    the transposed coupling (rows: the column indices; columns: `C`'s rows)."""

    def __call__(self, y, x):
        return jnp.take(x, column_index(y)[0])

    def matrix(self, y, x):
        # Rows of `C^T` (contiguous), not columns of `C` transposed: XLA hoists
        # the loop-invariant transpose of the columns' block out of the scan.
        if y.shape[0] == x.shape[1]:
            return x.T
        return jnp.take(x.T, column_index(y), axis=0)

    def transpose(self):
        return MatrixCost()


def column_index(ids: Float[Array, "c 1"]) -> Array:
    """Integer column indices from `MatrixCost`'s index points (shape (c, 1))."""
    return jax.lax.stop_gradient(ids[..., 0]).astype(jnp.int32)


def select_columns(rows: Float[Array, "k m"], ids: Float[Array, "c 1"]) -> Float[Array, "k c"]:
    """The columns `ids` of a block of `C`'s rows (`rows[:, ids]`).

    When `ids` has as many entries as `C` has columns it is all of them, in
    order (`column_ids`; a block or a device's chunk is a proper subset), and
    the block is `rows` itself, with no gather.
    """
    if ids.shape[0] == rows.shape[1]:
        return rows
    return jnp.take(rows, column_index(ids), axis=1)


def column_ids(m: int, dtype) -> Float[Array, "m 1"]:
    """`MatrixCost`'s points `y`: the column indices `0, ..., m - 1`, shape (m, 1)."""
    if m > 2 ** jnp.finfo(dtype).nmant:
        raise ValueError(f"{m} columns cannot be indexed exactly in {jnp.dtype(dtype)}.")
    return jnp.arange(m, dtype=dtype)[:, None]


def is_matrix(cost: AbstractCost) -> bool:
    """Whether `cost` reads a cost matrix (either orientation)."""
    return isinstance(cost, (MatrixCost, TransposedMatrixCost))


def as_cost(cost) -> AbstractCost:
    """Turn a user-supplied cost into an `AbstractCost`.

    ott-jax's `SqEuclidean` maps to ours (same formula, matrix-product blocks);
    any other callable is wrapped in `FunctionCost`.
    """
    if isinstance(cost, AbstractCost):
        return cost
    if type(cost).__name__ == "SqEuclidean" and type(cost).__module__.startswith("ott."):
        return SqEuclidean()
    if not callable(cost):
        raise TypeError(
            f"`cost` must be an ot_matfree cost or a callable c(x_i, y_j) -> scalar, "
            f"got {type(cost).__name__}."
        )
    return FunctionCost(cost)
