"""Streaming passes per HVP, and HVP times, before and after issue 9.

A streaming pass is one scan over the row blocks of the coupling (each
`exp` of `P` computed once). The count is read off the jaxpr of `hvp_x`:
the scans that compute exps outside the CG loop, plus those inside its body
times the number of CG steps taken. Timings are medians after a compiling
call.

- `ot_matfree` of this checkout ("after"), and, with `--baseline PATH`, the
  same measurements in a subprocess on another checkout (e.g. the 0.2.0
  tree, "before"), printed side by side.
- Batched HVPs: `hvp_x(c, V)` with V of shape (k, n, d), k = 8, against 8
  separate calls and `jax.vmap` of single calls.

    python benchmarks/passes.py --baseline /path/to/old/checkout
    python benchmarks/passes.py --smoke --out /tmp/p.md

Saves `results/passes_<device>.md`.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import _common as common  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr


def _has_exp(jaxpr) -> bool:
    return any(
        eqn.primitive.name == "exp" or any(_has_exp(j) for j in _subjaxprs(eqn))
        for eqn in jaxpr.eqns
    )


def count_passes(jaxpr) -> tuple[int, int]:
    """`(passes outside loops, passes per iteration of the (one) while loop)`."""
    fixed, per_step = 0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan" and _has_exp(eqn.params["jaxpr"].jaxpr):
            fixed += 1
        elif name == "while":
            body_fixed, _ = count_passes(eqn.params["body_jaxpr"].jaxpr)
            per_step += body_fixed
        else:
            for sub in _subjaxprs(eqn):
                f, s = count_passes(sub)
                fixed, per_step = fixed + f, per_step + s
    return fixed, per_step


def measure(n: int, dtype_name: str, k: int, repeats: int, epsilon: float) -> dict:
    import ot_matfree as om

    dtype = jnp.dtype(dtype_name)
    x, y, a, b = common.uniform_problem(0, n, 3, same=False, dtype=dtype)
    y = y + jnp.asarray(0.3, dtype)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-5
    solver = om.CG(rtol=rtol)
    coupling = common.block(
        om.solve(x, y, a, b, epsilon=epsilon, solver=om.Sinkhorn(tol=1e-8 if dtype == jnp.float64
                                                                   else 1e-5))
    )
    vs = jax.random.normal(jax.random.PRNGKey(1), (k, n, 3), dtype)

    def single(v):
        sol = om.hvp_x_solution(coupling, v, linear_solver=solver)
        return sol.value, sol.stats

    (hv, stats), t_one = common.timed(single, vs[0], repeats=repeats)
    fixed, per_step = count_passes(jax.make_jaxpr(single)(vs[0]).jaxpr)
    steps = int(stats["num_steps"])
    out = {
        "n": n, "dtype": dtype_name, "cg_steps": steps, "passes_fixed": fixed,
        "passes_per_step": per_step, "passes": fixed + per_step * steps, "t_hvp": t_one,
    }

    def separate(vs):
        return [single(v)[0] for v in vs]

    _, out["t_separate"] = common.timed(separate, vs, repeats=repeats)
    # The coupling is an argument, not a closed-over constant (XLA would fold it).
    vmapped = jax.jit(jax.vmap(lambda c, v: om.hvp_x(c, v, linear_solver=solver),
                               in_axes=(None, 0)))
    hv_vmap, out["t_vmap"] = common.timed(vmapped, coupling, vs, repeats=repeats)
    try:
        (hv_batch, bstats), out["t_batched"] = common.timed(single, vs, repeats=repeats)
        ref = jnp.stack(separate(vs))
        out["batched_vs_separate"] = float(jnp.max(jnp.abs(hv_batch - ref)) / jnp.max(jnp.abs(ref)))
        out["batched_steps"] = [int(s) for s in bstats["num_steps"]]
        bf, bs = count_passes(jax.make_jaxpr(single)(vs).jaxpr)
        out["passes_batched"] = bf + bs * max(out["batched_steps"])
    except (ValueError, TypeError) as err:  # a version without batched tangents
        out["t_batched"] = None
        out["batched_error"] = str(err).splitlines()[0]
    return out


def run_here(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        for dtype_name in args.dtypes:
            r = measure(n, dtype_name, args.k, args.repeats, args.epsilon)
            print(json.dumps(r), flush=True)
            rows.append(r)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        default=[2000, 10_000])
    parser.add_argument("--dtypes", type=lambda s: s.split(","), default=["float64", "float32"])
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=str, default=None,
                        help="another checkout of ot_matfree, measured in a subprocess")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=str, default=None)
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.repeats, args.k = [300], 1, 3
    if args.json:  # the baseline subprocess
        print("JSON" + json.dumps(run_here(args)))
        return
    baseline = []
    if args.baseline:
        env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline)}
        cmd = [sys.executable, __file__, "--json", "--sizes", ",".join(map(str, args.sizes)),
               "--dtypes", ",".join(args.dtypes), "--k", str(args.k), "--epsilon",
               str(args.epsilon), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")][-1]
        baseline = json.loads(line[4:])
    rows = run_here(args)
    table = []
    for label, results in (("before", baseline), ("after", rows)):
        for r in results:
            tb = r.get("t_batched")
            table.append([
                label, r["n"], r["dtype"], r["cg_steps"],
                f"{r['passes_fixed']} + {r['passes_per_step']} x steps = {r['passes']}",
                f"{r['t_hvp']:.3f}", f"{r['t_separate']:.3f}", f"{r['t_vmap']:.3f}",
                "n/a" if tb is None else f"{tb:.3f}",
                "n/a" if tb is None else f"{tb / r['t_separate']:.2f}",
                r.get("passes_batched", "n/a"),
                "n/a" if tb is None else f"{r['batched_vs_separate']:.1e}",
            ])
    k = args.k
    text = (
        "# Streaming passes per HVP and batched HVPs\n\n"
        f"`hvp_x` with `CG` (rtol 1e-10 float64, 1e-5 float32), x ~ U[0,1]^3, "
        f"y ~ U[0.3,1.3]^3, epsilon = {args.epsilon}, device {common.device_string()}; "
        f"other jobs shared the two cores (timings under load: compare within a row; "
        f"median of {args.repeats} after a compiling call). Passes: scans over the row "
        f"blocks that compute exps, read off the jaxpr (outside the CG loop + per CG "
        f"step x steps). `{k} calls`: {k} separate `hvp_x`; `vmap`: `jax.vmap` of `hvp_x`; "
        f"`batched`: `hvp_x(c, V)` with V of shape ({k}, n, 3); `err`: max deviation of the "
        f"batched result from the separate ones, relative to the largest entry.\n\n"
        + common.markdown_table(
            ["", "n", "dtype", "CG steps", "passes per HVP", "1 HVP (s)", f"{k} calls (s)",
             "vmap (s)", "batched (s)", "batched / calls", "passes (batch)", "err"],
            table,
        )
        + "\n"
    )
    print(text)
    dev = jax.devices()[0].platform
    out = pathlib.Path(args.out) if args.out else RESULTS / f"passes_{dev}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
