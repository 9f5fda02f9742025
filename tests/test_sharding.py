"""Sharded inputs give the single-device results, placed like the inputs.

JAX fixes the number of devices when it starts, so the comparisons run in a
process of their own with four forced CPU devices (`tests/sharded_checks.py`,
which lists what is checked); the rest of the suite keeps one device.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, devices: int | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{args[0]} failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_sharded_equals_single_device():
    out = _run(ROOT / "tests" / "sharded_checks.py", devices=4)
    assert "all sharded checks passed" in out
    assert "FAIL" not in out


def test_sharded_hvp_example():
    out = _run(ROOT / "examples" / "sharded_hvp.py", "--cpu-devices", "4", "--n", "64",
               "--m", "48", "--repeats", "1")
    assert "relative difference of hvp_x, 4 devices vs one" in out
    assert "spec P('points'" in out and "shards of shape [(16, 3)]" in out
