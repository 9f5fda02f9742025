"""The package's layers import only downward.

Order, lowest first: `_core` (costs, coupling, results, checks, sharding) <
`_stream` (the block engine and its reductions) < `_linear` (operators and
H-solvers) < `_forward` (Sinkhorn, `from_ott`, `Config`) < `_derivatives`
(gradients, HVPs, implicit rules) < `_losses` < `_optim` < the public
surface (`__init__`, `internal`, `__main__`). A module may import from its
own layer and the ones below it. Every import counts: absolute and
relative, at module level or inside a function, and
`importlib.import_module` with a literal name.
"""

import ast
import pathlib
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "ot_matfree"

#: Layers, lowest first; the last one is the public surface.
LAYERS = ("_core", "_stream", "_linear", "_forward", "_derivatives", "_losses", "_optim", "public")
#: Top-level modules of the public surface.
PUBLIC = {"__init__", "__main__", "internal", "matrix"}


def _layer(module: str) -> str:
    """The layer of a dotted module name inside the package."""
    parts = module.split(".")
    if len(parts) == 1:
        return "public"  # the package itself: __init__
    head = parts[1]
    if head in LAYERS:
        return head
    if head in PUBLIC:
        return "public"
    raise ValueError(f"{module}: not in any layer; add it to LAYERS or PUBLIC in {__file__}.")


def _modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted name -> file, for every module of the package at `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: pathlib.Path, modules: dict) -> set[str]:
    """Modules of the package that `module` imports, anywhere in its body."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = module.split(".")[0]
    found = set()

    def add(target: str, names=()):
        if target != top and not target.startswith(top + "."):
            return
        subs = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
        found.update(subs or [target])
        if len(subs) < len(names):  # names taken from `target` itself
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            add(target, [alias.name for alias in node.names])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) in ("import_module", "__import__"):
            if node.args and isinstance(node.args[0], ast.Constant):
                add(str(node.args[0].value))
    found.discard(module)
    return found


def layer_violations(root: pathlib.Path) -> list[str]:
    """`"a imports b (layer x above layer y)"` for every upward import."""
    modules = _modules(root)
    out = []
    for module, path in modules.items():
        rank = LAYERS.index(_layer(module))
        for target in sorted(_imported(module, path, modules)):
            if LAYERS.index(_layer(target)) > rank:
                out.append(
                    f"{module} imports {target} (layer {_layer(target)} is above "
                    f"{_layer(module)})"
                )
    return out


def test_layers_import_only_downward():
    assert layer_violations(ROOT) == []


def test_every_layer_exists():
    present = {_layer(module) for module in _modules(ROOT)}
    assert present == set(LAYERS)


def _package(tmp_path, files: dict[str, str]) -> pathlib.Path:
    root = tmp_path / "ot_matfree"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for folder in {p.parent for p in root.rglob("*.py")} - {root}:
        (folder / "__init__.py").touch()
    (root / "__init__.py").touch()
    return root


def test_checker_finds_upward_imports(tmp_path):
    root = _package(tmp_path, {
        "_core/costs.py": """
            def late():
                from .._linear import cg  # function-level, relative: upward
                return cg
        """,
        "_stream/engine.py": "import ot_matfree._forward.sinkhorn  # absolute: upward\n",
        "_optim/newton_cg.py": "from .. import internal  # the public surface: upward\n",
        "_linear/cg.py": "from .._core.costs import late\nfrom . import schur\n",
        "_linear/schur.py": "import importlib\nimportlib.import_module('ot_matfree._losses')\n",
        "_forward/sinkhorn.py": "from .._stream import engine\n",
        "_losses.py": "from ._derivatives.hvp import grad\nfrom . import _optim\n",
        "_derivatives/hvp.py": "from .._forward import sinkhorn\n",
        "internal.py": "from ._optim import newton_cg\n",
        "__init__.py": "from . import internal\n",
    })
    assert sorted(layer_violations(root)) == [
        "ot_matfree._core.costs imports ot_matfree._linear.cg (layer _linear is above _core)",
        "ot_matfree._linear.schur imports ot_matfree._losses (layer _losses is above _linear)",
        "ot_matfree._losses imports ot_matfree._optim (layer _optim is above _losses)",
        "ot_matfree._optim.newton_cg imports ot_matfree.internal (layer public is above _optim)",
        "ot_matfree._stream.engine imports ot_matfree._forward.sinkhorn (layer _forward is "
        "above _stream)",
    ]


def test_checker_rejects_a_module_outside_the_layers(tmp_path):
    root = _package(tmp_path, {"_misc.py": "x = 1\n"})
    with pytest.raises(ValueError, match="not in any layer"):
        layer_violations(root)
