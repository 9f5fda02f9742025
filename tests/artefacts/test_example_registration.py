"""examples/3_registration.py (point-cloud registration, Li et al. 6.2) runs at its CI size."""

import pathlib
import subprocess
import sys

import pytest

from ..helpers import smoke_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _final_loss(out, method):
    row = next(line for line in out.splitlines() if line.startswith(f"| {method}"))
    return float(row.split("|")[5])


@pytest.mark.slow  # 27 s; tests/unit/test_optim_newton_cg.py runs the registration
def test_registration_quick(tmp_path):
    png = tmp_path / "3_registration.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "3_registration.py"), "--quick", "--out",
         str(png)],
        capture_output=True, text=True, timeout=600, env=smoke_env(),
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert png.stat().st_size > 0
    assert "| method" in out and "iterations / s to reach GD's final loss" in out
    gd = _final_loss(out, "gradient descent")
    assert _final_loss(out, "SGD-Newton") <= gd
    assert _final_loss(out, "Newton-CG") <= gd
