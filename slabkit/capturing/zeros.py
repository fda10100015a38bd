"""Honest zeros: what a capture that counted nothing can say about why.

"0 allocations (complete)" alone cannot tell a quiet cache from a filter that matched no one
or a probe that never fired. Each backend says what it can (:class:`~slabkit.backends.Parsed`
``fired``: the probe ran at all; ``filtered_out``: the cache's events a pid/comm filter turned
away), the engine says when a filtered process exited, and the cache's slabinfo line sampled
during the capture says whether the cache was in use; this module turns that into the note a
zero comes with (first among the capture's notes, so the summary shows it first).
"""
from __future__ import annotations

from typing import Any


def zero_notes(meta: dict[str, Any], series: list[dict] | None = None) -> list[str]:
    """The notes for a capture with no allocation (none when it counted some).

    Reads ``meta``'s ``total_allocs``, ``cache``, ``backend``, ``pid_filter``,
    ``comm_filter``, ``probe_fired`` and ``filtered_out``; ``series``: the cache's slabinfo
    samples (``active_objs``/``num_objs``), to say whether the cache was in use."""
    if meta.get("total_allocs"):
        return []
    cache = meta.get("cache", "the cache")
    backend = meta.get("backend", "the tracer")
    fired = meta.get("probe_fired")
    turned = meta.get("filtered_out")
    who = " and ".join(part for part in (
        f"pid {meta['pid_filter']}" if meta.get("pid_filter") is not None else "",
        f"comm {meta['comm_filter']!r}" if meta.get("comm_filter") is not None else "") if part)
    used = slabinfo_activity(series or [])
    if fired is False:
        return [f"WARNING: 0 allocations, and the probe never fired during the capture (it ran "
                f"for no allocation of any cache): it is not working on this kernel, so this 0 "
                f"is not a measurement{'; ' + used if used else ''}"]
    if who:
        if turned:
            return [f"0 allocations from {who}: the probe fired, and the filter turned away "
                    f"{turned} allocations from {cache} by other processes (is {who} the one "
                    "you meant, and does it allocate from this cache?)"]
        if turned == 0 and fired:
            return [f"0 allocations from {who}: the probe fired, but {cache} had no allocation "
                    "from any process during the capture"]
        return [f"0 allocations from {who}: {backend} cannot tell whether its probe fired or "
                f"what the filter turned away{'; ' + used if used else ''}"]
    if fired:
        return [f"0 allocations: the probe fired (for other caches' allocations), and {cache} "
                "had no allocation during the capture"]
    if used:
        return [f"WARNING: 0 allocations, yet {used}: {backend} cannot tell whether its probe "
                "fired, so it may not be working here"]
    return [f"0 allocations: {backend} cannot tell whether its probe fired; the cache's "
            "slabinfo line did not change during the capture either (an idle cache)"]


def slabinfo_activity(series: list[dict]) -> str | None:
    """``"slabinfo shows the cache in use (active objects 120 -> 180)"`` when the cache's
    sampled slabinfo line changed during the capture, else None."""
    seen = [(int(r["active_objs"]), int(r["num_objs"])) for r in series
            if r.get("active_objs") is not None and r.get("num_objs") is not None]
    if len(set(seen)) < 2:
        return None
    active = [a for a, _ in seen]
    return (f"slabinfo shows the cache in use (active objects {active[0]} -> {active[-1]}, "
            f"between {min(active)} and {max(active)})")
