"""The two-stage SGD-Newton driver (Li, Lu, Tao & Ye, Algorithm 2).

Optimiser layer. Stage 1: SGD on minibatches of the source until the
Hessian of the full objective is positive definite (checked by Lanczos on
HVPs every `check_every` steps). Stage 2: `NewtonCG` from there, by default
relaxed Newton (fixed step `0.5`) as in the paper.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._tree import check_one_dtype
from .lanczos import min_hessian_eigenvalue
from .newton_cg import NewtonCG


def _check(fn, params, source, args, key, lanczos_steps):
    return min_hessian_eigenvalue(
        lambda p: fn(p, source, args), params, key=key, num_steps=lanczos_steps
    )


@eqx.filter_jit
def _check_arguments(source, params0, batch_size, max_sgd_steps, check_every, newton) -> int:
    """`sgd_newton`'s argument checks; **returns** the number of samples `n`."""
    leaves = jax.tree.leaves(source)
    if not leaves:
        raise ValueError("`source` must contain at least one array.")
    n = leaves[0].shape[0]
    if any(leaf.shape[:1] != (n,) for leaf in leaves):
        raise ValueError("every array in `source` must have the same leading (sample) axis.")
    if not 1 <= batch_size <= n:
        raise ValueError(f"`batch_size` must be in [1, {n}], got {batch_size}.")
    if max_sgd_steps < 0 or check_every < 1:
        raise ValueError("`max_sgd_steps` must be >= 0 and `check_every` >= 1.")
    if not isinstance(newton, NewtonCG):
        raise TypeError(f"`newton` must be an ot_matfree.NewtonCG, got {type(newton).__name__}.")
    check_one_dtype(params0, "sgd_newton")
    return n


def sgd_newton(
    fn: Callable[[PyTree[Array], PyTree[Array], Any], Array],
    params0: PyTree[Array],
    source: PyTree[Array],
    args: Any = None,
    *,
    key: PRNGKeyArray,
    batch_size: int,
    learning_rate: float,
    max_sgd_steps: int,
    newton: NewtonCG = NewtonCG(rtol=1e-8, atol=1e-8, search=optx.LearningRate(0.5)),
    max_newton_steps: int = 256,
    check_every: int = 1,
    lanczos_steps: int = 20,
    throw: bool = True,
) -> optx.Solution:
    """Minimise `fn(params, source, args)` by SGD on minibatches of `source`, then Newton.

    Li et al.'s Algorithm 2 (shuffled regression, point-cloud registration):

    1. SGD, `params <- params - learning_rate * grad fn(params, batch, args)`,
       on random minibatches of `batch_size` rows of `source` (sampled without
       replacement per step), until the Hessian of the full-batch objective
       `fn(params, source, args)` is positive definite or `max_sgd_steps`
       steps were taken. Every `check_every` steps its smallest eigenvalue is
       estimated by `lanczos_steps` Lanczos steps on HVPs
       (`min_hessian_eigenvalue`); no Hessian is formed.
    2. `optimistix.minimise` of the full-batch objective with `newton`
       (default: relaxed Newton, step 0.5, as in the paper) from there.

    Paper settings, registration of 3-D clouds by a 3 x 3 matrix (Section 6.2:
    5 SGD steps on 500 random points, learning rate 0.1, then relaxed Newton
    with step 0.5):

    ```python
    loss = lambda A, x, y: om.ot_cost(x @ A, y, epsilon=eps)
    sol = om.sgd_newton(loss, A0, x, y, key=key, batch_size=500,
                        learning_rate=0.1, max_sgd_steps=5)
    A_hat = sol.value
    ```

    (Section 6.1, shuffled regression: 10 SGD steps on 100 points with
    learning rate 0.001.)

    **Arguments:**

    - `fn`: scalar objective `fn(params, source, args)`; `source` is the full
      source or a minibatch of it (the same pytree with fewer rows).
    - `params0`: initial parameters (any pytree of arrays).
    - `source`: pytree of arrays sharing the leading (sample) axis.
    - `args`: anything else `fn` needs (targets, ...), passed unchanged.
    - `key`: JAX random key (minibatches, Lanczos start vectors).
    - `batch_size`: minibatch rows, at most the number of source rows.
    - `learning_rate`: SGD step size.
    - `max_sgd_steps`: SGD steps at most; Newton starts after them even if the
      Hessian is not yet positive definite (`stats["positive_definite"]` says).
    - `newton`: the second-stage `NewtonCG` (e.g.
      `NewtonCG(rtol, atol)` for an Armijo line search instead of the fixed step).
    - `max_newton_steps`, `throw`: passed to `optimistix.minimise` as
      `max_steps`, `throw`.
    - `check_every`: SGD steps between definiteness checks.
    - `lanczos_steps`: Lanczos steps (HVPs) per check.

    **Returns:** the `optimistix.Solution` of stage 2, whose `stats` also hold
    `num_sgd_steps`, `positive_definite` (the verdict of stage 1's last
    check, at the point stage 2 starts from) and `min_eigenvalue` (its
    smallest Ritz value). Stage 2 does not stop at a saddle or a maximum
    (`NewtonCG` probes the curvature where it would stop), so it may report
    `successful` after an indefinite start: the point it returns is where
    its probe saw no clearly negative curvature.
    """
    n = _check_arguments(source, params0, batch_size, max_sgd_steps, check_every, newton)
    dtype = jnp.result_type(*jax.tree.leaves(params0))
    grad = jax.grad(fn)

    def cond(carry):
        step, _, _, pd, _ = carry
        return (step < max_sgd_steps) & ~pd

    def body(carry):
        step, params, key, _, lam = carry
        key, k_batch, k_check = jax.random.split(key, 3)
        rows = jax.random.choice(k_batch, n, (batch_size,), replace=False)
        batch = jax.tree.map(lambda leaf: leaf[rows], source)
        g = grad(params, batch, args)
        params = jax.tree.map(lambda p, gi: p - learning_rate * gi, params, g)
        step = step + 1
        lam = jax.lax.cond(
            step % check_every == 0,
            lambda: _check(fn, params, source, args, k_check, lanczos_steps).astype(dtype),
            lambda: lam,
        )
        return step, params, key, lam > 0, lam

    key, k0 = jax.random.split(key)
    lam0 = _check(fn, params0, source, args, k0, lanczos_steps).astype(dtype)
    init = (jnp.array(0), params0, key, lam0 > 0, lam0)
    num_sgd, params, _, pd, lam = jax.lax.while_loop(cond, body, init)
    sol = optx.minimise(
        lambda p, a: fn(p, source, a), newton, params, args,
        max_steps=max_newton_steps, throw=throw,
    )
    stats = {**sol.stats, "num_sgd_steps": num_sgd, "positive_definite": pd,
             "min_eigenvalue": lam}
    return optx.Solution(value=sol.value, result=sol.result, aux=sol.aux, stats=stats,
                         state=sol.state)
