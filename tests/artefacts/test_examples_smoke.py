"""The example and the conditioning study run end to end at their CI sizes."""

import pathlib
import subprocess
import sys

from ..helpers import smoke_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=smoke_env())
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_divergence_hessians_example(tmp_path):
    png = tmp_path / "divergence_hessians.png"
    out = _run(ROOT / "examples" / "divergence_hessians.py", "--ci", "--out", png)
    assert png.stat().st_size > 0
    assert "finite diff." in out and "relative difference to ott implicit" in out


def test_conditioning_smoke(tmp_path):
    md = tmp_path / "conditioning.md"
    _run(ROOT / "benchmarks" / "conditioning.py", "--smoke", "--out", md)
    text = md.read_text()
    assert "CG iterations with deflation" in text
    assert md.with_suffix(".png").stat().st_size > 0


def _final_loss(out, method):
    row = next(line for line in out.splitlines() if line.startswith(f"| {method}"))
    return float(row.split("|")[5])


def test_shuffled_regression_quick(tmp_path):
    png = tmp_path / "shuffled_regression.png"
    out = _run(ROOT / "examples" / "shuffled_regression.py", "--quick", "--out", png)
    assert png.stat().st_size > 0
    assert "| method" in out and "iterations / s to reach GD's final loss" in out
    gd = _final_loss(out, "gradient descent")
    assert _final_loss(out, "SGD-Newton") <= gd
    assert _final_loss(out, "Newton-CG") <= gd
