"""Self-contained HTML pages: Jinja templates with autoescape, images as ``data:`` URIs.

The analysis report (:mod:`ssl_toolkit.eval.report`) and the dataset inspection
(:mod:`ssl_toolkit.inspection.html`) render through :func:`render_page`, so both escape
every value the same way and embed every image with :func:`data_uri` (one file, no
external resources).

Text taken from data (class and file names) may hold bidirectional control characters
(U+202E turns ``gnp.exe`` into what reads as ``exe.png``): every value a page prints has
them written visibly (:func:`show_bidi`), and :func:`shown_name` also makes a name made
only of invisible characters visible.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from pathlib import Path
from typing import Any

from markupsafe import Markup

PAGE_SUFFIXES = (".html", ".htm")


def check_page_suffix(path: str | Path, option: str = "--out") -> Path:
    """``path`` if it names an HTML page, else a UserError (a page written over, say, an ``.npz`` would destroy it)."""
    from ssl_toolkit.outputs import named_file

    return named_file(path, PAGE_SUFFIXES, option, ignore_case=True)


BIDI_CONTROLS = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")
BLANK_LETTERS = frozenset("\u115f\u1160\u2800\u3164\uffa0")  # letters and symbols drawn as nothing
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me"})


def show_bidi(text: Any) -> Any:
    """``text`` with each bidirectional control character written as its code point, e.g. ``[U+202E]`` (other values unchanged).

    Markup (already escaped, e.g. the output of Jinja's ``join``) stays markup: the
    replacement holds no character that HTML would need escaped.
    """
    if isinstance(text, str) and BIDI_CONTROLS.search(text):
        shown = BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)
        return type(text)(shown) if isinstance(text, Markup) else shown
    return text


def _invisible(c: str) -> bool:
    return c.isspace() or c in BLANK_LETTERS or unicodedata.category(c) in INVISIBLE_CATEGORIES


def shown_name(name: object) -> str:
    """A class or file name as a page shows it: bidi controls visible, an empty or invisible-only name as its ``ascii()``.

    Example: ``"\u3000"`` -> ``"'\\u3000'"``, ``"a\u202eb"`` -> ``"a[U+202E]b"``.
    """
    text = str(name)
    if not text or all(_invisible(c) for c in text):
        return ascii(text)
    return str(show_bidi(text))


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` of ``data``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def render_page(templates: Path, name: str, context: dict[str, Any], strict: bool = True) -> str:
    """Render template ``name`` from the folder ``templates`` with ``context``.

    Every value is HTML-escaped unless the template marks it safe, and has its bidi
    controls written visibly (:func:`show_bidi`); block tags leave no blank lines. The
    filter ``name`` is :func:`shown_name`.

    Args:
        templates: Folder of the templates.
        name: Template file name.
        context: The template's variables.
        strict: An undefined variable is an error (``StrictUndefined``) instead of empty.
    """
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, Undefined

    env = Environment(
        loader=FileSystemLoader(str(templates)),
        autoescape=True,
        undefined=StrictUndefined if strict else Undefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=show_bidi,
    )
    env.filters["name"] = shown_name
    return env.get_template(name).render(**context)
