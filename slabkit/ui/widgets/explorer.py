"""The pivot explorer: a capture as a table and a bar chart, by process, module, call site or stack.
"""
from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import ipywidgets as W
import pandas as pd

import slabkit
from slabkit.model.schema import SAVED_STATUSES
from slabkit.analysis import present, stack_text
from slabkit.errors import SlabkitError
from slabkit.ui.widgets.actions import CaptureActions
from slabkit.ui.widgets.html import badge_html, error_html, frame_html, style

#: shown when there is no capture of one's own yet
DEFAULT_SAMPLE = "bpftrace-filp"
#: how many saved captures the chooser lists
RECENT = 30

# --------------------------------------------------------------------------------------------
# pivot explorer


class PivotExplorer(W.VBox):
    """A capture pivoted by process, module, call site or stack: a table and a bar chart of
    the same rows, updated together whenever a control changes.

    Controls: :attr:`chooser` (which capture: your saved captures, newest first, and the
    samples shipped with slabkit), :attr:`group_by` (``process``, ``module``, ``callsite``,
    ``stack``), :attr:`measure` (``count`` or ``bytes``), :attr:`top_n`,
    :attr:`show_allocator` (call sites and stacks: count a stack under its innermost frame /
    show the allocator frames of a stack, instead of hiding them), and :attr:`source`
    (allocations, or the objects still allocated at the end for an outstanding-mode capture).
    Below them, :attr:`actions` (:class:`~slabkit.ui.widgets.actions.CaptureActions`): the
    capture's path, "Open in notebook 02", "Make report".

    ``cap``: the capture to show first; None: your newest saved capture
    (:func:`slabkit.list_captures`), else a sample (with its badge). ``follow``: a
    :class:`~slabkit.ui.widgets.runner.CaptureRunner` whose captures are shown as soon as they
    end. ``work_dir``: where the actions write (default ``./analyses``).

    Attributes:
        capture: the :class:`~slabkit.Capture` shown.
        frame: the pivot shown now (a DataFrame from :mod:`slabkit.analysis.pivots`, first N rows).
        figure, ax: the matplotlib Figure/Axes of the chart; chart: the Image widget (PNG).
        table: the HTML widget with the table; header: what capture this is (and the sample
        badge for sample data).
    """

    GROUPS = (("process", "process"), ("module", "module"), ("call site", "callsite"),
              ("stack", "stack"))

    def __init__(self, cap=None, *, follow: Any = None, group_by: str = "process",
                 measure: str = "count", top_n: int = 10, show_allocator: bool = False,
                 source: str = "allocs", work_dir: Any = None, **kwargs):
        self.capture = None
        self.frame: pd.DataFrame = pd.DataFrame()
        self.figure = None
        self.ax = None
        self._choosing = False
        self.header = W.HTML()
        self.header.add_class("slabkit-explorer-header")
        self.chooser = W.Dropdown(description="Capture", layout=W.Layout(width="46em"))
        self.chooser.add_class("slabkit-capture-chooser")
        self.group_by = W.ToggleButtons(options=self.GROUPS, value=group_by, description="By",
                                        style={"button_width": "6.5em"})
        self.measure = W.ToggleButtons(options=[("count", "count"), ("bytes", "bytes")],
                                       value=measure, description="Measure",
                                       style={"button_width": "5em"})
        self.top_n = W.BoundedIntText(value=top_n, min=1, max=200, description="Top N",
                                      layout=W.Layout(width="10em"))
        self.show_allocator = W.Checkbox(value=show_allocator, description="allocator frames",
                                         indent=False)
        self.source = W.ToggleButtons(options=[("allocations", "allocs")], value="allocs",
                                      description="Data", style={"button_width": "10em"})
        self.message = W.HTML()
        self.table = W.HTML(layout=W.Layout(flex="0 1 auto", max_width="100%",
                                            margin="0 16px 0 0"))
        self.table.add_class("slabkit-table")
        for pane in (self.message, self.table, self.header):
            pane.add_class("slabkit-block")
        self.chart = W.Image(format="png", layout=W.Layout(flex="0 0 auto", max_width="100%"))
        self.actions = CaptureActions(work_dir=work_dir)
        super().__init__([
            style(), self.header, self.chooser, self.actions,
            W.HBox([self.group_by]), W.HBox([self.measure, self.top_n, self.show_allocator]),
            self.source, self.message,
            # side by side where the page is wide enough, else the chart below the table
            W.Box([self.table, self.chart], layout=W.Layout(
                display="flex", flex_flow="row wrap", align_items="flex-start"))], **kwargs)
        self.add_class("slabkit-pivot-explorer")
        for control in (self.group_by, self.measure, self.top_n, self.show_allocator,
                        self.source):   # (show() sets the source itself, then updates once)
            control.observe(lambda _: None if self._choosing else self.update(), "value")
        self.chooser.observe(self._on_choose, "value")
        saved = _saved_captures()
        if cap is None:
            cap = _newest_or_sample(saved)
        self.show(cap, source=source, saved=saved)
        if follow is not None:
            self.follow(follow)

    # -- which capture ------------------------------------------------------------------------

    def show(self, cap, *, source: str = "allocs", saved: pd.DataFrame | None = None) -> None:
        """Show another capture (what choosing one, or a runner's capture ending, does).
        ``saved``: the captures folder as just listed (:func:`_saved_captures`)."""
        self.capture = cap
        sources = [("allocations", "allocs")]
        if cap.outstanding is not None:
            sources.append(("outstanding at end", "outstanding"))
        self._choosing = True
        try:
            self.source.options = sources
            self.source.value = source if source in dict(sources).values() else "allocs"
            self._fill_chooser(_saved_captures() if saved is None else saved)
        finally:
            self._choosing = False
        self.source.layout.display = None if len(sources) > 1 else "none"
        self.header.value = header_html(cap)
        self.actions.show(cap)
        self.update()

    def follow(self, runner: Any) -> None:
        """Show each capture ``runner`` makes as soon as it ends (complete or stopped)."""
        def ended(change) -> None:
            if change["new"] in ("complete", "interrupted") and runner.result is not None:
                self.show(runner.result)
        runner.observe(ended, "status")

    def _fill_chooser(self, saved: pd.DataFrame) -> None:
        options: list[tuple[str, str]] = []
        current = getattr(self.capture, "path", None)
        for _, row in saved.head(RECENT).iterrows():
            options.append((_choice_label(row), str(row["path"])))
        for name in slabkit.sample_names():
            path = slabkit.sample_path(name)
            options.append((f"sample {name} ({_sample_note(path)})", str(path)))
        if current is not None and str(current) not in [v for _, v in options]:
            options.insert(0, (f"{Path(current).name}", str(current)))
        if current is None:
            options.insert(0, ("(not saved)", ""))
        self.chooser.options = options
        self.chooser.value = "" if current is None else str(current)

    def _on_choose(self, change) -> None:
        if self._choosing or not change["new"]:
            return
        if self.capture is not None and str(getattr(self.capture, "path", "")) == change["new"]:
            return
        try:
            cap = slabkit.load(change["new"])
        except SlabkitError as e:
            self.message.value = error_html(e)
            return
        self.show(cap)

    # -- pivots -------------------------------------------------------------------------------

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
            shown = shown.assign(comms=shown["comms"].map(present.short_list))
        table = frame_html(shown, text_columns=("callsite", "module", "comms"),
                           stack_columns=("stack",) if stack else (),
                           measure=self.measure.value)
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
            # the stack id and its frames from the call site outwards, as many as it takes
            # to tell the stacks shown apart
            texts = stack_text(self.data(), df.index, hide_allocator=True)
            return list(present.stack_labels(texts, width=60).values())
        labels = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in df.index]
        return [lab if len(lab) <= 64 else lab[:62] + "…" for lab in labels]

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
                  title=f"{present.subject(self.capture)}: {source} by {what}",
                  xlabel=noun if value == "count" else f"bytes ({noun})", ax=ax)
        ax.title.set_fontsize("medium")
        ax.tick_params(axis="y", labelsize="small")
        self.figure, self.ax = fig, ax
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()



def header_html(cap) -> str:
    """What capture the explorer shows: ``filp on vm``, its size and how it ended, and the
    sample badge for sample data."""
    meta = cap.meta
    bits = [present.headline(cap, subject_too=False)]
    if meta.get("backend"):
        bits.append(f"via {meta['backend']}")
    if meta.get("start"):
        bits.append(present.date_text(meta["start"]))
    if meta.get("status"):
        bits.append(present.status_text(cap))
    return (f"<b>Explore: {html.escape(present.subject(cap))}</b>"
            f"{badge_html(present.sample_badge(cap))}"
            f"<div class='slabkit-note'>{html.escape(' · '.join(bits))}</div>")


def _saved_captures() -> pd.DataFrame:
    """Your captures folder, newest first, without runs that never saved (damaged ones stay:
    choosing one says what is wrong with it)."""
    try:
        saved = slabkit.list_captures()
    except SlabkitError:
        return pd.DataFrame(columns=["path", "status"])
    saved = saved[saved["status"] != "unsaved"] if "status" in saved else saved
    if "start" in saved:
        saved = saved.sort_values("start", ascending=False, na_position="last")
    return saved


def _newest_or_sample(saved: pd.DataFrame):
    """Your newest saved capture (:func:`_saved_captures`), else the default sample."""
    done = saved[saved["status"].isin(SAVED_STATUSES)] if "status" in saved else saved.iloc[:0]
    if len(done):
        try:
            return slabkit.load(done.iloc[0]["path"])
        except SlabkitError:
            pass
    return slabkit.load(slabkit.sample_path(DEFAULT_SAMPLE))


def _choice_label(row: pd.Series) -> str:
    start = present.date_text(row.get("start"))
    allocs = present.count_text(row.get("total_allocs"))
    return (f"{row.get('cache')} on {row.get('host')}, {start}, {allocs} allocations "
            f"({row.get('backend')}) {Path(str(row['path'])).name}")


def _sample_note(path: Path) -> str:
    return present.sample_badge(path) or "sample"
