"""The coupling P and the H-matrix as lineax operators.

Both apply only through streaming reductions; `as_matrix` materialises them
and is meant for small problems (tests, dense references) only.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._core.coupling import Coupling
from .._core.sharding import auto_partitioned
from .._stream.engine import apply, marginals


class CouplingOperator(lx.AbstractLinearOperator):
    """`P` (n x m) as a matrix-free lineax operator; `.T` streams `P^T`."""

    coupling: Coupling

    def mv(self, vector):
        return apply(self.coupling, v=vector)[0]

    def as_matrix(self) -> Float[Array, "n m"]:
        """Dense `P`: O(nm) memory, small problems only."""
        m = self.coupling.shape[1]
        return apply(self.coupling, v=jnp.eye(m, dtype=self.coupling.x.dtype))[0]

    def transpose(self):
        return CouplingOperator(self.coupling.transpose())

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.coupling.shape[1],), self.coupling.x.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.coupling.shape[0],), self.coupling.x.dtype)


class HOperator(lx.AbstractLinearOperator):
    """`H = [[diag(a_hat / tau_a), P], [P^T, diag(b_hat / tau_b)]]` on vectors
    `[u; v]` of size n + m.

    `a_hat = P 1` and `b_hat = P^T 1` are the actual marginals of the coupling.
    Balanced (`tau_a = tau_b = 1`, the coupling's), `(1_n, -1_m)` is an exact
    null vector and H is symmetric PSD; unbalanced (either `tau` < 1) the
    diagonal gains `a_hat (1 / tau_a - 1)` and H is positive definite
    (docs/unbalanced.md). Build it with `h_operator`.
    """

    coupling: Coupling
    a_hat: Float[Array, " n"]
    b_hat: Float[Array, " m"]

    @property
    def p(self) -> CouplingOperator:
        """The off-diagonal block `P` as a `CouplingOperator`."""
        return CouplingOperator(self.coupling)

    @property
    def balanced(self) -> bool:
        """Whether H is the balanced, singular H-matrix (null vector `(1, -1)`)."""
        return self.coupling.balanced

    @property
    def support(self):
        """The points with mass on each side (`Coupling.support`)."""
        return self.coupling.support

    @property
    def diagonal(self) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
        """H's diagonal blocks: `(a_hat / tau_a, b_hat / tau_b)`."""
        return self.a_hat / self.coupling.tau_a, self.b_hat / self.coupling.tau_b

    def mv(self, vector):
        n = self.a_hat.shape[0]
        u, v = vector[:n], vector[n:]
        pv, ptu = apply(self.coupling, v=v, u=u)
        da, db = self.diagonal
        return jnp.concatenate([da * u + pv, ptu + db * v])

    def as_matrix(self) -> Float[Array, "n+m n+m"]:
        """Dense `H`: O((n + m)^2) memory, small problems only."""
        p = self.p.as_matrix()
        da, db = self.diagonal
        top = jnp.concatenate([jnp.diag(da), p], axis=1)
        bottom = jnp.concatenate([p.T, jnp.diag(db)], axis=1)
        return jnp.concatenate([top, bottom], axis=0)

    def transpose(self):
        return self

    def in_structure(self):
        size = self.a_hat.shape[0] + self.b_hat.shape[0]
        return jax.ShapeDtypeStruct((size,), self.a_hat.dtype)

    def out_structure(self):
        return self.in_structure()


def _register(cls, symmetric: bool, diagonal) -> None:
    false_queries = (
        lx.is_diagonal, lx.is_tridiagonal, lx.has_unit_diagonal, lx.is_lower_triangular,
        lx.is_upper_triangular, lx.is_negative_semidefinite,
    )
    for query in false_queries:
        query.register(cls)(lambda operator: False)
    for query in (lx.is_symmetric, lx.is_positive_semidefinite):
        query.register(cls)(lambda operator: symmetric)
    for query in (lx.linearise, lx.materialise, lx.conj):
        query.register(cls)(lambda operator: operator)
    lx.diagonal.register(cls)(diagonal)
    lx.tridiagonal.register(cls)(
        lambda operator: lx.tridiagonal(lx.MatrixLinearOperator(operator.as_matrix()))
    )


_register(CouplingOperator, False, lambda operator: jnp.diag(operator.as_matrix()))
_register(HOperator, True, lambda operator: jnp.concatenate(operator.diagonal))


def coupling_operator(coupling: Coupling) -> CouplingOperator:
    """The coupling matrix `P` (n x m) of `coupling` as a streaming lineax operator."""
    return CouplingOperator(coupling)


@eqx.filter_jit
@auto_partitioned
def h_operator(coupling: Coupling) -> HOperator:
    """The H-matrix of `coupling` as a streaming, symmetric PSD lineax operator
    (positive definite when the coupling is unbalanced).

    Costs one streaming pass (for the marginals `P 1`, `P^T 1`). Solve with it
    through `lineax.linear_solve(h_operator(c), rhs, solver=CG())` (or any
    ot_matfree H-solver), or pass it to a solver's `init` once and reuse the
    state for many solves.
    """
    return HOperator(coupling, *marginals(coupling))
