"""Which task each thread id was: looked up at the end of a capture, read back when parsing.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from slabkit.host.target import Target


#: the "comm-TID (TGID) [" of an event line or stack header; TGID may print as -------
_TASK_PREFIX = re.compile(rb"-(\d+) +\((?: *\d+|-------)\) \[")
#: at most this many live threads are looked up in /proc at the end of a capture
PROC_LOOKUPS = 5000


def seen_tids(path: Path, chunk_bytes: int = 1 << 24) -> dict[int, int]:
    """Thread id -> number of lines (events, stacks) it printed in a trace_pipe text."""
    found: dict[int, int] = {}
    with open(path, "rb") as f:
        tail = b""
        while True:
            data = f.read(chunk_bytes)
            buf = tail + data
            # a match is < 64 bytes: one starting before the last 64 is whole in buf; the
            # rest are found again in the kept tail with the next chunk
            cut = len(buf) - 64 if data else len(buf)
            for m in _TASK_PREFIX.finditer(buf):
                if m.start() < cut:
                    t = int(m.group(1))
                    found[t] = found.get(t, 0) + 1
            if not data:
                return found
            tail = buf[max(cut, 0):]


def save_tasks(target: "Target", tracefs: str, raw: Path, out: Path) -> int:
    """Look up the comm and tgid of every thread the output shows; write ``tid tgid comm``.

    ftrace prints comm and tgid from maps the kernel fills at a task's next context switch
    after an event, so a busy task's lines read at once through trace_pipe print unknown
    (checked here: a CPU-bound ``slabwork loop`` printed ``<...>-PID (-------)`` on every
    line), or print what an earlier task of the same pid left there (CI saw ``bash`` on the
    first lines of a ``slabwork`` whose pid had been a bash's). At the end of the capture
    ``/proc/<tid>/status`` is exact for live threads; ``saved_tgids``/``saved_cmdlines`` (by
    then updated) cover threads that exited. The parser uses these for threads with no task
    event in the capture. Returns how many threads were resolved.
    """
    counts = seen_tids(raw)
    header = "# tid tgid comm: threads of the capture, looked up at its end (/proc, saved_*)"
    if not counts:
        out.write_text(header + "\n")
        return 0
    tids = set(counts)
    tgid: dict[int, int] = {}
    comm: dict[int, str] = {}
    busiest = sorted(tids, key=lambda t: -counts[t])[:PROC_LOOKUPS]
    status = target.read_many([f"/proc/{t}/status" for t in busiest])
    for t in busiest:
        for line in (status.get(f"/proc/{t}/status") or "").splitlines():
            key, _, value = line.partition(":")
            if key == "Tgid" and value.strip().isdigit():
                tgid[t] = int(value)
            elif key == "Name":
                comm[t] = value.strip()
    maps = target.read_many([f"{tracefs}/saved_tgids", f"{tracefs}/saved_cmdlines"])
    for line in (maps.get(f"{tracefs}/saved_tgids") or "").splitlines():
        a, _, b = line.partition(" ")
        if a.isdigit() and b.strip().isdigit() and int(a) in tids and int(b) > 0:
            tgid.setdefault(int(a), int(b))
    for line in (maps.get(f"{tracefs}/saved_cmdlines") or "").splitlines():
        a, _, b = line.partition(" ")
        if a.isdigit() and int(a) in tids and b and b != "<...>":
            comm.setdefault(int(a), b)
    lines = [header]
    lines += [f"{t}\t{tgid.get(t, '-')}\t{comm.get(t, '')}" for t in sorted(tids)
              if t in tgid or t in comm]
    out.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def read_tasks(path: Path) -> dict[int, tuple[int | None, str | None]]:
    """``ftrace.tasks.txt`` (see :func:`save_tasks`): tid -> (tgid, comm)."""
    out: dict[int, tuple[int | None, str | None]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if not line or line.startswith("#"):
            continue
        tid, tg, comm = (line.split("\t", 2) + ["", ""])[:3]
        if tid.isdigit():
            out[int(tid)] = (int(tg) if tg.isdigit() else None, comm or None)
    return out

