"""Honest zeros: a capture that counted nothing says why it may have (issue 18, item 6).

A filter that matched no one, a process that exited, a probe that never fired: each gives 0,
and the capture's first note (shown first by ``slabkit show``) tells them apart where the
backend can (bpf: the program's own ``probe_fired`` flag and the events its pid/comm filter
turned away; bpftrace: the events its filter turned away), and says plainly where it cannot
(perf, ftrace: the kernel filters before the tracer sees anything).
"""
from __future__ import annotations

import pytest
from conftest import require_bpf, require_tool
from live_capture import capture_around, pid_rows

from bench.workload import Workload
from slabkit.ui.summary import summarize

N = 2000


@pytest.fixture(params=["bpf", "bpftrace", "perf", "ftrace"])
def backend(request, live):
    if request.param == "bpf":
        require_bpf()
    elif request.param in ("bpftrace", "perf"):
        require_tool(request.param)
    return request.param


def test_a_comm_that_never_runs_says_what_the_filter_turned_away(backend, tmp_path):
    """A workload of N opens runs under its own name while the filter asks for another."""
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, base=tmp_path, backend=backend,
                             comm="nosuchcommxyz")
    assert cap.meta["total_allocs"] == 0
    first = cap.meta["notes"][0]
    text = summarize(cap).to_text()
    assert first in text and text.index(first) < text.index("no allocations were seen")
    if backend in ("bpf", "bpftrace"):
        assert cap.meta["probe_fired"] is True
        assert cap.meta["filtered_out"] >= N            # the workload's N, and others'
        assert first.startswith("0 allocations from comm 'nosuchcommxyz': the probe fired, "
                                 f"and the filter turned away {cap.meta['filtered_out']} ")
    else:
        assert cap.meta["probe_fired"] is None and cap.meta["filtered_out"] is None
        assert f"{backend} cannot tell whether its probe fired" in first


def test_bpf_says_its_probe_fired_on_an_unfiltered_capture(live, tmp_path):
    require_bpf()
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, base=tmp_path, backend="bpf")
    assert cap.meta["probe_fired"] is True and cap.meta["filtered_out"] is None
    assert int(pid_rows(cap, w.pid)["count"].sum()) == N
    assert not any(n.startswith("0 allocations") for n in cap.meta["notes"])


def test_a_process_that_exits_during_the_capture_is_noted(live, tmp_path):
    require_bpf()
    with Workload("open", N, "/etc/hostname") as w:
        def work_then_exit():
            w.go()
            w.finish()
        cap = capture_around("filp", work_then_exit, base=tmp_path, backend="bpf", pid=w.pid,
                             settle_s=0.5)
    assert int(pid_rows(cap, w.pid)["count"].sum()) == N
    assert (f"process {w.pid} exited during the capture: its allocations are counted up to "
            "its exit, and nothing after") in cap.meta["notes"]


def _meta(**kw):
    return {"cache": "filp", "backend": "bpf", "total_allocs": 0, "pid_filter": None,
            "comm_filter": None, **kw}


def test_zero_notes_tell_a_dead_probe_from_a_quiet_cache_and_a_filter():
    """What each combination of facts says (the live tests above produce the facts)."""
    from slabkit.capturing.zeros import zero_notes
    busy = [{"active_objs": 100, "num_objs": 120}, {"active_objs": 140, "num_objs": 160}]
    idle = [{"active_objs": 100, "num_objs": 120}] * 3
    assert zero_notes(_meta(total_allocs=5, probe_fired=False)) == []
    dead = zero_notes(_meta(probe_fired=False), busy)[0]
    assert dead.startswith("WARNING: 0 allocations, and the probe never fired")
    assert "active objects 100 -> 140" in dead
    quiet = zero_notes(_meta(probe_fired=True), idle)[0]
    assert quiet.startswith("0 allocations: the probe fired") and "had no allocation" in quiet
    unknown = zero_notes(_meta(backend="perf", probe_fired=None), busy)[0]
    assert unknown.startswith("WARNING: 0 allocations, yet slabinfo shows the cache in use")
    assert "an idle cache" in zero_notes(_meta(backend="perf"), idle)[0]
    nobody = zero_notes(_meta(pid_filter=7, probe_fired=True, filtered_out=0), idle)[0]
    assert nobody == ("0 allocations from pid 7: the probe fired, but filp had no allocation "
                      "from any process during the capture")
