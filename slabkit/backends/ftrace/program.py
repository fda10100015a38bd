"""The ftrace program: the tracefs writes a capture makes, and their text for ``--print-program``.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from slabkit.backends import Program

if TYPE_CHECKING:
    pass


RAW = "ftrace.txt"
STDERR = "ftrace.stderr"
STATS = "ftrace.stats.txt"
TASKS = "ftrace.tasks.txt"

#: instance options set before enabling (name -> value); absent ones are skipped
INSTANCE_OPTIONS = {"record-tgid": "1", "stacktrace": "1", "sym-offset": "1", "sym-addr": "1"}
#: events that say when a thread id's task or comm changes, recorded next to the allocations so
#: the parser knows each event's comm at event time (printed comms can be stale: module doc)
TASK_EVENTS = ("task/task_newtask", "task/task_rename")
#: what reads trace_pipe: dd, with plain read()/write(), not cat. BusyBox's cat copies with
#: sendfile(), i.e. splices trace_pipe into its stdout pipe, and that splice holds the pipe's
#: lock while it waits for events; an sshd reading that pipe (the capture streamed over SSH)
#: then blocks in pipe_read and, single-threaded, stalls every other session on its
#: connection: seen on Debian's 6.1 and 6.12 under busybox (each tracefs write over the same
#: connection took 10-100 s), not with dd.
READER = ("dd", "bs=65536", "status=none")
#: the instance option that adds the tasks a followed task creates to ``set_event_pid``
EVENT_FORK = "event-fork"
#: how long to wait for trace_pipe to drain after the event is disabled
DRAIN_TIMEOUT_S = 10.0


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
    #: the process whose threads the instance follows (``set_event_pid``), or None for all
    pid: int | None = None


def render_text(tracefs: str, events: list[str], expr: str, buffer_kb: int,
                options: dict[str, str], task_events: tuple[str, ...] | list[str] = (),
                pid: int | None = None) -> str:
    """The shell-like description of what :meth:`FtraceBackend.run` writes."""
    q = shlex.quote
    lines = ["# ftrace: a private tracefs instance; INSTANCE = slabkit-<pid>-<start>-<n>",
             f"cd {tracefs}/instances", "mkdir INSTANCE",
             f"echo {int(buffer_kb)} > INSTANCE/buffer_size_kb"]
    lines += [f"echo {v} > INSTANCE/options/{k}" for k, v in options.items()]
    for ev in events:
        if expr:
            lines.append(f"echo {q(expr)} > INSTANCE/events/{ev}/filter")
    if pid is not None:
        lines += [f"# only process {int(pid)}: its threads now, and the tasks they create "
                  "(event-fork);",
                  "# events of child processes are dropped when parsing (their tgid differs)",
                  f"echo 1 > INSTANCE/options/{EVENT_FORK}",
                  f"echo $(ls /proc/{int(pid)}/task) > INSTANCE/set_event_pid"]
    lines.append("dd if=INSTANCE/trace_pipe bs=65536 status=none > ftrace.txt &   # until the "
                 "capture ends")
    if task_events:
        lines.append("# task events (where the kernel has them): each event's comm at event time")
    lines += [f"echo 1 > INSTANCE/events/{ev}/enable" for ev in [*task_events, *events]]
    lines.append("# ... capture ...")
    lines += [f"echo 0 > INSTANCE/events/{ev}/enable" for ev in [*events, *task_events]]
    lines += ["# wait until per_cpu/cpu*/stats say entries: 0, stop dd, keep the stats",
              "# look up comm/tgid of the threads seen (/proc, saved_cmdlines) > ftrace.tasks.txt",
              "rmdir INSTANCE"]
    return "\n".join(lines) + "\n"

