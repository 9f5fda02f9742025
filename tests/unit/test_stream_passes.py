"""One pass per CG step, per-reduction block sizes and their autotune, batched HVPs.

Oracles: the dense coupling matrix (`CouplingOperator.as_matrix`), the
two-pass products they replace, single-tangent HVPs column by column, and
the structure of the jaxpr (how many streaming scans a CG step runs, and
whether the exps inside a batched HVP carry the batch axis).
"""

import jax
import jax.numpy as jnp
import pytest

import ot_matfree as om
from ot_matfree._core import coupling as _coupling
from ot_matfree._linear.schur import NormalisedSchur
from ot_matfree._stream.engine import autotune, schur_apply

from ..helpers import problem, rel_err

CG = om.CG(rtol=1e-13)


def solved(n, m, d=2, epsilon=0.3, block_size=None, dtype=jnp.float64, seed=0):
    x, y, a, b = problem(seed, n, m, d, dtype=dtype)
    return om.solve(x, y, a, b, epsilon=epsilon, block_size=block_size,
                    solver=om.Sinkhorn(tol=1e-12 if dtype == jnp.float64 else 1e-5))


# --------------------------------------------------------------------------- one pass


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("n, m, block", [(13, 7, 4), (6, 11, 5), (9, 9, None)])
def test_schur_apply_matches_dense(n, m, block, k):
    c = solved(n, m, block_size=block)
    p = om.coupling_operator(c).as_matrix()
    shape = (m,) if k is None else (m, k)
    z = jax.random.normal(jax.random.PRNGKey(1), shape)
    w = jax.random.uniform(jax.random.PRNGKey(2), (n,)) + 0.5
    pz, out = schur_apply(c, z, w)
    wk = w if k is None else w[:, None]
    assert rel_err(pz, p @ z) < 1e-13
    assert rel_err(out, p.T @ (wk * (p @ z))) < 1e-13


def test_schur_apply_float32_with_padding():
    c = solved(37, 23, block_size=8, dtype=jnp.float32)
    z = jax.random.normal(jax.random.PRNGKey(1), (23,), jnp.float32)
    w = 1 / c.a
    pz, out = schur_apply(c, z, w)
    p64 = om.coupling_operator(jax.tree_util.tree_map(
        lambda t: t.astype(jnp.float64) if eqx_array(t) else t, c)).as_matrix()
    z64, w64 = z.astype(jnp.float64), w.astype(jnp.float64)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert rel_err(out.astype(jnp.float64), p64.T @ (w64 * (p64 @ z64))) < 1e-5


def eqx_array(t):
    return isinstance(t, jax.Array) and jnp.issubdtype(t.dtype, jnp.floating)


@pytest.mark.parametrize("n, m", [(12, 8), (8, 12)])
def test_normalised_schur_one_pass_equals_two_passes(n, m):
    c = solved(n, m, block_size=5)
    schur = NormalisedSchur.from_h(om.h_operator(c))
    z = jax.random.normal(jax.random.PRNGKey(3), (min(n, m),))
    two_passes = schur.project(z - schur.pt_rmv(schur.pt_mv(z)))
    assert rel_err(schur.mv(z), two_passes) < 1e-13
    zs = jax.random.normal(jax.random.PRNGKey(4), (min(n, m), 3))
    columns = jax.vmap(lambda v: schur.pt_rmv(schur.pt_mv(v)), 1, 1)(zs)
    assert rel_err(schur.gram(zs), columns) < 1e-13
    mv, image = schur.mv_and_image(z)
    assert rel_err(mv, two_passes) < 1e-13
    assert rel_err(image, schur.q_op.mv(z / jnp.sqrt(schur.q))) < 1e-13


def _scans(jaxpr):
    """Streaming scans (scans computing exps) of `jaxpr`: outside loops, and
    inside the body of its while loops."""

    def subs(eqn):
        for value in eqn.params.values():
            for v in value if isinstance(value, (list, tuple)) else (value,):
                if hasattr(v, "eqns"):
                    yield v
                elif hasattr(getattr(v, "jaxpr", None), "eqns"):
                    yield v.jaxpr

    def has_exp(j):
        return any(e.primitive.name == "exp" or any(has_exp(s) for s in subs(e)) for e in j.eqns)

    fixed, loop = 0, 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan" and has_exp(eqn.params["jaxpr"].jaxpr):
            fixed += 1
        elif eqn.primitive.name == "while":
            loop += _scans(eqn.params["body_jaxpr"].jaxpr)[0]
        elif eqn.primitive.name == "cond":
            # The passes of the branch that runs when no weight is zero: the
            # HVP's one `cond` with a pass recomputes the entries of
            # zero-weight points (`hvp._zero_mass_entries`), its other branch
            # is the identity.
            counts = [_scans(branch.jaxpr) for branch in eqn.params["branches"]]
            f, lp = min(counts)
            fixed, loop = fixed + f, loop + lp
        else:
            for s in subs(eqn):
                f, lp = _scans(s)
                fixed, loop = fixed + f, loop + lp
    return fixed, loop


@pytest.mark.parametrize("n, m", [(10, 7), (7, 10)])
def test_hvp_runs_one_pass_per_cg_step_and_three_more(n, m):
    c = solved(n, m)
    v = jax.random.normal(jax.random.PRNGKey(5), (n, 2))
    jaxpr = jax.make_jaxpr(lambda v: om.hvp_x(c, v, linear_solver=CG))(v).jaxpr
    # Outside the loop: marginals with the right-hand side and its reduction
    # to the smaller side, the final residual with the recovery, the output.
    # 2K + 7 before issue 9, K + 4 before the reduction joined the first pass.
    assert _scans(jaxpr) == (3, 1)


@pytest.mark.parametrize("n, m", [(10, 7), (7, 10)])
def test_hvp_with_solver_state_runs_three_passes_around_cg(n, m):
    c = solved(n, m)
    state = CG.init(om.h_operator(c), {})
    v = jax.random.normal(jax.random.PRNGKey(5), (n, 2))
    jaxpr = jax.make_jaxpr(
        lambda v: om.hvp_x(c, v, linear_solver=CG, solver_state=state))(v).jaxpr
    assert _scans(jaxpr) == (3, 1)


@pytest.mark.parametrize("block", [3, None])
@pytest.mark.parametrize("n, m", [(11, 7), (7, 11)])
def test_fused_reduction_matches_its_own_pass(n, m, block):
    """The right-hand side pass's `Q^T (big / p)` against `reduce`'s own pass,
    with weight tangents whose sums differ (the range shift is nonzero)."""
    from ot_matfree._linear.schur import reduced_system, share_pass
    from ot_matfree._stream.pair import schur_rhs

    c = solved(n, m, block_size=block)
    keys = jax.random.split(jax.random.PRNGKey(9), 4)
    dx, dy = jax.random.normal(keys[0], (n, 2)), jax.random.normal(keys[1], (m, 2))
    ea, eb = jax.random.normal(keys[2], (n,)), jax.random.normal(keys[3], (m,))
    op = om.h_operator(c)
    for marginal in (None, op.b_hat if m > n else op.a_hat):
        r, s, a_hat, b_hat, pushed = schur_rhs(c, dx, dy, ea, eb, marginal)
        if marginal is None:
            assert rel_err(a_hat, op.a_hat) < 1e-13 and rel_err(b_hat, op.b_hat) < 1e-13
        _, _, _, fused = reduced_system(op, r, s, share_pass(pushed))
        _, _, _, own = reduced_system(op, r, s)
        assert rel_err(fused, own) < 1e-12


# --------------------------------------------------------------------------- batches


@pytest.mark.parametrize("n, m", [(11, 8), (8, 11)])
def test_batched_hvp_x_equals_columns(n, m):
    c = solved(n, m, block_size=3)
    vs = jax.random.normal(jax.random.PRNGKey(6), (4, n, 2))
    sol = om.hvp_x_solution(c, vs, linear_solver=CG)
    hv, stats = sol.value, sol.stats
    assert hv.shape == (4, n, 2) and stats["num_steps"].shape == (4,)
    for i in range(4):
        column = om.hvp_x_solution(c, vs[i], linear_solver=CG)
        one, st = column.value, column.stats
        assert rel_err(hv[i], one) < 1e-12
        assert int(stats["num_steps"][i]) == int(st["num_steps"])
        assert bool(stats["converged"][i])


def test_batched_joint_hvp_equals_columns_with_spectral_state():
    n, m, k = 9, 7, 3
    c = solved(n, m)
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    dx = jax.random.normal(keys[0], (k, n, 2))
    dy = jax.random.normal(keys[1], (k, m, 2))
    da = jax.random.normal(keys[2], (k, n))
    da = da - da.mean(axis=1, keepdims=True)
    solver = om.SpectralCG(rank=3, rtol=1e-13)
    state = solver.init(om.h_operator(c), {})
    out = om.hvp(c, dx, dy, da, linear_solver=solver, solver_state=state)
    for i in range(k):
        ref = om.hvp(c, dx[i], dy[i], da[i], linear_solver=solver, solver_state=state)
        for got, want in zip(out, ref):
            assert rel_err(got[i], want) < 1e-12


def test_batched_tangents_must_agree():
    c = solved(6, 5)
    with pytest.raises(ValueError, match="batch"):
        om.hvp(c, jnp.ones((2, 6, 2)), jnp.ones((3, 5, 2)))
    with pytest.raises(ValueError, match="batch"):
        om.hvp(c, jnp.ones((2, 6, 2)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="dx"):
        om.hvp_x(c, jnp.ones((2, 2, 6, 2)))


def test_batched_hvp_computes_each_exp_once_for_all_columns():
    n, m, k = 10, 8, 5
    c = solved(n, m)
    vs = jnp.ones((k, n, 2))

    def exp_shapes(j, out):
        for eqn in j.eqns:
            if eqn.primitive.name == "exp":
                out.append(eqn.outvars[0].aval.shape)
            for value in eqn.params.values():
                for v in value if isinstance(value, (list, tuple)) else (value,):
                    if hasattr(v, "eqns"):
                        exp_shapes(v, out)
                    elif hasattr(getattr(v, "jaxpr", None), "eqns"):
                        exp_shapes(v.jaxpr, out)
        return out

    jaxpr = jax.make_jaxpr(lambda v: om.hvp_x(c, v, linear_solver=CG))(vs).jaxpr
    shapes = exp_shapes(jaxpr, [])
    blocks = [s for s in shapes if len(s) >= 2 and s[-1] in (n, m)]
    assert blocks, shapes
    assert all(k not in s[:-2] and len(s) == 2 for s in blocks), blocks


# --------------------------------------------------------------------------- block sizes


def test_block_rows_per_kind_and_backend(monkeypatch):
    monkeypatch.setattr(_coupling, "CPU_BLOCK_BYTES", {"apply": 8000, "logsumexp": 1600})
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert _coupling.block_rows(1000, 100, 2, 8, None, "apply") == 5
    assert _coupling.block_rows(1000, 100, 2, 8, None, "logsumexp") == 1
    assert _coupling.block_rows(1000, 100, 2, 8, 7, "apply") == 7
    assert _coupling.block_rows(1000, 100, 2, 8, None, "apply", tuned_bytes=16000) == 10
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    rows = _coupling.DEFAULT_BLOCK_BYTES // (100 * 2 * 8)
    assert _coupling.block_rows(10**6, 100, 2, 8, None, "apply") == rows


def test_autotune_caches_and_auto_matches_fixed_blocks(monkeypatch):
    monkeypatch.setattr(_coupling, "TUNED_BYTES", {})
    import ot_matfree._stream.engine as streaming

    monkeypatch.setattr(streaming, "TUNED_BYTES", _coupling.TUNED_BYTES)
    monkeypatch.setattr(streaming, "TUNE_CANDIDATES", (2, 8))
    c = solved(20, 12, block_size="auto")
    assert c.block_size == "auto"
    # Sinkhorn's passes tuned the log-sum-exp at trace time, inside `jit`.
    assert c.tune_key("logsumexp") in _coupling.TUNED_BYTES
    chosen = autotune(c, "apply")
    assert autotune(c, "apply") == chosen  # cached, not re-timed
    default = om.Coupling(c.x, c.y, c.a, c.b, c.f, c.g, c.epsilon, c.cost).block(2, "apply")
    assert chosen in {rows * 12 * 2 * 8 for rows in (2, 8, min(default, 20))}
    v = jax.random.normal(jax.random.PRNGKey(8), (20, 2))
    fixed = om.solve(c.x, c.y, c.a, c.b, epsilon=0.3, block_size=3,
                     solver=om.Sinkhorn(tol=1e-12))
    assert rel_err(om.hvp_x(c, v, linear_solver=CG), om.hvp_x(fixed, v, linear_solver=CG)) < 1e-10


def test_block_size_auto_is_validated():
    x, y, a, b = problem(0, 5, 4, 2)
    with pytest.raises(TypeError, match="block_size"):
        om.solve(x, y, epsilon=0.5, block_size="fast")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["passes.py", "block_sizes.py", "hvp_vs_ott.py"])
def test_benchmark_smoke(script, tmp_path):
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    out = tmp_path / "result.md"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| n" in text or "| dtype" in text or "| case" in text
