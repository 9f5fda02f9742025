"""GeomLoss `SamplesLoss("sinkhorn", p=2, ...)`, "tensorized" (dense PyTorch)
and "online" (KeOps, matrix-free) backends, values and gradients only.

Conventions: GeomLoss's cost for p = 2 is |x - y|^2 / 2 and its temperature is
`blur**p`; its loss (`debias=True`) is the Sinkhorn divergence
`OT(a,b) - OT(a,a)/2 - OT(b,b)/2`. With C = |x - y|^2 (ours),
`OT_eps(C / 2) = OT_{2 eps}(C) / 2`, so GeomLoss with `blur = sqrt(eps / 2)`
returns half of our `sinkhorn_divergence(epsilon=eps)`; `peers.py` doubles its
value and gradient. No tolerance: a fixed epsilon-scaling schedule (ratio
`scaling` per step, from the data's diameter down to blur), then one
extrapolation step.
"""

import math

from . import probe


def available(backend: str = "tensorized"):
    ok, why = probe("torch")
    if not ok:
        return ok, why
    ok, why = probe("geomloss")
    if not ok or backend != "online":
        return ok, why
    ok, kwhy = probe("pykeops")
    if not ok:
        return ok, kwhy
    return ok, f"{why}, pykeops {kwhy}"


def value_and_grad(x_np, y_np, epsilon, *, scaling, backend="tensorized", debias=True):
    """`() -> (value, grad_x)` in OUR convention (GeomLoss's doubled). `debias=False`:
    the entropic OT cost itself (its dual value, ott's `reg_ot_cost` at
    convergence) instead of the divergence."""
    import torch
    from geomloss import SamplesLoss

    dt = {"float32": torch.float32, "float64": torch.float64}[str(x_np.dtype)]
    y = torch.as_tensor(y_np, dtype=dt)
    loss = SamplesLoss("sinkhorn", p=2, blur=math.sqrt(epsilon / 2), scaling=scaling,
                       debias=debias, backend=backend)

    def run():
        x = torch.tensor(x_np, dtype=dt, requires_grad=True)
        val = loss(x, y)
        (gx,) = torch.autograd.grad(val, x)
        return 2 * float(val), 2 * gx.numpy()

    return run
