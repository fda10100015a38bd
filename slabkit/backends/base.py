"""Tracer backends. Each one: ``render(plan)`` -> program text/argv (pure), ``run`` -> raw
output files in the capture folder, ``parse(folder)`` -> tidy tables.

The registry order is the preference order of ``backend="auto"``: in-kernel aggregation
first because it is exact and cheapest: slabkit's own raw-tracepoint BPF counter (``bpf``:
needs BTF and a build here), then bpftrace; then perf and ftrace (streaming: they report
losses), then SystemTap (needs kprobes and modules).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slabkit.errors import InvalidInput, TracerUnavailable, expected_one_of

if TYPE_CHECKING:
    import pandas as pd

    from slabkit.backends.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.host.target import Target
    from slabkit.plan import Plan


#: default stack sampling: a stack for each key's first event (per comm, so after an exec too)
#: and 1 in 32 after, every event counted. Measured (bench/results/): call-site shares within
#: about 1 pp of a full-stack capture at a fraction of its cost.
DEFAULT_STACK_SAMPLE = 32


@dataclass
class Options:
    """The tracer knobs a user may set; checked when made, recorded in the capture's meta.

    ``stack_sample``: bpf/bpftrace take a stack for 1 event in N (every event is counted;
    1 = full stacks). ``sample_every``: perf records 1 event in N (counts scaled back by N).
    ``map_keys``: bpf/bpftrace map size in keys (default 65536; 262144 for outstanding mode);
    a full map is reported. ``buffer_kb``: perf/ftrace per-CPU buffer size."""

    stack_sample: int = DEFAULT_STACK_SAMPLE
    sample_every: int = 1
    map_keys: int | None = None
    buffer_kb: int = 8192

    def __post_init__(self) -> None:
        for name in ("stack_sample", "sample_every", "buffer_kb", "map_keys"):
            value = getattr(self, name)
            if name == "map_keys" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} must be a whole number >= 1, not {value!r}")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Program:
    """What will run on the target: argv, environment, and the program text to show."""

    backend: str
    argv: list[str]
    text: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunResult:
    """How a tracer run ended: why, exit status, stderr, and the losses it reported."""

    end_reason: str                     # duration | stopped | interrupted | tracer-exited
    returncode: int | None = None
    stderr: str = ""
    attached_s: float = 0.0             # monotonic time the probe became live
    ended_s: float = 0.0
    losses: dict[str, int] = field(default_factory=dict)
    raw_files: list[str] = field(default_factory=list)


@dataclass
class Parsed:
    """Tables a backend made of its raw output (``host`` is added by the caller)."""

    allocs: pd.DataFrame
    frames: pd.DataFrame
    outstanding: pd.DataFrame | None = None
    losses: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    estimated: bool = False              # counts per stack are estimates (sampling)
    #: stack samples that could not be recorded (counts per process are not affected)
    stack_losses: dict[str, int] = field(default_factory=dict)


class Backend:
    """Interface every backend implements."""

    name = ""
    #: events stream to user space one by one (losses possible) vs aggregated in the kernel
    streaming = False
    modes: tuple[str, ...] = ("allocs",)
    package = ""                        # the Debian package that provides the tool

    def unavailable(self, target: "Target", facts: "KernelFacts") -> str | None:
        """Why this backend cannot run on the target at all, or None."""
        raise NotImplementedError

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        """Why this backend cannot carry out ``plan``, or None."""
        raise NotImplementedError

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        raise NotImplementedError

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        raise NotImplementedError

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        raise NotImplementedError


def run_marked_tracer(target: "Target", program: Program, raw: Path, errf: Path,
                      control: "RunControl", *, what: str) -> tuple[str, int | None, str]:
    """Run a tracer that prints ``slabkit-attached`` on stdout once its probes are live and
    writes its results when stopped (SIGINT, sent on leaving the ``with`` block).

    stdout goes to ``raw``, stderr to ``errf``. Returns (end reason, exit status, stderr)."""
    with open(raw, "wb") as out, open(errf, "wb") as err:
        with target.start(program.argv, stdout=out, stderr=err,
                          env=program.env or None) as proc:
            def attached() -> bool:
                with open(raw, "rb") as f:
                    return b"slabkit-attached" in f.read(4096)
            control.wait_attached(attached, lambda: proc.poll() is None, what=what)
            reason = control.run_for(lambda: proc.poll() is None)
    return reason, proc.returncode, errf.read_text(errors="replace")


def registry() -> dict[str, Backend]:
    """The backends in preference order."""
    from slabkit.backends.bpf import BpfBackend
    from slabkit.backends.bpftrace import BpftraceBackend
    from slabkit.backends.ftrace import FtraceBackend
    from slabkit.backends.perf import PerfBackend
    from slabkit.backends.stap import StapBackend
    return {b.name: b for b in (BpfBackend(), BpftraceBackend(), PerfBackend(), FtraceBackend(),
                                StapBackend())}


def get_backend(name: str) -> Backend:
    reg = registry()
    if name not in reg:
        raise InvalidInput(expected_one_of("backend", name, ["auto", *reg]))
    return reg[name]


def choose(name: str, plan: "Plan", target: "Target", facts: "KernelFacts"
           ) -> tuple[Backend, dict[str, str]]:
    """The backend to use and, for every other one, why it was not used."""
    reg = registry()
    if name != "auto":
        backend = get_backend(name)
        why = backend.unavailable(target, facts) or backend.unsupported(plan, facts)
        if plan.mode not in backend.modes and not why:
            why = f"{backend.name} does not implement mode {plan.mode!r}"
        if why:
            raise TracerUnavailable(f"backend {name!r} cannot run this capture: {why}")
        return backend, {}
    reasons: dict[str, str] = {}
    chosen = None
    for bname, backend in reg.items():
        why = backend.unavailable(target, facts) or backend.unsupported(plan, facts)
        if not why and plan.mode not in backend.modes:
            why = f"does not implement mode {plan.mode!r}"
        if why:
            reasons[bname] = why
        elif chosen is None:
            chosen = backend
        else:
            reasons[bname] = f"{chosen.name} is preferred"
    if chosen is None:
        detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        raise TracerUnavailable(f"no backend can capture {plan.cache!r} here ({detail})")
    return chosen, reasons
