"""The examples and the conditioning study run end to end at their CI sizes;
every example loads and answers `--help`, and is listed where readers look."""

import pathlib
import re
import subprocess
import sys

import pytest

from ..helpers import smoke_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
#: The numbered examples, in reading order.
SCRIPTS = sorted(EXAMPLES.glob("[0-9]_*.py"))


def _run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=smoke_env())
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_examples_numbered_and_listed():
    """Examples are numbered 1, 2, ... without gaps, and examples/README.md and
    the docs' Examples page name each one; recorded outputs carry a script's name."""
    numbers = [int(path.name.split("_")[0]) for path in SCRIPTS]
    assert numbers == list(range(1, len(SCRIPTS) + 1)), [p.name for p in SCRIPTS]
    readme = (EXAMPLES / "README.md").read_text()
    docs = (ROOT / "docs" / "examples.md").read_text()
    for path in SCRIPTS:
        assert f"`{path.name}`" in readme, f"examples/README.md does not list {path.name}"
        assert f"examples/{path.name}" in docs, f"docs/examples.md does not name {path.name}"
    stems = [path.stem for path in SCRIPTS]
    outputs = [p for p in (EXAMPLES / "outputs").iterdir() if p.suffix in (".png", ".txt")]
    assert outputs
    for output in outputs:
        assert any(output.name.startswith(stem) for stem in stems), output.name
    # Nothing left at the old place: every output is under examples/outputs/.
    assert not [p.name for p in EXAMPLES.iterdir() if p.suffix in (".png", ".txt")]


def test_docs_show_the_example_figures():
    """The docs' Examples page embeds the examples' figures through paths under
    docs/ (the site publishes nothing outside it: `docs/example_outputs` links
    to `examples/outputs/`), and every example figure the README embeds."""
    docs = ROOT / "docs"
    page = (docs / "examples.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert len(images) >= 5, images
    for src in images:
        path = (docs / src).resolve()
        assert path.is_file(), src
        assert (docs / src).absolute().is_relative_to(docs) and ".." not in src, src
    shown = {pathlib.PurePosixPath(src).name for src in images}
    readme = (ROOT / "README.md").read_text()
    for src in re.findall(r"!\[[^\]]*\]\((examples/outputs/[^)]+)\)", readme):
        assert pathlib.PurePosixPath(src).name in shown, f"the README's {src} is not in the docs"


def test_examples_load_and_answer_help():
    """Each numbered example imports what it needs (`_second_order`, example 5
    imports example 4 by name) and parses `--help`, in one interpreter."""
    code = (
        "import runpy, sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = [path, '--help']\n"
        "    try:\n"
        "        runpy.run_path(path, run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0, (path, exit.code)\n"
        "    else:\n"
        "        raise AssertionError(f'{path} --help did not exit')\n"
        "    print('ok', path)\n"
    )
    out = _run("-c", code, *SCRIPTS)
    assert out.count("ok ") == len(SCRIPTS), out
    for path in SCRIPTS:
        assert re.search(rf"usage: {re.escape(path.name)}", out), path.name


@pytest.mark.slow  # 85 s on the 2-core CI machine; the Hessians are checked in tests/oracles
def test_divergence_hessians_example(tmp_path):
    png = tmp_path / "1_divergence_hessians.png"
    out = _run(EXAMPLES / "1_divergence_hessians.py", "--ci", "--out", png)
    assert png.stat().st_size > 0
    assert "finite diff." in out and "relative difference to ott implicit" in out


@pytest.mark.slow  # 32 s; the spectral solvers it times are checked in tests/unit
def test_conditioning_smoke(tmp_path):
    md = tmp_path / "conditioning.md"
    _run(ROOT / "benchmarks" / "conditioning.py", "--smoke", "--out", md)
    text = md.read_text()
    assert "CG iterations with deflation" in text
    assert md.with_suffix(".png").stat().st_size > 0


def _final_loss(out, method):
    row = next(line for line in out.splitlines() if line.startswith(f"| {method}"))
    return float(row.split("|")[5])


@pytest.mark.slow  # 32 s; sgd_newton and NewtonCG are tested in tests/unit
def test_shuffled_regression_quick(tmp_path):
    png = tmp_path / "4_shuffled_regression.png"
    out = _run(EXAMPLES / "4_shuffled_regression.py", "--quick", "--out", png)
    assert png.stat().st_size > 0
    assert "| method" in out and "iterations / s to reach GD's final loss" in out
    gd = _final_loss(out, "gradient descent")
    assert _final_loss(out, "SGD-Newton") <= gd
    assert _final_loss(out, "Newton-CG") <= gd


@pytest.mark.slow  # 100 s; its gradients and NewtonCG are tested in tests/oracles, tests/unit
def test_qiu_digits_quick(tmp_path):
    """Example 8 at batch 64: the three gradients agree, training lowers the loss."""
    png = tmp_path / "8_qiu_digits.png"
    out = _run(EXAMPLES / "8_qiu_digits.py", "--quick", "--out", png)
    assert png.stat().st_size > 0
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 64 |")]
    assert len(rows) == 3, out
    assert all(float(r[-2]) < 1e-6 for r in rows if r[2].strip() != "ours"), rows
    finals = re.findall(r"final loss ([0-9.]+) \(first ([0-9.]+)\)", out)
    assert len(finals) == 4 and all(float(f) < float(s) for f, s in finals), out
