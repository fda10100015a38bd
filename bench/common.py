"""What every bench stage shares: the workload runner, statistics and the text table.

Throughput is measured on ``slabwork`` (bench/slabwork.c) loops that print ``ops N seconds S``.
Two numbers per run:

``rate``      operations per wall-clock second: what the issue calls throughput
``cpu_rate``  operations per CPU second of the workload process (its user + system time, from
              ``wait4``). The probe's in-kernel work runs in the workload's own context and is
              counted in its system time, while CPU stolen by other load on this shared machine
              is not: a steadier view of the same cost, shown next to the wall-clock ratio.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .workload import binary

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class WorkResult:
    """One timed workload run."""

    ops: int
    seconds: float
    cpu_s: float
    pid: int
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.ops / self.cpu_s if self.cpu_s > 0 else 0.0


def run_loop(mode: str, seconds: int, path: str = "/dev/null") -> WorkResult:
    """Run ``slabwork -n <mode> SECONDS [PATH]`` to the end; ops, time and CPU time."""
    argv = [str(binary()), "-n", mode, str(int(seconds))]
    if mode != "eventfdloop":
        argv.append(path)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"slabwork {mode} failed ({proc.returncode}): {err.strip()[-300:]}")
    ops = secs = None
    extra: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["ops"]:
            ops, secs = int(parts[1]), float(parts[3])
        elif parts[:1] == ["mix"]:
            extra = {k: int(v) for k, v in (p.split("=") for p in parts[1:])}
    if ops is None:
        raise RuntimeError(f"slabwork {mode} printed no ops line: {out!r}")
    return WorkResult(ops=ops, seconds=secs, cpu_s=ru.ru_utime + ru.ru_stime, pid=proc.pid,
                      extra=extra)


# ------------------------------------------------------------------------------------------
# statistics

def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quartiles(xs: list[float]) -> tuple[float, float]:
    """(q25, q75), inclusive method; a single value gives (x, x)."""
    if not xs:
        return float("nan"), float("nan")
    if len(xs) == 1:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def fmt_ratio(xs: list[float]) -> str:
    """``0.83 [0.79-0.86]``: median and interquartile range."""
    if not xs:
        return "-"
    lo, hi = quartiles(xs)
    return f"{median(xs):.2f} [{lo:.2f}-{hi:.2f}]"


# ------------------------------------------------------------------------------------------
# text tables

def table(headers: list[str], rows: list[list[object]], *, title: str | None = None) -> str:
    """A plain text table (GitHub-markdown compatible), columns padded."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    return (f"### {title}\n\n{text}" if title else text) + "\n"


def machine() -> dict[str, str]:
    """Facts printed at the top of the results."""
    try:
        import subprocess as sp
        bpft = sp.run(["bpftrace", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        bpft = "-"
    try:
        perf = subprocess.run(["perf", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        perf = "-"
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "kernel": platform.release(),
            "nproc": str(os.cpu_count()), "bpftrace": bpft, "perf": perf,
            "loadavg": Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()}


class Log:
    """Progress lines on stderr (the table goes to stdout)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            import sys
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# other people's tracers (this machine is shared): runs they overlap are repeated

TRACER_COMMS = frozenset({"bpftrace", "perf", "stap", "staprun", "trace-cmd", "slabcount"})


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def foreign_tracers() -> list[str]:
    """Tracers running on this machine that this process did not start: bpftrace, perf,
    stap, trace-cmd, slabcount, ``cat .../trace_pipe``, BPF links on the allocation
    tracepoints held by other processes, and kmem events enabled or triggered in tracefs
    instances other than ours. Each is ``"<what> <pid, link id or instance>"``."""
    mine = _descendants(os.getpid())
    from .rawtp import kmem_links, links_held_by
    links = kmem_links()
    if links:
        ours = links_held_by(mine | {os.getpid()})
        found_links = [f"bpf-link {i} ({tp})" for i, tp in links.items() if i not in ours]
    else:
        found_links = []
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine or int(d.name) == os.getpid():
            continue
        try:
            comm = (d / "comm").read_text().strip()
            if comm in TRACER_COMMS:
                args = (d / "cmdline").read_bytes().split(b"\0")
                if comm == "perf" and not {b"record", b"trace", b"stat"} & set(args):
                    continue   # perf script / report / --version read, they do not trace
                if comm == "stap" and any(a in (b"-p1", b"-p2", b"-p3", b"-p4") for a in args):
                    continue   # stops before loading anything into the kernel
                found.append(f"{comm} {d.name}")
            elif comm == "cat" and b"trace_pipe" in (d / "cmdline").read_bytes():
                found.append(f"cat-trace_pipe {d.name}")
        except OSError:
            continue
    base = Path("/sys/kernel/tracing")
    from slabkit.host.tracefs import INSTANCE_PREFIX
    own = f"{INSTANCE_PREFIX}{os.getpid()}-"
    roots = [base] + ([p for p in (base / "instances").iterdir() if not p.name.startswith(own)]
                      if (base / "instances").is_dir() else [])
    for root in roots:
        kmem = root / "events" / "kmem"
        for ev in ("kmem_cache_alloc", "kmalloc"):
            try:
                en = (kmem / ev / "enable").read_text().strip()
                trig = (kmem / ev / "trigger").read_text()
            except OSError:
                continue
            if en != "0" or any(l and not l.startswith("#") for l in trig.splitlines()):
                found.append(f"tracefs {root.name}/{ev}")
    return found + found_links


class Guard:
    """Runs the workload only while no foreign tracer is around; repeats a run one overlapped.

    ``max_wait_s``: how long to wait for a quiet moment before running anyway (the run is
    then counted in ``contaminated``)."""

    def __init__(self, log: "Log | None" = None, *, max_wait_s: float = 90.0,
                 tries: int = 4, enabled: bool = True):
        self.log = log
        self.max_wait_s = max_wait_s
        self.tries = tries
        self.enabled = enabled
        self.repeated = 0
        self.contaminated = 0
        self.waited_s = 0.0

    def _wait_quiet(self) -> bool:
        t0 = time.monotonic()
        while foreign_tracers():
            if time.monotonic() - t0 > self.max_wait_s:
                self.waited_s += time.monotonic() - t0
                return False
            time.sleep(0.5)
        self.waited_s += time.monotonic() - t0
        return True

    def run(self, mode: str, seconds: int, path: str = "/dev/null") -> WorkResult:
        if not self.enabled:
            return run_loop(mode, seconds, path)
        import threading
        for attempt in range(self.tries):
            quiet = self._wait_quiet()
            seen: list[str] = []
            stop = threading.Event()

            def watch(stop: threading.Event = stop, seen: list[str] = seen) -> None:
                while not stop.wait(0.25):
                    if not seen:
                        seen.extend(foreign_tracers())
            w = threading.Thread(target=watch, daemon=True)
            w.start()
            try:
                res = run_loop(mode, seconds, path)
            finally:
                stop.set()
                w.join()
            seen += foreign_tracers()
            if quiet and not seen:
                return res
            if attempt + 1 < self.tries:
                self.repeated += 1
                if self.log:
                    self.log(f"    (another tracer ran meanwhile: {seen[:2]}; run repeated)")
        self.contaminated += 1
        return res
