"""How slabkit's numbers, labels and titles read: the one formatting layer that the tables of
the notebooks, the plots, the widgets and the report all use.

- numbers: :func:`count_text` (``35,340``), :func:`bytes_text` (``4.0 MiB``, binary units),
  :func:`share_text` (``66.4%``), :func:`rate_text` (``20,369/s``), :func:`change_text`
  (``+1,204/s``), :func:`ratio_text` (``×1.24``, ``new``, ``gone``), :func:`seconds_text`,
  :func:`date_text`;
- tables: :func:`readable` styles any pivot or diff (a pandas ``Styler``): every column slabkit
  makes is formatted by its name and relabelled with its unit (:data:`COLUMNS`);
- what a capture is: :func:`subject` (``filp on web1``), :func:`sample_badge` (``sample,
  recorded on vm, 2026-11-30``: the one place that decides a capture is one of the samples
  shipped with slabkit), :func:`status_text` (a capture stopped on request is not a fault);
- stack labels that tell stacks apart: :func:`stack_labels`;
- the warm colours of flame graphs: :func:`flame_color`.

Pure functions of values and DataFrames; nothing here draws or prints.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from slabkit.samples import sample_name

MISSING = "-"


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# numbers


def count_text(n: Any) -> str:
    """``35340`` -> ``"35,340"``; a fractional count (scaled from samples) is rounded."""
    return MISSING if _missing(n) else f"{int(round(float(n))):,}"


def bytes_text(n: Any) -> str:
    """Bytes in binary units: ``512 B``, ``31.2 KiB``, ``4.0 MiB``, ``1.25 GiB``; the decimals
    grow as the number shrinks, so nearby values still read apart (``221.3 KiB``)."""
    if _missing(n):
        return MISSING
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.{2 if n < 10 else 1}f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def share_text(x: Any) -> str:
    """A fraction as a percentage: ``0.664`` -> ``"66.4%"``; tiny but not zero: ``"<0.1%"``."""
    if _missing(x):
        return MISSING
    x = float(x)
    if 0 < abs(x) < 0.0005:
        return "<0.1%"
    return f"{x:.1%}"


def rate_text(x: Any, unit: str = "/s") -> str:
    """A rate: ``14350.946`` -> ``"14,351/s"``; below 100 one decimal (``"2.5/s"``)."""
    if _missing(x):
        return MISSING
    x = float(x)
    return f"{x:,.0f}{unit}" if abs(x) >= 100 or x == 0 else f"{x:,.1f}{unit}"


def change_text(x: Any, unit: str = "/s") -> str:
    """A signed change: ``"+1,204/s"``, ``"-3.5/s"``."""
    if _missing(x):
        return MISSING
    text = rate_text(abs(float(x)), unit)
    return ("+" if float(x) > 0 else "-" if float(x) < 0 else "±") + text


def ratio_text(r: Any) -> str:
    """after/before: ``"×1.24"``; ``inf`` (not seen before) -> ``"new"``; 0 -> ``"gone"``."""
    if _missing(r):
        return MISSING
    r = float(r)
    if math.isinf(r):
        return "new"
    if r == 0:
        return "gone"
    return f"×{r:.2f}" if r < 100 else f"×{r:,.0f}"


def seconds_text(s: Any) -> str:
    """``1.735`` -> ``"1.7 s"``; ``125`` -> ``"2 min 5 s"``."""
    if _missing(s):
        return MISSING
    s = float(s)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m >= 60:
        return f"{m // 60} h {m % 60} min" if m % 60 else f"{m // 60} h"
    return f"{m} min {sec} s" if sec else f"{m} min"


def date_text(iso: Any, *, time: bool = True) -> str:
    """An ISO timestamp as ``"2026-11-30 09:29 UTC"`` (or the date alone)."""
    if _missing(iso) or not str(iso):
        return MISSING
    try:
        when = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if not time:
        return when.strftime("%Y-%m-%d")
    zone = "UTC" if when.utcoffset() is not None and not when.utcoffset() else \
        (when.strftime("UTC%z") if when.utcoffset() is not None else "")
    return (when.strftime("%Y-%m-%d %H:%M") + (f" {zone}" if zone else "")).strip()


# --------------------------------------------------------------------------------------------
# tables

#: slabkit's column names -> (label with its unit, formatter); see :func:`readable`
COLUMNS: dict[str, tuple[str, Any]] = {
    "count": ("allocations", count_text),
    "bytes": ("bytes", bytes_text),
    "bytes_req": ("bytes requested", bytes_text),
    "share": ("share", share_text),
    "per_s": ("per second", rate_text),
    "frames": ("frames", count_text),
    "oldest_age_s": ("oldest (s)", lambda v: seconds_text(v)),
    "median_age_s": ("median age (s)", lambda v: seconds_text(v)),
    "a_count": ("before: allocations", count_text),
    "b_count": ("after: allocations", count_text),
    "a_per_s": ("before: per second", rate_text),
    "b_per_s": ("after: per second", rate_text),
    "delta_per_s": ("change per second", change_text),
    "ratio": ("after / before", ratio_text),
    "waste_bytes": ("bytes wasted", bytes_text),
    "slot_bytes": ("slot bytes", bytes_text),
    "fragmentation": ("waste / slot bytes", share_text),
    "waste_share": ("share of all waste", share_text),
    "memory_share": ("share of the cache's memory", share_text),
    "memory_bytes": ("memory", bytes_text),
    "active_objs": ("objects in use", count_text),
    "num_objs": ("objects", count_text),
    "objsize": ("slot size", bytes_text),
    "object_size": ("object size", bytes_text),
    "utilisation": ("in use", share_text),
    "pid": ("pid", lambda v: MISSING if _missing(v) else str(int(v))),
    "tid": ("tid", lambda v: MISSING if _missing(v) else str(int(v))),
    "comm": ("process", None), "comms": ("processes", None),
    "callsite": ("call site", None), "function": ("kernel function", None),
    "module": ("module", None), "stack_id": ("stack", None), "stack": ("stack (innermost first)",
                                                                      None),
}


def cell_text(column: str, value: Any, *, measure: str | None = None) -> str:
    """One value of a slabkit column as the tables show it (``"66.4%"`` for a share).
    ``measure="bytes"``: the pivot measures bytes, so ``per_s`` is bytes per second."""
    if measure == "bytes" and column == "per_s":
        return MISSING if _missing(value) else f"{bytes_text(value)}/s"
    spec = COLUMNS.get(column)
    if spec is not None and spec[1] is not None:
        return spec[1](value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else MISSING
    return MISSING if _missing(value) else str(value)


def column_label(column: Any, *, measure: str | None = None) -> str:
    """The label of a slabkit column, with its unit (``per_s`` -> ``"per second"``).
    ``measure``: ``"count"`` or ``"bytes"``, what ``share``/``per_s`` are of."""
    if measure == "bytes" and column == "per_s":
        return "bytes per second"
    if measure == "bytes" and column == "share":
        return "share of bytes"
    spec = COLUMNS.get(str(column))
    return spec[0] if spec is not None else str(column)


def readable(df: pd.DataFrame, *, measure: str | None = None,
             labels: Mapping[str, str] | None = None):
    """A pivot, a diff or any of slabkit's tables as a pandas ``Styler`` that reads well:
    counts with thousands separators, bytes in KiB/MiB, shares as percentages, rates per
    second, changes signed, ratios as ``×1.24``/``new``/``gone``, missing values as ``-``;
    the columns and the index named with their units (:data:`COLUMNS`; ``labels`` renames
    more). Text columns are left-aligned. The data itself is not changed (``.data``).

    >>> slabkit.readable(slabkit.by_process(cap).head(10))      # doctest: +SKIP
    """
    labels = dict(labels or {})
    styler = df.style
    formats = {c: (lambda v, c=c: cell_text(str(c), v, measure=measure)) for c in df.columns}
    styler = styler.format(formats, na_rep=MISSING)
    # an index of numbers (pid, stack id) or of names: shown as text
    styler = styler.format_index(lambda v: cell_text("", v), axis=0)
    names = [labels.get(str(c), column_label(c, measure=measure)) for c in df.columns]
    styler = styler.relabel_index(names, axis=1)
    if df.index.names and any(n is not None for n in df.index.names):
        styler.index.names = [labels.get(str(n), column_label(n)) if n is not None else None
                              for n in df.index.names]
    text = [c for c in df.columns if COLUMNS.get(str(c), (None, 0))[1] is None
            and not pd.api.types.is_numeric_dtype(df[c])]
    if text:
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    styler = styler.set_table_styles([{"selector": "th.col_heading",
                                       "props": [("text-align", "right")]},
                                      {"selector": "th.row_heading",
                                       "props": [("text-align", "left")]}], overwrite=False)
    return styler


# --------------------------------------------------------------------------------------------
# what a capture is


def _meta(cap: Any) -> Mapping[str, Any]:
    meta = getattr(cap, "meta", cap)
    return meta if isinstance(meta, Mapping) else {}


def subject(cap: Any) -> str:
    """What a title says a capture is about: ``"filp on web1"`` (the cache, and the host where
    known; ``"filp on 3 hosts"`` for a merged capture)."""
    meta = _meta(cap)
    cache = meta.get("cache") or "the cache"
    hosts = {str(h) for h in (c.get("host") for c in meta.get("captures") or []) if h}
    host = meta.get("host")
    if len(hosts) > 1:
        return f"{cache} on {len(hosts)} hosts"
    if host and host != "unknown":
        return f"{cache} on {host}"
    return str(cache)


def sample_badge(cap: Any) -> str | None:
    """``"sample, recorded on vm, 2026-11-30"`` when ``cap`` (a Capture, or a path) is one of
    the sample captures shipped with slabkit, else None. Every place that shows sample data
    says so with this text (the explorer, notebooks 02 and 03, the report)."""
    path = getattr(cap, "path", cap)
    name = sample_name(path) if path is not None else None
    if name is None:
        return None
    meta = _meta(cap)
    host = meta.get("host")
    where = host if host and host != "unknown" else "another machine"
    text = f"sample, recorded on {where}"
    if meta.get("start"):
        text += f", {date_text(meta['start'], time=False)}"
    return text


def status_text(cap: Any) -> str:
    """How the capture ended, in words that do not make a stop on request read like a fault:
    ``"ran its full 10 s"``, ``"stopped on request after 1.7 s (of 60 s asked); what it
    captured is kept"``, ``"the tracer exited after 3.0 s"``."""
    meta = _meta(cap)
    status, reason = meta.get("status"), meta.get("end_reason")
    took = meta.get("duration_s")
    asked = meta.get("requested_seconds")
    if status == "complete":
        return f"ran its full {seconds_text(took)}" if not _missing(took) else "complete"
    if status == "interrupted":
        of = f" (of {seconds_text(asked)} asked)" if not _missing(asked) else ""
        if reason == "tracer-exited":
            return f"the tracer exited after {seconds_text(took)}{of}: see its messages"
        how = "by Ctrl-C or SIGTERM" if reason == "interrupted" else "on request"
        return f"stopped {how} after {seconds_text(took)}{of}; what it captured is kept"
    return str(status or "unknown")


def headline(cap: Any, total_allocs: Any = None, *, subject_too: bool = True) -> str:
    """``"35,340 allocations from filp on vm in 1.7 s (20,369/s)"`` (without ``from ...``
    when ``subject_too`` is False: a title says it already)."""
    meta = _meta(cap)
    total = total_allocs if total_allocs is not None else meta.get("total_allocs")
    if total is None and hasattr(cap, "allocs"):
        total = int(cap.allocs["count"].sum()) if len(cap.allocs) else 0
    took = meta.get("duration_s")
    text = f"{count_text(total)} allocations"
    if subject_too:
        text += f" from {subject(meta)}"
    if not _missing(took) and float(took) > 0:
        text += f" in {seconds_text(took)} ({rate_text(float(total or 0) / float(took))})"
    return text


# --------------------------------------------------------------------------------------------
# labels


def stack_labels(stacks: Mapping[Any, str] | pd.Series, *, sep: str = " <- ",
                 frames: int = 3, width: int = 80) -> dict[Any, str]:
    """Labels for stacks shown together that tell them apart: ``"#12 alloc_empty_file <-
    path_openat <- … <- do_filp_open <- …"``.

    ``stacks``: stack id -> its frames as text, innermost first, joined by ``sep`` (as
    :func:`slabkit.analysis.pivots.stack_text` gives them). Each label shows the first
    ``frames`` frames; where another stack shown starts the same way for longer, it shows the
    first frame where they differ instead of the last of those (the frames between elided as
    ``…``); a trailing ``…`` says the stack goes on. Stacks with the same function names
    throughout (they differ in offsets or modules) say so: ``"(same functions as #3)"``.
    A label longer than ``width`` is cut in its first frames, never at the frame that tells
    it apart.
    """
    split = {k: (str(v).split(sep) if isinstance(v, str) and v else [str(v)])
             for k, v in stacks.items()}
    out: dict[Any, str] = {}
    for key, parts in split.items():
        depth, same_as = 0, None      # frames needed to differ from every other stack
        for other_key, other in split.items():
            if other_key == key:
                continue
            common = 0
            for a, b in zip(parts, other):
                if a != b:
                    break
                common += 1
            if common == len(parts) == len(other):
                same_as = other_key if same_as is None else same_as
                continue
            depth = max(depth, min(common + 1, len(parts)))
        if depth <= frames:
            head, tail = parts[:frames], []
        else:
            head = parts[:frames - 1] + (["…"] if depth > frames else [])
            tail = [parts[depth - 1]]
        goes_on = len(parts) > max(depth, min(frames, len(parts)))
        text = sep.join(head + tail) + (f"{sep}…" if goes_on else "")
        if len(text) > width:
            end = sep.join(tail) + (f"{sep}…" if goes_on else "")
            room = max(width - len(end) - len(sep) - 1, 12)
            text = sep.join(head)[:room] + "…" + (sep + end if end else "")
        label = f"#{key} {text}"
        if same_as is not None:
            label += f" (same functions as #{same_as})"
        out[key] = label
    return out


def short_list(text: Any, n: int = 4) -> Any:
    """``"a (3), b (2), c (1), d (1), e (1)"`` -> its first ``n`` items and how many more."""
    if not isinstance(text, str):
        return text
    items = text.split(", ")
    return text if len(items) <= n else ", ".join(items[:n]) + f", +{len(items) - n} more"


def flame_color(label: str) -> tuple[float, float, float]:
    """A warm FlameGraph-like colour (r, g, b in 0..1), the same for the same function name
    wherever a flame graph is drawn."""
    h = zlib.crc32(str(label).encode("utf-8", "surrogateescape"))
    r = 0.80 + 0.20 * ((h & 0xFF) / 255)
    g = 0.35 + 0.45 * (((h >> 8) & 0xFF) / 255)
    b = 0.10 + 0.15 * (((h >> 16) & 0xFF) / 255)
    return (r, g, b)


def css_color(rgb: Sequence[float]) -> str:
    """(r, g, b) in 0..1 -> ``"rgb(230,140,40)"``."""
    return "rgb(" + ",".join(str(int(round(255 * c))) for c in rgb[:3]) + ")"
