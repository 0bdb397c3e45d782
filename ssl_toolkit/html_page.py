"""Self-contained HTML pages: Jinja templates with autoescape, images as ``data:`` URIs.

The analysis report (:mod:`ssl_toolkit.eval.report`) and the dataset inspection
(:mod:`ssl_toolkit.inspection.html`) render through :func:`render_page`, so both escape
every value the same way and embed every image with :func:`data_uri` (one file, no
external resources).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` of ``data``."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def render_page(templates: Path, name: str, context: dict[str, Any], strict: bool = True) -> str:
    """Render template ``name`` from the folder ``templates`` with ``context``.

    Every value is HTML-escaped unless the template marks it safe; block tags leave no
    blank lines.

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
    )
    return env.get_template(name).render(**context)
