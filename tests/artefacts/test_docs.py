"""The documentation site builds with `mkdocs build --strict`, offline, and
renders what a reader needs.

Strict mode turns every mkdocs / mkdocstrings warning into a failure: a
broken link, a page missing from the nav, a `::: ot_matfree.NAME` that no
longer resolves, a missing CHANGELOG.md, a formula the MathML hook cannot
convert. The HTML checks then catch what builds but renders badly: an API
page with nothing on it, mathematics left as ASCII in `<code>` or as raw
`$...$`, signatures on one line cut off at the page's edge, an image that is
not in the site, a script or stylesheet fetched from the network.

One build (about 12 s on the 2-core CI machine) serves every check
(module-scoped fixture). `test_pages_in_chromium` then looks at the same site
in headless Chromium at 1280 px (about 4 s), where one is installed
(`apt-get install chromium`); it is skipped otherwise.
"""

import fcntl
import functools
import html
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

#: Public names each API page must render (the heading ids mkdocstrings writes).
API_PAGES = {
    "forward": ["solve", "Sinkhorn", "LBFGS", "Coupling", "from_ott", "RESULTS"],
    "derivatives": ["grad", "grad_x", "hvp", "hvp_x", "hessian_x"],
    "losses": ["ot_cost", "sinkhorn_divergence", "sinkhorn_distance"],
    "optimisers": ["NewtonCG", "NewtonCGDescent", "sgd_newton", "min_hessian_eigenvalue"],
    "solvers": ["AbstractHSolver", "CG", "SpectralCG", "TruncatedSVD", "DenseSolver",
                "spectrum", "Spectrum"],
    "operators": ["coupling_operator", "h_operator", "CouplingOperator", "HOperator"],
    "costs": ["AbstractCost", "SqEuclidean", "FunctionCost", "MatrixCost"],
    "matrix": ["matrix.solve", "matrix.ot_cost", "matrix.sinkhorn_distance",
               "matrix.sinkhorn_divergence"],
}

#: mkdocstrings' `line_length` (mkdocs.yml); a signature line may exceed it
#: only where ruff cannot break it.
SIGNATURE_LINE_LENGTH = 72
#: What fits the content column at 1280 px without being cut off.
SIGNATURE_MAX_LINE = 80

#: Formulas of docs/math.md as they were once written: ASCII in inline code.
ASCII_FORMULAS = ["sum_j P_ij", "grad_x OT", "diag(a_hat)", "eps * KL", "P^T", "a_hat",
                  "1 +- s_k", "H^+"]


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once per test session (also under pytest-xdist: the
    workers share the build through a lock in the session's temporary root)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    root = shared / "docs_build"
    root.mkdir(exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = root / "build.json"
        if not record.exists():
            env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
            proc = subprocess.run(
                [sys.executable, "-m", "mkdocs", "build", "--strict",
                 "--site-dir", str(root / "site")],
                cwd=ROOT, capture_output=True, text=True, timeout=300, env=env, check=False,
            )
            record.write_text(json.dumps(
                {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
        build = json.loads(record.read_text())
    assert build["returncode"] == 0, (
        f"mkdocs build --strict failed (exit {build['returncode']})\n"
        f"--- stdout ---\n{_tail(build['stdout'])}\n--- stderr ---\n{_tail(build['stderr'])}"
    )
    # Signatures are formatted by ruff or black; without either mkdocstrings
    # prints them on one line (and only logs it at INFO level).
    assert "Formatting signatures requires" not in build["stdout"] + build["stderr"]
    return root / "site"


def _page(site: pathlib.Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def _article(page_html: str) -> str:
    """The page's content: no navigation, table of contents or search index."""
    start = page_html.index('<article class="md-content__inner')
    return page_html[start:page_html.index("</article>", start)]


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_docs_build_strict(site):
    for page, names in API_PAGES.items():
        text = _page(site, f"api/{page}")
        for name in names:
            assert f'id="ot_matfree.{name}"' in text, f"api/{page}: `{name}` was not rendered"
        # Docstrings are rendered as Markdown: `**Arguments:**` lists become lists.
        if page != "operators":
            assert "<strong>Arguments:</strong>" in text and "<li>" in text, page

    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert "::: ot_matfree" not in text, f"{path}: unrendered mkdocstrings block"
        assert "--8&lt;--" not in text and "--8<--" not in text, f"{path}: unresolved snippet"

    changelog = _page(site, "changelog")
    assert "Changelog" in changelog


def test_math_page_is_mathml(site):
    article = _article(_page(site, "math"))
    maths = re.findall(r"<math\b[^>]*>.*?</math>", article, flags=re.DOTALL)
    assert len(maths) > 100, f"math.md: only {len(maths)} <math> elements"
    assert sum('display="block"' in m for m in maths) >= 8, "math.md: display formulas missing"
    # Real layout elements, not TeX text in a <math> tag.
    for tag in ("<mfrac>", "<msub>", "<munder>", "<mtable>", "<mover"):
        assert tag in article, f"math.md: no {tag} element"

    # No mathematics left as ASCII in inline code.
    codes = [_text(c) for c in re.findall(r"<code[^>]*>(.*?)</code>", article, flags=re.DOTALL)]
    for formula in ASCII_FORMULAS:
        hits = [c for c in codes if formula in c]
        assert not hits, f"math.md: {formula!r} is still ASCII in <code>: {hits[:3]}"

    # The TeX sources (kept as annotations) have balanced parentheses
    # (`grad_x OT)_i` had one too few).
    sources = [_text(t) for t in re.findall(
        r'<annotation encoding="application/x-tex">(.*?)</annotation>', article, flags=re.DOTALL)]
    assert len(sources) == len(maths)
    for tex in sources:
        depth = 0
        for char in re.sub(r"\\[{}]", "", tex):
            depth += {"(": 1, ")": -1}.get(char, 0)
            assert depth >= 0, f"math.md: unbalanced ')' in {tex!r}"
        assert depth == 0, f"math.md: unbalanced '(' in {tex!r}"
    assert any(r"(\nabla_x \mathrm{OT}_\varepsilon)_i" in tex for tex in sources)


def test_no_raw_tex_left(site):
    """Every `$...$` became MathML: no arithmatex delimiters, no `$` outside code."""
    for path in site.rglob("*.html"):
        article = _article(path.read_text(encoding="utf-8"))
        assert 'class="arithmatex">\\(' not in article, f"{path}: unconverted inline formula"
        assert 'class="arithmatex">\\[' not in article, f"{path}: unconverted display formula"
        prose = re.sub(r"<(pre|code|math)\b.*?</\1>", "", article, flags=re.DOTALL)
        assert "$" not in _text(prose), f"{path}: a raw `$` formula is left in the text"


def test_signatures_wrap(site):
    """Signatures are formatted (multi-line where long) and fit the column."""
    derivatives = _page(site, "api/derivatives")
    start = derivatives.index('id="ot_matfree.hvp_x"')
    block = re.search(r'<div class="doc-signature[^"]*">(.*?)</div>',
                      derivatives[start:], flags=re.DOTALL)
    assert block, "api/derivatives: no separate signature block for hvp_x"
    lines = _text(block.group(1)).strip().splitlines()
    assert lines[0].strip() == "hvp_x(" and len(lines) >= 4, lines

    count = 0
    for page in API_PAGES:
        text = _page(site, f"api/{page}")
        for sig in re.findall(r'<div class="doc-signature[^"]*">(.*?)</div>', text,
                              flags=re.DOTALL):
            count += 1
            for line in _text(sig).splitlines():
                assert len(line) <= SIGNATURE_MAX_LINE, f"api/{page}: signature line {line!r}"
    assert count >= 30, f"only {count} separate signatures"


def _local_target(site: pathlib.Path, page: pathlib.Path, url: str) -> pathlib.Path:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    target = (site / path.lstrip("/")) if path.startswith("/") else (page.parent / path)
    return target / "index.html" if target.is_dir() else target


def test_images_resolve(site):
    """Every <img> of the site is a file in the site (the Examples page has figures)."""
    for path in site.rglob("*.html"):
        for src in re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', path.read_text(encoding="utf-8")):
            assert not src.startswith(("http:", "https:", "//")), f"{path}: remote image {src}"
            if src.startswith("data:"):
                continue
            assert _local_target(site, path, src).is_file(), f"{path}: missing image {src}"
    examples = _article(_page(site, "examples"))
    figures = re.findall(r'<img\b[^>]*\bsrc="([^"]+\.(?:png|svg|jpg))"', examples)
    assert figures, "the Examples page shows no figure"


def test_offline(site):
    """No script, stylesheet, font or other resource is fetched from the network."""
    for path in site.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        for tag in re.findall(r"<(?:script|link|img|iframe|source)\b[^>]*>", text):
            for url in re.findall(r'\b(?:src|href)="([^"]+)"', tag):
                if tag.startswith("<link") and not re.search(
                        r'rel="(?:stylesheet|preload|modulepreload|icon|manifest)"', tag):
                    continue  # rel="canonical" and friends are not fetched
                assert not re.match(r"(https?:)?//", url), f"{path}: fetches {url}"
    for path in list(site.rglob("*.css")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"@import\s+(url\()?[\"']?(https?:)?//", text), path
        assert not re.search(r"url\([\"']?(https?:)?//", text), f"{path}: remote url()"


def test_local_styles(site):
    """The site's own stylesheet is linked: code wraps, the math font ships."""
    math = _page(site, "math")
    assert 'href="../stylesheets/extra.css"' in math
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert "white-space: pre-wrap" in css
    fonts = re.findall(r'url\("([^"]+)"\)', css)
    assert fonts and all((site / "stylesheets" / f).resolve().is_file() for f in fonts), fonts


# --- In a browser ------------------------------------------------------------

#: Loaded in headless Chromium next to the site: measures three pages laid out
#: in 1280-px-wide frames once everything has loaded, and writes the result
#: into the DOM that `--dump-dom` prints.
PROBE = """<!doctype html><html><body>
<iframe src="site/math/" style="width:1280px;height:1000px"></iframe>
<iframe src="site/api/derivatives/" style="width:1280px;height:1000px"></iframe>
<iframe src="site/examples/" style="width:1280px;height:1000px"></iframe>
<pre id="result">pending</pre>
<script>
function measure(frame) {
  const doc = frame.contentDocument;
  const article = doc.querySelector("article");
  return {
    page: frame.getAttribute("src").slice(5, -1),
    clipped: [...article.querySelectorAll("pre > code")]
      .filter(code => code.scrollWidth > code.clientWidth + 1)
      .map(code => code.textContent.slice(0, 70)),
    images: [...article.querySelectorAll("img")]
      .map(img => [img.getAttribute("src"), img.naturalWidth]),
    maths: article.querySelectorAll("math").length,
    stacked: [...article.querySelectorAll("mfrac")].map(frac =>
      frac.children[0].getBoundingClientRect().bottom
        <= frac.children[1].getBoundingClientRect().top + 1),
    fonts: [...doc.fonts].map(face => [face.family, face.status]),
  };
}
window.addEventListener("load", () => {
  try {
    document.getElementById("result").textContent =
      JSON.stringify([...document.querySelectorAll("iframe")].map(measure));
  } catch (err) { document.getElementById("result").textContent = "error " + err; }
});
</script></body></html>
"""


def _chromium():
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
    return next((path for path in map(shutil.which, names) if path), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.skipif(_chromium() is None,
                    reason="headless Chromium not installed (apt-get install chromium)")
def test_pages_in_chromium(site, tmp_path):
    """At 1280 px: formulas laid out as mathematics in the shipped math font,
    no code block or signature cut off, every figure of the Examples page
    decoded."""
    root = site.parent  # the probe sits beside the site, not in it
    (root / "probe.html").write_text(PROBE, encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
             f"http://127.0.0.1:{server.server_address[1]}/probe.html"],
            capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, flags=re.DOTALL)
    assert found and found.group(1).startswith("["), (
        f"no result from Chromium (exit {proc.returncode})\n{_tail(proc.stderr, 20)}\n"
        f"{found.group(1) if found else _tail(proc.stdout, 20)}"
    )
    pages = {page["page"]: page for page in json.loads(html.unescape(found.group(1)))}

    for name, page in pages.items():
        assert not page["clipped"], f"{name}: code cut off at 1280 px: {page['clipped']}"

    math = pages["math"]
    assert math["maths"] > 100, math["maths"]
    # MathML layout: a fraction's numerator sits above its denominator.
    assert math["stacked"] and all(math["stacked"]), math["stacked"]
    assert ["ot_matfree Latin Modern Math", "loaded"] in math["fonts"], math["fonts"]

    figures = pages["examples"]["images"]
    assert figures, "the Examples page shows no figure"
    assert all(width > 0 for _, width in figures), f"figures not decoded: {figures}"
