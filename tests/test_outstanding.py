"""Outstanding mode: objects allocated during the capture and still live at its end."""
from __future__ import annotations

import pytest
from conftest import require_tool
from live_capture import capture_around

from bench.workload import Workload
from slabkit.backends import Options

N = 2000


@pytest.fixture
def bpftrace(live):
    require_tool("bpftrace")


def test_files_kept_open_are_outstanding_and_closed_ones_are_not(bpftrace, tmp_path):
    with Workload("hold", N, "/etc/hostname") as w:
        def work():
            assert w.go() == f"done {N}"
            assert w.go("c") == f"closed {N // 2}"
        cap = capture_around("filp", work, backend="bpftrace", base=tmp_path, mode="outstanding")
        # read while the files are still open: that is the state the capture ended in
    out = cap.outstanding
    mine = out[out["pid"] == w.pid]
    assert int(mine["count"].sum()) == N - N // 2
    assert int(cap.allocs.loc[cap.allocs["pid"] == w.pid, "count"].sum()) == N
    assert (mine["oldest_age_s"] >= mine["median_age_s"]).all()
    assert (mine["median_age_s"] > 0).all()
    stacks = cap.frames[cap.frames["stack_id"].isin(mine["stack_id"].tolist())]
    assert {"do_sys_openat2", "path_openat"} & set(stacks["function"].dropna())
    assert any("before the capture started are not seen" in n for n in cap.meta["notes"])
    assert cap.meta["lost_total"] == 0
    assert len(cap.slabinfo) >= 1


def test_a_balanced_workload_leaves_next_to_nothing_outstanding(bpftrace, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="bpftrace", base=tmp_path, mode="outstanding")
    allocated = int(cap.allocs.loc[cap.allocs["pid"] == w.pid, "count"].sum())
    live = int(cap.outstanding.loc[cap.outstanding["pid"] == w.pid, "count"].sum())
    assert allocated == N
    assert live <= 2  # none expected; allow the odd file a dying process still holds


def test_a_full_tracking_map_is_reported_loudly(bpftrace, tmp_path):
    with Workload("hold", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="bpftrace", base=tmp_path,
                             mode="outstanding", options=Options(map_keys=500))
    assert cap.meta["losses"].get("map_updates_failed", 0) > 0
    assert cap.meta["lost_total"] > 0
    assert any(n.startswith("WARNING: a bpftrace map was full") and "lower bound" in n
               for n in cap.meta["notes"])
    mine = int(cap.outstanding.loc[cap.outstanding["pid"] == w.pid, "count"].sum())
    assert 0 < mine < N
