"""Adapters for the peer libraries of `benchmarks/peers.py`, one module per peer.

Every adapter module exposes `available() -> (bool, reason)` and plain
functions that take and return NumPy arrays (or the peer's own arrays) so that
`peers.py` can time them side by side. Peers are optional: none of them is a
dependency of ot_matfree (they are the `bench` extra of pyproject.toml).
"""

import importlib


def probe(module: str, min_version: str | None = None) -> tuple[bool, str]:
    """`(True, version)` if `module` imports, else `(False, why)`."""
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken install
        return False, f"{module} not installed ({type(exc).__name__}: {exc})"
    version = getattr(mod, "__version__", None)
    if version is None:
        import importlib.metadata as md

        try:
            version = md.version(module)
        except md.PackageNotFoundError:
            version = "?"
    return True, str(version)
