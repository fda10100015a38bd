"""Run a real capture around a workload whose allocation count the test knows."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import threading
from pathlib import Path
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


@functools.lru_cache(maxsize=None)
def kernel_struct_size(name: str) -> int:
    """``sizeof(struct name)`` on the running kernel, from its BTF (``bpftool btf dump``):
    what a ``kmalloc(sizeof(*p))`` of that struct requests (``bytes_req``)."""
    from conftest import require_tool
    bpftool = require_tool("bpftool")
    dump = subprocess.run([bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format",
                           "raw"], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"^\[\d+\] STRUCT '{re.escape(name)}' size=(\d+) ", dump, re.M)
    assert m, f"struct {name} is not in this kernel's BTF"
    return int(m.group(1))


def pid_rows(cap, pid):
    return cap.allocs[cap.allocs["pid"] == pid]


def raw_losses(cap) -> tuple[dict[str, int], int]:
    """What the raw tracer output in the capture folder says was lost, read here without the
    parsers: (events lost by kind, stack samples lost; for bpftrace, whose helper errors say
    only which program line failed, -1: see :func:`assert_losses_match_the_raw_output`)."""
    folder, backend = Path(cap.path), cap.meta["backend"]
    if backend == "bpf":
        stats = {}
        for line in (folder / "slabcount.tsv").read_text().splitlines():
            kind, *rest = line.split("\t")
            if kind == "stat":
                stats[rest[0]] = int(rest[1])
        # slabcount.bpf.c: STAT_COUNT_FULL is an event not counted; the stack stats lose
        # only a sample's stack; cache_map_full loses nothing (names compared again)
        lost = {k: v for k, v in stats.items() if k == "count_map_full" and v}
        return lost, sum(stats.get(k, 0) for k in ("stack_failed", "stack_map_full",
                                                     "sample_map_full"))
    if backend == "bpftrace":
        errors = 0
        for line in (folder / "bpftrace.jsonl").read_text().splitlines():
            doc = json.loads(line) if line.strip() else {}
            if doc.get("type") == "helper_error":
                errors += 1
            elif doc.get("type") == "lost_events":
                errors += int(doc["data"]["events"])
        return {"helper_errors": errors}, -1
    if backend == "perf":
        text = (folder / "perf.script.txt").read_text(errors="replace")
        return {"lost_samples": sum(int(n) for n in
                                    re.findall(r"PERF_RECORD_LOST lost (\d+)", text))}, 0
    if backend == "ftrace":
        text = (folder / "ftrace.stats.txt").read_text()
        return {"overrun": sum(int(n) for n in re.findall(r"^overrun: (\d+)$", text, re.M)),
                "dropped_events": sum(int(n) for n in
                                      re.findall(r"^dropped events: (\d+)$", text, re.M))}, 0
    raise AssertionError(f"no raw loss reader for backend {backend}")


def assert_losses_match_the_raw_output(cap) -> None:
    """The capture's ``losses``, ``lost_total`` and ``stack_losses`` are, by value, what its
    raw output says (not just the right kinds)."""
    meta = cap.meta
    lost, stack_lost = raw_losses(cap)
    losses, stack = meta["losses"], meta.get("stack_losses") or {}
    assert meta["lost_total"] == sum(losses.values()), meta
    if meta["backend"] == "bpftrace":
        # every helper error is either an event lost (a counting map was full) or a stack
        assert sum(losses.values()) + sum(stack.values()) == lost["helper_errors"], meta
    else:
        assert losses == lost, (losses, lost)
        assert sum(stack.values()) == stack_lost, (stack, stack_lost)


def assert_count(cap, pid, n):
    """The workload's count is ``n``, short of it by at most what the tracer reported lost.

    At these rates nothing is lost on a quiet machine (then the count must be exact); the
    buffers are shared with every other process's allocations from the cache, so a machine
    busy with other work may overflow them, which the losses must then account for. The
    losses themselves must be what the raw output says."""
    assert_losses_match_the_raw_output(cap)
    lost, got = int(cap.meta["lost_total"]), int(pid_rows(cap, pid)["count"].sum())
    if lost == 0:
        assert got == n
    else:
        assert n - lost <= got <= n, (got, cap.meta["losses"])
