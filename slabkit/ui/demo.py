"""``make demo`` / ``slabkit demo``: the main job end to end.

As root: the cache table, the busiest cache right now, a capture of it for ``duration``
seconds, its summary, and a shareable HTML report. Without root: says why, then shows what
works without root: a sample capture shipped with slabkit (:mod:`slabkit.samples`) and its
report.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from slabkit.errors import PermissionNeeded, SlabkitError
from slabkit.ui.summary import summarize

#: the sample capture shown without root
DEMO_SAMPLE = "bpftrace-filp"


def _say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(duration: float = 10.0, cache: str | None = None,
             report_dir: str | os.PathLike = "data/reports") -> int:
    from slabkit.host import slabinfo
    _say("== slab caches, biggest first ==")
    try:
        table = slabinfo.caches().sort_values("memory_bytes", ascending=False)
    except PermissionNeeded as e:
        _say(f"{e}.")
        _say("Without root slabkit cannot read /proc/slabinfo or trace the kernel; showing a "
             "sample capture recorded on another machine instead.\n")
        return _demo_from_sample(report_dir)
    cols = ["name", "kind", "active_objs", "objsize", "memory_bytes", "utilisation", "aliases"]
    _say(table[cols].head(15).to_string(index=False))

    from slabkit.capturing.run import capture
    from slabkit.host.activity import cache_activity
    if cache is None:
        try:
            act = cache_activity(2)
            _say(f"\n== busiest caches over 2 s ({act['basis'].iloc[0] if len(act) else '-'}) ==")
            _say(act.head(5).to_string(index=False))
            busy = act[act["allocs"] > 0]
            cache = str(busy.iloc[0]["name"]) if len(busy) else "filp"
        except SlabkitError as e:
            _say(f"could not measure activity ({e}); capturing filp")
            cache = "filp"
    _say(f"\n== capturing {cache} for {duration:g} s ==")
    try:
        cap = capture(cache, duration)
    except SlabkitError as e:
        _say(f"capture failed: {e}")
        _say("showing a sample capture instead.\n")
        return _demo_from_sample(report_dir)
    _say(summarize(cap).to_text())
    _write_report(cap.path, report_dir)
    return 0


def _demo_from_sample(report_dir) -> int:
    from slabkit.capturing.load import load
    from slabkit.samples import sample_path
    cap = load(sample_path(DEMO_SAMPLE))
    _say(summarize(cap).to_text())
    _write_report(cap.path, report_dir)
    return 0


def _write_report(capture_path, report_dir) -> None:
    try:
        from slabkit.ui.report import write_report
    except ImportError:
        return
    out = Path(report_dir) / f"{Path(capture_path).name}.html"
    _say("\n== writing the report ==")
    try:
        path = write_report(capture_path, out)
        _say(f"report: {path} (open it in a browser; it needs no Jupyter)")
    except SlabkitError as e:
        _say(f"report failed: {e}")
    sys.stdout.flush()
