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

