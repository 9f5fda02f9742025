"""Sharded Sinkhorn solve and Hessian-vector product: one device against a mesh.

The same calls (`ot_matfree.solve`, `ot_matfree.hvp_x`) run once on arrays on
one device and once on arrays whose rows are split over every device of a
one-axis mesh (all devices of all processes); the script prints the times
(median of `--repeats` runs after a compiling warm-up), the agreement of the
two HVPs and how the output is placed. See docs/sharding.md.

    # one host: every accelerator, or CPU devices forced on this host
    python examples/7_sharded_hvp.py
    python examples/7_sharded_hvp.py --cpu-devices 4

    # several hosts (or processes): the same command on each, process ids 0 .. N-1
    python examples/7_sharded_hvp.py --coordinator HOST0:1234 --num-processes 2 --process-id 0
    python examples/7_sharded_hvp.py --coordinator HOST0:1234 --num-processes 2 --process-id 1

With `--cpu-devices` the devices are slices of the same CPU, so the sharded
run is not faster (the cores are shared): use it to check the code path, and
GPUs to measure speed.
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
        help="force this many CPU devices per process (XLA_FLAGS); default: the devices JAX finds",
    )
    parser.add_argument("--coordinator", default=None,
                        help="HOST:PORT of process 0, for jax.distributed.initialize")
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
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

    if args.coordinator is not None:
        if args.cpu_devices:  # CPU devices of different processes talk through gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import ot_matfree as om

    count = jax.device_count()  # all processes
    # Every device streams an equal share of the rows.
    n, m = args.n - args.n % count, args.m - args.m % count
    # Every process makes the same data; a real job would load its own rows
    # and use `jax.make_array_from_process_local_data` instead.
    kx, ky, kv = jax.random.split(jax.random.PRNGKey(0), 3)
    x = np.asarray(jax.random.normal(kx, (n, args.d)))
    y = np.asarray(jax.random.normal(ky, (m, args.d))) + 1.0
    v = np.asarray(jax.random.normal(kv, (n, args.d)))
    solver = om.Sinkhorn(tol=1e-10)

    def time_both(x, y, v):
        coupling, t_solve = median_seconds(
            lambda: om.solve(x, y, epsilon=args.epsilon, solver=solver), args.repeats
        )
        sol, t_hvp = median_seconds(lambda: om.hvp_x_solution(coupling, v), args.repeats)
        return sol.value, (t_solve, t_hvp, int(sol.stats["num_steps"]))

    # The reference: the whole problem on this process's first device.
    local = jax.local_devices()[0]
    hv_one, times_one = time_both(*(jax.device_put(z, local) for z in (x, y, v)))

    mesh = jax.make_mesh((count,), ("points",))
    rows = NamedSharding(mesh, P("points"))
    with jax.set_mesh(mesh):
        placed = (jax.make_array_from_callback(z.shape, rows, lambda i, z=z: z[i])
                  for z in (x, y, v))
        hv, times = time_both(*placed)

    # Gather the sharded result (every process gets all rows) to compare.
    full = multihost_utils.process_allgather(hv, tiled=True)
    diff = float(np.linalg.norm(full - np.asarray(hv_one)) / np.linalg.norm(hv_one))
    if jax.process_index() == 0:
        kind = local.device_kind
        print(f"devices: {count} x {kind}" + ("" if kind == local.platform else
                                              f" ({local.platform})")
              + f", {jax.process_count()} process(es)")
        print(f"problem: n = {n}, m = {m}, d = {args.d}, float64, epsilon = {args.epsilon}")
        print(f"{'':>12} {'solve [s]':>10} {'hvp_x [s]':>10} {'CG steps':>9}")
        for label, (t_solve, t_hvp, steps) in (("one device", times_one),
                                                (f"{count} devices", times)):
            print(f"{label:>12} {t_solve:10.3f} {t_hvp:10.3f} {steps:9d}")
        print(f"relative difference of hvp_x, {count} devices vs one: {diff:.1e}")
        shards = sorted({shard.data.shape for shard in hv.addressable_shards})
        print(f"hvp_x output: spec {hv.sharding.spec}, {len(hv.sharding.device_set)} devices, "
              f"shards of shape {shards}")
    if not diff <= 1e-10:
        raise SystemExit("sharded and single-device HVPs differ")


if __name__ == "__main__":
    main()
