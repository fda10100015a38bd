"""The interactive flame graph as a JupyterLab widget (anywidget), running ``flame.js``.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import anywidget
import traitlets

from slabkit.ui.flame.embed import flame_js, plotly_js
from slabkit.ui.flame.figure import MIN_SHARE, figure_spec, flame_diff_figure, flame_figure

_WIDGET_ESM = """
export default {
  render({ model, el }) {
    const api = globalThis.slabkitFlame;
    const view = api.render(el, model.get("spec"), {
      onSearch(query, result) {
        model.set("query", query);
        model.set("matches", result.matches);
        model.set("matched_share", result.share);
        model.save_changes();
      },
    });
    if (!view) { el.textContent = "plotly.js did not load"; return; }
    const sync = () => view.search(model.get("query")).then((result) => {
      model.set("matches", result.matches);
      model.set("matched_share", result.share);
      model.save_changes();
    });
    model.on("change:query", sync);
    if (model.get("query")) sync();
    return () => view.destroy();
  },
};
"""


class FlameGraph(anywidget.AnyWidget):
    """A capture's flame graph (``FlameGraph(cap)``) or two captures' difference
    (``FlameGraph(before=a, after=b)``) in JupyterLab: click a box to zoom, hover for
    allocations, bytes and share, type in the search box to highlight a function.

    Attributes (synchronised with the page): ``query`` (the search; set it from Python too),
    ``matches`` and ``matched_share`` (how many boxes match and the share of the whole they
    cover, reported by the page), ``spec`` (the plotly figure as JSON), :attr:`figure` (the
    plotly ``Figure``). Where no widget can run (a notebook viewer), the notebook shows a
    static image of the same graph instead (``static=False`` leaves it out).
    """

    _esm = traitlets.Unicode().tag(sync=True)
    spec = traitlets.Dict().tag(sync=True)
    query = traitlets.Unicode("").tag(sync=True)
    matches = traitlets.Int(0).tag(sync=True)
    matched_share = traitlets.Float(0.0).tag(sync=True)

    def __init__(self, cap: Any = None, *, before: Any = None, after: Any = None,
                 value: str = "count", min_share: float = MIN_SHARE, query: str = "",
                 static: bool = True, **kwargs):
        if (cap is None) == (before is None or after is None):
            raise TypeError("FlameGraph(cap) or FlameGraph(before=..., after=...)")
        if cap is not None:
            self.figure = flame_figure(cap, value=value, min_share=min_share)
        else:
            self.figure = flame_diff_figure(before, after, min_share=min_share)
        self._static_of = (cap, before, after) if static else None
        self._png: bytes | None = None     # drawn at the first display, then kept
        super().__init__(_esm=_esm_source(), spec=figure_spec(self.figure), query=query,
                         **kwargs)
        self.add_class("slabkit-flame-widget")

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if self._static_of is None:
            return bundle
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if self._png is None:
            self._png = static_png(*self._static_of) or b""
        if self._png:
            data["image/png"] = base64.b64encode(self._png).decode("ascii")
        return bundle


_ESM_CACHE: list[str] = []


def _esm_source() -> str:
    """plotly.js, flame.js and the widget's entry point as one ES module (built once)."""
    if not _ESM_CACHE:
        _ESM_CACHE.append(plotly_js() + "\n;\n" + flame_js() + "\n" + _WIDGET_ESM)
    return _ESM_CACHE[0]


def static_png(cap: Any = None, before: Any = None, after: Any = None, *,
               dpi: int = 80) -> bytes | None:
    """The static flame chart (:func:`slabkit.plots.plot_flame`) as PNG bytes; for a
    difference, of the ``after`` capture; None when matplotlib cannot draw it."""
    from matplotlib.figure import Figure

    from slabkit.plots import plot_flame
    fig = Figure(figsize=(14, 6), layout="constrained")
    ax = fig.add_subplot()
    plot_flame(cap if cap is not None else after, ax=ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
