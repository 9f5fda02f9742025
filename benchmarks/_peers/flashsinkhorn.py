"""FlashSinkhorn (`ot_triton`, PyTorch + Triton): GPU (CUDA) only.

Written against its documented API (README and "Gradient and HVP Guide" of
the FlashSinkhorn repository): `ot_triton.SamplesLoss("sinkhorn", blur=...)`
uses the full cost |x - y|^2 (no 1/2 unless `half_cost=True`) and
`eps = blur**2`, so `blur = sqrt(eps)` matches our epsilon. HVPs w.r.t. x come
from double backward (`grad(<grad_x, v>)`), which runs its streaming
Schur-complement CG with a Tikhonov shift `tau2` (biased; squared Euclidean
only). NOT RUN on the 2-core CPU machine of this project: `available()` is
false without a CUDA device, and this adapter has never been executed.
"""

import math

from . import probe


def available():
    ok, why = probe("torch")
    if not ok:
        return ok, why
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device (FlashSinkhorn's Triton kernels are GPU-only)"
    return probe("ot_triton")


def _loss(epsilon, debias, scaling):
    from ot_triton import SamplesLoss

    return SamplesLoss("sinkhorn", blur=math.sqrt(epsilon), scaling=scaling, debias=debias)


def value_and_grad(x_np, y_np, epsilon, *, scaling=0.95):
    """`() -> (sinkhorn divergence, grad_x)` in our convention (full cost)."""
    import torch

    y = torch.as_tensor(y_np, device="cuda", dtype=torch.float32)
    loss = _loss(epsilon, True, scaling)

    def run():
        x = torch.tensor(x_np, device="cuda", dtype=torch.float32, requires_grad=True)
        val = loss(x, y)
        (gx,) = torch.autograd.grad(val, x)
        torch.cuda.synchronize()
        return float(val), gx.double().cpu().numpy()

    return run


def hvp(x_np, y_np, v_np, epsilon, *, scaling=0.95):
    """`() -> H_xx v` of the (non-debiased) OT cost, solve included."""
    import torch

    y = torch.as_tensor(y_np, device="cuda", dtype=torch.float32)
    v = torch.as_tensor(v_np, device="cuda", dtype=torch.float32)
    loss = _loss(epsilon, False, scaling)

    def run():
        x = torch.tensor(x_np, device="cuda", dtype=torch.float32, requires_grad=True)
        (gx,) = torch.autograd.grad(loss(x, y), x, create_graph=True)
        (hv,) = torch.autograd.grad((gx * v).sum(), x)
        torch.cuda.synchronize()
        return hv.double().cpu().numpy()

    return run
