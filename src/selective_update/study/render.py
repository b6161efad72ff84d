"""Offline HTML: render executed notebooks with nbconvert, without any CDN script."""
from __future__ import annotations

import re
from pathlib import Path

from ..files import atomic_write

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "offline"
# A tag or CSS url() that makes the browser fetch something from the network.
_EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|audio|video|source|embed)\b[^>]*\bsrc\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//"""
    r"""|@import\s+(?:url\()?\s*["']?\s*(?:https?:)?//"""
    r"""|url\(\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def external_references(text) -> list:
    """Return every fetch an HTML page would make off the file (scripts, styles, images, fonts)."""
    return [m.group(0) for m in _EXTERNAL.finditer(text)]


def exporter():
    """An HTMLExporter on the offline template (lab look, no CDN scripts)."""
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name=TEMPLATE, extra_template_basedirs=[str(TEMPLATES)])


def render_html(notebook, html_path, title=None):
    """Render an executed notebook (path or NotebookNode) to a self-contained offline HTML file."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, (str, Path)) \
        else notebook
    if title:
        nb.metadata["title"] = title
    body, _ = exporter().from_notebook_node(nb)
    found = external_references(body)
    if found:  # the template should make this impossible; never ship a page that phones home
        raise RuntimeError(f"{html_path}: external references in the HTML: {found[:3]}")
    atomic_write(html_path, body)
    return Path(html_path)
