"""The configurations a workload runs under: slabkit captures and hand-typed tracer commands.

Each :class:`Tracer` has ``session(workdir)``: a context manager that starts the tracer, returns
once its probe is live, and on exit stops it by pid (``slabkit.host.procs``: SIGINT, then SIGTERM
and SIGKILL, always reaped; tracefs instances removed) and fills the dict it yielded with what
the run reported (output file, stderr tail, the Capture, losses).

Attach signals: slabkit captures report through their progress callback (called once the
backend saw its probe live); hand-typed bpftrace programs get a ``BEGIN`` printf, which runs
after every probe is attached and costs nothing per event; ``perf record`` gets ``-D 1``, so
that perf 6.1 prints ``Events enabled`` once it has synthesized the existing tasks and turned
its events on (the anchor command is otherwise as typed).
"""
from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from slabkit.host.procs import StopPolicy, Supervised
from slabkit.host.target import LocalTarget
from slabkit.host.tracefs import instance_name

ATTACH_TIMEOUT_S = 120.0
TRACEFS = "/sys/kernel/tracing"
_seq = itertools.count(900)   # tracefs instance numbers (slabkit's own captures count from 0)


class AttachFailed(RuntimeError):
    pass


@dataclass
class Tracer:
    """One configuration: ``name`` (short id, used on the command line), ``label`` (shown)."""

    name: str
    label: str

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:  # pragma: no cover - interface
        raise NotImplementedError
        yield {}

    def text(self) -> str:
        """What runs, as a user would type it (for the report)."""
        return self.label


def _wait_for(check, alive, what: str, errfile: Path | None = None) -> None:
    deadline = time.monotonic() + ATTACH_TIMEOUT_S
    while not check():
        if not alive():
            tail = errfile.read_text(errors="replace")[-600:] if errfile else ""
            raise AttachFailed(f"{what} exited before attaching: {tail.strip()}")
        if time.monotonic() > deadline:
            raise AttachFailed(f"{what} did not attach within {ATTACH_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


@contextmanager
def _process(argv: list[str], *, stdout, stderr, env: dict | None = None,
             grace_s: float = 30.0) -> Iterator[Supervised]:
    """A tracer under slabkit's supervisor (its own process group, registered for ``slabkit
    cleanup``), stopped on any exit (SIGINT first: bpftrace and perf write their results on
    SIGINT), with ``grace_s`` to do so."""
    with LocalTarget().start(argv, stdout=stdout, stderr=stderr, env=env) as proc:
        try:
            yield proc
        finally:
            proc.stop(policy=StopPolicy(first_s=grace_s))


# ------------------------------------------------------------------------------------------
# bpftrace

MARKER = "bench-attached"


@dataclass
class Bpftrace(Tracer):
    """A bpftrace program, run as ``bpftrace [-f json -k] -e PROGRAM``."""

    program: str = ""
    env: dict = field(default_factory=dict)
    json: bool = True

    def argv(self) -> list[str]:
        prog = f'BEGIN {{ printf("{MARKER}\\n"); }}\n' + self.program
        return ["bpftrace"] + (["-f", "json", "-k"] if self.json else []) + ["-e", prog]

    def text(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        flags = "-f json -k " if self.json else ""
        return f"{env + ' ' if env else ''}bpftrace {flags}-e '{self.program.strip()}'"

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        out = workdir / f"{self.name}.bpftrace.out"
        err = workdir / f"{self.name}.bpftrace.err"
        info: dict = {"output": out}
        with open(out, "wb") as o, open(err, "wb") as e:
            with _process(self.argv(), stdout=o, stderr=e, env=self.env or None) as proc:
                def seen() -> bool:
                    with open(out, "rb") as f:
                        return MARKER.encode() in f.read(4096)
                _wait_for(seen, lambda: proc.poll() is None, "bpftrace", err)
                yield info
        info["stderr"] = "\n".join(l for l in err.read_text(errors="replace").splitlines()
                                   if "RLIMIT_MEMLOCK" not in l)
        if self.json:
            info.update(_json_summary(out))


def _json_summary(path: Path) -> dict:
    """Totals of a ``-f json`` output: events per map, failed map updates, lost events."""
    import json
    totals: dict[str, int] = {}
    failed = lost = 0
    with open(path, errors="replace") as f:
        for line in f:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("type") == "map":
                for name, values in doc["data"].items():
                    if isinstance(values, dict):
                        totals[name] = totals.get(name, 0) + sum(
                            v for v in values.values() if isinstance(v, int))
            elif doc.get("type") == "helper_error":
                failed += 1
            elif doc.get("type") == "lost_events":
                lost += int(doc.get("data", {}).get("events", 0))
    return {"map_totals": totals, "helper_errors": failed, "lost_events": lost}


# ------------------------------------------------------------------------------------------
# perf

@dataclass
class PerfRecord(Tracer):
    """``perf record ARGS -D 1 -o <workdir>/x`` (as typed, plus the attach signal)."""

    args: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "perf record " + shlex.join(self.args) + " -o /tmp/x"

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        data = workdir / f"{self.name}.perf.data"
        log = workdir / f"{self.name}.perf.log"
        argv = ["perf", "record", *self.args, "-D", "1", "-o", str(data)]
        info: dict = {}
        try:
            with open(log, "wb") as lf:
                # perf writes build-ids at exit (reading all of perf.data): give it time
                with _process(argv, stdout=lf, stderr=lf, grace_s=300) as proc:
                    _wait_for(lambda: b"Events enabled" in log.read_bytes(),
                              lambda: proc.poll() is None, "perf record", log)
                    yield info
            text = log.read_text(errors="replace")
            m = re.search(r"\((\d+) samples\)", text)
            info["samples"] = int(m.group(1)) if m else None
            m = re.search(r"lost (\d+) chunks", text)
            info["lost_chunks"] = int(m.group(1)) if m else 0
            info["stderr"] = text[-600:]
        finally:
            data.unlink(missing_ok=True)
            for old in workdir.glob(f"{data.name}.old"):
                old.unlink()


# ------------------------------------------------------------------------------------------
# ftrace

@dataclass
class FtraceTrigger(Tracer):
    """A private tracefs instance: event filter, ``stacktrace if FILTER`` trigger, enable, and
    ``cat trace_pipe`` into a file, as one would type it; removed afterwards."""

    event: str = "kmem/kmem_cache_alloc"
    expr: str = 'name == "filp"'

    def text(self) -> str:
        return (f"echo '{self.expr}' > events/{self.event}/filter; echo 'stacktrace if "
                f"{self.expr}' > events/{self.event}/trigger; echo 1 > events/{self.event}/enable;"
                " cat trace_pipe > FILE   (in a private instance)")

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        from slabkit.host.tracefs import read_stats, remove_instance
        target = LocalTarget()
        name = instance_name()
        base = Path(TRACEFS) / "instances" / name
        ev = base / "events" / self.event
        out = workdir / f"{self.name}.trace.txt"
        info: dict = {"instance": name}
        base.mkdir()
        try:
            (ev / "filter").write_text(self.expr)
            (ev / "trigger").write_text(f"stacktrace if {self.expr}")
            with open(out, "wb") as o:
                with _process(["cat", str(base / "trace_pipe")], stdout=o,
                              stderr=subprocess.DEVNULL, grace_s=2):
                    (ev / "enable").write_text("1")
                    try:
                        yield info
                    finally:
                        (ev / "enable").write_text("0")
                        stats, _ = read_stats(target, str(base))
                        info["overrun"] = stats.get("overrun", 0)
                        info["dropped"] = stats.get("dropped events", 0)
        finally:
            remove_instance(target, TRACEFS, name)
            out.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# slabkit

@dataclass
class SlabkitCapture(Tracer):
    """``slabkit.capture(cache, backend=..., stack_sample=...)`` in a thread, ended through
    its stop event (as the widgets' Stop button does); ``keep`` keeps the capture folder."""

    cache: str = "filp"
    backend: str = "auto"
    stack_sample: int | None = None
    keep: bool = False
    kw: dict = field(default_factory=dict)

    def text(self) -> str:
        opts = [f"backend={self.backend!r}"]
        if self.stack_sample is not None:
            opts.append(f"stack_sample={self.stack_sample}")
        opts += [f"{k}={v!r}" for k, v in self.kw.items()]
        return f"slabkit.capture({self.cache!r}, {', '.join(opts)})"

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        import shutil

        from slabkit.capturing.run import capture
        folder = workdir / f"{self.name}-{next(_seq)}"
        attached, stop = threading.Event(), threading.Event()
        result: dict = {}

        def run() -> None:
            try:
                from slabkit.backends import Options
                options = (Options(stack_sample=self.stack_sample)
                           if self.stack_sample is not None else None)
                result["cap"] = capture(self.cache, 3600, backend=self.backend, out=folder,
                                        progress=lambda done, total: attached.set(),
                                        stop_event=stop, options=options, **self.kw)
            except BaseException as e:  # handed over below
                result["error"] = e
                attached.set()

        t = threading.Thread(target=run, name=f"capture-{self.name}", daemon=True)
        info: dict = {"folder": folder}
        t.start()
        try:
            if not attached.wait(ATTACH_TIMEOUT_S):
                raise AttachFailed(f"{self.text()} did not attach")
            if "error" in result:
                raise AttachFailed(f"{self.text()} failed: {result['error']}")
            yield info
        finally:
            stop.set()
            t.join(600)
            if "cap" in result:
                cap = result["cap"]
                info["cap"] = cap
                info["backend"] = cap.meta.get("backend")
                info["losses"] = cap.meta.get("losses")
                info["lost_total"] = cap.meta.get("lost_total")
                info["program"] = cap.meta.get("program")
            elif "error" in result:
                info["error"] = str(result["error"])
            if not self.keep:
                shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# slabcount directly (the bpf backend's program without the rest of a capture)

@dataclass
class Slabcount(Tracer):
    """``slabcount ARGS`` (the current build), as the bpf backend runs it but without the
    capture around it: for measuring variants of the program (sampling rates, stack depth)."""

    args: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "slabcount " + shlex.join(self.args)

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        from slabkit.backends.bpf import read_output
        from slabkit.slabcount.build import build
        out = workdir / f"{self.name}.slabcount.tsv"
        err = workdir / f"{self.name}.slabcount.err"
        info: dict = {}
        try:
            with open(out, "wb") as o, open(err, "wb") as e:
                with _process([str(build()), *self.args], stdout=o, stderr=e) as proc:
                    def seen() -> bool:
                        with open(out, "rb") as f:
                            return b"slabkit-attached" in f.read(4096)
                    _wait_for(seen, lambda: proc.poll() is None, "slabcount", err)
                    yield info
            exact, sampled, _, stats = read_output(out)
            info["lost_total"] = stats.get("count_map_full", 0)
            info["counted"] = int(exact["count"].sum()) or int(sampled["samples"].sum())
        finally:
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)
