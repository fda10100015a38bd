"""Parse the output of the classic ``slab.stp`` script that slabkit replaces
(``shared/reference/slab.stp``).
"""
from __future__ import annotations

import re
from typing import Any

from slabkit.backends.base import Parsed
from slabkit.errors import ParseError

# --------------------------------------------------------------------------------------------
# the classic slab.stp output

_CLASSIC_HEADER = re.compile(r"^Number of (?P<cache>.*) slab allocations by process\s*$")
_CLASSIC_TOTAL = re.compile(r"^(?P<comm>.*):[ \t]+(?P<count>\d+)\s*$")
_CLASSIC_BT = "Backtrace of processes when allocating"
_CLASSIC_EXEC = re.compile(r"^Exec: (?P<comm>.*) Name: (?P<cache>\S*)\s+Count: (?P<count>\d+)\s*$")
_CLASSIC_SEP = re.compile(r"^-{3,}\s*$")
_ELISION = "[...]"


def _read_classic(text: str, path: str | None):
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if _CLASSIC_HEADER.match(l)), None)
    if start is None:
        raise ParseError("not the classic slab.stp output: no line 'Number of CACHE slab "
                         "allocations by process'", path=path)
    cache = _CLASSIC_HEADER.match(lines[start]).group("cache")  # type: ignore[union-attr]
    totals: dict[str, int] = {}
    blocks: list[tuple[str, int, list[str]]] = []
    elided_totals = elided_stacks = False
    i = start + 1
    while i < len(lines) and lines[i].strip() != _CLASSIC_BT:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.strip() == _ELISION:
            elided_totals = True
            continue
        m = _CLASSIC_TOTAL.match(line)
        if not m:
            raise ParseError("expected 'comm: count' in the per-process totals", path=path,
                             lineno=i, line=line)
        totals[m.group("comm")] = totals.get(m.group("comm"), 0) + int(m.group("count"))
    i += 1
    current: tuple[str, int, list[str]] | None = None
    while i < len(lines):
        line = lines[i]
        i += 1
        if (m := _CLASSIC_EXEC.match(line)) is not None:
            current = (m.group("comm"), int(m.group("count")), [])
            blocks.append(current)
        elif _CLASSIC_SEP.match(line):
            current = None
        elif line.strip() == _ELISION:
            elided_stacks = True
            current = None  # the listing was cut here: the rest of this stack is not shown
        elif not line.strip():
            continue
        elif current is not None:
            current[2].append(line.strip())
        else:
            raise ParseError("frame line outside an 'Exec: ...' block", path=path, lineno=i,
                             line=line)
    return cache, totals, blocks, elided_totals, elided_stacks


def parse_classic(text: str, *, object_size: int | None = None, path: str | None = None
                  ) -> Parsed:
    """Read the output of the classic ``slab.stp`` into tables.

    The classic output has two sections::

        Number of size-32 slab allocations by process      <- header: the cache
        crond:  2                                          <- comm: total allocations
        Backtrace of processes when allocating
        Exec: crond Name: size-32  Count: 2                <- one stack of one comm
        0xc045d717 : kmem_cache_alloc+0x2/0x4f []          <- frames, innermost first
        -------------------------------------------------------
        [...]                                              <- the listing was cut here

    The per-process totals of the first section are authoritative. Every printed stack is one
    ``allocs`` row; whatever part of a process's total its printed stacks do not cover
    (stacks elided by ``[...]``) goes to one row with ``stack_id`` -1, so the counts summed by
    comm equal the first section. A stack cut by ``[...]`` keeps the frames shown. The script
    records no pid, tid or cgroup: those are missing, never invented; ``bytes`` is
    ``count * object_size`` when the caller passes the cache's slot size.

    Raises :class:`~slabkit.errors.ParseError` when the text is not this format or the printed
    stacks of a comm add up to more than its total.
    """
    _, totals, blocks, elided_totals, _ = _read_classic(text, path)
    stack_ids: dict[tuple[str, ...], int] = {}
    by_comm: dict[str, list[tuple[int, int]]] = {}
    for comm, count, frames in blocks:
        sid = stack_ids.setdefault(tuple(frames), len(stack_ids)) if frames else -1
        by_comm.setdefault(comm, []).append((sid, count))
    comms: list[str] = []
    sids: list[int] = []
    counts: list[int] = []
    for comm in [*totals, *(c for c in by_comm if c not in totals)]:
        printed = by_comm.get(comm, [])
        shown = sum(c for _, c in printed)
        for sid, c in printed:
            comms.append(comm)
            sids.append(sid)
            counts.append(c)
        if comm not in totals:
            if not elided_totals:
                raise ParseError(f"stacks of {comm!r} are printed but the totals do not list it",
                                 path=path)
            continue
        rest = totals[comm] - shown
        if rest < 0:
            raise ParseError(f"the printed stacks of {comm!r} add up to {shown}, more than its "
                             f"total of {totals[comm]}", path=path)
        if rest > 0:
            comms.append(comm)
            sids.append(-1)
            counts.append(rest)
    from slabkit.model import schema   # pandas: only when parsing
    from slabkit.model.stacks import frames_table
    counts_a = list(counts)
    allocs = schema.table("allocs", {
        "comm": comms, "stack_id": sids, "count": counts_a,
        **({"bytes": [c * int(object_size) for c in counts_a]} if object_size else {})})
    frames = frames_table({sid: list(fr) for fr, sid in stack_ids.items()})
    return Parsed(allocs=schema.validate(allocs, "allocs", source=path),
                  frames=schema.validate(frames, "frames", source=path))


def parse_classic_meta(text: str) -> dict[str, Any]:
    """Facts about a classic ``slab.stp`` output: ``cache`` (from its header), ``elided``
    (``[...]`` cut the listing), ``complete`` (nothing was cut), and ``allocs`` (the sum of the
    per-process totals)."""
    cache, totals, _, elided_totals, elided_stacks = _read_classic(text, None)
    return {"cache": cache, "elided": elided_totals or elided_stacks,
            "complete": not (elided_totals or elided_stacks),
            "allocs": sum(totals.values())}


