"""The README as a newcomer uses it.

- Its set-up commands are the ones CI runs (`.ci/run`).
- Every ```python block runs as shown, each in a fresh interpreter (so a
  block that uses a name it does not define, or relies on a setting it does
  not make, fails), and prints what its `# prints ...` comments say.
- The GPU page's example runs (at a small n, on the CPU, in float32).
- The licence the package metadata names is in the repository.

Comment convention: a line `# prints TEXT` (alone or after code) gives the
next line the block prints. Words must match exactly; integers too;
other numbers are compared as printed and rounded: to a relative 1e-4, and
anything at or below 1e-8 in size (rounding-level errors) matches anything
else that small.
"""

import math
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()

#: A fenced Python block (the fence at the start of a line).
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: A `# prints ...` comment: the text is what the block prints next.
PRINTS = re.compile(r"#\s*prints\s+(.*?)\s*$")
#: Numbers at or below this size are rounding-level and match each other.
ROUNDING = 1e-8
REL_TOL = 1e-4


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def expected_output(code: str) -> list[str]:
    return [m.group(1) for line in code.splitlines() if (m := PRINTS.search(line))]


def _number(token: str):
    try:
        return float(token)
    except ValueError:
        return None


def tokens_match(actual: str, expected: str) -> bool:
    """One printed token against the README's: words exactly, integers exactly,
    other numbers to `REL_TOL` (or both at most `ROUNDING` in size)."""
    a, e = _number(actual), _number(expected)
    if a is None or e is None:
        return actual == expected
    if re.fullmatch(r"[-+]?\d+", expected):
        return actual == expected
    if abs(a) <= ROUNDING and abs(e) <= ROUNDING:
        return True
    return math.isclose(a, e, rel_tol=REL_TOL)


def lines_match(actual: str, expected: str) -> bool:
    a, e = actual.split(), expected.split()
    return len(a) == len(e) and all(map(tokens_match, a, e))


def run_python(code: str, tmp_path: pathlib.Path, **env) -> str:
    """Run `code` in a fresh interpreter on the CPU, with this checkout's
    package first on the path, in an empty directory; return its stdout."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    # XLA's default flags, as a user runs the blocks (conftest.py compiles the
    # tests themselves faster; printed counts may differ under those flags).
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
        flags = flags.replace(flag, "")
    env = {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip(),
           **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the block failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
    return proc.stdout


# --- the comparison itself ------------------------------------------------------------------


def test_comparison_accepts_rounding_and_rejects_changes():
    assert lines_match("1.8175443 0.276825 0.171307", "1.817544 0.276825 0.171307")
    assert lines_match("6.2e-11", "6.3e-11") and lines_match("3e-09", "2e-09")
    assert not lines_match("1.9 0.276825 0.171307", "1.817544 0.276825 0.171307")
    assert not lines_match("7 43", "6 34") and not lines_match("50", "50 2e-09")
    assert not lines_match("2e-06", "2e-09") and not lines_match("cpu", "gpu")
    assert expected_output("print(1)  # prints 1\nx = 2\n# prints 3 4\n") == ["1", "3 4"]


# --- set-up commands ---------------------------------------------------------------------------


def test_readme_shows_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.*)'$", ci, re.MULTILINE).group(1)
    assert command in README


def test_readme_demo_command_installs_what_the_demo_needs():
    """The demo's command installs the `demo` extra (its progress bar's tqdm
    is not a dependency of the library) and runs the demo."""
    (line,) = [ln for ln in README.splitlines() if "python -m ot_matfree demo" in ln
               and "pip install" in ln]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {})
    if "demo" in extras:
        assert 'pip install -q ".[demo]"' in line, line
    assert line.endswith("&& python -m ot_matfree demo"), line


# --- code blocks -------------------------------------------------------------------------------

BLOCKS = python_blocks(README)


def test_readme_blocks_are_checked_and_the_first_comes_early():
    """Every block says what it prints, and a newcomer meets runnable code in
    the first 40 lines."""
    assert len(BLOCKS) >= 3
    for code in BLOCKS:
        assert expected_output(code), f"a README block has no `# prints` comment:\n{code}"
    first = README.index("```python")
    assert README[:first].count("\n") < 40


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i + 1}")
def test_readme_block_runs_and_prints_what_it_says(index, tmp_path):
    code = BLOCKS[index]
    printed = run_python(code, tmp_path).splitlines()
    expected = expected_output(code)
    assert len(printed) == len(expected) and all(map(lines_match, printed, expected)), (
        f"README block {index + 1} printed\n" + "\n".join(printed)
        + "\nwhere its comments say\n" + "\n".join(expected)
    )


def test_gpu_page_example_runs_in_float32(tmp_path):
    """docs/gpu.md's HVP, with its large n replaced by a small one."""
    page = (ROOT / "docs" / "gpu.md").read_text()
    (code,) = [b for b in python_blocks(page) if "jax.jvp(jax.grad" in b]
    assert re.search(r"^n = 100_000\b", code, re.MULTILINE)
    code = re.sub(r"^n = 100_000\b", "n = 300", code, flags=re.MULTILINE)
    assert "jax_enable_x64\", True" not in code  # float32, as on the page
    printed = run_python(code, tmp_path).split()
    assert printed == ["cpu", "float32", "(300,", "3)", "True"], printed


# --- licence -------------------------------------------------------------------------------------


def test_license_file_is_the_apache_2_licence_pyproject_names():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license\s*=.*"Apache-2\.0"', pyproject, re.MULTILINE)
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
