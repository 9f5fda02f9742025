"""Sharded runs against single-device runs, on four forced CPU devices.

Run by `tests/test_sharding.py` in a process of its own, with
`XLA_FLAGS=--xla_force_host_platform_device_count=4` (JAX fixes the device
count when it starts, and the rest of the suite keeps one device). Every
public function is called once on single-device inputs (the reference, which
takes the unsharded path) and once on inputs whose rows are split over the
four devices; results must agree to `RTOL` (relative, float64) and the
point-shaped outputs must come back row-sharded. Prints one line per check
and exits with status 1 if any failed.

`--full` runs every check (`pytest --runslow`); without it, a subset that
still touches every sharded code path (solve, grad, grad_x, hvp on both kinds
of mesh axes, `jit`, batched tangents, one loss's value, gradient and HVP,
`ot_cost` with zero weights, the errors) runs in CI: the hvp_x of each linear solver, the spectrum, the
other two losses and NewtonCG (3 steps) go through the same reductions.
"""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import ot_matfree as om  # noqa: E402

RTOL = 1e-12
EPS = 0.5
SOLVER = om.Sinkhorn(tol=1e-13)
SOLVERS = (om.CG(), om.SpectralCG(rank=4), om.TruncatedSVD(rank=4), om.DenseSolver())
LOSSES = (om.ot_cost, om.sinkhorn_divergence, om.sinkhorn_distance)
FAILURES = []
CLOCK = [time.process_time()]


def _seconds() -> str:
    """CPU seconds since the previous check (compilation included)."""
    now = time.process_time()
    elapsed, CLOCK[0] = now - CLOCK[0], now
    return f"({elapsed:.1f} s)"


def problem(n=64, m=48, d=2):
    """Gaussian clouds with random weights, and tangents for every argument."""
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    x = jax.random.normal(keys[0], (n, d))
    y = jax.random.normal(keys[1], (m, d)) + 0.5
    a = jax.random.uniform(keys[2], (n,)) + 0.5
    b = jax.random.uniform(keys[3], (m,)) + 0.5
    da, db = jax.random.normal(keys[6], (n,)), jax.random.normal(keys[7], (m,))
    tangents = (jax.random.normal(keys[4], (n, d)), jax.random.normal(keys[5], (m, d)),
                da - da.mean(), db - db.mean())
    return (x, y, a / a.sum(), b / b.sum()), tangents


def rows_split(leaf) -> bool:
    """Whether a concrete array has its rows split over the four devices."""
    sharding = leaf.sharding
    return (
        isinstance(sharding, NamedSharding) and len(sharding.device_set) == 4
        and len(sharding.spec) > 0 and sharding.spec[0] == "points"
    )


def check(name, sharded, reference, placed=()):
    """`sharded` equals `reference` leaf by leaf to `RTOL`; the `placed` leaves are row-split."""
    pairs = zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(reference))
    errors = [float(jnp.linalg.norm(jnp.ravel(s - r)) / jnp.linalg.norm(jnp.ravel(r)))
              for s, r in pairs]
    unplaced = [i for i, leaf in enumerate(placed) if not rows_split(leaf)]
    ok = all(error <= RTOL for error in errors) and not unplaced  # False on NaN
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max rel. error {max(errors):.1e}"
          + (f", not row-sharded: outputs {unplaced}" if unplaced else "") + f" {_seconds()}")
    if not ok:
        FAILURES.append(name)


def expect_error(name, fn, match):
    try:
        fn()
    except ValueError as error:
        ok = match in str(error)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {error}")
    else:
        ok = False
        print(f"FAIL {name}: no error")
    if not ok:
        FAILURES.append(name)


def coupling_functions(label, args, tangents, sharded_args, sharded_tangents, solvers):
    """`solve`, `grad`, `grad_x`, `hvp` (with CG) and `hvp_x` (with each of `solvers`)."""
    ref = om.solve(*args, epsilon=EPS, solver=SOLVER)
    c = om.solve(*sharded_args, epsilon=EPS, solver=SOLVER)
    check(f"{label} solve", (c.f, c.g, c.reg_ot_cost), (ref.f, ref.g, ref.reg_ot_cost),
          (c.x, c.f, c.g))
    out = om.grad(c)
    check(f"{label} grad", out, om.grad(ref), out)
    out = om.grad_x(c)
    check(f"{label} grad_x", out, om.grad_x(ref), (out,))
    out = om.hvp(c, *sharded_tangents)
    check(f"{label} hvp (dx, dy, da, db)", out, om.hvp(ref, *tangents), out)
    for solver in solvers:
        out = om.hvp_x(c, sharded_tangents[0], linear_solver=solver)
        check(f"{label} hvp_x {type(solver).__name__}", out,
              om.hvp_x(ref, tangents[0], linear_solver=solver), (out,))
    return c, ref


def main(full: bool):
    assert jax.device_count() == 4, "run with XLA_FLAGS=--xla_force_host_platform_device_count=4"
    args, tangents = problem()
    explicit = jax.make_mesh((4,), ("points",), axis_types=(AxisType.Explicit,))
    auto = jax.make_mesh((4,), ("points",), axis_types=(AxisType.Auto,))

    def split(mesh, arrays):
        return tuple(jax.device_put(z, NamedSharding(mesh, P("points"))) for z in arrays)

    # Explicit axes (jax.make_mesh's default): the placement is in the arrays'
    # types, so it is seen under jit and grad too. JAX wants the mesh set.
    with jax.set_mesh(explicit):
        s_args, s_tangents = split(explicit, args), split(explicit, tangents)
        solvers = SOLVERS if full else ()
        c, ref = coupling_functions("explicit", args, tangents, s_args, s_tangents, solvers)
        if full:
            spec, spec_ref = om.spectrum(c, 4), om.spectrum(ref, 4)
            check("explicit spectrum", (spec.singular_values, spec.gaps),
                  (spec_ref.singular_values, spec_ref.gaps), (spec.v,))

        def chained(x, y, dx):  # the placement read from tracers' types inside jit
            return om.hvp_x(om.solve(x, y, epsilon=EPS, solver=SOLVER), dx)

        out = jax.jit(chained)(s_args[0], s_args[1], s_tangents[0])
        check("explicit jit(solve, hvp_x)", out, chained(args[0], args[1], tangents[0]), (out,))

        # Batched tangents (the batch axis whole, the rows split).
        batch = jnp.stack([tangents[0], 2 * tangents[0] + 1])
        s_batch = jax.device_put(batch, NamedSharding(explicit, P(None, "points")))
        check("explicit hvp_x, 2 tangents at once", om.hvp_x(c, s_batch), om.hvp_x(ref, batch))

        # The quick subset runs the unbalanced divergence (its three solves, the
        # relaxed H-matrix and the mass term); `--full` every loss, balanced too.
        unbalanced = [(om.sinkhorn_divergence, 0.9)]
        cases = [(loss, 1.0) for loss in LOSSES] + unbalanced if full else unbalanced
        for loss, tau in cases:
            # One compiled call gives the value, the gradient and an HVP.
            def value_and_grad(*z, loss=loss, tau=tau):
                value = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
                return value(*z, epsilon=EPS, solver=SOLVER, tau_a=tau, tau_b=tau)

            out, d_out = jax.jvp(value_and_grad, s_args, s_tangents)
            ref, d_ref = jax.jvp(value_and_grad, args, tangents)
            name = f"explicit {loss.__name__}" + ("" if tau == 1.0 else f", tau {tau}")
            check(f"{name} value", out[0], ref[0])
            check(f"{name} grad", out[1], ref[1], out[1])
            check(f"{name} jvp(grad)", d_out[1], d_ref[1], d_out[1])

        # Zero weights (`a[0] = b[3] = 0`): their entries recomputed after the
        # H-solve (one more pass round the ring), the support-masked shifts.
        x, y, a, b = args
        a0, b0 = a.at[0].set(0.0), b.at[3].set(0.0)
        zero_args = (x, y, a0 / a0.sum(), b0 / b0.sum())

        def ot_value_and_grad(*z):
            return jax.value_and_grad(om.ot_cost, argnums=(0, 1, 2, 3))(
                *z, epsilon=EPS, solver=SOLVER)

        out, d_out = jax.jvp(ot_value_and_grad, split(explicit, zero_args), s_tangents)
        ref, d_ref = jax.jvp(ot_value_and_grad, zero_args, tangents)
        check("explicit ot_cost, zero weights: value", out[0], ref[0])
        check("explicit ot_cost, zero weights: grad", out[1], ref[1], out[1])
        check("explicit ot_cost, zero weights: jvp(grad)", d_out[1], d_ref[1], d_out[1])

        # A cost matrix with its rows split (the column indices travel round the
        # ring like a cloud), solved by L-BFGS (its two-pass sharded step).
        C = om.SqEuclidean().matrix(args[0], args[1])
        dC = jax.random.normal(jax.random.PRNGKey(9), C.shape)

        def matrix_value_and_grad(C):
            return jax.value_and_grad(om.matrix.ot_cost)(
                C, epsilon=EPS, solver=om.LBFGS(tol=SOLVER.tol)
            )

        s_C, s_dC = split(explicit, (C, dC))
        out, d_out = jax.jvp(matrix_value_and_grad, (s_C,), (s_dC,))
        ref, d_ref = jax.jvp(matrix_value_and_grad, (C,), (dC,))
        check("explicit matrix.ot_cost, LBFGS: value", out[0], ref[0])
        check("explicit matrix.ot_cost, LBFGS: grad", out[1], ref[1], (out[1],))
        check("explicit matrix.ot_cost, LBFGS: jvp(grad)", d_out[1], d_ref[1])

        if full:
            # NewtonCG on a loss of sharded clouds (`--full`): the parameters are
            # replicated, every Sinkhorn solve and HVP inside runs sharded.
            def registration(A, clouds):
                x, y = clouds
                return om.sinkhorn_divergence(x @ A, y, epsilon=EPS, solver=SOLVER)

            def newton(clouds):
                solver = om.NewtonCG(rtol=1e-10, atol=1e-10)
                sol = optx.minimise(registration, solver, 1.1 * jnp.eye(2), clouds, max_steps=3,
                                    throw=False)
                return sol.value, sol.stats["num_hvps"]

            (out, hvps), (ref, hvps_ref) = newton(s_args[:2]), newton(args[:2])
            check("explicit NewtonCG (3 steps)", out, ref)
            if int(hvps) != int(hvps_ref):
                print(f"FAIL NewtonCG HVP counts differ: {int(hvps)} vs {int(hvps_ref)}")
                FAILURES.append("NewtonCG HVP count")

    # Auto axes: the placement is read from concrete arrays (eager calls).
    s_args, s_tangents = split(auto, args), split(auto, tangents)
    coupling_functions("auto", args, tangents, s_args, s_tangents, ())
    check("auto ot_cost value", om.ot_cost(*s_args, epsilon=EPS, solver=SOLVER),
          om.ot_cost(*args, epsilon=EPS, solver=SOLVER))

    x = split(explicit, args[:1])[0]
    expect_error("rows not divisible", lambda: om.solve(x, jnp.ones((46, 2)), epsilon=EPS),
                 "not divisible by the 4 devices")
    # Weights or initial potentials split while the clouds are whole (issue 21,
    # defect 6: a while_loop carry TypeError or a ShardingTypeError in 0.3.0).
    with jax.set_mesh(explicit):
        a_split = split(explicit, args[2:3])[0]
        expect_error("weights split, clouds whole",
                     lambda: om.solve(args[0], args[1], a_split, epsilon=EPS), "`a` has its rows")
        expect_error("weights split, clouds whole, a loss",
                     lambda: om.ot_cost(args[0], args[1], a_split, epsilon=EPS), "`a` has its rows")
        f_split = split(explicit, (jnp.zeros(64),))[0]
        expect_error("init split, clouds whole",
                     lambda: om.solve(*args, epsilon=EPS, init=f_split), "`init` has its rows")
    # Same axis names and sizes, another device order: the message shows both orders.
    reversed_mesh = jax.sharding.Mesh(np.array(jax.devices()[::-1]), ("points",),
                                      axis_types=(AxisType.Explicit,))
    y_reversed = jax.device_put(args[1], NamedSharding(reversed_mesh, P("points")))
    expect_error("device order differs", lambda: om.solve(x, y_reversed, epsilon=EPS),
                 "(devices [3, 2, 1, 0])")
    features = jax.device_put(jnp.ones((64, 4)), NamedSharding(explicit, P(None, "points")))
    expect_error("feature dimension sharded", lambda: om.solve(features, args[1], epsilon=EPS),
                 "feature dimension")
    if FAILURES:
        print(f"{len(FAILURES)} failed: {FAILURES}")
        sys.exit(1)
    print("all sharded checks passed")


if __name__ == "__main__":
    main(full="--full" in sys.argv[1:])
