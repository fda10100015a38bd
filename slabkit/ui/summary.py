"""What a capture says when it ends, built once as data and rendered for each place it shows.

:func:`summarize` reads a :class:`~slabkit.Capture` into a :class:`Summary`: the headline
facts (cache, allocations, duration, backend, status, where it is saved, whether the counts are
exact, what the tracer lost, the notes) and the top processes, call sites and stacks from the
pivots. It is rendered three ways:

- plain text, :meth:`Summary.to_text`: ``slabkit capture``, ``slabkit show`` and the demo;
- HTML, :func:`slabkit.ui.widgets.runner.summary_html`: the capture runner widget;
- a table, :meth:`Summary.to_frame` and :meth:`Summary.messages`: "The capture" in the report
  notebook (``02-explore-a-capture.ipynb``), whose later sections pivot the capture further.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slabkit import analysis
from slabkit.model.tables import Capture


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

    def to_frame(self) -> pd.DataFrame:
        """:meth:`facts` as a one-column table (``value``, as text), for a notebook."""
        facts = self.facts()
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

    def to_text(self, *, width: int = 160) -> str:
        """The summary as the command line prints it."""
        lines = [f"{self.headline()}; saved in {self.path}"]
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
    )
