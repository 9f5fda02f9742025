"""Sharded Sinkhorn solve and Hessian-vector product: one device against a mesh.

The same calls (`ot_matfree.solve`, `ot_matfree.hvp_x`) run once on arrays on
one device and once on arrays whose rows are split over every device of a
one-axis mesh; the script prints the times (median of `--repeats` runs after a
compiling warm-up), the agreement of the two HVPs and how the output is
placed. See docs/sharding.md.

    python examples/sharded_hvp.py                  # every accelerator of this host
    python examples/sharded_hvp.py --cpu-devices 4  # 4 CPU devices forced on this host

With `--cpu-devices` the devices are slices of the same CPU, so the sharded
run is not faster (the cores are shared and the devices talk through
memory): use it to check the code path, and GPUs to measure speed.
"""

import argparse
import os
import statistics
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192, help="source points")
    parser.add_argument("--m", type=int, default=8192, help="target points")
    parser.add_argument("--d", type=int, default=3, help="dimension")
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median)")
    parser.add_argument(
        "--cpu-devices", type=int, default=None,
        help="force this many CPU devices (XLA_FLAGS); default: the devices JAX finds",
    )
    return parser.parse_args(argv)


def median_seconds(fn, repeats: int):
    """`(result, median seconds)` of `fn()` after one compiling call."""
    import jax

    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    if args.cpu_devices:  # must be set before JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        )
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import ot_matfree as om

    devices = jax.devices()
    count = len(devices)
    # Every device streams an equal share of the rows.
    n, m = args.n - args.n % count, args.m - args.m % count
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, args.d))
    y = jax.random.normal(ky, (m, args.d)) + 1.0
    v = jax.random.normal(kv, (n, args.d))
    solver = om.Sinkhorn(tol=1e-10)

    def solve(x, y):
        return om.solve(x, y, epsilon=args.epsilon, solver=solver)

    def time_both(x, y, v):
        coupling, t_solve = median_seconds(lambda: solve(x, y), args.repeats)
        (hv, stats), t_hvp = median_seconds(
            lambda: om.hvp_x(coupling, v, return_stats=True), args.repeats
        )
        return hv, (t_solve, t_hvp, int(stats["num_steps"]))

    kind = devices[0].device_kind
    print(f"devices: {count} x {kind}" + ("" if kind == devices[0].platform else
                                          f" ({devices[0].platform})"))
    print(f"problem: n = {n}, m = {m}, d = {args.d}, float64, epsilon = {args.epsilon}")
    hv_one, times_one = time_both(x, y, v)

    mesh = jax.make_mesh((count,), ("points",))
    rows = NamedSharding(mesh, P("points"))
    with jax.set_mesh(mesh):
        hv, times = time_both(*(jax.device_put(z, rows) for z in (x, y, v)))

    print(f"{'':>12} {'solve [s]':>10} {'hvp_x [s]':>10} {'CG steps':>9}")
    for label, (t_solve, t_hvp, steps) in (("one device", times_one),
                                            (f"{count} devices", times)):
        print(f"{label:>12} {t_solve:10.3f} {t_hvp:10.3f} {steps:9d}")
    diff = float(jnp.linalg.norm(hv - hv_one) / jnp.linalg.norm(hv_one))
    print(f"relative difference of hvp_x, {count} devices vs one: {diff:.1e}")
    shards = sorted({shard.data.shape for shard in hv.addressable_shards})
    print(f"hvp_x output: spec {hv.sharding.spec}, {len(hv.sharding.device_set)} devices, "
          f"shards of shape {shards}")
    if not diff <= 1e-10:
        raise SystemExit("sharded and single-device HVPs differ")


if __name__ == "__main__":
    main()
