"""tracefs instances: a private ring buffer per capture, and taking one down again.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slabkit.host.target import Target


# --------------------------------------------------------------------------------------------
# tracefs state

def remove_instance(target: "Target", tracefs: str, name: str, *,
                    timeout_s: float = 5.0) -> None:
    """Disable, un-trigger and remove the tracefs instance ``name``; tolerant of partial state.

    Used at the end of every ftrace capture and by ``slabkit cleanup`` for instances a killed
    run left. ``rmdir`` fails with EBUSY while a reader still has ``trace_pipe`` open: it is
    retried for ``timeout_s``, then the OSError is raised.
    """
    base = f"{tracefs}/instances/{name}"
    if not target.exists(base):
        return
    for path in (f"{base}/tracing_on", f"{base}/events/enable"):
        try:
            target.write_text(path, "0")
        except OSError:
            pass
    # triggers: rmdir clears them too, but say so explicitly (older kernels, manual runs)
    kmem = f"{base}/events/kmem"
    try:
        events = target.listdir(kmem)
    except OSError:
        events = []
    paths = [f"{kmem}/{ev}/{f}" for ev in events for f in ("trigger", "filter")]
    texts = target.read_many(paths) if paths else {}   # one round trip on SSH targets
    for ev in events:
        _clear_event(target, f"{kmem}/{ev}", texts.get(f"{kmem}/{ev}/trigger"),
                     texts.get(f"{kmem}/{ev}/filter"))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            target.rmdir(base)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _clear_event(target: "Target", evdir: str, triggers: str | None,
                 filter_text: str | None) -> None:
    """Remove every trigger and the filter of one event folder; ignore what is not there."""
    for line in (triggers or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cmd = line.split(" if ", 1)[0].split(":", 1)[0].strip()
        try:
            target.write_text(f"{evdir}/trigger", f"!{cmd}")
        except OSError:
            pass
    if (filter_text or "").strip() not in ("", "none"):
        try:
            target.write_text(f"{evdir}/filter", "0")
        except OSError:
            pass


def read_stats(target: "Target", base: str) -> tuple[dict[str, int], str]:
    """Sum the per-CPU ring buffer stats of an instance: (numbers by name, raw text)."""
    try:
        cpus = [c for c in target.listdir(f"{base}/per_cpu") if c.startswith("cpu")]
    except OSError:
        return {}, ""
    texts = target.read_many([f"{base}/per_cpu/{c}/stats" for c in cpus])
    total: dict[str, int] = {}
    raw = []
    for path, text in texts.items():
        if not text:
            continue
        raw.append(f"# {path}\n{text}")
        for line in text.splitlines():
            k, sep, v = line.partition(":")
            v = v.strip()
            if sep and v.isdigit():
                total[k.strip()] = total.get(k.strip(), 0) + int(v)
    return total, "".join(raw)

