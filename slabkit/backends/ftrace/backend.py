"""The ftrace backend: a private tracefs instance read through ``trace_pipe``.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from slabkit.backends import Backend, Options, Parsed, Program, RunResult
from slabkit.backends._common import kernel_filter
from slabkit.backends.ftrace.parse import parse_output
from slabkit.backends.ftrace.program import (
    DRAIN_TIMEOUT_S,
    INSTANCE_OPTIONS,
    RAW,
    STATS,
    STDERR,
    TASK_EVENTS,
    TASKS,
    FtraceProgram,
    _instance_seq,
    render_text,
)
from slabkit.backends.ftrace.tasks import save_tasks
from slabkit.errors import ProbeFailed
from slabkit.host.procs import instance_name, register, stop_process, unregister
from slabkit.host.target import LocalTarget
from slabkit.host.tracefs import read_stats, remove_instance

if TYPE_CHECKING:
    from slabkit.capturing.control import RunControl
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

