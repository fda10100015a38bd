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
    echo 1 > INSTANCE/events/task/task_newtask/enable     # comm at event time (see below)
    echo 1 > INSTANCE/events/task/task_rename/enable
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
next context switch after an event: a comm can be stale (CI saw ``bash`` on a slabwork's
first lines, left by an earlier task of the same pid; a renamed task's earlier lines print
the new name), and a task's first events, read at once, print ``<...>-TID (-------)`` (a
CPU-bound task may print so on every line). So the instance also records ``task_newtask``
and ``task_rename`` (exec, prctl) where the kernel has them, and the parser gives each event
the comm and tgid its task had at event time: after a task event, the one it says; before a
thread's first rename, the name it renamed from; for a thread with no task event in the
capture (one task, one comm throughout), the lookup at the capture's end (``/proc``, then
``saved_tgids``/``saved_cmdlines``: ``ftrace.tasks.txt``), else its last printed line.
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

from slabkit.model import schema
from slabkit.errors import ParseError, ProbeFailed
from slabkit.model.stacks import frames_table
from slabkit.validate import check_comm
from slabkit.host.procs import instance_name, register, stop_process, unregister
from slabkit.host.target import LocalTarget
from slabkit.backends import Backend, Options, Parsed, Program, RunResult

if TYPE_CHECKING:
    from slabkit.capturing.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.plan import Plan
    from slabkit.host.target import Target

RAW = "ftrace.txt"
STDERR = "ftrace.stderr"
STATS = "ftrace.stats.txt"
TASKS = "ftrace.tasks.txt"

#: instance options set before enabling (name -> value); absent ones are skipped
INSTANCE_OPTIONS = {"record-tgid": "1", "stacktrace": "1", "sym-offset": "1", "sym-addr": "1"}
#: events that say when a thread id's task or comm changes, recorded next to the allocations so
#: the parser knows each event's comm at event time (printed comms can be stale: module doc)
TASK_EVENTS = ("task/task_newtask", "task/task_rename")
#: how long to wait for trace_pipe to drain after the event is disabled
DRAIN_TIMEOUT_S = 10.0

_instance_seq = itertools.count()


# --------------------------------------------------------------------------------------------
# shared by the streaming backends

def kernel_filter(plan: "Plan") -> str:
    """The in-kernel filter for the plan's events: :meth:`Plan.tracefs_filter` plus the comm.

    ``comm`` is a special field every tracefs event filter accepts (checked here with ftrace
    and ``perf --filter``); the value is validated by :func:`slabkit.validate.check_comm`.
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
    :func:`slabkit.model.stacks.parse_frame` reads; ``frame_lines`` overrides the lines per id).
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
    task_events: list[str] = field(default_factory=lambda: list(TASK_EVENTS))


def render_text(tracefs: str, events: list[str], expr: str, buffer_kb: int,
                options: dict[str, str], task_events: tuple[str, ...] | list[str] = ()
                ) -> str:
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
    if task_events:
        lines.append("# task events (where the kernel has them): each event's comm at event time")
    lines += [f"echo 1 > INSTANCE/events/{ev}/enable" for ev in [*task_events, *events]]
    lines.append("# ... capture ...")
    lines += [f"echo 0 > INSTANCE/events/{ev}/enable" for ev in [*events, *task_events]]
    lines += ["# wait until per_cpu/cpu*/stats say entries: 0, stop cat, keep the stats",
              "# look up comm/tgid of the threads seen (/proc, saved_cmdlines) > ftrace.tasks.txt",
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
        task_events = list(TASK_EVENTS)
        text = render_text(tracefs, events, expr, options.buffer_kb, INSTANCE_OPTIONS,
                           task_events)
        return FtraceProgram(backend=self.name,
                             argv=["cat", f"{tracefs}/instances/{{instance}}/trace_pipe"],
                             text=text, tracefs=tracefs, events=events, filter=expr,
                             buffer_kb=int(options.buffer_kb), task_events=task_events)

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
            task_events = self._configure(target, base, program)
            argv = [a.replace("{instance}", name) for a in program.argv]
            with open(raw, "wb") as out, open(errf, "wb") as err:
                reader = target.popen(argv, stdout=out, stderr=err)
                record = register(reader, argv) if isinstance(target, LocalTarget) else None
                try:
                    self._enable(target, base, [*task_events, *program.events], "1")
                    control.wait_attached(lambda: True, lambda: reader.poll() is None,
                                          what="ftrace")
                    reason = control.run_for(lambda: reader.poll() is None)
                    self._enable(target, base, [*program.events, *task_events], "0")
                    self._drain(target, base, reader)
                finally:
                    # cat ignores a SIGINT it inherited as ignored: TERM it at once
                    stop_process(reader, first=signal.SIGTERM, grace_s=3.0, target=target)
                    unregister(record)
            stats, stats_text = read_stats(target, base)
            (folder / STATS).write_text(stats_text)
            save_tasks(target, program.tracefs, raw, folder / TASKS)
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

    def _configure(self, target: "Target", base: str, program: "FtraceProgram") -> list[str]:
        """Size the buffer, set the options and filters; returns the task events present."""
        self._write(target, base, "buffer_size_kb", str(int(program.buffer_kb)))
        # which options and events exist: one read (one round trip on SSH targets)
        have = target.read_many([f"{base}/options/{o}" for o in program.options]
                                + [f"{base}/events/{ev}/enable"
                                   for ev in [*program.events, *program.task_events]])
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
        return [ev for ev in program.task_events
                if have.get(f"{base}/events/{ev}/enable") is not None]

    def _enable(self, target: "Target", base: str, events: list[str], value: str) -> None:
        for ev in events:
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
                cpu, task = _split_prefix(head[:i], tasks)
                timeline.event(head[i + len(marker):], task, marker)
                pending.setdefault(cpu, []).append((task, None, 0))
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
        if task[2] is not None:
            last[task[1]] = task[2]
        pending.setdefault(cpu, []).append((task, req, epoch.get(task[1], 0)))
    for stack in pending.values():     # events whose stack never came
        for task, req, ep in stack:
            if req is not None:
                add(task, -1, req, ep)
    timeline.close()

    counts, filled, corrected = _resolve_tasks(counts, timeline, read_tasks(path.parent / TASKS))
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
    if unknown:
        notes.append(f"{unknown} lines of the ftrace output were not events and were skipped")
    return Parsed(allocs=allocs, frames=frames, losses={}, notes=notes, estimated=False)
