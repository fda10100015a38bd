"""Run a real capture around a workload whose allocation count the test knows."""
from __future__ import annotations

import threading
from typing import Callable

import slabkit.capturing.run as capture_mod
from slabkit.model.tables import Capture


def capture_around(cache: str, work: Callable[[], None], *, seconds: float = 60,
                   settle_s: float = 0.2, attach_timeout_s: float = 120, **kw) -> Capture:
    """Start ``capture(cache)``, wait until its probe is live, run ``work()``, then stop it.

    The capture ends through its stop event (as a widget's Stop button does), so it is marked
    ``interrupted``; tests that check ``complete`` use a short fixed duration instead.
    ``attach_timeout_s``: how long the probe may take to attach (a stap module build: minutes).
    """
    attached = threading.Event()
    stop = threading.Event()
    result: dict = {}

    def progress(done, total):
        attached.set()

    def run():
        try:
            result["cap"] = capture_mod.capture(cache, seconds, progress=progress,
                                                stop_event=stop, **kw)
        except BaseException as e:  # handed to the test thread below
            result["error"] = e
            attached.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        assert attached.wait(attach_timeout_s), "the probe never attached"
        if "error" not in result:
            work()
            threading.Event().wait(settle_s)
    finally:
        stop.set()
        t.join(180)
    if "error" in result:
        raise result["error"]
    return result["cap"]


def pid_rows(cap, pid):
    return cap.allocs[cap.allocs["pid"] == pid]


def assert_count(cap, pid, n):
    """The workload's count is ``n``, short of it by at most what the tracer reported lost.

    At these rates nothing is lost on a quiet machine (then the count must be exact); the
    buffers are shared with every other process's allocations from the cache, so a machine
    busy with other work may overflow them, which the losses must then account for."""
    lost, got = int(cap.meta["lost_total"]), int(pid_rows(cap, pid)["count"].sum())
    if lost == 0:
        assert got == n
    else:
        assert n - lost <= got <= n, (got, cap.meta["losses"])
