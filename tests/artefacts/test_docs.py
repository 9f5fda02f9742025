"""The documentation site builds with `mkdocs build --strict`, offline.

Strict mode turns every mkdocs / mkdocstrings warning into a failure: a
broken link, a page missing from the nav, a `::: ot_matfree.NAME` that no
longer resolves, a missing CHANGELOG.md. The HTML checks catch an API page
that builds but renders nothing.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Public names each API page must render (the heading ids mkdocstrings writes).
API_PAGES = {
    "forward": ["solve", "Sinkhorn", "Coupling", "from_ott", "RESULTS"],
    "derivatives": ["grad", "grad_x", "hvp", "hvp_x", "hessian_x"],
    "losses": ["ot_cost", "sinkhorn_divergence", "sinkhorn_distance"],
    "optimisers": ["NewtonCG", "NewtonCGDescent", "sgd_newton", "min_hessian_eigenvalue"],
    "solvers": ["AbstractHSolver", "CG", "SpectralCG", "TruncatedSVD", "DenseSolver",
                "spectrum", "Spectrum"],
    "operators": ["coupling_operator", "h_operator", "CouplingOperator", "HOperator"],
    "costs": ["AbstractCost", "SqEuclidean", "FunctionCost"],
}


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_docs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode})\n"
        f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
    )

    for page, names in API_PAGES.items():
        html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        for name in names:
            assert f'id="ot_matfree.{name}"' in html, f"api/{page}: `{name}` was not rendered"
        # Docstrings are rendered as Markdown: `**Arguments:**` lists become lists.
        if page != "operators":
            assert "<strong>Arguments:</strong>" in html and "<li>" in html, page

    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "::: ot_matfree" not in text, f"{path}: unrendered mkdocstrings block"
        assert "--8&lt;--" not in text and "--8<--" not in text, f"{path}: unresolved snippet"

    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Changelog" in changelog
