"""Widgets driven from Python: set the controls' values, click their buttons, check the results
against the public API's own tables.

The cache picker reads the fake root tree in tests/fixtures/slabinfo; the pivot explorer a real
sample capture; the capture runner runs real captures (live tests: root and a tracer).
"""
from __future__ import annotations

import time
from typing import ClassVar

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from conftest import FIXTURES, SAMPLES, require_tool
from matplotlib.patches import Rectangle

import slabkit
from slabkit.backends import registry
from slabkit.errors import PermissionNeeded, TracerUnavailable
from slabkit.ui.widgets import CachePicker, CaptureRunner, PivotExplorer

FAKE_ROOT = FIXTURES / "slabinfo"


def _poll(predicate, timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true, as a notebook user watching the widget would."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# cache picker


@pytest.fixture
def picker() -> CachePicker:
    return CachePicker(target=str(FAKE_ROOT))


def test_picker_lists_caches_by_memory(picker):
    table = slabkit.caches(str(FAKE_ROOT))
    names = [value for _, value in picker.select.options]
    expected = table.sort_values("memory_bytes", ascending=False, kind="stable")["name"]
    assert names == expected.tolist()
    assert picker.value == names[0]           # the biggest cache is chosen at first
    assert f"{len(table)} of {len(table)} caches" in picker.count_label.value


def test_picker_search_matches_names_and_merged_aliases(picker):
    picker.search.value = "kmalloc-cg"
    names = [value for _, value in picker.select.options]
    assert names and all("kmalloc-cg" in n for n in names)
    picker.search.value = "cred"              # merged into pid on the fixture kernel
    assert [value for _, value in picker.select.options] == ["pid"]
    assert picker.value == "pid"
    assert "+cred" in picker.select.options[0][0]


def test_picker_details_show_size_memory_and_merged_caches(picker):
    picker.value = "pid"
    row = slabkit.caches(str(FAKE_ROOT)).set_index("name").loc["pid"]
    details = picker.details.value
    assert picker.select.value == "pid"
    assert f"{int(row['object_size'])} B" in details and f"{int(row['objsize'])} B" in details
    assert "<b>cred</b>" in details
    assert f"{int(row['active_objs']):,} in use" in details


def test_picker_value_alias_and_unknown(picker):
    picker.search.value = "kmalloc"
    picker.value = "cred"                     # an alias chooses the cache it lives in
    assert picker.value == "pid" and picker.search.value == ""
    picker.value = "no_such_cache"
    assert picker.value is None
    assert "no slab cache named" in picker.message.value


def test_picker_sorts_by_growth(monkeypatch):
    table = slabkit.caches(str(FAKE_ROOT))
    series = pd.DataFrame({
        "time_s": [0.0, 0.0, 1.0, 1.0], "name": ["pid", "dentry", "pid", "dentry"],
        "active_objs": [10, 10, 10, 500], "num_objs": [20, 20, 20, 600],
        "memory_bytes": [4096, 4096, 4096, 409600], "active_bytes": [0, 0, 0, 0]})
    calls = []

    def fake_sample(duration_s, interval_s=1.0, root="/", **kw):
        calls.append((duration_s, interval_s, root))
        return series.astype({"time_s": "Float64", "name": "string"})

    monkeypatch.setattr(slabkit, "sample", fake_sample)
    p = CachePicker(table=table, growth_seconds=1.5)
    p.sort.value = "growth"
    assert p.wait(10)
    assert calls == [(1.5, 1.0, "/")]
    assert p.select.options[0][1] == "dentry"  # grew by 396 KiB
    p.value = "dentry"
    assert "+490 objects" in p.details.value


def test_picker_without_root_says_so(monkeypatch):
    def no_root(root="/"):
        raise PermissionNeeded("reading /proc/slabinfo needs root: run with sudo")

    monkeypatch.setattr(slabkit, "caches", no_root)
    p = CachePicker()
    assert p.value is None and p.select.options == ()
    assert "needs root" in p.message.value and "Traceback" not in p.message.value


# --------------------------------------------------------------------------------------------
# pivot explorer


@pytest.fixture(scope="module")
def sample():
    return slabkit.load(SAMPLES / "bpftrace-filp-outstanding")


def _bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


@pytest.mark.parametrize("group, measure, expected", [
    ("process", "count", lambda c: slabkit.by_process(c)),
    ("process", "bytes", lambda c: slabkit.by_process(c, value="bytes")),
    ("module", "count", lambda c: slabkit.by_module(c)),
    ("callsite", "bytes", lambda c: slabkit.by_frame(c, value="bytes")),
])
def test_explorer_table_and_chart_match_the_pivots(sample, group, measure, expected):
    ex = PivotExplorer(sample)
    ex.group_by.value = group
    ex.measure.value = measure
    ex.top_n.value = 4
    want = expected(sample).head(4)
    pd.testing.assert_frame_equal(ex.frame, want)
    bars = _bars(ex.ax)
    assert [b.get_width() for b in bars] == pytest.approx(want[measure].astype(float).tolist())
    labels = [t.get_text() for t in ex.ax.get_yticklabels()]
    assert labels == [str(k) for k in want.index]
    assert ex.chart.value[:8] == b"\x89PNG\r\n\x1a\n"
    for key in want.index:                    # the table shows the same rows
        assert f">{key}<" in ex.table.value
    assert f"{int(want[measure].iloc[0]):,}" in ex.table.value


def test_explorer_call_sites_with_allocator_frames(sample):
    ex = PivotExplorer(sample, group_by="callsite")
    assert ex.frame.index[0] == "alloc_empty_file"
    ex.show_allocator.value = True
    pd.testing.assert_frame_equal(ex.frame, slabkit.by_frame(sample, keep_allocator=True).head(10))
    assert ex.frame.index[0].startswith("kmem_cache_alloc")


def test_explorer_stacks_hide_allocator_frames(sample):
    ex = PivotExplorer(sample, group_by="stack", top_n=3)
    want = slabkit.top_stacks(sample, 3)
    assert ex.frame.index.tolist() == want.index.tolist()
    assert ex.frame["count"].tolist() == want["count"].tolist()
    assert all(s.startswith("alloc_empty_file <- ") for s in ex.frame["stack"])
    assert all(s.startswith("kmem_cache_alloc") for s in want["stack"])
    ex.show_allocator.value = True
    assert ex.frame["stack"].tolist() == want["stack"].tolist()
    assert len(_bars(ex.ax)) == 3
    # the bars name the stack and its first frames from the call site out, either way
    labels = [t.get_text() for t in ex.ax.get_yticklabels()]
    hidden = slabkit.top_stacks(sample, 3, hide_allocator=True)
    assert labels == [f"#{i} " + " <- ".join(s.split(" <- ")[:3])
                      for i, s in hidden["stack"].items()]


def test_explorer_outstanding_objects(sample):
    ex = PivotExplorer(sample)
    assert ex.source.layout.display != "none"
    ex.source.value = "outstanding"
    want = slabkit.by_process((sample.outstanding, sample.frames)).head(10)
    pd.testing.assert_frame_equal(ex.frame, want)
    assert int(ex.frame["count"].sum()) == int(sample.outstanding["count"].sum())
    assert "outstanding" in ex.ax.get_title()


def test_explorer_hides_outstanding_choice_for_allocs_captures():
    cap = slabkit.load(SAMPLES / "stap-classic" / "raw.txt")
    ex = PivotExplorer(cap, group_by="module")
    assert ex.source.layout.display == "none"
    assert ex.frame.index[0] == "[no stack]"  # most of the classic output has no stack
    assert ex.show_allocator.disabled


def test_explorer_on_a_capture_without_allocations(sample):
    empty = slabkit.Capture(allocs=sample.allocs.iloc[0:0], frames=sample.frames.iloc[0:0],
                            meta={"cache": "filp", "duration_s": 1.0})
    ex = PivotExplorer(empty)
    for group in ("process", "module", "callsite", "stack"):
        ex.group_by.value = group
        assert ex.frame.empty and "no allocations recorded" in ex.table.value
        assert ex.chart.value[:4] == b"\x89PNG" and not _bars(ex.ax)


# --------------------------------------------------------------------------------------------
# capture runner: errors without a tracer run


def test_runner_lists_backends_and_reasons(monkeypatch):
    class Prep:
        class backend:
            name = "perf"
        not_used: ClassVar[dict] = {
            "bpftrace": "bpftrace is not installed (apt install bpftrace)",
            "ftrace": "perf is preferred", "stap": "needs kprobes"}

    monkeypatch.setattr(slabkit, "prepare", lambda cache, **kw: Prep)
    r = CaptureRunner("filp", check_backends=False)
    assert r.backend.options == ("auto", *registry())
    assert r.check_backends() is Prep
    assert r.backend.options == ("auto", "perf", "ftrace")
    note = r.backends_note.value
    assert "auto</b> = perf" in note and "apt install bpftrace" in note and "kprobes" in note


def test_runner_shows_errors_as_messages(monkeypatch):
    def no_tracer(cache, **kw):
        raise TracerUnavailable("no backend can capture 'filp' here (bpftrace: not installed)")

    monkeypatch.setattr(slabkit, "prepare", no_tracer)
    r = CaptureRunner("filp", seconds=1, check_backends=False)
    r.start_button.click()
    assert r.wait(30)
    assert r.status == "failed" and r.result is None
    assert isinstance(r.error, TracerUnavailable)
    assert "no backend can capture" in r.summary.value
    assert "Traceback" not in r.summary.value
    assert not r.start_button.disabled and r.stop_button.disabled


def test_runner_bad_pid_is_a_readable_message():
    """The pid is checked by the library before anything runs (root or not)."""
    r = CaptureRunner("filp", seconds=1, pid="12ab", check_backends=False)
    r.start_button.click()
    assert r.wait(60)
    assert r.status == "failed"
    text = r.summary.value
    assert ("pid filter must be a positive integer" in text) or ("needs root" in text), text
    assert "Traceback" not in text and "slabkit-error" in text


# --------------------------------------------------------------------------------------------
# capture runner: real captures


@pytest.fixture
def runner_base(live, tmp_path):
    require_tool("bpftrace")
    return tmp_path / "captures"


def test_runner_captures_and_summarises(runner_base):
    picker = CachePicker()
    runner = CaptureRunner(picker=picker, seconds=2, base=runner_base, check_backends=False)
    picker.value = "filp"
    assert runner.cache.value == "filp"       # the runner follows the picker
    seen = []
    runner.progress.observe(lambda ch: seen.append(ch["new"]), "value")
    runner.start_button.click()
    assert runner.start_button.disabled and not runner.stop_button.disabled
    _poll(lambda: runner.status in ("complete", "interrupted", "failed"), 180, "the capture")
    assert runner.status == "complete", runner.summary.value
    cap = runner.result
    assert cap is not None and cap.path is not None and cap.path.parent == runner_base
    assert cap.cache == "filp" and cap.meta["status"] == "complete"
    assert runner.progress.value == 1.0 and any(0 < v < 1 for v in seen)
    assert f"backend {cap.meta['backend']}" in runner.messages.value or \
        cap.meta["backend"] in runner.messages.value   # the plan and program were shown
    total = int(cap.allocs["count"].sum())
    assert total == cap.meta["total_allocs"] > 0
    assert f"{total:,} allocations" in runner.summary.value
    top = slabkit.by_process(cap).head(5)
    for comm, count in top["count"].items():
        assert f">{comm}<" in runner.summary.value and f">{int(count):,}<" in runner.summary.value
    assert not runner.start_button.disabled and runner.stop_button.disabled


def test_runner_stop_keeps_what_was_captured(runner_base):
    runner = CaptureRunner("filp", seconds=600, base=runner_base, check_backends=False)
    runner.start_button.click()
    _poll(lambda: runner.status in ("running", "failed"), 120, "the probe to attach")
    assert runner.status == "running", runner.summary.value
    time.sleep(1.0)
    started = time.monotonic()
    runner.stop_button.click()
    _poll(lambda: not runner.running, 120, "the capture to stop")
    assert time.monotonic() - started < 60
    assert runner.status == "interrupted"
    cap = runner.result
    assert cap.meta["status"] == "interrupted" and 0.5 < cap.duration_s < 60
    assert len(cap.allocs) > 0
    assert slabkit.load(cap.path).meta["status"] == "interrupted"   # saved as it is
    assert "interrupted" in runner.summary.value


def test_runner_bad_pid_as_root(runner_base):
    runner = CaptureRunner("filp", seconds=1, pid="-5", base=runner_base, check_backends=False)
    runner.start_button.click()
    assert runner.wait(60)
    assert runner.status == "failed"
    assert "pid filter" in runner.summary.value and "Traceback" not in runner.summary.value
    assert not runner_base.exists() or not any(runner_base.iterdir())  # nothing was started
