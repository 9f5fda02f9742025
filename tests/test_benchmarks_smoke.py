"""The benchmark scripts' `--smoke` modes run end to end (CI keeps them alive).

Each script runs in a subprocess with this interpreter (the scripts set
their own jax configuration), writing its outputs to a temporary folder.
"""

import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, out):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.parametrize("script", ["float32.py", "accuracy.py"])
def test_smoke(script, tmp_path):
    out = tmp_path / "result.md"
    _run(script, out)
    text = out.read_text()
    assert "| n" in text or "| N" in text or "| setting" in text
    assert "ot_matfree CG" in text
    if script == "accuracy.py":
        assert out.with_suffix(".png").stat().st_size > 0


def test_sinkhorn_speed_smoke(tmp_path):
    """Forward-solver grid (ours and ott-jax's variants) at n = 200."""
    import os

    out = tmp_path / "result.md"
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sinkhorn_speed.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    text = out.read_text()
    assert "| ours momentum adaptive | 5.00e-03 |" in text and "| ott anderson 5 |" in text
    assert "## Warm start" in text
    assert out.with_suffix(".png").stat().st_size > 0
