"""The capture engine: a request of typed fields in, a folder of raw tracer output out.

This is the part of a capture that needs privilege, and nothing more: resolve the cache against
the kernel's own list, read the kernel's facts, plan, choose a backend, render its program, run
it for the duration while sampling the cache's slabinfo line, and keep what a parser needs
beside the raw output (kallsyms, cgroup names). Parsing and saving tables happen elsewhere
(:mod:`slabkit.capturing.run`), as the user.

It runs in-process for root (here or on an SSH target) and inside slabkit's capture helper for
a user who may use it (:mod:`slabkit.helper.server`): one engine, whatever the path. It imports
only the standard library (the helper runs it with the system's Python in isolated mode), so no
pandas here; ``tests/test_architecture.py`` checks it.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slabkit.backends.base import (
    Backend,
    Options,
    Program,
    RunResult,
    capture_notes,
    choose,
    get_backend,
)
from slabkit.backends.control import RunControl
from slabkit.errors import InvalidInput, SlabkitError
from slabkit.host.facts import KernelFacts, gather_facts
from slabkit.host.procs import stat_start_time
from slabkit.host.slabinfo import SLABINFO, cache_records, parse_rows, resolve
from slabkit.host.target import Target
from slabkit.plan import MODES, Plan, for_backend, plan_capture
from slabkit.validate import check_cache_name, check_comm, check_pid, check_seconds

#: backends a request may name
BACKENDS = ("auto", "bpf", "bpftrace", "perf", "ftrace", "stap")
KALLSYMS = "kallsyms.txt.gz"


@dataclass(frozen=True)
class Request:
    """A capture as a user asks for it: typed fields only, each checked here.

    This is also all slabkit's capture helper accepts from a user (:meth:`to_args`,
    :meth:`from_args`): no program text, no paths, no environment."""

    cache: str
    backend: str = "auto"
    mode: str = "allocs"
    pid: int | None = None
    comm: str | None = None
    options: Options = field(default_factory=Options)

    def __post_init__(self) -> None:
        check_cache_name(self.cache)
        if self.backend not in BACKENDS:
            from slabkit.errors import expected_one_of
            raise InvalidInput(expected_one_of("backend", self.backend, BACKENDS))
        if self.mode not in MODES:
            from slabkit.errors import expected_one_of
            raise InvalidInput(expected_one_of("mode", self.mode, MODES))
        if self.pid is not None:
            object.__setattr__(self, "pid", check_pid(self.pid))
        if self.comm is not None:
            check_comm(self.comm)
        if not isinstance(self.options, Options):
            raise InvalidInput("options must be a slabkit Options")

    def to_args(self) -> list[str]:
        """The request as helper arguments (``--cache filp --backend auto ...``)."""
        o = self.options
        args = ["--cache", self.cache, "--backend", self.backend, "--mode", self.mode,
                "--stack-sample", str(o.stack_sample), "--sample-every", str(o.sample_every),
                "--buffer-kb", str(o.buffer_kb)]
        if o.map_keys is not None:
            args += ["--map-keys", str(o.map_keys)]
        if self.pid is not None:
            args += ["--pid", str(self.pid)]
        if self.comm is not None:
            args += ["--comm", self.comm]
        return args


@dataclass
class Prepared:
    """Everything decided before a capture runs (see :func:`prepare`).

    ``via`` is None when this process runs the capture itself, or the
    :class:`~slabkit.host.helper.Helper` that will run it."""

    target: Target
    request: Request
    facts: KernelFacts
    plan: Plan
    backend: Backend
    program: Program
    not_used: dict[str, str] = field(default_factory=dict)
    resolved: Any = None
    records: list[dict] | None = None
    via: Any = None

    @property
    def options(self) -> Options:
        return self.request.options

    def describe(self) -> dict[str, Any]:
        """What was decided, as JSON-able data (the helper sends it to the user's side)."""
        r = self.resolved
        return {
            "plan": self.plan.to_json(), "backend": self.backend.name,
            "not_used": self.not_used,
            "program": {"argv": self.program.argv, "text": self.program.text,
                        "env": self.program.env, "workarounds": self.program.workarounds,
                        "notes": self.program.notes},
            "release": self.facts.release,
            "tracer_version": self.facts.tracers.get(self.backend.name),
            "slab_size": getattr(r, "slab_size", None),
            "object_size": getattr(r, "object_size", None),
        }

    @classmethod
    def from_description(cls, data: dict[str, Any], target: Target, request: Request,
                         via: Any) -> Prepared:
        """A Prepared that another process (the helper) decided: for meta and parsing."""
        from types import SimpleNamespace
        prog = data.get("program") or {}
        backend = get_backend(str(data.get("backend")))
        facts = KernelFacts(release=str(data.get("release") or ""),
                            tracers={backend.name: data.get("tracer_version")})
        return cls(target=target, request=request, facts=facts,
                   plan=Plan.from_json(data["plan"]), backend=backend,
                   program=Program(backend=backend.name, argv=list(prog.get("argv") or []),
                                   text=str(prog.get("text") or ""),
                                   env=dict(prog.get("env") or {}),
                                   workarounds=dict(prog.get("workarounds") or {}),
                                   notes=[str(n) for n in prog.get("notes") or []]),
                   not_used=dict(data.get("not_used") or {}),
                   resolved=SimpleNamespace(slab_size=data.get("slab_size"),
                                            object_size=data.get("object_size")),
                   via=via)


def prepare(request: Request, target: Target) -> Prepared:
    """Resolve the cache on ``target`` (which may read ``/proc/slabinfo`` and trace: root), read
    the kernel's facts, plan, choose a backend and render its program."""
    records = cache_records(target)
    resolved = resolve(records, request.cache)
    if request.pid is not None and not target.exists(f"/proc/{request.pid}"):
        on = "" if target.runs_here else f" on {target.name}"
        raise InvalidInput(f"no process {request.pid} is running{on}: check the pid "
                           f"(`ps -p {request.pid}`); a filter for it would count nothing")
    facts = gather_facts(target)
    plan = plan_capture(resolved, facts, mode=request.mode, pid=request.pid,
                        comm=request.comm, cache_table=records)
    chosen, reasons = choose(request.backend, plan, target, facts)
    plan = for_backend(plan, chosen.name, facts)   # what the backend learnt may make it exact
    program = chosen.render(plan, request.options, facts)
    program.notes = capture_notes(chosen, plan, program, facts)
    return Prepared(target=target, request=request, facts=facts, plan=plan, backend=chosen,
                    program=program, not_used=reasons, resolved=resolved, records=records)


@dataclass
class Outcome:
    """How a run went: the tracer's result, and what the parser needs beside the raw files."""

    result: RunResult
    duration_s: float
    series: list[dict]
    cgroups: dict[int, str]
    kallsyms: dict[str, Any]          # {"kallsyms_path": ...} or {"kallsyms_note": ...}
    messages: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        """The files of the run's folder a capture keeps."""
        names = list(self.result.raw_files)
        if self.kallsyms.get("kallsyms_path"):
            names.append(self.kallsyms["kallsyms_path"])
        return names

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {"end_reason": r.end_reason, "returncode": r.returncode, "stderr": r.stderr,
                "losses": r.losses, "raw_files": r.raw_files, "duration_s": self.duration_s,
                "cgroups": {str(k): v for k, v in self.cgroups.items()},
                "kallsyms": self.kallsyms, "messages": self.messages}

    @classmethod
    def from_json(cls, data: dict[str, Any], series: list[dict]) -> Outcome:
        result = RunResult(end_reason=str(data["end_reason"]),
                           returncode=data.get("returncode"), stderr=str(data.get("stderr") or ""),
                           losses={str(k): int(v) for k, v in (data.get("losses") or {}).items()},
                           raw_files=[str(f) for f in data.get("raw_files") or []])
        return cls(result=result, duration_s=float(data.get("duration_s") or 0.0), series=series,
                   cgroups={int(k): str(v) for k, v in (data.get("cgroups") or {}).items()},
                   kallsyms=dict(data.get("kallsyms") or {}),
                   messages=[str(m) for m in data.get("messages") or []])


def run(prep: Prepared, seconds: float, folder: Path, *,
        progress: bool | Callable[[float, float], None] = False, stop_event=None,
        on_sample: Callable[[dict], None] | None = None, wrap=None) -> Outcome:
    """Run ``prep`` for ``seconds`` with its raw output going to ``folder``; sample the cache's
    slabinfo line about once a second (each row also handed to ``on_sample``); keep kallsyms
    and the cgroup names beside the output. ``wrap``: a context manager around the tracer's
    run (SIGTERM as Ctrl-C in the CLI)."""
    import contextlib
    seconds = check_seconds(seconds)
    series: list[dict] = []
    sampler = slabinfo_sampler(prep.target, prep.plan.cache, series, on_sample)
    control = RunControl(seconds, progress=progress, stop_event=stop_event,
                         every_second=sampler,
                         description=f"{prep.plan.cache} ({prep.backend.name})")
    watch = PidWatch(prep.target, prep.plan.pid) if prep.plan.pid is not None else None
    with (wrap or contextlib.nullcontext()):
        result = prep.backend.run(prep.target, prep.program, folder, control)
    sampler(control.duration_s)  # one last sample at the end
    messages = list(control.messages)
    if watch is not None and (gone := watch.message()):
        messages.insert(0, gone)
    return Outcome(result=result, duration_s=round(control.duration_s, 3), series=series,
                   cgroups=cgroup_paths(prep.target), kallsyms=save_kallsyms(prep.target, folder),
                   messages=messages)


class PidWatch:
    """Tells when the process a pid filter names is gone by the end of the capture (its
    ``/proc/PID/stat`` start time is read when the capture starts and again at its end, so a
    pid reused by a new process counts as gone)."""

    def __init__(self, target: Target, pid: int):
        self.target = target
        self.pid = int(pid)
        self.started = self._start_time()

    def _start_time(self) -> str | None:
        try:
            return stat_start_time(self.target.read_text(f"/proc/{self.pid}/stat"))
        except (OSError, SlabkitError):
            return None

    def message(self) -> str | None:
        """A note when the process was gone before the capture started or exited during it."""
        if self.started is None:
            return (f"process {self.pid} had exited before the capture started: nothing of it "
                    "could be counted")
        if self._start_time() != self.started:
            return (f"process {self.pid} exited during the capture: its allocations are counted "
                    "up to its exit, and nothing after")
        return None


def slabinfo_sampler(target: Target, cache: str, series: list[dict],
                     on_sample: Callable[[dict], None] | None = None
                     ) -> Callable[[float], None]:
    """A callback that appends the cache's slabinfo line to ``series``; never raises."""
    page_size = target.page_size()

    def sample(elapsed: float) -> None:
        try:
            rows = parse_rows(target.read_text(SLABINFO))
        except (OSError, SlabkitError):
            return
        for r in rows:
            if r["name"] == cache:
                row = {"time_s": round(elapsed, 3), "name": cache,
                       "active_objs": r["active_objs"], "num_objs": r["num_objs"],
                       "memory_bytes": r["num_slabs"] * r["pagesperslab"] * page_size}
                series.append(row)
                if on_sample is not None:
                    on_sample(row)
                return
    return sample


def cgroup_paths(target: Target) -> dict[int, str]:
    """cgroup v2 id (the directory's inode number) -> path, for naming a ``cgroup`` id."""
    try:
        mounts = target.read_text("/proc/mounts").splitlines()
    except OSError:
        return {}
    roots = [m.split()[1] for m in mounts if len(m.split()) > 2 and m.split()[2] == "cgroup2"]
    if not roots:
        return {}  # no cgroup v2 hierarchy: a cgroup id names nothing
    try:
        res = target.run(["find", roots[0], "-xdev", "-type", "d", "-printf", r"%i %P\n"],
                         timeout=30)
    except Exception:
        return {}
    out = {}
    for line in res.stdout.splitlines():
        ino, _, path = line.partition(" ")
        if ino.isdigit():
            out[int(ino)] = "/" + path
    return out


def save_kallsyms(target: Target, folder: Path) -> dict[str, Any]:
    """Keep the kernel's text symbols with the capture so stacks resolve on any machine."""
    try:
        text = target.read_text("/proc/kallsyms")
    except OSError:
        return {}
    lines = [ln for ln in text.splitlines() if len(ln) > 19 and ln[17] in "tTwW"]
    if not lines or lines[0].startswith("0000000000000000"):
        return {"kallsyms_note": "kallsyms addresses are hidden (kptr_restrict): not root?"}
    try:
        with gzip.open(folder / KALLSYMS, "wt", compresslevel=3) as f:
            f.write("\n".join(lines) + "\n")
    except OSError:       # a full disk: no half-written file that a rebuild would trip on
        try:
            (folder / KALLSYMS).unlink()
        except OSError:
            pass
        raise
    return {"kallsyms_path": KALLSYMS}
