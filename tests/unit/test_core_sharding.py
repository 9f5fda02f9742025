"""Sharded inputs give the single-device results, placed like the inputs.

JAX fixes the number of devices when it starts, so the comparisons run in a
process of their own with four forced CPU devices (`tests/sharded_checks.py`,
which lists what is checked); the rest of the suite keeps one device.
"""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _env(devices: int | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if devices is not None:
        # (Compiled with the fast flags of the rest of the tests: conftest.py.)
        env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices} "
                            "--xla_backend_optimization_level=0 "
                            "--xla_cpu_use_fusion_emitters=false")
    return env


def _check(proc, name) -> str:
    assert proc.returncode == 0, (
        f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _run(*args, devices: int | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=_env(devices), capture_output=True,
        text=True, timeout=900,
    )
    return _check(proc, args[0])


def test_sharded_equals_single_device():
    """The subset of `tests/sharded_checks.py` that covers every sharded path."""
    out = _run(ROOT / "tests" / "sharded_checks.py", devices=4)
    assert "all sharded checks passed" in out
    assert "FAIL" not in out


@pytest.mark.slow
def test_sharded_equals_single_device_every_function():
    """Every check: each linear solver's hvp_x, the spectrum, all three losses."""
    out = _run(ROOT / "tests" / "sharded_checks.py", "--full", devices=4)
    assert "all sharded checks passed" in out
    assert "FAIL" not in out


@pytest.mark.slow  # 16 s; the sharded checks above cover every sharded HVP path
def test_sharded_hvp_example():
    out = _run(ROOT / "examples" / "7_sharded_hvp.py", "--cpu-devices", "4", "--n", "64",
               "--m", "48", "--repeats", "1")
    assert "relative difference of hvp_x, 4 devices vs one" in out
    assert "spec P('points'" in out and "shards of shape [(16, 3)]" in out


@pytest.mark.slow
def test_sharded_hvp_example_two_processes():
    """The multi-host recipe: two processes (`jax.distributed.initialize`), two CPU devices each."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, str(ROOT / "examples" / "7_sharded_hvp.py"), "--cpu-devices", "2",
               "--n", "64", "--m", "48", "--repeats", "1", "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", "2", "--process-id"]
    other = subprocess.Popen(command + ["1"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    first = subprocess.run(command + ["0"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=900)
    stdout, stderr = other.communicate(timeout=300)
    _check(subprocess.CompletedProcess(command, other.returncode, stdout, stderr), "process 1")
    out = _check(first, "process 0")
    assert "4 x cpu, 2 process(es)" in out and "shards of shape [(16, 3)]" in out
