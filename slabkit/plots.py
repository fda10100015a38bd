"""Plots of a capture, seaborn style: each takes the data, keyword options, an optional ``ax``
(the current Axes by default), draws on it and returns it. The numbers come from
:mod:`slabkit.analysis.pivots`; nothing here computes what a pivot does not already give.

Titles say what is shown, for which cache and host; axis labels give units; numbers, bytes
and percentages read as everywhere else in slabkit (:mod:`slabkit.analysis.present`).
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, PercentFormatter, ScalarFormatter

from slabkit.analysis import pivots as analysis
from slabkit.analysis import present
from slabkit.analysis.flame import icicle
from slabkit.analysis.pivots import CaptureLike, _unpack
from slabkit.analysis.waste import kmalloc_waste, kmalloc_waste_total
from slabkit.errors import InvalidInput, expected_one_of
from slabkit.model.tables import Capture

_VALUE_LABEL = {"count": "allocations", "bytes": "bytes allocated"}


def _ax(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.gca()


def _cache(cap: CaptureLike) -> str:
    """``filp on web1`` (a sample says so: ``filp on vm (sample)``)."""
    meta = _unpack(cap)[2]
    text = present.subject(meta) if meta.get("cache") else "the cache"
    return text + (" (sample)" if present.sample_badge(cap) else "")


def _duration_note(cap: CaptureLike) -> str:
    d = analysis._duration(_unpack(cap)[2])
    return f" in {present.seconds_text(d)}" if d else ""


def _axis_format(axis, value: str) -> None:
    """Tick labels of a count or bytes axis as slabkit writes them (12,345; 4.0 MiB)."""
    fmt = present.bytes_text if value == "bytes" else present.count_text
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))


def _check_value(value: str) -> None:
    if value not in _VALUE_LABEL:
        raise InvalidInput(expected_one_of("value", value, list(_VALUE_LABEL)))


def _empty(ax: Axes, title: str, text: str = "no allocations recorded") -> Axes:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    return ax


def plot_bars(data: pd.DataFrame, *, x: str, y: str, share: str | None = None,
              title: str = "", xlabel: str | None = None, ylabel: str | None = None,
              color=None, ax: Axes | None = None) -> Axes:
    """Horizontal bars, one per row of ``data`` in its order: length ``data[x]`` (a missing
    value draws as 0), label ``data[y]``. ``share``: a column of fractions (0..1) written
    as a percentage at each bar's end. Rows whose labels are equal are drawn as one bar (as
    seaborn does), so make labels unique. With no rows, or ``x`` missing in every row, the
    Axes says there is nothing to show.

    >>> plot_bars(slabkit.by_process(cap).reset_index(), x="count", y="comm", share="share")
    ... # doctest: +SKIP
    """
    ax = _ax(ax)
    for column in (x, y, share):
        if column is not None and column not in data.columns:
            raise InvalidInput(expected_one_of("column", column, [str(c) for c in data.columns]))
    if data.empty:
        return _empty(ax, title)
    values = data[x].astype("Float64")
    if values.isna().all():
        return _empty(ax, title, f"no {x} recorded")
    tidy = pd.DataFrame({y: data[y].astype(str).to_numpy(),
                         x: values.fillna(0).to_numpy(dtype="float64")})
    sns.barplot(data=tidy, x=x, y=y, orient="h", ax=ax,
                color=color if color is not None else sns.color_palette()[0])
    if share is not None:
        shares = data[share].astype("Float64")
        ax.bar_label(ax.containers[0], padding=3, fontsize="small",
                     labels=["" if pd.isna(v) else present.share_text(v) for v in shares])
        ax.margins(x=0.12)
    ax.set_xlabel(x if xlabel is None else xlabel)
    ax.set_ylabel(y if ylabel is None else ylabel)
    ax.set_title(title)
    if x in ("count", "bytes", "waste_bytes"):
        _axis_format(ax.xaxis, "bytes" if x != "count" else "count")
    return ax


def _barh(df: pd.DataFrame, label: str, value: str, ax: Axes, title: str, ylabel: str,
          color) -> Axes:
    """A pivot (index = the bars' labels) through :func:`plot_bars`."""
    data = pd.DataFrame({label: df.index.astype(str), value: df[value], "share": df["share"]})
    return plot_bars(data, x=value, y=label, share="share", title=title,
                     xlabel=_VALUE_LABEL[value], ylabel=ylabel, color=color, ax=ax)


def plot_top_processes(cap: CaptureLike, *, n: int = 10, value: str = "count",
                       by: str | Sequence[str] = ("comm",), ax: Axes | None = None) -> Axes:
    """Horizontal bars: the ``n`` processes that allocated most (``value``: ``"count"`` or
    ``"bytes"``), each labelled with its share; from :func:`slabkit.analysis.pivots.by_process`."""
    _check_value(value)
    ax = _ax(ax)
    df = analysis.by_process(cap, by=by, value=value).head(n)
    title = f"Top processes allocating from {_cache(cap)}{_duration_note(cap)}"
    if df.empty:
        return _empty(ax, title)
    if isinstance(df.index, pd.MultiIndex):
        df.index = [" ".join(str(x) for x in t) for t in df.index]
    return _barh(df, "process", value, ax, title, "process (comm)", sns.color_palette()[0])


def plot_top_callsites(cap: CaptureLike, *, n: int = 10, value: str = "count",
                       how: str = "callsite", ax: Axes | None = None) -> Axes:
    """Horizontal bars: the ``n`` kernel functions that allocated most, by callsite (the first
    frame outside the allocator) or ``how="inclusive"``; from
    :func:`slabkit.analysis.pivots.by_frame`."""
    _check_value(value)
    ax = _ax(ax)
    df = analysis.by_frame(cap, how, value=value).head(n)
    what = "Callsites" if how == "callsite" else "Kernel functions on the stacks"
    title = f"{what} allocating from {_cache(cap)}{_duration_note(cap)}"
    if df.empty:
        return _empty(ax, title)
    return _barh(df, "function", value, ax, title, "kernel function", sns.color_palette()[1])


def plot_process_module_heatmap(cap: CaptureLike, *, cols: str = "module", n_rows: int = 15,
                                n_cols: int = 12, value: str = "count",
                                ax: Axes | None = None) -> Axes:
    """Heatmap of processes (rows) against responsible module or callsite (``cols``), the top
    ``n_rows`` x ``n_cols`` of :func:`slabkit.analysis.pivots.matrix`; cells annotated when few."""
    _check_value(value)
    ax = _ax(ax)
    m = analysis.matrix(cap, rows="comm", cols=cols, value=value)
    m = m.iloc[:n_rows, :n_cols]
    title = f"Allocations from {_cache(cap)} by process and {cols}{_duration_note(cap)}"
    if m.empty:
        return _empty(ax, title)
    annot = m.size <= 150
    sns.heatmap(m, ax=ax, cmap="rocket_r", annot=annot, fmt="d", linewidths=0.5,
                cbar_kws={"label": _VALUE_LABEL[value]})
    ax.set_title(title)
    ax.set_xlabel("responsible module" if cols == "module" else cols)
    ax.set_ylabel("process (comm)")
    return ax


_SPECIAL_COLORS = {"all": "#b0b0b0", "comm": "#9ab6d6"}


def plot_flame(cap: CaptureLike, *, ax: Axes | None = None, min_share: float = 0.005) -> Axes:
    """Icicle chart (a flame graph upside down): "all" at the top, then the processes, then
    their kernel stacks from the syscall entry down to the allocator; a box's width is its
    share of all allocations. Boxes narrower than ``min_share`` are left out; a box is labelled
    with its function where the name fits. Each box is a Rectangle whose ``gid`` is its label.
    Layout from :func:`slabkit.analysis.flame.icicle`.
    """
    ax = _ax(ax)
    nodes = icicle(cap, min_share=min_share)
    title = (f"Kernel stacks allocating from {_cache(cap)}{_duration_note(cap)} "
             "(all at the top, then process, then outermost frame first)")
    if nodes.empty:
        return _empty(ax, title)
    fig = ax.figure
    width_px = ax.get_window_extent().width or fig.get_figwidth() * fig.dpi
    char_px = 0.62 * plt.rcParams["font.size"] * fig.dpi / 72 * 0.8
    chars_across = max(width_px / char_px, 1.0)
    for level, grp in nodes.groupby("level", sort=True):
        labels = grp["label"].astype(str).tolist()
        colors = [_SPECIAL_COLORS.get(k) or present.flame_color(lab)
                  for k, lab in zip(grp["kind"], labels)]
        bars = ax.barh(y=level, width=grp["width"].to_numpy(), left=grp["x0"].to_numpy(),
                       height=0.92, color=colors, edgecolor="white", linewidth=0.4,
                       align="center")
        for rect, lab, x0, w in zip(bars.patches, labels, grp["x0"], grp["width"]):
            rect.set_gid(lab)
            fit = int(w * chars_across) - 1
            # the whole name where it fits; cut only where enough of it stays to read
            text = lab if len(lab) <= fit else (lab[: fit - 1] + "…" if fit >= 10 else "")
            if text:
                ax.text(x0 + w / 2, level, text, ha="center", va="center", fontsize="x-small",
                        clip_on=True)
    depth = int(nodes["level"].max())
    ax.set_ylim(depth + 0.6, -0.6)  # root at top
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("share of allocations")
    ax.set_ylabel("stack depth")
    ax.set_title(title)
    ax.grid(False)
    return ax


def plot_kmalloc_waste(cap: CaptureLike, *, by: str = "callsite", n: int = 10,
                       ax: Axes | None = None) -> Axes:
    """Horizontal bars: the ``n`` call sites (``by="callsite"``) or processes (``by="comm"``,
    or any key of :func:`slabkit.analysis.waste.kmalloc_waste`) that wasted most kmalloc
    bytes (slot minus requested), each labelled with its fragmentation (waste / its slot
    bytes); the title gives the total, its fragmentation and its share of the cache's memory.
    Says so when the backend gave no ``bytes_req`` (waste unknown, not 0)."""
    ax = _ax(ax)
    df = kmalloc_waste(cap, by=by)
    total = kmalloc_waste_total(cap)
    what = {"callsite": "call site", "comm": "process", "module": "module"}.get(by, by)
    title = f"kmalloc waste in {_cache(cap)} by {what}{_duration_note(cap)}"
    if df.empty:
        return _empty(ax, title)
    if pd.isna(total["waste_bytes"]):
        return _empty(ax, title, "waste unknown: the backend gave no bytes_req "
                                 "(kmalloc caches only)")
    title += f"\n{present.bytes_text(total['waste_bytes'])} wasted"
    if not pd.isna(total["fragmentation"]):
        title += f", {present.share_text(total['fragmentation'])} of the bytes allocated"
    if not pd.isna(total["memory_share"]):
        title += f", {present.share_text(total['memory_share'])} of the cache's memory"
    df = df.head(n)
    data = pd.DataFrame({what: df.index.astype(str), "waste_bytes": df["waste_bytes"],
                         "fragmentation": df["fragmentation"]})
    return plot_bars(data, x="waste_bytes", y=what, share="fragmentation", title=title,
                     xlabel="bytes wasted (slot - requested); label: waste / slot bytes",
                     ylabel=what, color=sns.color_palette()[3], ax=ax)


def plot_slab_growth(series: pd.DataFrame | Capture, *, names: Sequence[str] | None = None,
                     ax: Axes | None = None) -> Axes:
    """Lines of memory held by each cache's slabs over the capture's time (s), one per cache
    ``name``. ``series``: a capture (its ``slabinfo`` table; the title then names its cache
    and host), or a table with the columns of ``slabkit.model.schema.SLABINFO_SERIES``
    (``time_s, name, active_objs, num_objs, memory_bytes``). ``names`` picks caches. The
    memory axis is in B, KiB, MiB or GiB, whichever suits the values, with plain ticks."""
    ax = _ax(ax)
    subject = None
    if isinstance(series, Capture):
        subject = _cache(series)
        series = series.slabinfo if series.slabinfo is not None else pd.DataFrame(
            columns=["time_s", "name", "memory_bytes"])
    missing = [c for c in ("time_s", "name", "memory_bytes") if c not in series.columns]
    if missing:
        raise InvalidInput(f"the slabinfo series lacks columns {missing} "
                           "(expected time_s, name, active_objs, num_objs, memory_bytes)")
    df = series
    if names is not None:
        wanted = [names] if isinstance(names, str) else list(names)
        df = df[df["name"].isin(wanted)]
    shown = sorted(df["name"].astype(str).unique()) if len(df) else []
    if subject is None:
        subject = ", ".join(shown) if 0 < len(shown) <= 3 else "slab caches"
    title = f"Memory held by the slabs of {subject}"
    if df.empty:
        return _empty(ax, title, "no slabinfo series recorded")
    memory = df["memory_bytes"].astype("float64")
    top = float(memory.abs().max()) or 1.0
    unit, scale = next((u, k) for u, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10),
                                           ("B", 1)) if top >= k or k == 1)
    data = pd.DataFrame({"time_s": df["time_s"].astype("float64"),
                         "cache": df["name"].astype(str), "memory": memory / scale})
    sns.lineplot(data=data, x="time_s", y="memory", hue="cache", ax=ax, marker="o",
                 markersize=3)
    ax.set_xlabel("time since capture start (s)")
    ax.set_ylabel(f"memory held by slabs ({unit})")
    # plain numbers in the unit of the label: no "+2.2e5" offset, no scientific notation
    plain = ScalarFormatter(useOffset=False)
    plain.set_scientific(False)
    ax.yaxis.set_major_formatter(plain)
    ax.set_title(title)
    if len(shown) == 1 and ax.get_legend() is not None:
        ax.get_legend().remove()             # the title names the one cache
    return ax


def plot_diff(diff: pd.DataFrame, *, n: int = 10, title: str = "",
              ax: Axes | None = None) -> Axes:
    """Horizontal bars of how the rate changed per key, from :func:`slabkit.diff`: the ``n``
    biggest changes, red for more allocations per second after, blue for fewer, each
    labelled with its change and its ratio (``+1,204/s, ×1.24``; ``new``, ``gone``); no
    legend over the bars (the colours are said in the axis label)."""
    ax = _ax(ax)
    missing = [c for c in ("delta_per_s", "ratio") if c not in diff.columns]
    if missing:
        raise InvalidInput(f"expected a table from slabkit.diff (it lacks {missing})")
    d = diff.head(n)
    if d.empty:
        return _empty(ax, title, "nothing to compare")
    key = diff.index.name or "key"
    labels = [str(k) if len(str(k)) <= 60 else str(k)[:59] + "…" for k in d.index]
    values = d["delta_per_s"].astype("float64").to_numpy()
    colors = [sns.color_palette()[3] if v > 0 else sns.color_palette()[0] for v in values]
    ys = list(range(len(values)))
    bars = ax.barh(ys, values, color=colors, height=0.7)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.bar_label(bars, padding=3, fontsize="small",
                 labels=[f"{present.change_text(v)}, {present.ratio_text(r)}"
                         for v, r in zip(values, d["ratio"])])
    ax.margins(x=0.25)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: present.change_text(v, "")))
    ax.set_xlabel("change in allocations per second, after - before (red: more, blue: fewer)")
    ax.set_ylabel({"comm": "process (comm)", "callsite": "call site",
                   "module": "module", "stack": "stack"}.get(key, key))
    ax.set_title(title)
    return ax


__all__ = [
    "plot_bars",
    "plot_diff",
    "plot_flame",
    "plot_kmalloc_waste",
    "plot_process_module_heatmap",
    "plot_slab_growth",
    "plot_top_callsites",
    "plot_top_processes",
]
