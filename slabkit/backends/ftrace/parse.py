"""Parse a ``trace_pipe`` text written by the ftrace backend.

trace_pipe has no end marker; the kernel's own count is the check instead: the ``read
events`` of the instance's per-CPU stats, saved at the end of the capture (``ftrace.stats.txt``),
is the number of entries it passed through ``trace_pipe``. A file holding more entries than
that (appended to, twice over, or forged) is refused; fewer is noted. Lines that are not
trace entries are counted and noted.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from slabkit.backends import Parsed
from slabkit.backends._tables import build_tables, keep_process
from slabkit.backends.ftrace.program import STATS, TASKS
from slabkit.backends.ftrace.tasks import read_tasks
from slabkit.errors import ParseError
from slabkit.host.tracefs import sum_stats

if TYPE_CHECKING:
    from slabkit.plan import Plan


# --------------------------------------------------------------------------------------------
# parsing

#: a new entry starts at every line that is not a " => frame" line
_ENTRY_SPLIT = re.compile(r"\n(?! =>)")
_STACK_HEAD = ": <stack trace>"
_LOST_RE = re.compile(r"CPU:(\d+) \[LOST (\d+) EVENTS\]")
_SYM_ADDR = re.compile(r"^\s*=>\s*(?P<sym>.*?)\s*<(?P<addr>[0-9a-fA-F]+)>\s*$")


def iter_entries(path: Path, chunk_chars: int = 1 << 23) -> Iterator[str]:
    """The entries of a trace_pipe text: an event line, or a stack header with its frames."""
    with open(path, errors="replace", newline="\n") as f:
        carry = ""
        while True:
            data = f.read(chunk_chars)
            if not data:
                break
            parts = _ENTRY_SPLIT.split(carry + data)
            # the last split point was decided without seeing what follows it: keep the last
            # two parts back (an entry's frames may continue in the next chunk)
            carry = "\n".join(parts[-2:])
            yield from parts[:-2]
        if carry.strip():
            yield carry.rstrip("\n")


class _Tasks(dict):
    """Cache: the text before ``[cpu]`` -> (tgid, tid, comm); few distinct values repeat."""

    def __missing__(self, left: str) -> tuple[int | None, int, str | None]:
        s = left.rstrip()
        tgid = None
        if s.endswith(")"):
            o = s.rfind("(")
            t = s[o + 1:-1].strip()
            tgid = int(t) if t.isdigit() else None
            s = s[:o].rstrip()
        dash = s.rfind("-")
        try:
            tid = int(s[dash + 1:])
        except ValueError:
            raise ParseError("not an ftrace line (comm-tid expected)", line=left) from None
        comm = s[:dash].strip()
        value = (tgid, tid, None if comm == "<...>" else comm)
        self[left] = value
        return value


def _split_prefix(prefix: str, tasks: _Tasks) -> tuple[str, tuple[int | None, int, str | None]]:
    """``'   comm-12 (  12) [001] ..... 1.5'`` -> ("001", (12, 12, "comm"))."""
    b = prefix.rfind("[")
    e = prefix.find("]", b)
    return prefix[b + 1:e], tasks[prefix[:b]]


def _frame_line(line: str) -> str:
    """`` => f+0x3c/0x110 <ffffffff816bdd0c>`` -> ``0xffffffff816bdd0c : f+0x3c/0x110``, a form
    :func:`slabkit.model.stacks.parse_frame` reads with the address; other forms pass through."""
    m = _SYM_ADDR.match(line)
    if m:
        return f"0x{m.group('addr')} : {m.group('sym')}"
    return line.strip()


_NEWTASK = ": task_newtask: "
_RENAME = ": task_rename: "
_NEWTASK_RE = re.compile(r"pid=(\d+) comm=(.*) clone_flags=([0-9a-fA-F]+) oom_score_adj=")
_RENAME_RE = re.compile(r"(?:pid=(\d+) )?oldcomm=(.*) newcomm=(.*) oom_score_adj=")
CLONE_THREAD = 0x00010000


class _Timeline:
    """What the task events say about each thread id, in output order.

    A thread id's *epochs*: 0 until its first task event, then one more after each. A
    ``task_newtask`` starts a new task on the id (comm copied from its creator; tgid the
    creator's with CLONE_THREAD, else its own id); a ``task_rename`` (exec, prctl, a write
    to /proc/PID/comm) changes the comm, and says the comm before.
    """

    def __init__(self) -> None:
        self.epoch: dict[int, int] = {}
        #: tid -> per epoch >= 1: (tgid or None, comm, started by newtask)
        self.starts: dict[int, list[tuple[int | None, str, bool]]] = {}
        #: tid -> comm of epoch 0 when the first event was a rename
        self.comm_before: dict[int, str] = {}
        #: (tid, epoch) -> the comm its last line printed
        self.printed: dict[tuple[int, int], str] = {}
        self.last: dict[int, str] = {}

    def event(self, rest: str, task: tuple, marker: str) -> None:
        """One task event line: ``rest`` is the text after ``marker``."""
        if marker == _NEWTASK:
            m = _NEWTASK_RE.match(rest)
            if not m:
                return
            tid = int(m.group(1))
            thread = int(m.group(3), 16) & CLONE_THREAD
            self._start(tid, ((task[0] if thread else tid), m.group(2), True))
        else:
            m = _RENAME_RE.match(rest)
            if not m:
                return
            tid = int(m.group(1)) if m.group(1) else task[1]
            if not self.starts.get(tid):
                self.comm_before.setdefault(tid, m.group(2))
            self._start(tid, (None, m.group(3), False))

    def _start(self, tid: int, start: tuple[int | None, str, bool]) -> None:
        ep = self.epoch.get(tid, 0)
        if tid in self.last:
            self.printed[(tid, ep)] = self.last.pop(tid)
        self.starts.setdefault(tid, []).append(start)
        self.epoch[tid] = ep + 1

    def close(self) -> None:
        for tid, comm in self.last.items():
            self.printed[(tid, self.epoch.get(tid, 0))] = comm
        self.last.clear()

    def resolve(self, tgid: int | None, tid: int, comm: str | None, ep: int,
                known: dict[int, tuple[int | None, str | None]]
                ) -> tuple[int | None, str | None]:
        """The (tgid, comm) of an event printed as ``comm-tid (tgid)`` in epoch ``ep``."""
        starts = self.starts.get(tid, [])
        last_new = max((i + 1 for i, s in enumerate(starts) if s[2]), default=0)
        end_tgid, end_comm = known.get(tid, (None, None))
        if ep > 0:
            new_tgid, new_comm, _ = starts[ep - 1]
            comm = new_comm
            if new_tgid is not None:
                tgid = new_tgid
        elif tid in self.comm_before:
            comm = self.comm_before[tid]
        elif not starts and end_comm:
            comm = end_comm        # one task, one comm all along: the end's lookup is exact
        else:
            comm = self.printed.get((tid, ep), comm)
        if ep >= last_new and end_tgid is not None and not (ep > 0 and starts[ep - 1][0]):
            tgid = end_tgid        # the task alive at the end (or last seen) on this id
        return tgid, comm


def _resolve_tasks(counts: dict[tuple, list[int]], timeline: _Timeline,
                   known: dict[int, tuple[int | None, str | None]]
                   ) -> tuple[dict[tuple, list[int]], int, int]:
    """Rows keyed ``(tgid, tid, comm, stack_id, epoch)`` as printed -> ``(tgid, tid, comm,
    stack_id)`` as they were at event time (:class:`_Timeline`, ``known`` from
    :func:`read_tasks`). A tgid still unknown is taken from another row of the same thread
    and epoch. Returns (counts, events printed unknown then filled, events whose printed comm
    or tgid was stale and corrected)."""
    pid_of: dict[tuple[int, int], int] = {}
    for pid, tid, _, _, ep in counts:
        if pid is not None:
            pid_of.setdefault((tid, ep), pid)
    out: dict[tuple, list[int]] = {}
    filled = corrected = 0
    for (pid, tid, comm, sid, ep), c in counts.items():
        tgid, name = timeline.resolve(pid, tid, comm, ep, known)
        if tgid is None:
            tgid = pid_of.get((tid, ep))
        if (pid is None and tgid is not None) or (comm is None and name is not None):
            filled += c[0]
        elif (pid is not None and tgid != pid) or (comm is not None and name != comm):
            corrected += c[0]
        key = (tgid, tid, name, sid)
        d = out.get(key)
        if d is None:
            out[key] = list(c)
        else:
            d[0] += c[0]
            d[1] += c[1]
    return out, filled, corrected


def read_events(stats: Path) -> int | None:
    """The entries the kernel passed through ``trace_pipe`` (the ``read events`` of every
    CPU in the instance's stats, saved at the end of the capture); None without that file."""
    try:
        text = stats.read_text(errors="replace")
    except FileNotFoundError:
        return None
    return sum_stats(text).get("read events")


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a ``trace_pipe`` text written by :class:`FtraceBackend` (see module doc).

    Each event is paired with the ``<stack trace>`` entry that follows it on the same CPU and
    thread (a per-CPU stack of pending events handles an interrupt's event nested between an
    event and its stack). An event whose stack was lost is counted with stack_id -1; a stack
    whose event was lost is counted from the stack entry's own comm/tid/tgid. Task events
    (``task_newtask``, ``task_rename``) give each event its comm and tgid at event time.
    """
    path = Path(path)
    if not path.is_file():
        raise ParseError("ftrace output is missing", path=str(path))
    markers = [f": {e.split(':', 1)[1]}: " for e in plan.alloc_events]
    kmalloc = plan.strategy == "kmalloc-size-class"
    tasks = _Tasks()
    timeline = _Timeline()
    epoch = timeline.epoch
    last = timeline.last
    #: per CPU: events waiting for their stack: (task, bytes_req or None for a task event, epoch)
    pending: dict[str, list[tuple[tuple, int | None, int]]] = {}
    counts: dict[tuple, list[int]] = {}
    stack_keys: dict[str, int] = {}       # frames text -> stack_id
    lost_lines = 0
    unknown = 0
    entries = 0           # ring buffer entries: events (allocations, task events) and stacks

    def add(task: tuple, sid: int, req: int, ep: int) -> None:
        key = (task[0], task[1], task[2], sid, ep)
        c = counts.get(key)
        if c is None:
            counts[key] = [1, req]
        else:
            c[0] += 1
            c[1] += req

    for entry in iter_entries(path):
        head, _, frames = entry.partition("\n")
        if head.endswith(_STACK_HEAD):
            entries += 1
            cpu, task = _split_prefix(head[:-len(_STACK_HEAD)], tasks)
            stack = pending.get(cpu)
            if stack and stack[-1][0][1] == task[1]:
                ev_task, req, ep = stack.pop()
                if req is None:        # a task event's stack: not an allocation
                    continue
            else:  # its event was lost (overwritten): count it from the stack entry
                ev_task, req, ep = task, 0, epoch.get(task[1], 0)
            sid = stack_keys.get(frames)
            if sid is None:
                sid = stack_keys[frames] = len(stack_keys)
            add(ev_task, sid, req, ep)
            continue
        for marker in markers:
            i = head.find(marker)
            if i >= 0:
                break
        else:
            if head.startswith("CPU:") and (m := _LOST_RE.search(head)):
                lost_lines += int(m.group(2))
            elif (marker := _NEWTASK if _NEWTASK in head else
                  _RENAME if _RENAME in head else None):
                i = head.find(marker)
                entries += 1
                cpu, task = _split_prefix(head[:i], tasks)
                timeline.event(head[i + len(marker):], task, marker)
                pending.setdefault(cpu, []).append((task, None, 0))
            elif head.strip() and not head.lstrip().startswith("#"):
                unknown += 1
            continue
        entries += 1
        cpu, task = _split_prefix(head[:i], tasks)
        req = 0
        if kmalloc:
            j = head.find(" bytes_req=", i)
            if j >= 0:
                k = head.find(" ", j + 11)
                req = int(head[j + 11:k if k >= 0 else None])
        if task[2] is not None:
            last[task[1]] = task[2]
        pending.setdefault(cpu, []).append((task, req, epoch.get(task[1], 0)))
    read = read_events(path.parent / STATS)
    if read is not None and entries > read:
        raise ParseError.forged(f"the file holds {entries} trace entries, but the kernel passed "
                                f"{read} through trace_pipe ({STATS})", path=str(path))
    for stack in pending.values():     # events whose stack never came
        for task, req, ep in stack:
            if req is not None:
                add(task, -1, req, ep)
    timeline.close()

    counts, filled, corrected = _resolve_tasks(counts, timeline, read_tasks(path.parent / TASKS))
    counts, unknown_process = keep_process(counts, plan)
    lines_by_id = {sid: [_frame_line(l) for l in text.split("\n") if l.strip()]
                   for text, sid in stack_keys.items()}
    allocs, frames = build_tables(counts, {}, plan, meta, frame_lines=lines_by_id)
    notes = []
    if lost_lines:
        notes.append(f"trace_pipe printed [LOST ... EVENTS] markers for {lost_lines} entries "
                     "(also counted in the overrun loss)")
    if filled:
        notes.append(f"{filled} events were printed before the kernel saved their task's "
                     "comm/tgid (it does at the next context switch): attributed through the "
                     f"task events, the thread id's other events or {TASKS}")
    if corrected:
        notes.append(f"{corrected} events printed a comm or tgid left by an earlier task of the "
                     "same pid, or one from after a rename: attributed by the task events "
                     f"(task_newtask, task_rename) or the end-of-capture lookup ({TASKS})")
    if read is not None and entries < read:
        notes.append(f"{read - entries} trace entries the kernel passed through trace_pipe are "
                     "not in the file (was it cut short?): counts may be short")
    if unknown:
        notes.append(f"WARNING: {unknown} lines of the ftrace output were not trace entries and "
                     "were skipped: the file may be damaged or edited")
    if unknown_process:
        notes.append(f"{unknown_process} events of threads whose process could not be told "
                     f"were left out of the pid filter (process {plan.pid})")
    return Parsed(allocs=allocs, frames=frames, losses={}, notes=notes, estimated=False)
