"""ftrace backend: a private tracefs instance, no tool but ``cat``.

What runs (``slabkit capture filp --backend ftrace --print-program``)::

    cd /sys/kernel/tracing/instances
    mkdir slabkit-<pid>-<start>-<n>                      # a private ring buffer
    echo 8192 > INSTANCE/buffer_size_kb                   # per CPU
    echo 1 > INSTANCE/options/record-tgid                 # print the process (tgid) too
    echo 1 > INSTANCE/options/stacktrace                  # a kernel stack after each event
    echo 1 > INSTANCE/options/sym-offset                  # frames as func+0x3c/0x110 [module]
    echo 1 > INSTANCE/options/sym-addr                    # ... <ffffffff816bdd0c>
    echo 'bytes_alloc == 192 && name == "filp"' > INSTANCE/events/kmem/kmem_cache_alloc/filter
    echo 1 > INSTANCE/events/kmem/kmem_cache_alloc/enable
    cat INSTANCE/trace_pipe > ftrace.txt                  # until the capture ends
    echo 0 > INSTANCE/events/kmem/kmem_cache_alloc/enable # then drain, read losses, rmdir

Why ``options/stacktrace`` and not a ``stacktrace if <filter>`` trigger: a trigger keeps the
tracepoint live in "soft disabled" mode (``enable`` reads ``0*``) and fires whether or not the
event is enabled. Checked here on 6.18: with the trigger set, a window with the event enabled
for 1,041 events printed 21,540 stacks (every matching allocation from trigger-set to
trigger-removal), so stacks cannot be tied to the capture window. ``options/stacktrace`` of the
instance records one stack right after each event the instance records, on the same CPU.

Output (``trace_pipe``, record-tgid on), one event then its stack::

        slabwork-20809   (  20809) [001] .....   701.885203: kmem_cache_alloc: call_site=... bytes_req=184 ...
        ^comm    ^tid     ^tgid     ^cpu ^flags  ^time       ^event           ^fields
        slabwork-20809   (  20809) [001] .....   701.885297: <stack trace>
     => trace_event_raw_event_kmem_cache_alloc+0xe1/0x160 <ffffffff815cc091>
     => kmem_cache_alloc_noprof+0x227/0x570 <ffffffff81638677>
     => alloc_empty_file+0x3c/0x110 <ffffffff816bdd0c>

The first frame is the tracing glue (left in: the analysis layer skips it). ``comm`` and
``tgid`` are looked up when the line is *printed*, from maps the kernel fills at a task's
next context switch after an event: a comm can be stale (``bash`` for a pid that exec'ed
``slabwork`` just after), and a task's first events, read at once, print ``<...>-TID
(-------)`` (a CPU-bound task may print so on every line). Those are filled from the same
thread's other lines, else from ``saved_tgids``/``saved_cmdlines``/``/proc`` read when the
capture ends (``ftrace.tasks.txt``); what stays unknown is missing.
Losses are the instance's ``per_cpu/cpu*/stats`` (``overrun``, ``dropped events``), counted
in ring-buffer entries (an event and its stack are two); ``trace_pipe`` also prints
``CPU:N [LOST M EVENTS]`` lines, reported in the notes.

This module also holds what both streaming backends (this one and ``perf``) share: the kernel
filter expression (:func:`kernel_filter`) and the allocs/frames builder (:func:`build_tables`).
"""
from __future__ import annotations

import itertools
import re
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from .. import schema
from ..errors import ParseError, ProbeFailed
from ..frames import frames_table
from ..names import check_comm
from ..runner import instance_name, register, stop_process, unregister
from ..target import LocalTarget
from . import Backend, Options, Parsed, Program, RunResult

if TYPE_CHECKING:
    from ..control import RunControl
    from ..facts import KernelFacts
    from ..plan import Plan
    from ..target import Target

RAW = "ftrace.txt"
STDERR = "ftrace.stderr"
STATS = "ftrace.stats.txt"
TASKS = "ftrace.tasks.txt"

#: instance options set before enabling (name -> value); absent ones are skipped
INSTANCE_OPTIONS = {"record-tgid": "1", "stacktrace": "1", "sym-offset": "1", "sym-addr": "1"}
#: how long to wait for trace_pipe to drain after the event is disabled
DRAIN_TIMEOUT_S = 10.0

_instance_seq = itertools.count()


# --------------------------------------------------------------------------------------------
# shared by the streaming backends

def kernel_filter(plan: "Plan") -> str:
    """The in-kernel filter for the plan's events: :meth:`Plan.tracefs_filter` plus the comm.

    ``comm`` is a special field every tracefs event filter accepts (checked here with ftrace
    and ``perf --filter``); the value is validated by :func:`slabkit.names.check_comm`.
    """
    expr = plan.tracefs_filter()
    if plan.comm is not None:
        term = f'comm == "{check_comm(plan.comm)}"'
        expr = f"{expr} && {term}" if expr else term
    return expr


def build_tables(counts: dict[tuple, list[int]], stacks: dict[tuple[str, ...], int],
                 plan: "Plan", meta: dict, *, scale: int = 1,
                 frame_lines: dict[int, list[str]] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``allocs`` (without host) and ``frames`` from aggregated streaming events.

    ``counts``: ``(pid, tid, comm, stack_id) -> [count, bytes_req_sum]`` (pid/comm may be
    None: unknown). ``stacks``: frame-line tuple -> stack_id (lines innermost first, any form
    :func:`slabkit.frames.parse_frame` reads; ``frame_lines`` overrides the lines per id).
    ``scale`` multiplies counts (sampling 1 in N).
    """
    slot = int(plan.match_bytes_alloc or meta.get("slab_size") or 0) or None
    n = len(counts)
    keys = list(counts)
    cnt = np.fromiter((counts[k][0] for k in keys), dtype=np.int64, count=n) * scale
    allocs = pd.DataFrame({
        "pid": pd.array([k[0] for k in keys], dtype="Int64"),
        "tid": pd.array([k[1] for k in keys], dtype="Int64"),
        "comm": pd.array([k[2] for k in keys], dtype="string"),
        "cgroup": pd.array([pd.NA] * n, dtype="string"),
        "stack_id": pd.array([k[3] for k in keys], dtype="Int64"),
        "count": pd.array(cnt, dtype="Int64"),
    })
    allocs["bytes"] = pd.array(cnt * slot, dtype="Int64") if slot else pd.array(
        [pd.NA] * n, dtype="Int64")
    if plan.strategy == "kmalloc-size-class":
        req = np.fromiter((counts[k][1] for k in keys), dtype=np.int64, count=n) * scale
        allocs["bytes_req"] = pd.array(req, dtype="Int64")
    allocs = allocs.sort_values("count", ascending=False, ignore_index=True, kind="stable")
    by_id = frame_lines if frame_lines is not None else {sid: list(t) for t, sid in
                                                         stacks.items()}
    frames = frames_table(by_id) if by_id else schema.empty("frames")
    return allocs, frames


# --------------------------------------------------------------------------------------------
# rendering

@dataclass
class FtraceProgram(Program):
    """The tracefs writes of an ftrace capture; ``{instance}`` is named at run time."""

    tracefs: str = "/sys/kernel/tracing"
    events: list[str] = field(default_factory=list)      # "kmem/kmem_cache_alloc"
    filter: str = ""
    buffer_kb: int = 8192
    options: dict[str, str] = field(default_factory=lambda: dict(INSTANCE_OPTIONS))


def render_text(tracefs: str, events: list[str], expr: str, buffer_kb: int,
                options: dict[str, str]) -> str:
    """The shell-like description of what :meth:`FtraceBackend.run` writes."""
    q = shlex.quote
    lines = ["# ftrace: a private tracefs instance; INSTANCE = slabkit-<pid>-<start>-<n>",
             f"cd {tracefs}/instances", "mkdir INSTANCE",
             f"echo {int(buffer_kb)} > INSTANCE/buffer_size_kb"]
    lines += [f"echo {v} > INSTANCE/options/{k}" for k, v in options.items()]
    for ev in events:
        if expr:
            lines.append(f"echo {q(expr)} > INSTANCE/events/{ev}/filter")
    lines.append("cat INSTANCE/trace_pipe > ftrace.txt &   # until the capture ends")
    lines += [f"echo 1 > INSTANCE/events/{ev}/enable" for ev in events]
    lines.append("# ... capture ...")
    lines += [f"echo 0 > INSTANCE/events/{ev}/enable" for ev in events]
    lines += ["# wait until per_cpu/cpu*/stats say entries: 0, stop cat, keep the stats",
              "rmdir INSTANCE"]
    return "\n".join(lines) + "\n"


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


_UNKNOWN_TASK = re.compile(rb"<\.\.\.>-(\d+)|-(\d+) +\(-------\)")


def unknown_tids(path: Path, chunk_bytes: int = 1 << 24) -> set[int]:
    """Thread ids whose lines printed an unknown comm (``<...>``) or tgid (``(-------)``)."""
    found: set[int] = set()
    with open(path, "rb") as f:
        tail = b""
        while True:
            data = f.read(chunk_bytes)
            if not data:
                break
            for m in _UNKNOWN_TASK.finditer(tail + data):
                found.add(int(m.group(1) or m.group(2)))
            tail = data[-64:]
    return found


def save_unknown_tasks(target: "Target", tracefs: str, raw: Path, out: Path) -> int:
    """Look up the threads the output printed as unknown and write ``tid tgid comm`` lines.

    ftrace prints comm and tgid from maps the kernel fills at a task's next context switch
    after an event, so a busy task's lines read at once through trace_pipe print unknown
    (checked here: a CPU-bound ``slabwork loop`` printed ``<...>-PID (-------)`` on every
    line). By the end of the capture the kernel's ``saved_tgids`` / ``saved_cmdlines`` usually
    know them; ``/proc/<tid>/status`` covers live tasks they miss. Returns how many resolved.
    """
    tids = unknown_tids(raw)
    header = "# tid tgid comm: threads ftrace printed as unknown, looked up at the capture's end"
    if not tids:
        out.write_text(header + "\n")
        return 0
    maps = target.read_many([f"{tracefs}/saved_tgids", f"{tracefs}/saved_cmdlines"])
    tgid: dict[int, int] = {}
    comm: dict[int, str] = {}
    for line in (maps.get(f"{tracefs}/saved_tgids") or "").splitlines():
        a, _, b = line.partition(" ")
        if a.isdigit() and b.strip().isdigit() and int(a) in tids and int(b) > 0:
            tgid[int(a)] = int(b)
    for line in (maps.get(f"{tracefs}/saved_cmdlines") or "").splitlines():
        a, _, b = line.partition(" ")
        if a.isdigit() and int(a) in tids and b and b != "<...>":
            comm[int(a)] = b
    missing = sorted(t for t in tids if t not in tgid or t not in comm)[:2000]
    status = target.read_many([f"/proc/{t}/status" for t in missing])
    for t in missing:
        for line in (status.get(f"/proc/{t}/status") or "").splitlines():
            key, _, value = line.partition(":")
            if key == "Tgid" and value.strip().isdigit():
                tgid.setdefault(t, int(value))
            elif key == "Name":
                comm.setdefault(t, value.strip())
    lines = [header]
    lines += [f"{t}\t{tgid.get(t, '-')}\t{comm.get(t, '')}" for t in sorted(tids)
              if t in tgid or t in comm]
    out.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def read_tasks(path: Path) -> dict[int, tuple[int | None, str | None]]:
    """``ftrace.tasks.txt`` (see :func:`save_unknown_tasks`): tid -> (tgid, comm)."""
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


# --------------------------------------------------------------------------------------------
# the backend

class FtraceBackend(Backend):
    name = "ftrace"
    streaming = True
    modes = ("allocs",)
    package = ""                       # tracefs only

    def unavailable(self, target: "Target", facts: "KernelFacts") -> str | None:
        if not facts.tracefs:
            return ("tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing, "
                    "as root)")
        if not target.exists(f"{facts.tracefs}/instances"):
            return "this kernel's tracefs has no instances/ folder (private ring buffers)"
        return None

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        if plan.strategy == "kprobe-cachep":
            return ("the plan needs kprobes reading the cache name through struct kmem_cache; "
                    "ftrace kprobe_events would need that struct's field offsets (debuginfo): "
                    "use bpftrace")
        if plan.mode != "allocs":
            return f"ftrace does not implement mode {plan.mode!r}"
        return None

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        tracefs = facts.tracefs or "/sys/kernel/tracing"
        events = [e.replace(":", "/") for e in plan.alloc_events]
        expr = kernel_filter(plan)
        text = render_text(tracefs, events, expr, options.buffer_kb, INSTANCE_OPTIONS)
        return FtraceProgram(backend=self.name,
                             argv=["cat", f"{tracefs}/instances/{{instance}}/trace_pipe"],
                             text=text, tracefs=tracefs, events=events, filter=expr,
                             buffer_kb=int(options.buffer_kb))

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        if not isinstance(program, FtraceProgram):
            raise ProbeFailed("the ftrace backend needs the program its render() made")
        name = instance_name(next(_instance_seq))
        base = f"{program.tracefs}/instances/{name}"
        raw = folder / RAW
        errf = folder / STDERR
        losses: dict[str, int] = {}
        try:
            target.mkdir(base)
        except OSError as e:
            raise ProbeFailed(f"cannot create tracefs instance {base}: {e}") from None
        try:
            self._configure(target, base, program)
            argv = [a.replace("{instance}", name) for a in program.argv]
            with open(raw, "wb") as out, open(errf, "wb") as err:
                reader = target.popen(argv, stdout=out, stderr=err)
                record = register(reader, argv) if isinstance(target, LocalTarget) else None
                try:
                    self._enable(target, base, program, "1")
                    control.wait_attached(lambda: True, lambda: reader.poll() is None,
                                          what="ftrace")
                    reason = control.run_for(lambda: reader.poll() is None)
                    self._enable(target, base, program, "0")
                    self._drain(target, base, reader)
                finally:
                    # cat ignores a SIGINT it inherited as ignored: TERM it at once
                    stop_process(reader, first=signal.SIGTERM, grace_s=3.0, target=target)
                    unregister(record)
            stats, stats_text = read_stats(target, base)
            (folder / STATS).write_text(stats_text)
            save_unknown_tasks(target, program.tracefs, raw, folder / TASKS)
            losses = {"overrun": stats.get("overrun", 0),
                      "dropped_events": stats.get("dropped events", 0)}
        finally:
            remove_instance(target, program.tracefs, name)
        stderr = errf.read_text(errors="replace")
        if reason == "tracer-exited":
            raise ProbeFailed("reading trace_pipe stopped early", returncode=reader.returncode,
                              stderr=stderr, raw_path=str(raw))
        return RunResult(end_reason=reason, returncode=reader.returncode, stderr=stderr,
                         losses=losses, raw_files=[RAW, STDERR, STATS, TASKS])

    @staticmethod
    def _write(target: "Target", base: str, rel: str, value: str) -> None:
        try:
            target.write_text(f"{base}/{rel}", value)
        except OSError as e:
            log = ""
            try:
                log = target.read_text(f"{base}/error_log")
            except OSError:
                pass
            raise ProbeFailed(f"writing {value!r} to {rel} of the tracefs instance failed: {e}",
                              stderr=log) from None

    def _configure(self, target: "Target", base: str, program: "FtraceProgram") -> None:
        self._write(target, base, "buffer_size_kb", str(int(program.buffer_kb)))
        # which options and events exist: one read (one round trip on SSH targets)
        have = target.read_many([f"{base}/options/{o}" for o in program.options]
                                + [f"{base}/events/{ev}/enable" for ev in program.events])
        for opt, value in program.options.items():
            if have.get(f"{base}/options/{opt}") is not None:
                self._write(target, base, f"options/{opt}", value)
            elif opt == "stacktrace":
                raise ProbeFailed("this kernel's tracefs instances have no options/stacktrace: "
                                  "no kernel stacks; use perf or bpftrace")
        for ev in program.events:
            if have.get(f"{base}/events/{ev}/enable") is None:
                raise ProbeFailed(f"this kernel has no {ev} event in tracefs")
            if program.filter:
                self._write(target, base, f"events/{ev}/filter", program.filter)

    def _enable(self, target: "Target", base: str, program: "FtraceProgram", value: str) -> None:
        for ev in program.events:
            self._write(target, base, f"events/{ev}/enable", value)

    @staticmethod
    def _drain(target: "Target", base: str, reader) -> None:
        """Wait until ``trace_pipe`` has been read empty (every CPU's ``entries: 0``)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and reader.poll() is None:
            stats, _ = read_stats(target, base)
            if stats.get("entries", 0) == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # let cat write out what it read last

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        return parse_output(folder / RAW, plan, meta)


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
    :func:`slabkit.frames.parse_frame` reads with the address; other forms pass through."""
    m = _SYM_ADDR.match(line)
    if m:
        return f"0x{m.group('addr')} : {m.group('sym')}"
    return line.strip()


def _fill_unknown_tasks(counts: dict[tuple, list[int]],
                        known: dict[int, tuple[int | None, str | None]]
                        ) -> tuple[dict[tuple, list[int]], int]:
    """Give rows whose tgid/comm printed unknown (``<...>-TID (-------)``) those of another
    row of the same thread id, else those looked up at the end of the capture (``known``,
    from :func:`read_tasks`). A thread id keeps its tgid for its life; the first known comm
    is taken (the comm may change at exec). Returns (counts, events filled)."""
    pid_of: dict[int, int] = {}
    comm_of: dict[int, str] = {}
    for pid, tid, comm, _ in counts:
        if pid is not None:
            pid_of.setdefault(tid, pid)
        if comm is not None:
            comm_of.setdefault(tid, comm)
    for tid, (tg, cm) in known.items():
        if tg is not None:
            pid_of.setdefault(tid, tg)
        if cm:
            comm_of.setdefault(tid, cm)
    out: dict[tuple, list[int]] = {}
    filled = 0
    for (pid, tid, comm, sid), c in counts.items():
        if (pid is None and tid in pid_of) or (comm is None and tid in comm_of):
            pid = pid if pid is not None else pid_of.get(tid)
            comm = comm if comm is not None else comm_of.get(tid)
            filled += c[0]
        d = out.get((pid, tid, comm, sid))
        if d is None:
            out[(pid, tid, comm, sid)] = list(c)
        else:
            d[0] += c[0]
            d[1] += c[1]
    return out, filled


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a ``trace_pipe`` text written by :class:`FtraceBackend` (see module doc).

    Each event is paired with the ``<stack trace>`` entry that follows it on the same CPU and
    thread (a per-CPU stack of pending events handles an interrupt's event nested between an
    event and its stack). An event whose stack was lost is counted with stack_id -1; a stack
    whose event was lost is counted from the stack entry's own comm/tid/tgid.
    """
    path = Path(path)
    if not path.is_file():
        raise ParseError("ftrace output is missing", path=str(path))
    markers = [f": {e.split(':', 1)[1]}: " for e in plan.alloc_events]
    kmalloc = plan.strategy == "kmalloc-size-class"
    tasks = _Tasks()
    pending: dict[str, list[tuple[tuple, int]]] = {}
    counts: dict[tuple, list[int]] = {}
    stack_keys: dict[str, int] = {}       # frames text -> stack_id
    lost_lines = 0
    unknown = 0

    def add(task: tuple, sid: int, req: int) -> None:
        key = (task[0], task[1], task[2], sid)
        c = counts.get(key)
        if c is None:
            counts[key] = [1, req]
        else:
            c[0] += 1
            c[1] += req

    for entry in iter_entries(path):
        head, _, frames = entry.partition("\n")
        if head.endswith(_STACK_HEAD):
            cpu, task = _split_prefix(head[:-len(_STACK_HEAD)], tasks)
            sid = stack_keys.get(frames)
            if sid is None:
                sid = stack_keys[frames] = len(stack_keys)
            stack = pending.get(cpu)
            if stack and stack[-1][0][1] == task[1]:
                ev_task, req = stack.pop()
                add(ev_task, sid, req)
            else:  # its event was lost (overwritten): count it from the stack entry
                add(task, sid, 0)
            continue
        for marker in markers:
            i = head.find(marker)
            if i >= 0:
                break
        else:
            if head.startswith("CPU:") and (m := _LOST_RE.search(head)):
                lost_lines += int(m.group(2))
            elif head.strip() and not head.lstrip().startswith("#"):
                unknown += 1
            continue
        cpu, task = _split_prefix(head[:i], tasks)
        req = 0
        if kmalloc:
            j = head.find(" bytes_req=", i)
            if j >= 0:
                k = head.find(" ", j + 11)
                req = int(head[j + 11:k if k >= 0 else None])
        pending.setdefault(cpu, []).append((task, req))
    for stack in pending.values():     # events whose stack never came
        for task, req in stack:
            add(task, -1, req)

    counts, filled = _fill_unknown_tasks(counts, read_tasks(path.parent / TASKS))
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
                     f"thread id's other events or {TASKS}")
    if unknown:
        notes.append(f"{unknown} lines of the ftrace output were not events and were skipped")
    return Parsed(allocs=allocs, frames=frames, losses={}, notes=notes, estimated=False)
