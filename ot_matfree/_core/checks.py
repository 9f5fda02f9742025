"""Input validation shared by the public entry points.

Shape and dtype problems raise at call time; value problems (NaN, bad
weights, epsilon <= 0) raise at run time through `error_if` (`eqx.error_if`
on a scalar), which also works under `jit` and `vmap`.
"""

import math
import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, PyTree

from .costs import column_ids, is_matrix
from .coupling import BlockSize
from .results import RESULTS
from .weights import store_zeros


def _tie(tree: PyTree, token: Array) -> PyTree:
    """`tree`, each array made to depend on the zero scalar `token` (exactly:
    `+ 0`, or `xor False` for booleans)."""

    def tie(leaf):
        if leaf.dtype == jnp.bool_:
            return leaf ^ (token != 0)
        return leaf + token.astype(leaf.dtype)

    dynamic, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.tree_util.tree_map(tie, dynamic), static)


def error_if(tree: PyTree, pred: Bool[Array, "..."], msg: str) -> PyTree:
    """`eqx.error_if(tree, pred, msg)` that leaves `tree` where it is.

    equinox threads `tree` itself through a `lax.cond` whose error branch runs
    on one device, so XLA gathers a sharded array onto device 0 and spreads
    it out again (O(n d) memory and traffic per device, and a warning).
    Here the check runs on a scalar and every array of `tree` depends on it,
    so it still runs whenever any of them is used (also under
    `jit(grad(...))`, where JAX drops unused values).
    """
    return _tie(tree, eqx.error_if(jnp.zeros((), jnp.int32), pred, msg))


def error_if_failed(tree: PyTree, result: RESULTS) -> PyTree:
    """`tree`, raising `RESULTS[result]` wherever it is used unless `result` is
    `successful` (as `error_if`)."""
    token = result.error_if(jnp.zeros((), jnp.int32), result != RESULTS.successful)
    return _tie(tree, token)


def _check_array(name: str, z, shape_msg: str) -> Array:
    """`z` as a 2-D floating array of at least 32 bits with at least one row;
    raises at call time otherwise."""
    z = jnp.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"`{name}` must have shape {shape_msg}, got shape {z.shape}.")
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"`{name}` is empty (shape {z.shape}).")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got dtype {z.dtype}.")
    if jnp.finfo(z.dtype).bits < 32:
        raise TypeError(
            f"`{name}` has dtype {z.dtype}: Sinkhorn and the H-solves are not accurate below "
            f"float32 (HVPs 10x off); convert with `{name}.astype(jnp.float32)`."
        )
    return z


def _check_finite_array(name: str, z, shape_msg: str) -> Array:
    """`_check_array`, and a run-time error where `z` has NaN or inf."""
    z = _check_array(name, z, shape_msg)
    return error_if(z, ~jnp.all(jnp.isfinite(z)), f"`{name}` contains NaN or inf.")


def check_points(name: str, z) -> Array:
    return _check_finite_array(name, z, "(num_points, dim)")


def cost_matrix_and_ids(name: str, C) -> tuple[Array, Array]:
    """A cost matrix checked for shape and dtype (its values are checked by
    `check_problem`), and `MatrixCost`'s column points for it."""
    C = _check_array(name, C, "(n, m)")
    return C, column_ids(C.shape[1], C.dtype)


def check_cost_matrix(name: str, C) -> Array:
    """A finite 2-D floating cost matrix (call-time shape and dtype checks,
    run-time values)."""
    return _check_finite_array(name, C, "(n, m)")


#: How far from symmetric a self-cost matrix may be, relative to its largest
#: entry, in units of the square root of its dtype's machine epsilon.
SYMMETRY_TOL = 1.0


def check_symmetric(name: str, C: Array) -> Array:
    """`C`, raising at run time unless `|C - C^T| <= SYMMETRY_TOL sqrt(eps) max |C|`."""
    tol = SYMMETRY_TOL * float(np.sqrt(np.finfo(C.dtype).eps))
    gap = jnp.max(jnp.abs(C - C.T))
    return error_if(
        C, ~(gap <= tol * jnp.max(jnp.abs(C))),
        f"`{name}` must be symmetric (a self-cost matrix, `c(x_i, x_j) = c(x_j, x_i)`) to "
        f"within {tol:.1e} of its largest entry; symmetrise it with `({name} + {name}.T) / 2`.",
    )


#: How far from 1 the sum of given weights may be (`check_weights`): the square
#: root of float32's machine epsilon, for weights of every dtype.
WEIGHT_SUM_TOL = float(np.sqrt(np.finfo(np.float32).eps))


def check_weights(name: str, w, size: int, dtype, normalised: bool = True) -> Array:
    """Non-negative weights summing to one; uniform when `w` is None. With
    `normalised=False` (unbalanced OT, where the masses are free) any
    non-negative finite weights with a positive sum, as given.

    Zero weights are accepted (a point without mass: how padded batches of
    clouds of different sizes are written) and stored as `zero_weight(dtype)`
    (the derivative in `w` is that of `w` itself).

    Rule for the sum, one for every dtype: `|sum(w) - 1| <= WEIGHT_SUM_TOL` (3.5e-4, the
    square root of float32's machine epsilon), the sum taken in the
    computation's dtype. Weights normalised in float32 or float64 pass, also
    when cast to the other (float32-normalised weights cast to float64 sum to
    1 only to about 1e-7), and so does float32's own summation error at a
    million points; weights that are really unnormalised (summing to 0.95, or
    0.999) fail whatever their dtype. bfloat16 and float16 weights carry only
    8 and 11 bits: normalise them after casting to float32. Within the rule
    they are renormalised, `w / sum(w)`, so that the balanced problem is
    exactly feasible (float32 weights summing to 1 + 1e-5 otherwise leave
    Sinkhorn stuck at a marginal error of 1e-5). The sum is not
    differentiated: derivatives are those of `w` itself.
    """
    if w is None:
        return jnp.full((size,), 1.0 / size, dtype)
    w = jnp.asarray(w).astype(dtype)
    if w.shape != (size,):
        raise ValueError(f"`{name}` must have shape ({size},) to match the points, got {w.shape}.")
    w = error_if(w, ~jnp.all(jnp.isfinite(w)), f"`{name}` contains NaN or inf.")
    w = error_if(w, jnp.any(w < 0), f"`{name}` must be non-negative.")
    w = error_if(w, ~jnp.any(w > 0), f"`{name}` is all zeros: some point must have mass.")
    if normalised:
        total = jnp.sum(w)
        w = error_if(
            w,
            ~(jnp.abs(total - 1) <= WEIGHT_SUM_TOL),
            f"`{name}` must sum to 1 (balanced OT) to within {WEIGHT_SUM_TOL:.1e}; normalise "
            f"it with `{name} / {name}.sum()` (in float32 or float64: bfloat16 and float16 "
            f"weights cannot sum to 1 that closely).",
        )
        w = w / jax.lax.stop_gradient(total)
    return store_zeros(w)


def check_epsilon(epsilon, dtype) -> Array:
    if jnp.iscomplexobj(epsilon):
        raise TypeError(f"`epsilon` must be real, got {epsilon!r}.")
    epsilon = jnp.asarray(epsilon, dtype)
    if epsilon.ndim != 0:
        raise ValueError(f"`epsilon` must be a scalar, got shape {epsilon.shape}.")
    return error_if(
        epsilon, ~(jnp.isfinite(epsilon) & (epsilon > 0)), "`epsilon` must be finite and > 0."
    )


def check_same_dim(x: Array, y: Array) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must have the same dimension, got {x.shape[1]} and {y.shape[1]}."
        )
    if x.dtype != y.dtype:
        raise TypeError(f"`x` and `y` must have the same dtype, got {x.dtype} and {y.dtype}.")


def check_tangent(name: str, v, shape: tuple[int, ...], dtype) -> Array:
    v = jnp.asarray(v, dtype)
    if v.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {v.shape}.")
    return error_if(v, ~jnp.all(jnp.isfinite(v)), f"`{name}` contains NaN or inf.")


def check_tolerance(tol) -> None:
    """A forward solver's `tol`: a finite real number > 0 (`inf` would run no
    iteration and report convergence)."""
    if (isinstance(tol, bool) or not isinstance(tol, (numbers.Real, np.ndarray, jax.Array))
            or np.ndim(tol) != 0 or not (math.isfinite(float(tol)) and float(tol) > 0)):
        raise ValueError(f"`tol` must be a finite number > 0 (e.g. 1e-6), got {tol!r}.")


def check_counts(module, names) -> None:
    """Each of `module`'s fields `names` is an integer >= 1."""
    for k in names:
        v = getattr(module, k)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"`{k}` must be an integer >= 1, got {v!r}.")


def check_block_size(block_size) -> BlockSize:
    """`None`, `"auto"`, or a positive Python/NumPy integer, returned as a Python `int`.

    The one normalisation of every `block_size=` argument: each public entry
    point (`solve`, the losses, `from_ott`, `Coupling`) calls it before
    anything is traced, since `jit` (`eqx.filter_jit`) traces NumPy scalars
    such as `np.int64(16)` as arrays, and a block size fixes array shapes.
    """
    if block_size is None or (isinstance(block_size, str) and block_size == "auto"):
        return block_size
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise TypeError(
            f"`block_size` must be a positive integer, \"auto\" or None, got {block_size!r} "
            f"({type(block_size).__name__}); it fixes array shapes, so it cannot be traced."
        )
    if block_size < 1:
        raise ValueError(
            f"`block_size` must be a positive integer, \"auto\" or None, got {block_size}."
        )
    return int(block_size)


def check_problem(x, y, a, b, epsilon, cost=None, matrix_name="C", balanced=True):
    """Validate an OT problem; `None` weights become uniform. Balanced
    (`balanced=True`), given weights must sum to one; unbalanced, any
    positive finite weights.

    For a `MatrixCost`, `x` is the cost matrix (n, m), named `matrix_name` in
    errors, and `y` its column points (`column_ids(m)`, made by
    `ot_matfree.matrix`).
    """
    if cost is not None and is_matrix(cost):
        x = check_cost_matrix(matrix_name, x)
        if jnp.shape(y) != (x.shape[1], 1):
            raise ValueError(
                f"A cost-matrix problem's column points must be `column_ids({x.shape[1]})`, "
                f"got shape {jnp.shape(y)}."
            )
        y = jnp.asarray(y, x.dtype)
    else:
        x = check_points("x", x)
        y = check_points("y", y)
        check_same_dim(x, y)
    a = check_weights("a", a, x.shape[0], x.dtype, balanced)
    b = check_weights("b", b, y.shape[0], x.dtype, balanced)
    return x, y, a, b, check_epsilon(epsilon, x.dtype)
