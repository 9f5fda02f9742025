"""ot_matfree itself, through its public API only."""

import dataclasses
import functools

import jax
import jax.numpy as jnp

import ot_matfree as om

# Forward-solver variants for table 3, in one place. A variant runs only if
# `om.Sinkhorn` has every field it names (other branches are adding
# acceleration options; edit the names here when they land).
SINKHORN_VARIANTS: dict[str, dict] = {
    "Sinkhorn (plain)": {"momentum": None},  # the default until 0.3; committed tables ran it
    "Sinkhorn momentum (adaptive)": {"momentum": "adaptive"},
    "Sinkhorn Anderson (m = 5)": {"anderson": 5},
    "Sinkhorn epsilon-scaling 0.5 + adaptive momentum": {"epsilon_scaling": 0.5, "momentum": "adaptive"},
}


def sinkhorn_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(om.Sinkhorn)}


def sinkhorn_variants() -> tuple[dict[str, dict], dict[str, str]]:
    """`(runnable variants, {skipped variant: reason})` for this version of ot_matfree."""
    have = sinkhorn_fields()
    run, skipped = {}, {}
    for name, opts in SINKHORN_VARIANTS.items():
        missing = sorted(set(opts) - have)
        if missing:
            skipped[name] = f"om.Sinkhorn has no option {', '.join(missing)} in this version"
        else:
            run[name] = opts
    return run, skipped


def value_and_grad(loss: str, y, epsilon: float, tol: float, max_iters: int = 20_000):
    """Jitted `x -> (value, grad_x)` of `ot_cost` or `sinkhorn_divergence`."""
    fn = {"ot": om.ot_cost, "divergence": om.sinkhorn_divergence}[loss]
    solver = om.Sinkhorn(tol=tol, max_iters=max_iters)
    return jax.jit(jax.value_and_grad(lambda x: fn(x, y, epsilon=epsilon, solver=solver)))


def solver(tol: float, max_iters: int = 20_000, **opts):
    return om.Sinkhorn(tol=tol, max_iters=max_iters, **opts)


@jax.jit
def _solve(x, y, epsilon, solver):
    return om.solve(x, y, epsilon=epsilon, solver=solver, throw=False)


def solve(x, y, epsilon, solver_):
    """A `Coupling` (throw=False: the status is reported, not raised). `epsilon`
    is traced, so one compilation serves every epsilon of a given shape."""
    return _solve(x, y, jnp.asarray(epsilon, x.dtype), solver_)


@functools.lru_cache
def _hvp(rtol: float):
    cg = om.CG(rtol=rtol, max_steps=5000)
    return jax.jit(lambda coupling, v: om.hvp_x_solution(coupling, v, linear_solver=cg))


def hvp(coupling, v, rtol: float):
    """`(H_xx v, stats)` given the coupling (one compilation per `rtol`)."""
    sol = _hvp(float(rtol))(coupling, v)
    return sol.value, sol.stats


@functools.lru_cache
def _dense(threshold):
    return jax.jit(lambda c: om.hessian_x(c, solver=om.DenseSolver(threshold=threshold)))


def dense_hessian(coupling, threshold=None):
    """Dense (n, d, n, d) Hessian (Li, Lu, Tao & Ye's analytic formula; a
    relative eigenvalue cut-off `threshold` is their truncated-SVD regularisation)."""
    return _dense(threshold)(coupling)
