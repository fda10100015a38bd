"""Reading the process table from /proc, for tests that check what is (still) running.

``/proc/PID/stat`` is ``pid (comm) state ppid ...``; comm may hold spaces and parentheses, so
fields are split after the last ``)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Proc(NamedTuple):
    pid: int
    comm: str
    ppid: int
    start: str   # start time in clock ticks since boot: tells a reused pid apart
    state: str = "?"   # R, S, D, Z (a zombie: ended, not yet reaped), ...


def read(pid: int | str) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return Proc(int(pid), stat[stat.index("(") + 1: stat.rindex(")")], int(fields[1]), fields[19],
                fields[0])


def all_procs() -> list[Proc]:
    return [p for d in Path("/proc").iterdir() if d.name.isdigit() and (p := read(d.name))]


def start_time(pid: int) -> str | None:
    p = read(pid)
    return p.start if p else None


def children(pid: int) -> list[Proc]:
    """Direct children of ``pid``."""
    return [p for p in all_procs() if p.ppid == pid]


def descendants(pid: int) -> list[Proc]:
    """Every process below ``pid`` in the tree."""
    by_parent: dict[int, list[Proc]] = {}
    for p in all_procs():
        by_parent.setdefault(p.ppid, []).append(p)
    out, todo = [], [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def descendants_named(pid: int, comm: str) -> list[int]:
    """Pids of processes called ``comm`` below ``pid``."""
    return [p.pid for p in descendants(pid) if p.comm == comm]


def running(p: Proc) -> bool:
    """Whether the process ``p`` (as read earlier) still runs: same pid and start, not a zombie."""
    now = read(p.pid)
    return now is not None and now.start == p.start and now.state != "Z"
