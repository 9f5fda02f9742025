"""The README's set-up commands are the ones CI runs."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_shows_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^TEST_COMMAND='(.*)'$", ci, re.MULTILINE).group(1)
    assert command in (ROOT / "README.md").read_text()


def test_readme_demo_command_runs_the_demo():
    readme = (ROOT / "README.md").read_text()
    assert "python -m ot_matfree demo" in readme


def test_readme_example_runs_and_agrees_with_finite_differences(capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Example\n\n```python\n(.*?)```", readme, re.DOTALL).group(1)
    exec(compile(code, "README example", "exec"), {})
    steps, error = capsys.readouterr().out.split()
    assert int(steps) > 0
    assert float(error) < 1e-6


def test_readme_losses_snippet_runs_and_is_consistent():
    import jax.numpy as jnp

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Losses inside JAX programs.*?```python\n(.*?)```", readme, re.DOTALL)
    ns = {}
    exec(compile(code.group(1), "README losses snippet", "exec"), ns)
    hess = ns["hess"].reshape(9, 9)
    assert jnp.allclose(hess, hess.T, rtol=1e-8, atol=1e-10)
    assert jnp.allclose(ns["hv"].reshape(9), hess @ jnp.ones(9), rtol=1e-8, atol=1e-10)
