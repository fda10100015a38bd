"""The pivot explorer: a capture as a table and a bar chart, by process, module, call site or stack.
"""
from __future__ import annotations

import html
import io
from typing import Any

import ipywidgets as W
import pandas as pd

import slabkit
from slabkit.analysis import stack_text
from slabkit.errors import SlabkitError
from slabkit.ui.widgets.html import error_html, frame_html, style

# --------------------------------------------------------------------------------------------
# pivot explorer


class PivotExplorer(W.VBox):
    """A capture pivoted by process, module, call site or stack: a table and a bar chart of
    the same rows, updated together whenever a control changes.

    Controls: :attr:`group_by` (``process``, ``module``, ``callsite``, ``stack``),
    :attr:`measure` (``count`` or ``bytes``), :attr:`top_n`, :attr:`show_allocator` (call
    sites and stacks: count a stack under its innermost frame / show the allocator frames of
    a stack, instead of hiding them), and :attr:`source` (allocations, or the objects still
    allocated at the end for an outstanding-mode capture).

    Attributes:
        capture: the :class:`~slabkit.Capture` shown.
        frame: the pivot shown now (a DataFrame from :mod:`slabkit.analysis.pivots`, first N rows).
        figure, ax: the matplotlib Figure/Axes of the chart; chart: the Image widget (PNG).
        table: the HTML widget with the table.
    """

    GROUPS = (("process", "process"), ("module", "module"), ("call site", "callsite"),
              ("stack", "stack"))

    def __init__(self, cap, *, group_by: str = "process", measure: str = "count",
                 top_n: int = 10, show_allocator: bool = False, source: str = "allocs",
                 **kwargs):
        self.capture = cap
        self.frame: pd.DataFrame = pd.DataFrame()
        self.figure = None
        self.ax = None
        sources = [("allocations", "allocs")]
        if cap.outstanding is not None:
            sources.append(("outstanding at end", "outstanding"))
        self.group_by = W.ToggleButtons(options=self.GROUPS, value=group_by, description="By",
                                        style={"button_width": "6.5em"})
        self.measure = W.ToggleButtons(options=[("count", "count"), ("bytes", "bytes")],
                                       value=measure, description="Measure",
                                       style={"button_width": "5em"})
        self.top_n = W.BoundedIntText(value=top_n, min=1, max=200, description="Top N",
                                      layout=W.Layout(width="10em"))
        self.show_allocator = W.Checkbox(value=show_allocator, description="allocator frames",
                                         indent=False)
        self.source = W.ToggleButtons(options=sources, value=source, description="Data",
                                      style={"button_width": "10em"})
        self.source.layout.display = None if len(sources) > 1 else "none"
        self.message = W.HTML()
        self.table = W.HTML(layout=W.Layout(flex="0 1 auto", max_width="100%",
                                            margin="0 16px 0 0"))
        self.table.add_class("slabkit-table")
        for pane in (self.message, self.table):
            pane.add_class("slabkit-block")
        self.chart = W.Image(format="png", layout=W.Layout(flex="0 0 auto", max_width="100%"))
        super().__init__([
            style(),
            W.HTML(f"<b>Explore</b> <span class='slabkit-note'>{html.escape(repr(cap))}"
                   "</span>"),
            W.HBox([self.group_by]), W.HBox([self.measure, self.top_n, self.show_allocator]),
            self.source, self.message,
            # side by side where the page is wide enough, else the chart below the table
            W.Box([self.table, self.chart], layout=W.Layout(
                display="flex", flex_flow="row wrap", align_items="flex-start"))], **kwargs)
        self.add_class("slabkit-pivot-explorer")
        for control in (self.group_by, self.measure, self.top_n, self.show_allocator,
                        self.source):
            control.observe(lambda _: self.update(), "value")
        self.update()

    def data(self):
        """What the pivots read: the capture, or (outstanding, frames) for outstanding."""
        cap = self.capture
        if self.source.value == "outstanding" and cap.outstanding is not None:
            return (cap.outstanding, cap.frames)
        return cap

    def pivot(self) -> pd.DataFrame:
        """The pivot for the current controls (all of it is computed; :attr:`frame` is its
        first N rows)."""
        data, value, n = self.data(), self.measure.value, int(self.top_n.value)
        keep = bool(self.show_allocator.value)
        group = self.group_by.value
        if group == "process":
            return slabkit.by_process(data, value=value)
        if group == "module":
            return slabkit.by_module(data, value=value)
        if group == "callsite":
            return slabkit.by_frame(data, "callsite", keep_allocator=keep, value=value)
        return slabkit.top_stacks(data, n, value=value, hide_allocator=not keep)

    def update(self) -> None:
        """Recompute the pivot and redraw the table and the chart."""
        self.show_allocator.disabled = self.group_by.value in ("process", "module")
        try:
            self.frame = self.pivot().head(int(self.top_n.value))
        except SlabkitError as e:
            self.frame = pd.DataFrame()
            self.message.value = error_html(e)
            self.table.value, self.chart.value = "", b""
            return
        self.message.value = ""
        stack = self.group_by.value == "stack"
        shown = self.frame.drop(columns=[c for c in ("per_s",) if c in self.frame and
                                         self.frame[c].isna().all()])
        if "comms" in shown:   # "bash (1528), ssh (273), ..." can run to hundreds
            shown = shown.assign(comms=shown["comms"].map(_first_items))
        table = frame_html(shown, text_columns=("callsite", "module", "comms"),
                            stack_columns=("stack",) if stack else ())
        png = self._draw()
        # both ready: send them one right after the other, so they change together
        self.table.value = table
        # which pivot the chart shows, as a CSS class a browser test can wait for (not a
        # tooltip: an Image view fails to render with one in ipywidgets 8.1, it has no
        # description)
        self.chart._dom_classes = ("slabkit-chart", f"slabkit-chart-by-{self.group_by.value}")
        self.chart.value = png

    def _labels(self) -> list[str]:
        df = self.frame
        if self.group_by.value == "stack":
            # the stack id and its frames from the call site outwards, as far as they fit
            texts = stack_text(self.data(), df.index, hide_allocator=True, max_frames=3)
            labels = [f"#{i} {text}" for i, text in texts.items()]
        else:
            labels = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k)
                      for k in df.index]
        return [lab if len(lab) <= 60 else lab[:58] + ".." for lab in labels]

    def _draw(self) -> bytes:
        """Draw the bar chart of :attr:`frame` on a new Figure; return it as PNG bytes."""
        from matplotlib.figure import Figure

        from slabkit.plots import (
            plot_bars,  # here: matplotlib loads when a chart is drawn
        )

        df = self.frame
        value = self.measure.value
        fig = Figure(figsize=(6.5, 0.32 * max(len(df), 1) + 1.3), layout="constrained")
        ax = fig.add_subplot()
        what = {"process": "process", "module": "module", "callsite": "call site",
                "stack": "stack"}[self.group_by.value]
        outstanding = self.source.value == "outstanding"
        noun = "objects" if outstanding else "allocations"
        source = "objects outstanding" if outstanding else "allocations"
        bars = pd.DataFrame({"label": self._labels(), value: df[value].to_numpy(),
                             "share": df["share"].to_numpy()})
        plot_bars(bars, x=value, y="label", share="share", ylabel="",
                  title=f"{self.capture.cache}: {source} by {what}",
                  xlabel=noun if value == "count" else f"bytes ({noun})", ax=ax)
        ax.title.set_fontsize("medium")
        ax.tick_params(axis="y", labelsize="small")
        self.figure, self.ax = fig, ax
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()


def _first_items(text: Any, n: int = 4) -> Any:
    """``"a (3), b (2), c (1), ..."`` -> its first ``n`` items and how many more."""
    if not isinstance(text, str):
        return text
    items = text.split(", ")
    return text if len(items) <= n else ", ".join(items[:n]) + f", +{len(items) - n} more"
