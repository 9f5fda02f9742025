"""regot (Qiu et al.): dense C++ solvers of the entropic OT dual, forward only.

`regot.sinkhorn_<method>(M, a, b, reg, tol, max_iter)` with the plan
`T_ij = exp((alpha_i + beta_j - M_ij) / reg)`: with `M = |x - y|^2` and
`reg = eps` this is our problem. Stopping rule: the Euclidean norm of the dual
gradient (both marginal errors, n + m - 1 entries) below `tol`; `peers.py`
passes `tol / sqrt(n + m)`, which guarantees an L1 error <= tol. The dense
Newton solver factors an (n + m - 1)^2 matrix at every step.
"""

import math

from . import probe

METHODS = {
    "regot Newton (dense)": "sinkhorn_newton",
    "regot SSNS (sparse Newton)": "sinkhorn_ssns",
    "regot SPLR (quasi-Newton)": "sinkhorn_splr",
    "regot L-BFGS (dual)": "sinkhorn_lbfgs_dual",
}


def available():
    return probe("regot")


def forward_solver(method, x_np, y_np, epsilon, tol, max_iter):
    """`() -> (plan, n_iters)` (NumPy). The dense cost matrix is built outside the timing."""
    import numpy as np
    import regot

    n, m = x_np.shape[0], y_np.shape[0]
    M = np.asfortranarray(((x_np[:, None, :] - y_np[None, :, :]) ** 2).sum(-1))
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    fn = getattr(regot, METHODS[method])
    stop = tol / math.sqrt(n + m)

    def run():
        res = fn(M, a, b, epsilon, tol=stop, max_iter=max_iter, verbose=0)
        return np.asarray(res.plan), int(res.niter)

    return run
