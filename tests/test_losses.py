"""Captures that really lose events, on every backend that runs here, and what the user is told.

bpf and bpftrace count in maps: with ``map_keys=16`` and more processes than that allocating,
events find no slot. perf and ftrace stream through per-CPU buffers: with one 4 KiB page each,
a burst of allocations overruns them. The losses must be recorded by value (what the raw
output says), the counts may fall short by no more than them, and the user must hear it: the
CLI summary (``slabkit show``), the capture runner widget's messages and the HTML report each
say how many events were lost.
"""
from __future__ import annotations

import html
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LIVE_BACKENDS, require_backend
from live_capture import (
    assert_losses_match_the_raw_output,
    capture_around,
    pid_rows,
    raw_losses,
)
from report_tables import assert_frame_in_report, html_tables, page_text

import slabkit
from bench.workload import Workload
from slabkit.backends import Options
from slabkit.ui import report
from slabkit.ui.widgets.runner import summary_html, tracer_html

REPO = Path(__file__).resolve().parent.parent
N = 50000
#: the knob that makes each backend lose events
LOSSY = {"bpf": Options(map_keys=16), "bpftrace": Options(map_keys=16),
         "ftrace": Options(buffer_kb=4), "perf": Options(buffer_kb=4)}


@pytest.fixture(params=LIVE_BACKENDS)
def backend(request, live):
    require_backend(request.param)
    return request.param


@pytest.fixture
def lossy(backend, tmp_path):
    """A real capture of filp that lost events: slabwork opens N files at full speed while 40
    short processes (more than the maps' 16 keys) start and open theirs."""
    def work():
        w.go()
        for _ in range(40):
            subprocess.run(["/bin/true"], check=True)
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", work, backend=backend, base=tmp_path,
                             options=LOSSY[backend])
    raw, _ = raw_losses(cap)               # what the tracer itself said, not what slabkit kept
    assert sum(raw.values()) > 0, f"{backend} lost nothing: {raw}"
    return cap, w.pid


def test_losses_are_recorded_by_value_and_bound_the_shortfall(lossy):
    cap, pid = lossy
    assert_losses_match_the_raw_output(cap)
    assert cap.meta["lost_total"] > 0
    got = int(pid_rows(cap, pid)["count"].sum())
    assert got <= N
    if cap.meta["backend"] in ("ftrace", "perf"):
        # one lost buffer entry or sample is at most one lost allocation (ftrace's overrun
        # counts an event and its stack as two entries)
        assert got >= N - cap.meta["lost_total"], (got, cap.meta["losses"])


def test_the_user_is_told_in_the_cli_the_widget_and_the_report(lossy, tmp_path, monkeypatch):
    cap, _ = lossy
    lost, losses = cap.meta["lost_total"], cap.meta["losses"]
    warning = f"WARNING: the tracer reported {lost} lost events/updates: {losses}"
    summary = slabkit.summarize(cap)
    assert summary.messages()[0] == warning

    # the command line: `slabkit show` of the saved capture
    shown = subprocess.run([sys.executable, "-m", "slabkit", "show", str(cap.path)],
                           capture_output=True, text=True, cwd=REPO, timeout=120,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert shown.returncode == 0, shown.stderr
    assert warning in shown.stdout.splitlines()
    stack_lost = sum((cap.meta.get("stack_losses") or {}).values())
    if stack_lost:
        assert f"; {stack_lost} stack samples not recorded" in shown.stdout

    # the capture runner widget: its messages (tracer_html) and summary, as after a run
    widget = slabkit.summarize(cap, top=5, stacks=3)
    messages = tracer_html(widget, shown=cap.meta["plan"]["notes"])
    assert (f"the tracer reported {lost} lost events: {html.escape(str(losses))}"
            in messages)
    assert f"{int(cap.allocs['count'].sum()):,} allocations" in summary_html(widget)

    # the HTML report
    monkeypatch.setenv("PYTHONPATH", str(REPO))      # its kernel imports this checkout
    page = report.write_report(Path(cap.path).resolve(), tmp_path / "r.html").read_text()
    assert warning in page_text(page)
    facts = slabkit.summarize(slabkit.load(Path(cap.path).resolve()), top=10).to_frame()
    assert facts.loc["lost events", "value"] == str(lost)
    assert_frame_in_report(facts, html_tables(page))
