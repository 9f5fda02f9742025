"""POT (Python Optimal Transport) with the PyTorch backend (CPU), dense.

- Value + gradient: `ot.solve(M, a, b, reg=eps, reg_type="KL",
  method="sinkhorn_log", grad="envelope")` on `M = ot.dist(x, y)` (squared
  Euclidean, no 1/2): value `<P, M> + eps KL(P | a b^T)`, which is ott's
  `reg_ot_cost` at convergence; the envelope gradient flows through M only.
- Forward solver: `ot.bregman.sinkhorn_log`.
Stopping rule: L2 norm of the column-marginal error (rows are exact after each
iteration), checked every 10 iterations, against `stopThr`. `peers.py` passes
`tol / sqrt(m)`, which guarantees an L1 error <= tol.
"""

import math

from . import probe


def available():
    ok, why = probe("torch")
    if not ok:
        return ok, why
    return probe("ot")


def _torch_dtype(dtype):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[str(dtype)]


def value_and_grad(x_np, y_np, epsilon, tol, max_iter=20_000):
    """`() -> (value, grad_x)` (NumPy), the solve inside."""
    import ot
    import torch

    dt = _torch_dtype(x_np.dtype)
    y = torch.as_tensor(y_np, dtype=dt)
    n, m = x_np.shape[0], y_np.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=dt)
    b = torch.full((m,), 1.0 / m, dtype=dt)
    stop = tol / math.sqrt(m)

    def run():
        x = torch.tensor(x_np, dtype=dt, requires_grad=True)
        M = ot.dist(x, y)  # squared Euclidean
        res = ot.solve(M, a, b, reg=epsilon, reg_type="KL", method="sinkhorn_log",
                       grad="envelope", tol=stop, max_iter=max_iter)
        (gx,) = torch.autograd.grad(res.value, x)
        return float(res.value.detach()), gx.numpy()

    return run


def forward_solver(x_np, y_np, epsilon, tol, max_iter=20_000):
    """`() -> (f, g, n_iters)` (NumPy, float64, potentials in ott's convention)."""
    import ot
    import torch

    x = torch.as_tensor(x_np, dtype=torch.float64)
    y = torch.as_tensor(y_np, dtype=torch.float64)
    n, m = x.shape[0], y.shape[0]
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((m,), 1.0 / m, dtype=torch.float64)
    M = ot.dist(x, y)
    stop = tol / math.sqrt(m)

    def run():
        _, log = ot.bregman.sinkhorn_log(a, b, M, epsilon, numItermax=max_iter, stopThr=stop,
                                         log=True, warn=False)
        # P = exp(u_i + v_j - M_ij / eps): f = eps u, g = eps v.
        return (epsilon * log["log_u"]).numpy(), (epsilon * log["log_v"]).numpy(), int(log["niter"]) + 1

    return run
