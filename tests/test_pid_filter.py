"""A pid filter matches the *process* (thread group) on every backend that runs here.

``slabwork threads`` allocates only from worker threads: one that exists before the capture
starts and one started during it. A filter on the thread id (perf's and ftrace's ``common_pid``)
counted 0 for it; the process's count must be exact, split over the two worker threads, with
nothing from other processes, the process's main thread or the children it forks.
"""
from __future__ import annotations

import pytest
from conftest import LIVE_BACKENDS, require_backend
from live_capture import assert_count, capture_around

from bench.workload import Workload

N = 1500


@pytest.fixture(params=LIVE_BACKENDS)
def backend(request, live):
    require_backend(request.param)
    return request.param


def test_a_pid_filter_counts_every_thread_of_the_process(backend, tmp_path):
    report: list[str] = []
    with Workload("threads", N, "/etc/hostname") as w, \
            Workload("open", N, "/etc/hostname") as other:
        def work():
            report.append(w.go())
            other.go()
        cap = capture_around("filp", work, backend=backend, base=tmp_path, pid=w.pid)
    done, count, word, *tids = report[0].split()
    assert (done, int(count), word) == ("done", 2 * N, "tids")
    workers = {int(t) for t in tids}
    assert len(workers) == 2 and w.pid not in workers
    assert set(cap.allocs["pid"]) == {w.pid}            # not the other slabwork, not anyone
    assert_count(cap, w.pid, 2 * N)
    per_thread = {int(t): int(c) for t, c in cap.allocs.groupby("tid")["count"].sum().items()}
    assert set(per_thread) <= workers                     # the main thread allocated nothing
    if int(cap.meta["lost_total"]) == 0:
        assert per_thread == {t: N for t in workers}
    assert cap.meta["plan"]["pid"] == w.pid


def test_a_pid_filter_leaves_out_the_processes_it_forks(backend, tmp_path):
    """``slabwork lifecycle``: N as ``slabwork``, N after a rename, then a forked child (a
    process of its own) makes N more: the filter on the parent counts 2N, the child none."""
    report: list[str] = []
    with Workload("lifecycle", N, "/etc/hostname") as w:
        cap = capture_around("filp", lambda: report.append(w.go()), backend=backend,
                             base=tmp_path, pid=w.pid)
    child = int(report[0].split()[-1])
    assert report[0].split()[:2] == ["done", str(3 * N)]
    assert set(cap.allocs["pid"]) == {w.pid} and child not in set(cap.allocs["tid"])
    assert_count(cap, w.pid, 2 * N)
