"""Relaxed marginals of unbalanced OT: the few scalar formulas every layer shares.

With `tau` in (0, 1] (ott-jax's convention), the marginal penalty is
`rho KL(P 1 | a)`, `rho = epsilon tau / (1 - tau)`; `tau = 1` is the hard
constraint `P 1 = a` (balanced). In terms of the reduced potential
`h = f - epsilon log a` (ott-jax's `f` holds `epsilon log a`):

- the optimal row sums are `a exp(-h / rho)` (`target`);
- the dual's marginal term is `<a, Phi(h)>` with
  `Phi(h) = -rho (exp(-h / rho) - 1)` (`Phi(h) = h` at `tau = 1`), the
  Legendre transform of the KL penalty at `-h` (`conjugate`).

docs/unbalanced.md derives the Sinkhorn update, the H-matrix and the
gradients from these.
"""

import math

import jax.numpy as jnp


def check_tau(name: str, tau) -> float:
    """`tau` as a Python float in (0, 1], else `ValueError`.

    Static: a new `tau` compiles anew, as a new `epsilon_scaling` does; it
    is not differentiated.
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        try:
            tau = float(tau)
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a number in (0, 1], got {tau!r}.") from None
    tau = float(tau)
    if not (0 < tau <= 1) or math.isnan(tau):
        raise ValueError(
            f"`{name}` must be in (0, 1] (1: balanced; ott-jax's convention "
            f"tau = rho / (rho + epsilon)), got {tau!r}."
        )
    return tau


def is_balanced(tau_a: float, tau_b: float) -> bool:
    """Both marginals are hard constraints (`tau_a = tau_b = 1`)."""
    return tau_a == 1.0 and tau_b == 1.0


def mass_ratio(reduced, epsilon, tau: float):
    """`exp(-h / rho)`, the optimal marginal per unit weight for the reduced
    potential `h` (the scalar 1 at `tau = 1`)."""
    if tau == 1.0:
        return 1.0
    return jnp.exp(-reduced * inverse_rho(epsilon, tau))


def inverse_rho(epsilon, tau: float):
    """`1 / rho = (1 - tau) / (epsilon tau)` (0 for `tau = 1`)."""
    return (1 - tau) / (tau * epsilon)


def target(weights, reduced, epsilon, tau: float):
    """The optimal marginal `w exp(-h / rho)` for the reduced potential `h`
    (`w` itself at `tau = 1`)."""
    if tau == 1.0:
        return weights
    return weights * mass_ratio(reduced, epsilon, tau)


def conjugate(reduced, epsilon, tau: float):
    """`Phi(h) = -rho expm1(-h / rho)`, the marginal term of the dual per unit
    weight (`h` at `tau = 1`)."""
    if tau == 1.0:
        return reduced
    rho = epsilon * tau / (1 - tau)
    return -rho * jnp.expm1(-reduced / rho)
