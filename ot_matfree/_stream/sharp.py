"""Streaming reductions for the sharp Sinkhorn distance `<P, C>`.

Same layer as `pair.py`: each function is one streaming pass
over row blocks of the coupling, O((n + m) d + block * m) memory.
Formulas: `docs/math.md`, "Sinkhorn distance gradient".
"""

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core.coupling import Coupling
from .engine import stream
from .pair import block_width, contract_block


def cost_marginals(coupling: Coupling) -> tuple[Float[Array, " n"], Float[Array, " m"]]:
    """Row and column sums of `P o C`: `((P o C) 1, (P o C)^T 1)`.

    Both sum to the sharp cost `<P, C>`.
    """
    m = coupling.y.shape[0]

    def block_fn(blk, rows, cols):
        p, c = blk.probs_and_cost()
        pc = p * c
        return jnp.sum(pc, axis=1), jnp.sum(pc, axis=0)

    col_init = jnp.zeros((m,), coupling.x.dtype)
    return stream(coupling, block_fn, col_init=col_init, width=3)


def sharp_gradients(
    coupling: Coupling, u: Float[Array, " n"], v: Float[Array, " m"]
) -> tuple[Float[Array, "n d"], Float[Array, "m d"]]:
    """Point gradients of `<P, C>` given the adjoint `[u; v] = H^+ [(P o C) 1; (P o C)^T 1]`.

    With `w_ij = P_ij (1 + (u_i + v_j - C_ij) / eps)`:
    `(sum_j w_ij grad_1 c_ij, sum_i w_ij grad_2 c_ij)`.
    """
    m, d = coupling.y.shape

    def block_fn(blk, rows, cols):
        (ub,), (vc,) = rows, cols
        p, c = blk.probs_and_cost()
        w = p * (1 + (ub[:, None] + vc[None, :] - c) / blk.epsilon)
        return contract_block(blk.cost, blk.x, blk.y, w)

    col_init = jnp.zeros((m, d), coupling.x.dtype)
    width = block_width(coupling.cost, d) + 2
    return stream(coupling, block_fn, (u,), (v,), col_init, width=width)
