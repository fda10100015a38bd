"""The report page: one capture written up for colleagues as one self-contained HTML file.

:func:`render_report` builds it from the capture's :class:`~slabkit.ui.summary.Summary`, the
pivots and the plots, through the template ``report.html.j2`` (Jinja2, autoescaped):

1. a title with the cache, the host, the date and the headline number, the sample badge for
   sample data, and the analyst's note on purpose and workload (``--note``);
2. the findings, a few sentences: the top process and call site, the top stack, whether the
   counts are exact or estimated, what the tracer lost, how the capture ended, the memory;
3. the tables (numbers with units, :mod:`slabkit.analysis.present`) and plots (inline PNG),
   by process, call site, module, whole stack; outstanding objects, kmalloc waste and the
   cache's memory where the capture has them;
4. the interactive flame graph (plotly.js and ``flame.js`` embedded; a static image where
   scripts cannot run);
5. downloads inside the page (``data:`` URIs): the folded stacks (flamegraph.pl,
   speedscope) and the pprof profile (``go tool pprof``, Pyroscope, Parca);
6. how it was captured: the plan and why, the backend and its version, the kernel, the notes,
   the program.

No notebook or kernel is involved: the page reads the same in a browser, a mail attachment or
an archive. ``show_code=True`` adds, under each section, the slabkit calls that compute it.
"""
from __future__ import annotations

import base64
import gzip
import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from slabkit.analysis import present
from slabkit.model.tables import Capture

TEMPLATE = Path(__file__).resolve().parent / "report.html.j2"
#: a download larger than this is written next to the page instead of inside it
MAX_INLINE_BYTES = 16 << 20


@dataclass
class Section:
    """One part of the report: a heading, what it shows in a sentence or two, then tables and
    figures (HTML), and the code that computes it."""

    id: str
    title: str
    intro: str = ""
    parts: list[str] = field(default_factory=list)
    code: str = ""


def _png(draw, *, size: tuple[float, float]) -> str:
    """An <img> of what ``draw(ax)`` draws on a new figure (inline PNG)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.add_subplot()
    draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img class="figure" alt="{html.escape(ax.get_title())}" src="{uri}">'


def _table(df: pd.DataFrame, *, measure: str | None = None, **labels: str) -> str:
    if df.empty:
        return '<p class="muted">nothing recorded</p>'
    return present.readable(df, measure=measure, labels=labels or None).to_html()


def _rows(n: int, per: float = 0.32, extra: float = 1.4) -> float:
    return per * max(n, 1) + extra


def findings(cap: Capture, summary, stacks: pd.DataFrame | None = None) -> list[str]:
    """The report's opening findings, one sentence each (HTML). ``stacks``: the capture's
    :func:`~slabkit.analysis.top_stacks` from the call site out, if already computed."""
    e = html.escape
    out = []
    procs = summary.top_processes
    if procs.empty:
        return ["No allocations from this cache were seen while it was captured."]
    top = procs.iloc[0]
    text = (f"<b>{e(str(procs.index[0]))}</b> made the most allocations: "
            f"{present.count_text(top['count'])} ({present.share_text(top['share'])})")
    if len(procs) > 1:
        nxt = procs.iloc[1]
        text += (f", then <b>{e(str(procs.index[1]))}</b> with "
                 f"{present.count_text(nxt['count'])} ({present.share_text(nxt['share'])})")
    out.append(text + f", of {summary.processes_seen} process names seen.")
    if summary.top_callsites is not None and len(summary.top_callsites):
        cs = summary.top_callsites
        out.append(f"The top call site (the first kernel function outside the allocator) is "
                   f"<b>{e(str(cs.index[0]))}</b>: {present.share_text(cs['share'].iloc[0])} "
                   "of the allocations.")
    if summary.top_stacks is not None and len(summary.top_stacks):
        if stacks is None:
            from slabkit.analysis import top_stacks
            stacks = top_stacks(cap, 1, hide_allocator=True)
        st = stacks.iloc[0]   # from the call site out
        frames = str(st["stack"]).split(" <- ")
        path = " &larr; ".join(e(f) for f in frames[:6]) + (" &larr; …" if len(frames) > 6
                                                              else "")
        out.append(f"The busiest single path ({present.share_text(st['share'])}): "
                   f"<code>{path}</code>.")
    counts = summary.counts
    if counts == "exact":
        out.append("The counts are <b>exact</b>: every allocation from this cache was counted.")
    elif counts:
        out.append(f"The counts are <b>{e(counts)}</b> (the notes below say how).")
    if summary.lost_total:
        out.append(f'<span class="warn">The tracer reported {present.count_text(summary.lost_total)}'
                   f" lost events</span> ({e(str(summary.losses))}): the counts are low by "
                   "at least that.")
    else:
        out.append("The tracer reported no lost events.")
    if summary.stack_samples_lost:
        out.append(f"{present.count_text(summary.stack_samples_lost)} stack samples were not "
                   "recorded (counts per process are not affected).")
    out.append(f"The capture {e(present.status_text(cap))}.")
    growth = _memory_change(cap)
    if growth:
        out.append(growth)
    if cap.outstanding is not None and len(cap.outstanding):
        out.append(f"{present.count_text(cap.outstanding['count'].sum())} objects allocated "
                   "during the capture were still allocated at its end.")
    return out


def _memory_change(cap: Capture) -> str | None:
    s = cap.slabinfo
    if s is None or s.empty:
        return None
    s = s[s["name"] == cap.cache].sort_values("time_s")
    if s.empty:
        return None
    first, last = s["memory_bytes"].iloc[0], s["memory_bytes"].iloc[-1]
    delta = float(last) - float(first)
    how = "did not change" if delta == 0 else \
        f"{'grew' if delta > 0 else 'shrank'} by {present.bytes_text(abs(delta))}"
    return (f"The cache's slabs held {present.bytes_text(first)} at the start and "
            f"{present.bytes_text(last)} at the end: memory {how}.")


def _sections(cap: Capture, summary, stacks: pd.DataFrame | None, *, top_n: int,
              interactive: bool) -> list[Section]:
    """The report's sections; the summary's top tables and ``stacks`` are used as they are."""
    from slabkit import analysis, plots

    sections = [Section(
        "capture", "The capture in numbers",
        "What was captured, how, and how well.",
        [_table(summary.to_frame(readable=True))], "slabkit.summarize(cap).to_frame()")]
    by_proc = summary.top_processes          # by_process(cap).head(top_n)
    sections.append(Section(
        "processes", "Who allocates: by process",
        "Allocations per process name (comm): how many, their bytes, their share of all "
        "allocations and the rate over the capture.",
        [_table(by_proc),
         _png(lambda ax: plots.plot_top_processes(cap, n=top_n, ax=ax), size=(8, _rows(
             len(by_proc))))],
        "slabkit.by_process(cap)\nslabkit.plot_top_processes(cap)"))
    if len(cap.frames):
        sites = summary.top_callsites        # by_frame(cap).head(top_n)
        inclusive = analysis.by_frame(cap, "inclusive").head(top_n)
        sections.append(Section(
            "callsites", "Which kernel code: call sites",
            "The call site of a stack is its first frame going outwards that is not part of "
            "the allocator: the kernel function that asked for the object. The second table "
            "counts each function once per stack it is on: the paths that lead to the "
            "allocations.",
            [_table(sites),
             _png(lambda ax: plots.plot_top_callsites(cap, n=top_n, ax=ax),
                  size=(8, _rows(len(sites)))),
             "<h3>Kernel functions on the stacks (inclusive)</h3>", _table(inclusive)],
            'slabkit.by_frame(cap)\nslabkit.by_frame(cap, "inclusive")'))
        mods = analysis.by_module(cap).head(top_n)
        sections.append(Section(
            "modules", "Which kernel module",
            "Each stack is charged to the first module other than the core kernel "
            "(vmlinux) met going outwards from the call site; the heatmap crosses processes "
            "with modules.",
            [_table(mods),
             _png(lambda ax: plots.plot_process_module_heatmap(cap, ax=ax), size=(9, 5))],
            "slabkit.by_module(cap)\nslabkit.plot_process_module_heatmap(cap)"))
        shown = stacks[["count", "share", "callsite", "module", "comms", "stack"]].assign(
            comms=stacks["comms"].map(present.short_list))
        sections.append(Section(
            "stacks", "Whole stacks",
            "The stacks that allocated most, from the call site outwards (the allocator's own "
            "frames left out): read <code>a &lt;- b</code> as \"a, called from b\".",
            [_table(shown)], "slabkit.top_stacks(cap, 8, hide_allocator=True)"))
    flame = _flame_parts(cap, interactive=interactive)
    sections.append(Section(
        "flame", "Flame graph",
        ("All allocations at the top, split by process, then by kernel stack from the "
         "outermost frame (the syscall entry) down to the allocator; a box's width is its "
         "share of the allocations. " + ("Click a box to zoom into it, the path bar above to "
                                         "zoom out; hover for allocations, bytes and share; "
                                         "type a function's name to highlight it."
                                         if interactive else "")),
        flame, "slabkit.widgets.FlameGraph(cap)   # in JupyterLab\nslabkit.plot_flame(cap)"))
    if cap.outstanding is not None and len(cap.outstanding):
        wrapped = Capture(allocs=cap.outstanding, frames=cap.frames,
                          meta={"cache": f"{cap.cache} (outstanding)", "host":
                                cap.meta.get("host")})
        oldest = cap.outstanding.sort_values("oldest_age_s", ascending=False).head(top_n)
        sections.append(Section(
            "outstanding", "Objects still allocated at the end",
            "Captured in outstanding mode: the objects allocated during the capture and not "
            "freed by its end, by process and call site, and the oldest of them (objects "
            "allocated before the capture started are not seen).",
            [_table(analysis.by_process(wrapped).head(top_n).drop(columns="per_s")),
             _table(analysis.by_frame(wrapped).head(top_n).drop(columns="per_s")),
             _table(oldest[["comm", "pid", "stack_id", "count", "bytes", "oldest_age_s",
                            "median_age_s"]].set_index("comm"))],
            "slabkit.by_process((cap.outstanding, cap.frames))"))
    waste = analysis.kmalloc_waste_total(cap)
    if not pd.isna(waste["waste_bytes"]):
        sites = analysis.kmalloc_waste(cap, by="callsite").head(top_n)
        sections.append(Section(
            "waste", "kmalloc waste",
            "The bytes of each slot the caller did not ask for (slot minus requested), per "
            "call site, as <code>perf kmem</code> reports it.",
            [_table(sites),
             _png(lambda ax: plots.plot_kmalloc_waste(cap, ax=ax), size=(8, _rows(len(sites))))],
            'slabkit.kmalloc_waste(cap, by="callsite")'))
    if cap.slabinfo is not None and not cap.slabinfo.empty:
        sections.append(Section(
            "memory", "The cache's memory during the capture",
            "slabkit reads the cache's line of /proc/slabinfo every second while it captures:"
            " memory that climbs while objects stay outstanding is worth a look; flat memory "
            "with many allocations means objects are freed and reused.",
            [_png(lambda ax: plots.plot_slab_growth(cap, ax=ax), size=(8, 3.5))],
            "slabkit.plot_slab_growth(cap)"))
    return sections


def _flame_parts(cap: Capture, *, interactive: bool) -> list[str]:
    from slabkit.plots import plot_flame
    static = _png(lambda ax: plot_flame(cap, ax=ax), size=(14, 6))
    if not interactive or not len(cap.allocs):
        return [static]
    from slabkit.ui.flame.embed import figure_html
    from slabkit.ui.flame.figure import figure_spec, flame_figure
    png = base64.b64decode(static.split("base64,", 1)[1].split('"', 1)[0])
    return [figure_html(figure_spec(flame_figure(cap)), name="capture", static_png=png,
                        alt="flame graph (static image)")]


def _downloads(cap: Capture, folded: str, stem: str, out_dir: Path | None
               ) -> list[dict[str, str]]:
    """The folded stacks (``folded``: :func:`~slabkit.analysis.to_folded`) and the pprof
    profile, as data: URIs (or files next to the page when very large)."""
    from slabkit.analysis import pprof_profile
    items = []
    if len(cap.frames) or len(cap.allocs):
        items.append(_download(folded.encode("utf-8"), f"{stem}.folded", "text/plain",
                               "folded stacks", "FlameGraph's format: "
                               "<code>flamegraph.pl FILE &gt; flame.svg</code>, or open it in "
                               "speedscope", out_dir))
    try:
        pb = gzip.compress(pprof_profile(cap).SerializeToString(), mtime=0)
    except Exception:   # noqa: BLE001 - a capture pprof cannot hold is still reported
        pb = None
    if pb:
        items.append(_download(pb, f"{stem}.pb.gz", "application/octet-stream",
                               "pprof profile", "<code>go tool pprof -http=: FILE</code>, "
                               "Grafana Pyroscope, Parca, Perfetto", out_dir))
    return items


def _folded_preview(text: str, lines: int = 5) -> dict[str, Any] | None:
    """The first lines of the folded stacks (cut at 200 characters) and how many there are."""
    folded = text.splitlines()
    if not folded:
        return None
    return {"count": len(folded), "first": "\n".join(line[:200] for line in folded[:lines])}


def _download(data: bytes, name: str, mime: str, what: str, use: str,
              out_dir: Path | None) -> dict[str, str]:
    if len(data) > MAX_INLINE_BYTES and out_dir is not None:
        (out_dir / name).write_bytes(data)
        href = name
    else:
        href = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
    return {"href": href, "name": name, "what": what, "use": use,
            "size": present.bytes_text(len(data))}


def how_captured(cap: Capture, summary) -> list[tuple[str, str]]:
    """(what, value) rows: the plan, the backend, the kernel, the notes."""
    m = cap.meta
    plan = m.get("plan") or {}
    rows = [("cache", f"{cap.cache} ({m.get('kind') or plan.get('kind') or '?'})"
                      + (f", with merged caches {', '.join(m['aliases'])}" if m.get("aliases")
                         else "")),
            ("host", str(m.get("host") or "unknown")),
            ("kernel", str(m.get("kernel_release") or "unknown")),
            ("captured", f"{present.date_text(m.get('start'))}, "
                         f"{present.seconds_text(m.get('duration_s'))}"),
            ("how it ended", present.status_text(cap)),
            ("backend", f"{m.get('backend') or '?'}"
                        + (f" {m['tracer_version']}" if m.get("tracer_version") else "")
                        + (" through slabkit's capture helper" if m.get("via") == "helper"
                           else "")),
            ("counts", summary.counts or "unknown")]
    if plan.get("reason"):
        rows.append(("plan", f"{plan.get('strategy', '')}: {plan['reason']}"))
    filters = [f"pid {m['pid_filter']}" if m.get("pid_filter") else "",
               f"comm {m['comm_filter']}" if m.get("comm_filter") else ""]
    if any(filters):
        rows.append(("only", ", ".join(f for f in filters if f)))
    return rows


def render_report(cap: Capture, *, note: str | None = None, interactive: bool = True,
                  show_code: bool = False, top_n: int = 10, stem: str | None = None,
                  out_dir: Path | None = None) -> str:
    """The report of ``cap`` as one HTML page (see the module docs). ``note``: the analyst's
    words on purpose and workload, shown under the title. ``interactive=False``: no scripts
    (the static flame chart only; a much smaller file)."""
    import jinja2

    from slabkit._version import __version__
    from slabkit.ui.summary import summarize

    from slabkit.analysis import to_folded, top_stacks

    summary = summarize(cap, top=top_n)
    # computed once for the findings, the sections and the downloads
    stacks = top_stacks(cap, min(top_n, 8), hide_allocator=True) if len(cap.frames) else None
    folded = to_folded(cap)
    meta = cap.meta
    badge = present.sample_badge(cap)
    stem = stem or (Path(cap.path).name if cap.path is not None else cap.cache)
    when = present.date_text(meta.get("start")) if meta.get("start") else None
    title = f"{present.subject(cap)}"
    if when:
        title += f", {present.date_text(meta.get('start'), time=False)}"
    headline = present.headline(cap, summary.total_allocs)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             trim_blocks=True, lstrip_blocks=True)
    scripts = ""
    if interactive and len(cap.allocs):
        from slabkit.ui.flame.embed import page_scripts
        scripts = page_scripts()
    return env.get_template(TEMPLATE.name).render(
        title=title, headline=headline, cache=cap.cache, badge=badge, note=note,
        when=when, backend=meta.get("backend"), kernel=meta.get("kernel_release"),
        counts=summary.counts,
        findings=[_markup(f) for f in findings(cap, summary, stacks)],
        sections=[_marked(s) for s in _sections(cap, summary, stacks, top_n=top_n,
                                                 interactive=interactive)],
        downloads=[{**d, "use": _markup(d["use"])}
                   for d in _downloads(cap, folded, stem, out_dir)],
        how=how_captured(cap, summary), messages=summary.messages(),
        folded_preview=_folded_preview(folded),
        program=meta.get("program") or " ".join(meta.get("argv") or []),
        scripts=_markup(scripts), show_code=show_code, version=__version__,
        made=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        source=str(cap.path) if cap.path is not None else None)


def _markup(text: str):
    from markupsafe import Markup
    return Markup(text)


def _marked(section: Section) -> Section:
    return Section(section.id, section.title, _markup(section.intro),
                   [_markup(p) for p in section.parts], section.code)
