"""The interactive flame graph in a standalone HTML page: plotly.js and ``flame.js`` inlined
once per page (no network), then one ``<div>`` per figure with its data as JSON and a static
PNG inside it that shows wherever scripts do not run (a mail reader, a viewer that strips
scripts, JupyterLab's HTML viewer before "Trust HTML")."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

FLAME_JS = Path(__file__).resolve().parent / "flame.js"


def plotly_js() -> str:
    """plotly.js (minified) as the plotly Python package ships it."""
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def flame_js() -> str:
    return FLAME_JS.read_text(encoding="utf-8")


def _script_text(text: str) -> str:
    """Text that is safe inside a <script> element (no early ``</script``)."""
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def page_scripts() -> str:
    """The scripts a page needs once, before any :func:`figure_html`: plotly.js, flame.js,
    and the call that draws every flame graph of the page once it has loaded."""
    return (f'<script type="text/javascript">{_script_text(plotly_js())}</script>\n'
            f'<script type="text/javascript">{_script_text(flame_js())}</script>\n'
            '<script type="text/javascript">document.addEventListener("DOMContentLoaded", '
            "function () { slabkitFlame.renderAll(document); });</script>\n")


def figure_html(spec: dict[str, Any], *, name: str, static_png: bytes | None = None,
                alt: str = "flame graph") -> str:
    """One flame graph: a ``<div class="slabkit-flame">`` holding the static image (if any)
    and, beside it, its figure as JSON (``spec`` from
    :func:`slabkit.ui.flame.figure.figure_spec`); ``name`` makes the ids unique in the page."""
    data_id = f"slabkit-flame-data-{name}"
    static = ""
    if static_png:
        uri = "data:image/png;base64," + base64.b64encode(static_png).decode("ascii")
        static = (f'<img class="slabkit-flame-static" alt="{html.escape(alt)}" src="{uri}" '
                  'style="max-width:100%">')
    payload = _script_text(json.dumps(spec, separators=(",", ":")))
    return (f'<div class="slabkit-flame" id="slabkit-flame-{html.escape(name)}" '
            f'data-spec-id="{html.escape(data_id)}">{static}</div>\n'
            f'<script type="application/json" id="{html.escape(data_id)}">{payload}</script>')
