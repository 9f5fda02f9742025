"""MkDocs hook: the pages' LaTeX becomes MathML when the site is built.

`pymdownx.arithmatex` (generic mode, mkdocs.yml) protects `$...$` and
`$$...$$` from Markdown and writes them as

    <span class="arithmatex">\\(...\\)</span>      (inline)
    <div class="arithmatex">\\[...\\]</div>        (display)

This hook converts each one to MathML with `latex2mathml` (pure Python), so
the site needs no JavaScript and no network to show mathematics: browsers
render MathML Core natively (Chromium 109+, Firefox, Safari), with the math
font the site ships (docs/fonts/, docs/stylesheets/extra.css). It runs on the
whole page, so `$...$` in docstrings rendered by mkdocstrings is converted
too. The TeX source is kept as a MathML annotation.

Adjustments to latex2mathml's output for MathML Core:

- `mathvariant` other than "normal" is ignored by Chromium, so `\\mathbb{1}`
  or `\\mathbf{x}` would show as a plain 1 or x: such characters are written
  as Unicode mathematical alphanumerics (U+1D7D9, ...) instead;
- `\\sum_j`, `\\min_{...}` become `<munder>` with `movablelimits`, so the
  limits go under the operator in display formulas and beside it inline;
- names (`\\log`, `\\operatorname{diag}`) get TeX's thin spaces, none before a
  bracket; `\\pm` is a binary operator, `/` an ordinary symbol and a leading
  sign unary, as in TeX;
- an inline formula and the punctuation after it are kept on one line.

A formula latex2mathml does not understand (an unknown command comes out as
literal `\\foo` text, an alignment `&` as text) fails the build, naming the
page and the formula.
"""

from __future__ import annotations

import html
import re
import unicodedata
import xml.etree.ElementTree as ET

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

MATHML_NS = "http://www.w3.org/1998/Math/MathML"
ET.register_namespace("", MATHML_NS)

# An inline formula with the punctuation right after it, kept on one line.
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>([,.;:!?)]*)', re.DOTALL)
_DISPLAY = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)
_UNCONVERTED = re.compile(r"\\[A-Za-z]+|&")
_DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
#: Operators whose sub/superscripts are limits (under/over in display style).
_LIMIT_OPERATORS = {"\u2211", "\u220f", "\u2210", "\u22c3", "\u22c2", "min", "max", "lim",
                    "sup", "inf", "argmin", "argmax"}


def _tag(element: ET.Element) -> str:
    return element.tag.rpartition("}")[2]


def _styled(char: str, variant: str) -> str:
    """`char` in the Unicode mathematical alphabet `variant` ("bold", ...)."""
    style = variant.upper().replace("-", " ")
    style = style.replace("DOUBLE STRUCK", "DOUBLE-STRUCK").replace("SANS SERIF", "SANS-SERIF")
    if char.isascii() and char.isdigit():
        names = [f"MATHEMATICAL {style} DIGIT {_DIGITS[int(char)]}"]
    elif char.isascii() and char.isalpha():
        case = "CAPITAL" if char.isupper() else "SMALL"
        # A few letters predate the block (U+211D DOUBLE-STRUCK CAPITAL R, ...).
        names = [f"MATHEMATICAL {style} {case} {char.upper()}", f"{style} {case} {char.upper()}"]
    else:
        return char
    for name in names:
        try:
            return unicodedata.lookup(name)
        except KeyError:
            continue
    raise ValueError(f"no {variant} form of {char!r} in Unicode")


def _is_name(element: ET.Element) -> bool:
    """`log`, `exp`, `\\operatorname{diag}`: a multi-letter upright name."""
    text = (element.text or "").strip()
    return (_tag(element) in ("mi", "mo") and len(text) > 1 and text.isalpha()
            and text not in _LIMIT_OPERATORS)


def _adjust(root: ET.Element) -> None:
    mspace = f"{{{MATHML_NS}}}mspace"
    for element in root.iter():
        # Unicode alphabets for \mathbb, \mathbf, \mathcal, ...
        variant = element.attrib.get("mathvariant")
        if variant and variant != "normal":
            element.text = "".join(_styled(char, variant) for char in element.text or "")
            del element.attrib["mathvariant"]
        # Limits of sums and minima: under the operator in display style.
        tag = _tag(element)
        if tag in ("msub", "msubsup") and len(element):
            base = element[0]
            if _tag(base) == "mrow" and len(base) == 1:
                base = base[0]
            if _tag(base) == "mo" and (base.text or "").strip() in _LIMIT_OPERATORS:
                element.tag = f"{{{MATHML_NS}}}{'munder' if tag == 'msub' else 'munderover'}"
                base.set("movablelimits", "true")
        # As in TeX: +- is a binary operator, / an ordinary symbol.
        if tag == "mi" and (element.text or "").strip() in ("\u00b1", "\u2213"):
            element.tag = f"{{{MATHML_NS}}}mo"
        if tag == "mo" and (element.text or "").strip() == "/":
            element.set("lspace", "0em")
            element.set("rspace", "0em")
        # \big( is drawn by Chromium with a size variant as wide as a space on
        # either side: an ordinary bracket reads better (\Big and up stay).
        if tag == "mo" and element.get("minsize") == "1.2em":
            del element.attrib["minsize"], element.attrib["maxsize"]
            element.set("stretchy", "false")
        # Sized delimiters, \lVert, \rVert and |: no space of their own
        # (latex2mathml leaves \lVert stretchy, so it grew with a superscript
        # elsewhere in the formula).
        if tag == "mo" and ("minsize" in element.attrib or (
                (element.text or "").strip() in ("\u2016", "|")
                and element.get("fence") != "true")):
            element.set("lspace", "0em")
            element.set("rspace", "0em")
            if "minsize" not in element.attrib:
                element.set("stretchy", "false")
    # A sign at the start or after an operator is unary: `(1, -1)`, `= -x`.
    for parent in root.iter():
        for index, child in enumerate(parent):
            if _tag(child) != "mo" or (child.text or "").strip() not in ("\u2212", "+", "\u00b1"):
                continue
            before = parent[index - 1] if index else None
            if before is None or (_tag(before) == "mo"
                                  and (before.text or "").strip() not in (")", "]", "\u27e9", "|")):
                child.set("lspace", "0em")
                child.set("rspace", "0em")
    # Names (latex2mathml writes \operatorname{diag} as an operator): a thin
    # space on either side, as TeX puts around \log, but none next to an
    # operator or a bracket: `diag(a)`, `\varepsilon \log a`.
    for parent in list(root.iter()):
        for index in reversed(range(len(parent))):
            child = parent[index]
            if not _is_name(child):
                continue
            child.tag = f"{{{MATHML_NS}}}mi"
            if index + 1 < len(parent) and _tag(parent[index + 1]) not in ("mo", "mspace"):
                parent.insert(index + 1, ET.Element(mspace, width="0.1667em"))
            if index > 0 and _tag(parent[index - 1]) not in ("mo", "mspace"):
                parent.insert(index, ET.Element(mspace, width="0.1667em"))


def tex_to_mathml(tex: str, *, display: bool, where: str = "") -> str:
    """One formula (TeX source, HTML-unescaped) as a `<math>` element."""
    try:
        root = ET.fromstring(convert(tex, display="block" if display else "inline"))
    except Exception as err:  # latex2mathml raises several exception types
        raise PluginError(f"{where}: cannot convert the formula {tex!r} to MathML: {err}") from err
    for element in root.iter():
        leftover = _UNCONVERTED.search(element.text or "")
        if leftover:
            raise PluginError(
                f"{where}: the formula {tex!r} uses {leftover.group(0)!r}, "
                "which latex2mathml does not convert"
            )
    try:
        _adjust(root)
    except ValueError as err:
        raise PluginError(f"{where}: the formula {tex!r}: {err}") from err
    # <math><mrow>...</mrow></math> -> <math><semantics><mrow>...</mrow>
    # <annotation encoding="application/x-tex">TeX</annotation></semantics></math>
    semantics = ET.Element(f"{{{MATHML_NS}}}semantics")
    semantics.extend(list(root))
    for child in list(root):
        root.remove(child)
    annotation = ET.SubElement(semantics, f"{{{MATHML_NS}}}annotation",
                               encoding="application/x-tex")
    annotation.text = tex
    root.append(semantics)
    return ET.tostring(root, encoding="unicode", short_empty_elements=False)


def render_math(page_html: str, where: str = "") -> str:
    """Replace every arithmatex span / div of a rendered page with MathML."""

    def inline(match: re.Match) -> str:
        tex = html.unescape(match.group(1)).strip()
        mathml = tex_to_mathml(tex, display=False, where=where)
        formula = f'<span class="arithmatex">{mathml}</span>'
        if match.group(2):  # no line break between a formula and its comma
            return f'<span class="arithmatex-nowrap">{formula}{match.group(2)}</span>'
        return formula

    def display(match: re.Match) -> str:
        tex = html.unescape(match.group(1)).strip()
        return f'<div class="arithmatex">{tex_to_mathml(tex, display=True, where=where)}</div>'

    return _INLINE.sub(inline, _DISPLAY.sub(display, page_html))


def on_page_content(html_text, page, config, files):
    """MkDocs hook: after a page's Markdown is rendered, before the theme."""
    return render_math(html_text, where=page.file.src_uri)
