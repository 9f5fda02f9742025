"""Dense NumPy oracle for unbalanced entropic OT (float64, independent of ot_matfree).

The problem (KL reference `a b^T`: Séjourné et al. 2019, GeomLoss, POT
`reg_type="kl"`, ott-jax's documented `kl_reg_cost`):

    OT(C, a, b) = min_{P >= 0} <P, C> + eps KL(P | a b^T)
                  + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b),

    KL(p | q) = sum p log(p / q) - p + q,   rho = eps tau / (1 - tau),

`tau in (0, 1]`, `tau = 1` the hard constraint (`rho = inf`). Potentials in
ott-jax's convention: `P_ij = exp((f_i + g_j - C_ij) / eps)`, with reduced
duals `phi = f - eps log a`, `psi = g - eps log b`. The dual (maximised, equal
to `OT` at the optimum) is

    D = sum_i a_i Phi_a(phi_i) + sum_j b_j Phi_b(psi_j) + eps (sum a sum b - sum P),
    Phi(h) = -rho (exp(-h / rho) - 1)   (tau < 1),   Phi(h) = h   (tau = 1).

Everything here is plain NumPy on dense matrices: the reference the library's
matrix-free unbalanced API is tested against (`test_unbalanced.py`), and it
checks itself there (primal = dual, first-order conditions, Danskin gradients
and the implicit-function derivative of the potentials against central
differences).
"""

import numpy as np


def as64(*arrays):
    return tuple(np.asarray(z, np.float64) for z in arrays)


def sq_euclidean(x, y):
    """The default cost `c(x, y) = |x - y|^2`, dense `(n, m)`."""
    x, y = as64(x, y)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def rho(eps, tau):
    """`eps tau / (1 - tau)`; `inf` at `tau = 1` (hard constraint)."""
    return np.inf if tau == 1.0 else eps * tau / (1.0 - tau)


def penalty_conjugate(h, eps, tau):
    """`Phi(h) = -rho (exp(-h / rho) - 1)`, or `h` when `tau = 1`."""
    if tau == 1.0:
        return h
    r = rho(eps, tau)
    return -r * np.expm1(-h / r)


def mass_ratio(h, eps, tau):
    """`s = exp(-h / rho) = Phi'(h)`: the optimal marginal over the weight; 1 when `tau = 1`."""
    if tau == 1.0:
        return np.ones_like(h)
    return np.exp(-h / rho(eps, tau))


def _lse(z, axis):
    top = z.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def plan(C, f, g, eps):
    C, f, g = as64(C, f, g)
    return np.exp((f[:, None] + g[None, :] - C) / eps)


def marginal_error(C, a, b, eps, tau_a, tau_b, f, g):
    """`|P 1 - a s_a|_1 + |P^T 1 - b s_b|_1` (the L1 norm of the dual gradient)."""
    C, a, b, f, g = as64(C, a, b, f, g)
    P = plan(C, f, g, eps)
    phi, psi = f - eps * np.log(a), g - eps * np.log(b)
    return (np.abs(P.sum(1) - a * mass_ratio(phi, eps, tau_a)).sum()
            + np.abs(P.sum(0) - b * mass_ratio(psi, eps, tau_b)).sum())


def sinkhorn(C, a, b, eps, tau_a=1.0, tau_b=1.0, tol=1e-15, max_iters=200_000):
    """Log-domain Sinkhorn for the problem above: `(f, g, P)`.

    Updates `g = tau_b T_g(f) + (1 - tau_b) eps log b`, then
    `f = tau_a T_f(g) + (1 - tau_a) eps log a`, with `T_f(g)_i = eps log a_i -
    eps LSE_j((g_j - C_ij) / eps)` the balanced update. Stops once the
    marginal error (relative to the total mass) is below `tol`, or, past
    `1e-13`, once an iteration no longer changes the potentials (rounding
    floor).
    """
    C, a, b = as64(C, a, b)
    log_a, log_b = np.log(a), np.log(b)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    mass = a.sum() + b.sum()
    for _ in range(max_iters):
        g_new = eps * log_b - eps * _lse((f[:, None] - C) / eps, 0)
        g_new = tau_b * g_new + (1.0 - tau_b) * eps * log_b
        f_new = eps * log_a - eps * _lse((g_new[None, :] - C) / eps, 1)
        f_new = tau_a * f_new + (1.0 - tau_a) * eps * log_a
        still = np.array_equal(f_new, f) and np.array_equal(g_new, g)
        f, g = f_new, g_new
        err = marginal_error(C, a, b, eps, tau_a, tau_b, f, g) / mass
        if err < tol or (still and err < 1e-13):
            return f, g, plan(C, f, g, eps)
    raise AssertionError(f"dense unbalanced Sinkhorn did not converge (error {err:.2e})")


def dual_value(C, a, b, eps, tau_a, tau_b, f, g):
    """`D` at potentials `(f, g)` (any, not only optimal ones)."""
    C, a, b, f, g = as64(C, a, b, f, g)
    phi, psi = f - eps * np.log(a), g - eps * np.log(b)
    P = plan(C, f, g, eps)
    return (a @ penalty_conjugate(phi, eps, tau_a) + b @ penalty_conjugate(psi, eps, tau_b)
            + eps * (a.sum() * b.sum() - P.sum()))


def kl(p, q):
    """`sum p log(p / q) - p + q`."""
    return float(np.sum(p * np.log(p / q) - p + q))


def primal_value(C, a, b, eps, tau_a, tau_b, P):
    """`<P, C> + eps KL(P | a b^T) + rho_a KL(P 1 | a) + rho_b KL(P^T 1 | b)`; a
    hard side (`tau = 1`) contributes nothing (the caller checks `P 1 = a`)."""
    C, a, b, P = as64(C, a, b, P)
    value = np.sum(P * C) + eps * kl(P, np.outer(a, b))
    if tau_a != 1.0:
        value += rho(eps, tau_a) * kl(P.sum(1), a)
    if tau_b != 1.0:
        value += rho(eps, tau_b) * kl(P.sum(0), b)
    return value


def matrix_ot_cost(C, a, b, eps, tau_a=1.0, tau_b=1.0):
    """`OT(C, a, b)`: the dual at the converged potentials."""
    f, g, _ = sinkhorn(C, a, b, eps, tau_a, tau_b)
    return dual_value(C, a, b, eps, tau_a, tau_b, f, g)


def ot_cost(x, y, a, b, eps, tau_a=1.0, tau_b=1.0):
    """`OT` of point clouds under `|x - y|^2`."""
    return matrix_ot_cost(sq_euclidean(x, y), a, b, eps, tau_a, tau_b)


def matrix_distance(C, a, b, eps, tau_a=1.0, tau_b=1.0):
    """The sharp distance `<P*, C>`."""
    return float(np.sum(sinkhorn(C, a, b, eps, tau_a, tau_b)[2] * np.asarray(C, np.float64)))


def sinkhorn_distance(x, y, a, b, eps, tau_a=1.0, tau_b=1.0):
    return matrix_distance(sq_euclidean(x, y), a, b, eps, tau_a, tau_b)


def sinkhorn_divergence(x, y, a, b, eps, tau):
    """`OT(x, y) - OT(x, x) / 2 - OT(y, y) / 2 + (eps / 2) (sum a - sum b)^2`, one `tau`."""
    a, b = as64(a, b)
    return (ot_cost(x, y, a, b, eps, tau, tau) - 0.5 * ot_cost(x, x, a, a, eps, tau, tau)
            - 0.5 * ot_cost(y, y, b, b, eps, tau, tau) + 0.5 * eps * (a.sum() - b.sum()) ** 2)


def danskin_gradient(x, y, a, b, eps, tau_a=1.0, tau_b=1.0):
    """`(grad_x, grad_y, grad_a, grad_b)` of `ot_cost` by Danskin's theorem:
    `grad_x_i = sum_j P_ij 2 (x_i - y_j)`, `grad_a_i = Phi_a(phi_i) + eps (sum b - s_i)`,
    `s_i = exp(-phi_i / rho_a)` (1 when `tau_a = 1`); symmetric in `y`, `b`."""
    x, y, a, b = as64(x, y, a, b)
    f, g, P = sinkhorn(sq_euclidean(x, y), a, b, eps, tau_a, tau_b)
    phi, psi = f - eps * np.log(a), g - eps * np.log(b)
    gx = 2.0 * (P.sum(1)[:, None] * x - P @ y)
    gy = 2.0 * (P.sum(0)[:, None] * y - P.T @ x)
    ga = penalty_conjugate(phi, eps, tau_a) + eps * (b.sum() - mass_ratio(phi, eps, tau_a))
    gb = penalty_conjugate(psi, eps, tau_b) + eps * (a.sum() - mass_ratio(psi, eps, tau_b))
    return gx, gy, ga, gb


def h_matrix(P, tau_a, tau_b):
    """`H_u = [[diag(P 1) / tau_a, P], [P^T, diag(P^T 1) / tau_b]]`: `eps` times the
    Jacobian of the optimality conditions `P 1 - a s_a = 0`, `P^T 1 - b s_b = 0`
    in `(f, g)`."""
    P = np.asarray(P, np.float64)
    top = np.concatenate([np.diag(P.sum(1) / tau_a), P], axis=1)
    bottom = np.concatenate([P.T, np.diag(P.sum(0) / tau_b)], axis=1)
    return np.concatenate([top, bottom], axis=0)


def potential_tangent(x, y, a, b, eps, tau_a, tau_b, dx, dy):
    """`(df, dg)` along `(dx, dy)` by the implicit function theorem:
    `H_u [df; dg] = [(P o dC) 1; (P o dC)^T 1]`, `dC` the directional
    derivative of the cost matrix (requires `H_u` nonsingular: a `tau < 1`)."""
    x, y, dx, dy = as64(x, y, dx, dy)
    _, _, P = sinkhorn(sq_euclidean(x, y), a, b, eps, tau_a, tau_b)
    diff = x[:, None, :] - y[None, :, :]
    dC = 2.0 * np.einsum("ijk,ijk->ij", diff, dx[:, None, :] - dy[None, :, :])
    PdC = P * dC
    rhs = np.concatenate([PdC.sum(1), PdC.sum(0)])
    sol = np.linalg.solve(h_matrix(P, tau_a, tau_b), rhs)
    return sol[: len(x)], sol[len(x):]


def distance_gradient_C(C, a, b, eps, tau_a, tau_b):
    """`grad_C <P*, C>` by the implicit function theorem (Qiu et al.'s closed
    form, unbalanced): `P + P o (w_a (+) w_b - C) / eps`, `H_u [w_a; w_b] =
    [(P o C) 1; (P o C)^T 1]` (requires a `tau < 1`)."""
    C = np.asarray(C, np.float64)
    _, _, P = sinkhorn(C, a, b, eps, tau_a, tau_b)
    PC = P * C
    w = np.linalg.solve(h_matrix(P, tau_a, tau_b), np.concatenate([PC.sum(1), PC.sum(0)]))
    n = C.shape[0]
    return P + P * (w[:n, None] + w[None, n:] - C) / eps


def central_difference(fn, z, v, h=1e-5):
    """`(fn(z + h v) - fn(z - h v)) / 2h`, elementwise over tuples of outputs."""
    z, v = as64(z, v)
    plus, minus = fn(z + h * v), fn(z - h * v)
    if isinstance(plus, tuple):
        return tuple((np.asarray(p) - np.asarray(m)) / (2 * h) for p, m in zip(plus, minus))
    return (np.asarray(plus) - np.asarray(minus)) / (2 * h)


def central_difference_gradient(fn, z, h=1e-5):
    """The full gradient of scalar `fn` at `z` by central differences, one
    coordinate at a time (small problems only)."""
    z = np.asarray(z, np.float64)
    grad = np.empty(z.size)
    for k in range(z.size):
        e = np.zeros(z.size)
        e[k] = 1.0
        grad[k] = central_difference(fn, z, e.reshape(z.shape), h)
    return grad.reshape(z.shape)
