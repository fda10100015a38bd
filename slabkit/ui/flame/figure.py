"""plotly icicle figures of a capture's flame graph and of two captures' difference.

Each figure is one ``go.Icicle`` trace, root ("all") at the top, then processes, then kernel
frames outermost first, widths by allocations; boxes carry ``customdata`` (allocations,
bytes, share, as :mod:`slabkit.analysis.present` writes them) for the hover text. Colours are
explicit per box (FlameGraph's warm colours by function name; for a difference, red for more
after and blue for fewer), so the search highlight in ``flame.js`` can swap them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from slabkit.analysis import present
from slabkit.analysis.flame import flame_diff, flame_tree
from slabkit.analysis.pivots import CaptureLike, _unpack

#: boxes narrower than this share of all allocations are left out (the interactive graph can
#: zoom, so it keeps far more than the static one)
MIN_SHARE = 0.001
_SPECIAL = {"all": "rgb(176,176,176)", "comm": "rgb(154,182,214)"}


def _height(levels: int) -> int:
    return int(min(max(360, 22 * (levels + 1) + 90), 1400))


def _trace_common(tree: pd.DataFrame) -> dict[str, Any]:
    return dict(ids=tree["id"].astype(str).tolist(),
                parents=["" if p < 0 else str(p) for p in tree["parent"]],
                labels=tree["label"].astype(str).tolist(), branchvalues="total", sort=False,
                tiling=dict(orientation="v"), textinfo="label",
                insidetextfont=dict(size=11), pathbar=dict(visible=True, side="top"),
                maxdepth=-1)


def flame_figure(cap: CaptureLike, *, value: str = "count", min_share: float = MIN_SHARE,
                 title: str | None = None):
    """The flame graph of ``cap`` as a plotly ``Figure`` (an icicle; click a box to zoom into
    it, click the path bar to zoom out; hover for allocations, bytes and share).
    ``value``: what decides the widths, ``"count"`` or ``"bytes"``."""
    import plotly.graph_objects as go

    tree = flame_tree(cap, value=value, min_share=min_share)
    meta = _unpack(cap)[2]
    if title is None:
        title = f"Kernel stacks allocating from {present.subject(meta)}"
        badge = present.sample_badge(cap)
        if badge:
            title += f" ({badge})"
    colors = [_SPECIAL.get(k) or present.css_color(present.flame_color(lab))
              for k, lab in zip(tree["kind"], tree["label"].astype(str))]
    noun = "allocations" if value == "count" else "bytes"
    custom = np.column_stack([
        [present.count_text(v) for v in tree["count"]],
        [present.bytes_text(v) for v in tree["bytes"]],
        [present.share_text(v) for v in tree["share"]],
    ]) if len(tree) else np.zeros((0, 3))
    values = tree["count" if value == "count" else "bytes"].astype("Float64").fillna(0)
    trace = go.Icicle(**_trace_common(tree), values=values.to_numpy(dtype=float).tolist(),
                      marker=dict(colors=colors, line=dict(width=0.5, color="white")),
                      customdata=custom.tolist(),
                      hovertemplate=("<b>%{label}</b><br>%{customdata[0]} allocations, "
                                     "%{customdata[1]}<br>%{customdata[2]} of all " + noun +
                                     "<extra></extra>"))
    fig = go.Figure(trace)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=_height(
        int(tree["level"].max()) if len(tree) else 1), margin=dict(l=8, r=8, t=48, b=8),
        uniformtext=dict(minsize=9, mode="hide"),
        meta={"slabkit": "flame", "value": value, "unit": noun,
              "total": float(values.iloc[0]) if len(values) else 0.0})
    return fig


def flame_diff_figure(before: CaptureLike, after: CaptureLike, *,
                      min_share: float = MIN_SHARE, title: str | None = None):
    """The difference flame graph of two captures as a plotly ``Figure``: the code paths of
    both on one tree (matched by function names), a box's width the mean of its rates before
    and after, red where there are more allocations per second after, blue where fewer; the
    hover says the rates before and after and the change."""
    import plotly.graph_objects as go
    from matplotlib import colormaps

    tree = flame_diff(before, after, min_share=min_share)
    if title is None:
        title = (f"Change in allocations per second, {present.subject(_unpack(before)[2])} -> "
                 f"{present.subject(_unpack(after)[2])} (red: more after, blue: fewer; "
                 "width: mean rate)")
    cmap = colormaps["RdBu_r"]
    colors = [present.css_color(cmap(0.5 + 0.45 * float(c))) for c in tree["change"]]
    custom = np.column_stack([
        [present.rate_text(v) for v in tree["a_per_s"]],
        [present.rate_text(v) for v in tree["b_per_s"]],
        [present.change_text(v) for v in tree["delta_per_s"]],
        [present.ratio_text(b / a if a > 0 else (float("inf") if b > 0 else 1.0))
         for a, b in zip(tree["a_per_s"], tree["b_per_s"])],
    ]) if len(tree) else np.zeros((0, 4))
    mean = ((tree["a_per_s"] + tree["b_per_s"]) / 2).to_numpy(dtype=float)
    trace = go.Icicle(**_trace_common(tree), values=mean.tolist(),
                      marker=dict(colors=colors, line=dict(width=0.5, color="white")),
                      customdata=custom.tolist(),
                      hovertemplate=("<b>%{label}</b><br>before %{customdata[0]}, after "
                                     "%{customdata[1]}<br>change %{customdata[2]} "
                                     "(%{customdata[3]})<extra></extra>"))
    fig = go.Figure(trace)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=_height(
        int(tree["level"].max()) if len(tree) else 1), margin=dict(l=8, r=8, t=48, b=8),
        uniformtext=dict(minsize=9, mode="hide"),
        meta={"slabkit": "flame-diff", "unit": "allocations per second (mean)",
              "total": float(mean[0]) if len(mean) else 0.0})
    return fig


def figure_spec(fig) -> dict[str, Any]:
    """A figure as the plain JSON-able dict ``flame.js`` takes (``data``, ``layout``)."""
    import json

    import plotly.io as pio
    return json.loads(pio.to_json(fig, validate=False, engine="json"))
