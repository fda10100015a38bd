"""What a capture says when it ends, built once as data and rendered for each place it shows.

:func:`summarize` reads a :class:`~slabkit.Capture` into a :class:`Summary`: the headline
facts (cache, allocations, duration, backend, status, where it is saved, whether the counts are
exact, what the tracer lost, the notes) and the top processes, call sites and stacks from the
pivots. It is rendered three ways:

- plain text, :meth:`Summary.to_text`: ``slabkit capture``, ``slabkit show`` and the demo;
- HTML, :func:`summary_html`: the capture runner widget, and the
  summary shown in a notebook (``Summary._repr_html_``);
- a table, :meth:`Summary.to_frame` and :meth:`Summary.messages`: "The capture" in notebook
  02; the report page (:mod:`slabkit.ui.report_page`) writes its findings from it.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slabkit import analysis
from slabkit.analysis import present
from slabkit.model.tables import Capture
from slabkit.ui.html import badge_html, frame_html


@dataclass(frozen=True)
class Summary:
    """The end-of-capture summary of one capture (see :func:`summarize`)."""

    cache: str
    total_allocs: int
    #: seconds the capture ran; None when unknown (raw tracer output)
    duration_s: float | None
    backend: str | None
    #: ``complete`` or ``interrupted`` (stopped early: what was captured is kept)
    status: str | None
    #: the capture folder (or raw output file); None for a capture not saved
    path: Path | None
    mode: str
    kernel: str | None
    host: str | None
    started: str | None
    #: distinct process names (comm) and stacks seen
    processes_seen: int
    stacks_seen: int
    #: counts per process are exact: the plan tells this cache's allocations apart exactly
    #: and every event was counted (False: a size-class estimate, or perf recorded 1 event in
    #: N; None: unknown, raw tracer output)
    exact: bool | None
    #: counts per stack are estimates (stacks sampled 1 in N, or events sampled)
    stacks_estimated: bool
    #: events the tracer reported it did not count, by kind, and their sum
    losses: dict[str, int]
    lost_total: int
    #: stack samples not recorded, by kind (counts per process are not affected)
    stack_losses: dict[str, int]
    notes: tuple[str, ...]
    #: the tracer's stderr (its tail)
    tracer_messages: str
    #: the pivots' first rows: :func:`~slabkit.by_process`, :func:`~slabkit.by_frame`
    #: (call sites) and :func:`~slabkit.top_stacks`; the last two are None without stacks
    top_processes: pd.DataFrame
    top_callsites: pd.DataFrame | None
    top_stacks: pd.DataFrame | None
    #: ``"sample, recorded on vm, 2026-11-30"`` for a sample capture shipped with slabkit
    #: (:func:`slabkit.analysis.present.sample_badge`), else None
    sample: str | None = None
    #: how it ended, in words (``"stopped on request after 1.7 s ...; what it captured is
    #: kept"``: :func:`slabkit.analysis.present.status_text`)
    ended: str = ""

    @property
    def counts(self) -> str | None:
        """``"exact"``, ``"exact per process, estimated per stack"`` or ``"estimated"`` (the
        notes say how); None when unknown."""
        if self.exact is None:
            return "estimated" if self.stacks_estimated else None
        if not self.exact:
            return "estimated"
        return "exact per process, estimated per stack" if self.stacks_estimated else "exact"

    @property
    def stack_samples_lost(self) -> int:
        return int(sum(self.stack_losses.values()))

    def messages(self) -> list[str]:
        """The warnings and notes, one line each: the tracer's losses, then the notes."""
        lines = []
        if self.lost_total:
            lines.append(f"WARNING: the tracer reported {self.lost_total} lost events/updates: "
                         f"{self.losses}")
        lines += [f"note: {note}" for note in self.notes]
        return lines

    def facts(self) -> dict[str, Any]:
        """The headline facts by name, in reading order."""
        return {
            "cache": self.cache, "mode": self.mode, "backend": self.backend,
            "kernel": self.kernel, "host": self.host, "started": self.started,
            "seconds": self.duration_s, "status": self.status,
            "allocations": self.total_allocs, "processes": self.processes_seen,
            "distinct stacks": self.stacks_seen, "counts": self.counts,
            "lost events": self.lost_total, "stack samples lost": self.stack_samples_lost,
            "saved in": None if self.path is None else str(self.path),
        }

    def to_frame(self, *, readable: bool = False) -> pd.DataFrame:
        """:meth:`facts` as a one-column table (``value``, as text), for a notebook.
        ``readable=True``: numbers as :mod:`slabkit.analysis.present` writes them
        (``35,340``, ``1.7 s``, ``2026-11-30 09:29 UTC``)."""
        facts = self.facts()
        if readable:
            facts = {k: _readable_fact(k, v) for k, v in facts.items()}
        return pd.DataFrame({"value": [str(v) for v in facts.values()]}, index=list(facts))

    def headline(self) -> str:
        """``filp: 1887 allocations in 0.2 s via perf (interrupted)``."""
        return (f"{self.cache}: {self.total_allocs} allocations in "
                f"{self.duration_s or 0.0:.1f} s via {self.backend} ({self.status})")

    def counts_line(self) -> str | None:
        """``counts: exact`` (or ``estimated``), with the stack samples lost; None when
        nothing is known about it (raw tracer output)."""
        if self.counts is None and not self.stack_samples_lost:
            return None
        line = f"counts: {self.counts or 'unknown'}"
        if self.counts not in (None, "exact"):
            line += " (the notes say how)"
        if self.stack_samples_lost:
            line += f"; {self.stack_samples_lost} stack samples not recorded"
        return line

    def _repr_html_(self) -> str:
        """In a notebook: the headline, the sample badge, how it ended, whether counts are
        exact, and the top processes, call sites and stacks (the capture runner's view)."""
        from slabkit.ui.html import CSS
        return CSS + summary_html(self)

    def to_text(self, *, width: int = 160) -> str:
        """The summary as the command line prints it."""
        lines = [f"{self.headline()}; saved in {self.path}"]
        if self.sample:
            lines.append(f"({self.sample}: not captured here)")
        if self.status == "interrupted" and self.ended:
            lines.append(self.ended)
        if (counts := self.counts_line()) is not None:
            lines.append(counts)
        lines += self.messages()
        if self.top_processes.empty:
            lines.append("no allocations were seen")
            return "\n".join(lines)
        with pd.option_context("display.width", width, "display.max_colwidth", 60):
            lines += ["", "Top processes:", self.top_processes.to_string()]
            if self.top_callsites is not None:
                lines += ["", "Top call sites (first frame outside the allocator):",
                          self.top_callsites.to_string()]
            if self.top_stacks is not None and len(self.top_stacks):
                lines += ["", "Top stacks (innermost first):"]
                lines += [f"{int(row['count']):>10}  {str(row['stack'])[:150]}"
                          for _, row in self.top_stacks.iterrows()]
        return "\n".join(lines)


_FACT_TEXT = {"allocations": present.count_text, "processes": present.count_text,
              "distinct stacks": present.count_text, "lost events": present.count_text,
              "stack samples lost": present.count_text, "seconds": present.seconds_text,
              "started": present.date_text}


def _readable_fact(name: str, value: Any) -> str:
    if value is None:
        return present.MISSING
    text = _FACT_TEXT.get(name)
    return text(value) if text is not None else str(value)


def summarize(cap: Capture, *, top: int = 10, stacks: int | None = None) -> Summary:
    """The :class:`Summary` of a capture: its ``top`` processes and call sites and its
    ``stacks`` (default ``min(top, 5)``) biggest stacks, with its headline facts from ``meta``.

    >>> print(summarize(slabkit.load(slabkit.sample_path("perf-filp")), top=3).to_text())
    ... # doctest: +SKIP
    filp: 1887 allocations in 0.2 s via perf (interrupted); saved in .../samples/perf-filp
    ...
    """
    m = cap.meta
    allocs = cap.allocs
    total = m.get("total_allocs")
    if total is None:
        total = int(allocs["count"].sum()) if len(allocs) else 0
    has_rows, has_frames = len(allocs) > 0, len(cap.frames) > 0
    duration = m.get("duration_s")
    estimated = bool(m.get("estimated_stacks"))     # some counts come from samples
    events_sampled = estimated and int((m.get("options") or {}).get("sample_every") or 1) > 1
    exact = None if m.get("exact") is None else bool(m["exact"]) and not events_sampled
    return Summary(
        cache=cap.cache, total_allocs=int(total),
        duration_s=None if duration is None else float(duration),
        backend=m.get("backend"), status=m.get("status"), path=cap.path,
        mode=m.get("mode", "allocs"), kernel=m.get("kernel_release"), host=m.get("host"),
        started=m.get("start"),
        processes_seen=int(allocs["comm"].nunique()) if has_rows else 0,
        stacks_seen=int(cap.frames["stack_id"].nunique()) if has_frames else 0,
        exact=exact, stacks_estimated=estimated,
        losses=dict(m.get("losses") or {}), lost_total=int(m.get("lost_total") or 0),
        stack_losses=dict(m.get("stack_losses") or {}),
        notes=tuple(str(n) for n in m.get("notes") or ()),
        tracer_messages=str(m.get("tracer_stderr") or "").strip(),
        top_processes=analysis.by_process(cap).head(top),
        top_callsites=analysis.by_frame(cap).head(top) if has_frames else None,
        top_stacks=analysis.top_stacks(cap, min(top, 5) if stacks is None else stacks)
        if has_frames else None,
        sample=present.sample_badge(cap), ended=present.status_text(cap),
    )


def tracer_html(summary: Summary, shown: Sequence[str] = ()) -> str:
    """The tracer's side of a :class:`~slabkit.ui.summary.Summary` as HTML: losses, notes
    (less those in ``shown``, already on screen) and the tracer's stderr."""
    parts = []
    if summary.lost_total:
        parts.append(f'<div class="slabkit-error">the tracer reported {summary.lost_total} '
                     f"lost events: {html.escape(str(summary.losses))}</div>")
    for note in summary.notes:
        if note in shown:
            continue
        parts.append(f'<div class="slabkit-note">note: {html.escape(note)}</div>')
    if summary.tracer_messages:
        parts.append(f"<details><summary>tracer messages</summary><pre>"
                     f"{html.escape(summary.tracer_messages[-3000:])}</pre></details>")
    return "".join(parts)


def summary_html(summary: Summary) -> str:
    """A :class:`~slabkit.ui.summary.Summary` as HTML: the headline, whether counts are
    exact, and the top processes, call sites and stacks as tables."""
    head = (f"<b>{html.escape(summary.cache)}</b>: {summary.total_allocs:,} allocations "
            f"in {summary.duration_s or 0.0:.1f} s via {html.escape(str(summary.backend))} "
            f"({html.escape(str(summary.status))}); saved in "
            f"<code>{html.escape(str(summary.path))}</code>{badge_html(summary.sample)}")
    if summary.status == "interrupted" and summary.ended:
        head += f'<div class="slabkit-note">{html.escape(summary.ended)}</div>'
    counts = summary.counts_line()
    if counts is not None:
        head += f'<div class="slabkit-note">{html.escape(counts)}</div>'
    if summary.top_processes.empty:
        return head + '<div class="slabkit-note">no allocations were seen</div>'
    parts = [head, "<b>top processes</b>", frame_html(summary.top_processes)]
    if summary.top_callsites is not None:
        parts += ["<b>top call sites</b>", frame_html(summary.top_callsites)]
    if summary.top_stacks is not None and len(summary.top_stacks):
        stacks = summary.top_stacks[["count", "share", "callsite", "stack"]]
        parts += ["<b>top stacks</b> (innermost first)",
                  frame_html(stacks, text_columns=("callsite",), stack_columns=("stack",))]
    return '<div class="slabkit-table">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"
