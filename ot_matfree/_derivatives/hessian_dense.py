"""Dense analytic Hessian w.r.t. the points: the small-problem reference.

O(n m d^2 + (n d)^2) memory and O((n + m)^3) time: for tests and for
benchmarking the matrix-free HVPs against, not for large problems. This is
Li, Lu, Tao & Ye's Algorithm 1 (with their truncated-SVD regularisation when
`DenseSolver(threshold)` is raised).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.checks import error_if_failed
from .._core.costs import pairwise
from .._core.coupling import Coupling, upstream_status
from .._linear.operators import h_operator
from .._core.sharding import auto_partitioned
from .._linear.dense import DenseSolver


@eqx.filter_jit
@auto_partitioned
def hessian_x(
    coupling: Coupling, *, solver: DenseSolver = DenseSolver(), throw: bool = True
) -> Float[Array, "n d n d"]:
    """The dense Hessian of `reg_ot_cost` w.r.t. `x`, shape (n, d, n, d).

    `Hess = E^T H^+ E / eps + blockdiag_i sum_j P_ij (grad_11 c_ij -
    grad_1 c_ij grad_1 c_ij^T / eps)`, where `E` ((n + m) x n d) maps `dx` to
    the H-system's right-hand side and `H^+` is the pseudo-inverse of the
    dense H-matrix with `solver.threshold` as relative eigenvalue cut-off
    (Li, Lu, Tao & Ye's truncated-SVD regularisation when the threshold is
    raised). Memory O(n m d^2 + (n d)^2): small problems only.

    With `throw=True` a coupling whose own solve did not converge raises
    (`RESULTS.coupling_not_converged`), as for `hvp`; `throw=False` computes
    the Hessian of the coupling as it is.
    """
    if not isinstance(solver, DenseSolver):
        raise TypeError(f"`hessian_x` takes a DenseSolver, got {type(solver).__name__}.")
    x, y, eps = coupling.x, coupling.y, coupling.epsilon
    (n, d), m = x.shape, y.shape[0]
    operator = h_operator(coupling)
    p = operator.p.as_matrix()
    g1 = pairwise(jax.grad(coupling.cost, argnums=0), x, y)
    g11 = pairwise(jax.hessian(coupling.cost, argnums=0), x, y)
    pg = p[:, :, None] * g1
    top = jnp.einsum("ik,id->ikd", jnp.eye(n, dtype=x.dtype), pg.sum(1)).reshape(n, n * d)
    bottom = jnp.transpose(pg, (1, 0, 2)).reshape(m, n * d)
    e = jnp.concatenate([top, bottom])
    # Every column of E is consistent (sum(r) = sum(s)), so no projection is needed.
    sol = solver.init(operator, {}).pinv(e)
    hess = ((e.T @ sol) / eps).reshape(n, d, n, d)
    block = jnp.einsum("ij,ijab->iab", p, g11 - jnp.einsum("ija,ijb->ijab", g1, g1) / eps)
    hess = hess + jnp.einsum("ik,iab->iakb", jnp.eye(n, dtype=x.dtype), block)
    if throw:
        result = upstream_status(coupling)
        hess = error_if_failed(hess, result)
    return hess
