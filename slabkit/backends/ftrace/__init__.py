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

Modules: ``program`` (what is written to tracefs, and its text), ``backend`` (running it),
``tasks`` (the end-of-capture comm/tgid lookup), ``parse`` (the trace_pipe text -> tables; imported on its own, it needs pandas).
The tracefs instance itself (create, stats, remove) is :mod:`slabkit.host.tracefs`.
"""
from slabkit.backends.ftrace.backend import FtraceBackend
from slabkit.backends.ftrace.program import (
           RAW,
           STATS,
           STDERR,
           TASKS,
           FtraceProgram,
           render_text,
)
from slabkit.backends.ftrace.tasks import read_tasks, save_tasks, seen_tids

__all__ = ["FtraceBackend", "FtraceProgram", "RAW", "STATS", "STDERR", "TASKS",
           "read_tasks", "render_text", "save_tasks", "seen_tids"]
