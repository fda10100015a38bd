"""The ftrace backend: a private tracefs instance read through ``trace_pipe``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from slabkit.backends import Backend, Options, Parsed, Program, RunResult
from slabkit.backends._common import tracefs_filter
from slabkit.backends.ftrace.program import (
    DRAIN_TIMEOUT_S,
    INSTANCE_OPTIONS,
    RAW,
    STATS,
    STDERR,
    TASK_EVENTS,
    TASKS,
    FtraceProgram,
    render_text,
)
from slabkit.backends.ftrace.tasks import save_tasks
from slabkit.errors import ProbeFailed
from slabkit.host.tracefs import Instance, remove_orphans

if TYPE_CHECKING:
    from slabkit.backends.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.host.target import Target
    from slabkit.plan import Plan


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
        expr = tracefs_filter(plan)
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
        if target.is_this_machine:
            remove_orphans(target, program.tracefs)   # instances of killed runs, if any
        inst = Instance.create(target, program.tracefs, buffer_kb=program.buffer_kb)
        raw = folder / RAW
        errf = folder / STDERR
        try:
            task_events = self._configure(inst, program)
            argv = [a.replace("{instance}", inst.name) for a in program.argv]
            # the supervisor removes the instance when cat ends, however it ends
            with open(raw, "wb") as out, open(errf, "wb") as err, \
                    target.start(argv, stdout=out, stderr=err, teardown=inst.base) as reader:
                inst.enable([*task_events, *program.events])
                control.wait_attached(lambda: True, lambda: reader.poll() is None,
                                      what="ftrace")
                reason = control.run_for(lambda: reader.poll() is None)
                inst.enable([*program.events, *task_events], on=False)
                self._drain(inst, reader)
                stats, stats_text = inst.stats()     # final once disabled and drained
                reader.stop(first="TERM")
            (folder / STATS).write_text(stats_text)
            save_tasks(target, program.tracefs, raw, folder / TASKS)
            losses = {"overrun": stats.get("overrun", 0),
                      "dropped_events": stats.get("dropped events", 0)}
        finally:
            inst.remove()
        stderr = errf.read_text(errors="replace")
        if reason == "tracer-exited":
            raise ProbeFailed("reading trace_pipe stopped early", returncode=reader.returncode,
                              stderr=stderr, raw_path=str(raw))
        return RunResult(end_reason=reason, returncode=reader.returncode, stderr=stderr,
                         losses=losses, raw_files=[RAW, STDERR, STATS, TASKS])

    @staticmethod
    def _configure(inst: Instance, program: "FtraceProgram") -> list[str]:
        """Set the options and filters; returns the task events the kernel has."""
        have = inst.present([f"options/{o}" for o in program.options]
                            + [f"events/{ev}/enable"
                               for ev in [*program.events, *program.task_events]])
        for opt, value in program.options.items():
            if f"options/{opt}" in have:
                inst.write(f"options/{opt}", value)
            elif opt == "stacktrace":
                raise ProbeFailed("this kernel's tracefs instances have no options/stacktrace: "
                                  "no kernel stacks; use perf or bpftrace")
        for ev in program.events:
            if f"events/{ev}/enable" not in have:
                raise ProbeFailed(f"this kernel has no {ev} event in tracefs")
            if program.filter:
                inst.write(f"events/{ev}/filter", program.filter)
        return [ev for ev in program.task_events if f"events/{ev}/enable" in have]

    @staticmethod
    def _drain(inst: Instance, reader) -> None:
        """Wait until ``trace_pipe`` has been read empty (every CPU's ``entries: 0``)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and reader.poll() is None:
            stats, _ = inst.stats()
            if stats.get("entries", 0) == 0:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # let cat write out what it read last

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        from slabkit.backends.ftrace.parse import (
            parse_output,  # pandas: only when parsing
        )
        return parse_output(folder / RAW, plan, meta)

