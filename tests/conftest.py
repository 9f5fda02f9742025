import os

# The tests check values, never speed, and most of their time is XLA
# compiling small programs: compile without LLVM's optimisations (a quarter
# less CPU time for tests/test_losses.py + test_sinkhorn.py, 290 -> 213 s).
# The arithmetic is the same (XLA never enables fast-math here). Set before
# JAX starts its backend; subprocesses inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
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
