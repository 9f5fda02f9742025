import gc
import os
import pathlib

#: Tests compile far more than they run: XLA's older CPU fusion code generator
#: compiles in about a third less time (set before JAX starts its backend;
#: subprocesses inherit it, except the README's blocks, which run as a user
#: runs them). Rounding differs from the default in the last bits, so the
#: iteration counts the tests pin hold under this flag. (LLVM at
#: `--xla_backend_optimization_level=0` would save a fifth more, but its
#: `exp` and `log` are less accurate: Anderson's iteration counts move by 20%
#: and reported marginal errors by 1e-6 relative; only the smoke tests'
#: subprocesses use it, `helpers.smoke_env`.)
FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false",)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", "")]
    + [flag for flag in FAST_COMPILE if flag not in os.environ.get("XLA_FLAGS", "")]
).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --runslow to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


#: Memory mappings a test process may hold before its compiled code is freed.
#: Each XLA CPU executable maps its code (a test file maps thousands), Linux
#: allows `vm.max_map_count` (65,530) per process, and a worker that runs out
#: dies with a segmentation fault inside XLA's compiler (seen in CI after
#: 20 minutes).
MAX_MAPS = 30_000
_MAPS = pathlib.Path("/proc/self/maps")


def pytest_runtest_teardown(item, nextitem):
    """Free compiled executables (`jax.clear_caches`) when the process's memory
    mappings near Linux's per-process limit (`MAX_MAPS`)."""
    if not _MAPS.exists():
        return
    with _MAPS.open() as maps:
        count = sum(1 for _ in maps)
    if count > MAX_MAPS:
        jax.clear_caches()
        gc.collect()
