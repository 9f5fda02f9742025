"""`python -m benchmarks.suite --smoke` runs end to end, and its skip rule
(issue 9, part 5)."""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import pytest

from ..helpers import smoke_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    env = smoke_env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--smoke", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"suite failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.mark.slow  # 21 s; test_benchmarks_smoke.py runs the peers' quick mode
def test_outputs(smoke):
    payload = json.loads((smoke / "suite_cpu.json").read_text())
    assert payload["device"]["platform"] == "cpu"
    res = payload["results"]
    for r in res:
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "skipped":
            assert r["reason"].startswith("skipped: "), r
    ran = {(r["task"], r["method"], r["n"]): r for r in res if r["status"] == "ok"}
    for n in (40, 80):
        fwd = ran[("forward", "ours", n)]
        assert fwd["error"] < 1e-6 and fwd["time_s"] > 0 and fwd["mem_delta_mb"] is not None
        for m in ("ours", "dense"):  # against the float64 tol-1e-10 reference
            assert ran[("hvp", m, n)]["error"] < 1e-4
        assert ran[("hvp", "ours", n)]["cg_steps"] > 0
        assert ("reference", "ref", n) in ran
    flash = [r for r in res if r["method"] == "flash"]
    assert flash and all("GPU only" in r["reason"] for r in flash)
    text = (smoke / "suite_cpu.md").read_text()
    assert "| ot_matfree `hvp_x` given the coupling (CG) |" in text
    assert "skipped: GPU only" in text and "err " in text
    assert (smoke / "suite_cpu.png").stat().st_size > 0


def test_skip_rule():
    from benchmarks.suite import predicted_skip

    args = argparse.Namespace(cell_budget=100.0, mem_cap_gb=1.0)
    assert predicted_skip(None, 1000, 2, args) is None
    assert predicted_skip((1000, 10.0, 10.0), 2000, 2, args) is None  # 40 s, 40 MB
    why = predicted_skip((1000, 10.0, 10.0), 4000, 2, args)  # 160 s
    assert why.startswith("skipped: predicted 160 s")
    assert predicted_skip((1000, 10.0, 10.0), 2000, 3, args) is None  # 80 s
    assert "> cap 1 GB" in predicted_skip((1000, 1.0, 100.0), 4000, 2, args)  # 1.6 GB
