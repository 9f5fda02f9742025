"""The package's runtime dependencies are exactly what it imports, and it
imports without the extras (ott-jax, matplotlib, tqdm, optax)."""

import ast
import pathlib
import re
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ot_matfree"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Import names of the distributions, where they differ.
IMPORT_NAMES = {"ott-jax": "ott", "scikit-learn": "sklearn"}


def _requirement_names(requirements):
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def _top_level_imports(path: pathlib.Path) -> set[str]:
    """Modules imported anywhere in `path` (at module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_dependencies_are_what_the_library_imports():
    dependencies = {IMPORT_NAMES.get(n, n) for n in
                    _requirement_names(PYPROJECT["project"]["dependencies"])}
    demo = {IMPORT_NAMES.get(n, n) for n in
            _requirement_names(PYPROJECT["project"]["optional-dependencies"]["demo"])}
    imported = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        third_party = _top_level_imports(path) - set(sys.stdlib_module_names) - {"ot_matfree"}
        for name in third_party:
            imported.setdefault(name, []).append(str(path.relative_to(ROOT)))
    # The demo (`__main__.py`) imports tqdm, its extra, inside a function.
    assert imported.pop("tqdm", None) == ["ot_matfree/__main__.py"]
    assert set(imported) == dependencies, (
        f"imported but not a dependency: {sorted(set(imported) - dependencies)}; "
        f"a dependency never imported: {sorted(dependencies - set(imported))}")
    assert demo == {"tqdm"}


def test_extras_cover_what_tests_and_examples_import():
    extras = PYPROJECT["project"]["optional-dependencies"]
    test = _requirement_names(extras["test"])
    assert "ot-matfree[docs,examples,demo]" in extras["test"]
    available = ({IMPORT_NAMES.get(n, n) for n in test | _requirement_names(extras["examples"])
                  | _requirement_names(extras["demo"]) | _requirement_names(extras["docs"])}
                 | {IMPORT_NAMES.get(n, n) for n in
                    _requirement_names(PYPROJECT["project"]["dependencies"])})
    local = {"ot_matfree", "tests", "_second_order", "_common", "_peers", "benchmarks",
             "griffe_equinox"}
    # What every test and example imports; the benchmarks' peers (torch, POT,
    # ...) are the `bench` extra and only imported where installed.
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "examples").glob("*.py")]
    missing = {}
    for path in files:
        for name in _top_level_imports(path) - set(sys.stdlib_module_names) - local:
            if name not in available and not name.startswith("_"):
                missing.setdefault(name, []).append(str(path.relative_to(ROOT)))
    # Installed with jax, mkdocstrings and ott-jax, respectively.
    for indirect in ("jaxlib", "griffe", "jaxopt"):
        missing.pop(indirect, None)
    assert not missing, missing


def test_package_imports_without_the_extras():
    code = ("import sys\n"
            "for name in ('ott', 'matplotlib', 'tqdm', 'optax'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import ot_matfree, ot_matfree.__main__\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
