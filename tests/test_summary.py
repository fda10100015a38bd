"""The end-of-capture summary: built once from a capture, rendered as text (CLI, demo), HTML
(the runner widget) and a table (notebook 02; executed in tests/test_notebooks.py)."""
from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLES

import slabkit
from slabkit.ui.cli import main
from slabkit.ui.summary import summarize
from slabkit.ui.widgets.runner import summary_html, tracer_html

SAMPLE_PATHS = sorted(p.parent for p in SAMPLES.glob("*/meta.json")) + [
    SAMPLES / "stap-classic" / "raw.txt"]


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=lambda p: p.relative_to(SAMPLES).as_posix())
def test_summary_holds_the_pivots_and_the_headline(path):
    cap = slabkit.load(path)
    s = summarize(cap, top=3)
    assert s.cache == cap.cache and s.path == cap.path
    assert s.total_allocs == int(cap.allocs["count"].sum())
    pd.testing.assert_frame_equal(s.top_processes, slabkit.by_process(cap).head(3))
    pd.testing.assert_frame_equal(s.top_callsites, slabkit.by_frame(cap).head(3))
    pd.testing.assert_frame_equal(s.top_stacks, slabkit.top_stacks(cap, 3))
    assert s.processes_seen == cap.allocs["comm"].nunique()
    assert s.stacks_seen == cap.frames["stack_id"].nunique()
    if "exact" in cap.meta:                    # saved by slabkit: the plan said
        assert cap.meta["exact"] and not cap.meta["estimated_stacks"]   # the samples are
        assert s.counts == "exact"
    else:                                      # raw tracer output: not known
        assert s.counts is None and s.counts_line() is None
    assert s.to_frame().loc["allocations", "value"] == str(s.total_allocs)


def test_text_is_what_the_cli_prints(capsys):
    path = SAMPLES / "perf-filp"
    assert main(["show", str(path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    cap = slabkit.load(path)
    assert out == summarize(cap, top=3).to_text() + "\n"
    lines = out.splitlines()
    assert lines[0] == (f"filp: {cap.meta['total_allocs']} allocations in 0.2 s via perf "
                        f"(interrupted); saved in {path}")
    assert lines[1] == "counts: exact"
    assert "note: perf script has no cgroup field here: cgroup is missing" in lines
    for heading in ("Top processes:", "Top call sites (first frame outside the allocator):",
                    "Top stacks (innermost first):"):
        assert heading in lines
    top = slabkit.top_stacks(cap, 3)
    assert lines[-3:] == [f"{int(c):>10}  {s[:150]}" for c, s in zip(top["count"], top["stack"])]


def _lossy(cap):
    meta = dict(cap.meta, losses={"lost_samples": 7}, lost_total=7,
                stack_losses={"stack_walk_failed": 12}, estimated_stacks=True,
                notes=[("stacks sampled 1 in 32: counts per process are exact, counts per "
                        "stack are estimates")], tracer_stderr="WARNING: 3 events lost\n")
    return slabkit.Capture(allocs=cap.allocs, frames=cap.frames, meta=meta, path=cap.path)


def test_losses_estimates_and_notes_are_said():
    s = summarize(_lossy(slabkit.load(SAMPLES / "bpftrace-filp")))
    assert s.counts == "exact per process, estimated per stack" and s.stack_samples_lost == 12
    text = s.to_text().splitlines()
    assert text[1] == ("counts: exact per process, estimated per stack (the notes say how); "
                       "12 stack samples not recorded")
    assert text[2] == ("WARNING: the tracer reported 7 lost events/updates: "
                       "{'lost_samples': 7}")
    assert text[3].startswith("note: stacks sampled 1 in 32")
    facts = s.facts()
    assert facts["lost events"] == 7 and facts["stack samples lost"] == 12


@pytest.mark.parametrize("plan_exact, options, estimated, counts", [
    (True, {"stack_sample": 1, "sample_every": 1}, False, "exact"),
    (True, {"stack_sample": 32, "sample_every": 1}, True, "exact per process, estimated per stack"),
    (True, {"stack_sample": 1, "sample_every": 8}, True, "estimated"),     # perf -c 8
    (False, {"stack_sample": 1, "sample_every": 1}, False, "estimated"),   # size class
])
def test_counts_say_what_is_exact(plan_exact, options, estimated, counts):
    cap = slabkit.load(SAMPLES / "perf-filp")
    cap.meta = dict(cap.meta, exact=plan_exact, options=options, estimated_stacks=estimated)
    assert summarize(cap).counts == counts


def test_html_for_the_runner():
    cap = _lossy(slabkit.load(SAMPLES / "bpftrace-filp-outstanding"))
    s = summarize(cap, top=5, stacks=3)
    page = summary_html(s)
    assert f"{s.total_allocs:,} allocations in 1.5 s via bpftrace (interrupted)" in page
    assert "12 stack samples not recorded" in page
    for comm, count in slabkit.by_process(cap).head(5)["count"].items():
        assert f">{comm}<" in page and f">{int(count):,}<" in page
    assert "top call sites" in page and ">alloc_empty_file<" in page
    assert "top stacks" in page and page.count('class="slabkit-stack"') == 3
    tracer = tracer_html(s)
    assert "7 lost events" in tracer and "stacks sampled 1 in 32" in tracer
    assert "WARNING: 3 events lost" in tracer
    assert "stacks sampled" not in tracer_html(s, shown=cap.meta["notes"])


def test_a_capture_that_saw_nothing():
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    empty = slabkit.Capture(allocs=cap.allocs.iloc[0:0], frames=cap.frames.iloc[0:0],
                            meta=dict(cap.meta, total_allocs=0), path=cap.path)
    s = summarize(empty)
    assert s.to_text().splitlines()[-1] == "no allocations were seen"
    assert s.top_callsites is None and s.top_stacks is None
    assert "no allocations were seen" in summary_html(s)


def test_the_demo_does_not_import_the_cli():
    """The summary used to live in cli.py, and demo.py imported it back from there."""
    from slabkit.ui import demo
    tree = ast.parse(Path(demo.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "slabkit.ui.cli" not in imported
