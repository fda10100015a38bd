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
