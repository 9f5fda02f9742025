"""`examples/2_gradient_flows.py --quick`: Newton-CG against gradient descent on
the ott-jax tutorial's gradient flows, and the entropic bias of OT_eps."""

import pathlib
import subprocess
import sys

import pytest

from ..helpers import smoke_env

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tables(out: str) -> dict[str, dict[str, list[str]]]:
    """`{loss: {method: row cells}}` from the example's markdown tables."""
    tables, loss, columns = {}, None, None
    for line in out.splitlines():
        if line.startswith(("S_eps = ", "OT_eps = ")):
            loss = line.split()[0]
            tables[loss] = {}
        elif line.startswith("| method"):
            columns = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("| ") and loss is not None:
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[loss][cells[0]] = dict(zip(columns, cells))
    return tables


@pytest.mark.slow  # 30 s on the 2-core CI machine (CI keeps under 15 minutes)
def test_gradient_flows_quick(tmp_path):
    png = tmp_path / "2_gradient_flows.png"
    script = ROOT / "examples" / "2_gradient_flows.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(png)],
        capture_output=True, text=True, timeout=600,
        env=smoke_env(),  # 16 s of CPU instead of 22 s
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert png.stat().st_size > 0
    out = proc.stdout
    spread_y = float(out.split("y: spread ")[1].split(";")[0])
    tables = _tables(out)
    assert set(tables) == {"S_eps", "OT_eps"}
    for loss, rows in tables.items():
        gd, newton = rows["gradient descent (lr 0.2)"], rows["Newton-CG (Armijo)"]
        # Newton-CG ends below gradient descent and reaches its final loss in at
        # least 10x fewer iterations (iterations, not time: the CI machine is shared).
        assert float(newton["final loss"]) < float(gd["final loss"])
        reached = newton["iterations / s to reach GD's final loss"]
        assert reached != "not reached"
        assert 10 * int(reached.split("/")[0]) <= int(gd["iterations"])
        assert int(newton["HVPs"]) > 0
    # The entropic bias (the tutorial's point): OT_eps's minimiser collapses the
    # cloud, the divergence's keeps y's spread and ends nearer to y.
    s_eps, ot_eps = tables["S_eps"]["Newton-CG (Armijo)"], tables["OT_eps"]["Newton-CG (Armijo)"]
    assert ot_eps["status"] == "converged"
    assert float(ot_eps["spread"]) < 0.01 * spread_y
    assert abs(float(s_eps["spread"]) - spread_y) < 0.05 * spread_y
    assert float(s_eps["W2 to y"]) < 0.5 * float(ot_eps["W2 to y"])
