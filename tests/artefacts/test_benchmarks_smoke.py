"""The benchmark scripts' `--smoke` modes run end to end (CI keeps them alive).

Each script runs in a subprocess with this interpreter (the scripts set
their own jax configuration), writing its outputs to a temporary folder.
"""

import pathlib
import subprocess
import sys

import pytest

from ..helpers import smoke_env

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script, out):
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=smoke_env(),
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# (Slow: 40 s and 55 s on the 2-core CI machine; test_float32_stress_smoke and
# the oracle tests check what they measure.)
@pytest.mark.parametrize("script", [pytest.param("float32.py", marks=pytest.mark.slow),
                                    pytest.param("accuracy.py", marks=pytest.mark.slow)])
def test_smoke(script, tmp_path):
    out = tmp_path / "result.md"
    _run(script, out)
    text = out.read_text()
    assert "| n" in text or "| N" in text or "| setting" in text
    assert "ot_matfree CG" in text
    if script == "accuracy.py":
        assert out.with_suffix(".png").stat().st_size > 0


def test_float32_stress_smoke(tmp_path):
    # The script exits non-zero if a converged float32 output is non-finite or
    # off its float64 reference by more than the stated bound.
    out = tmp_path / "result.md"
    _run("float32_stress.py", out)
    assert "| setting | n |" in out.read_text()
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # header and the four smoke cases


# --------------------------------------------------------------------------- peers.py

# Each peer of benchmarks/peers.py: (import name, how its rows are labelled).
_PEERS = {
    "ott": "ott-jax",
    "ot": "POT",
    "regot": "regot",
}


@pytest.fixture(scope="module")
def peers_quick(tmp_path_factory):
    """`peers.py --quick --tables 3` once: ours and every installed peer's
    forward solver at n = 40 (tables 1 and 2 compile too much for a smoke test
    on a shared 2-core machine; they run with `--quick --tables 1 2`)."""
    out = tmp_path_factory.mktemp("peers")
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peers.py"), "--quick", "--tables", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=smoke_env(),
    )
    assert proc.returncode == 0, f"peers.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def test_peers_quick_ours(peers_quick):
    text = next(peers_quick.glob("peers_forward_*.md")).read_text()
    assert "| ot_matfree Sinkhorn (plain) |" in text
    assert next(peers_quick.glob("peers_*.png")).stat().st_size > 0
    assert next(peers_quick.glob("peers_forward_*.csv")).stat().st_size > 0


@pytest.mark.parametrize("module", sorted(_PEERS))
def test_peers_quick_peer(peers_quick, module):
    """An installed peer ran (no 'failed' row); a missing one is skipped with its
    reason, in the table and here."""
    import importlib.util

    text = next(peers_quick.glob("peers_forward_*.md")).read_text()
    label = _PEERS[module]
    if importlib.util.find_spec(module) is None:
        assert f"{label}: skipped" in text
        pytest.skip(f"peer {label} ({module}) not installed: `pip install '.[bench]'`")
    lines = [ln for ln in text.splitlines() if ln.startswith(f"| {label}")]
    assert lines, f"no {label} row in\n{text}"
    assert not any("failed" in ln for ln in lines), "\n".join(lines)
@pytest.mark.slow  # 34 s on the 2-core CI machine (CI keeps under 15 minutes)
def test_sinkhorn_speed_smoke(tmp_path):
    """Forward-solver grid (ours and ott-jax's variants) at n = 200."""
    out = tmp_path / "result.md"
    env = smoke_env(PYTHONPATH=str(BENCHMARKS.parent))
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sinkhorn_speed.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, f"failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    text = out.read_text()
    assert "| ours momentum adaptive | 5.00e-03 |" in text and "| ott anderson 5 |" in text
    assert "## Warm start" in text
    assert out.with_suffix(".png").stat().st_size > 0
