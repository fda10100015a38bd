"""Build and drive ``slabwork`` (bench/slabwork.c): allocations whose number we know.

Tests and benchmarks use it so counts can be checked exactly: the process is started and
waits; the probe is attached; ``go()`` makes it do exactly N operations; ``finish()`` ends it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("slabwork.c")
BUILD = Path(os.environ.get("SLABKIT_BUILD_DIR", Path(__file__).resolve().parent.parent / "build"))


def binary() -> Path:
    """Compile slabwork (static, -O2) once per source change; return its path."""
    out = BUILD / "slabwork"
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("a C compiler is needed to build bench/slabwork.c (apt-get install gcc)")
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run([cc, "-O2", "-static", "-o", str(tmp), str(SOURCE)], check=True)
    os.replace(tmp, out)
    return out


class Workload:
    """One slabwork process: ``Workload("open", 1000, "/etc/hostname")``."""

    def __init__(self, mode: str, n: int, path: str | None = None):
        argv = [str(binary()), mode, str(int(n))] + ([path] if path else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        first = self.proc.stdout.readline().split()
        assert first and first[0] == "pid", f"slabwork said {first!r}"
        self.pid = int(first[1])
        self.n = n

    def go(self, word: str = "go") -> str:
        """Do the work; returns slabwork's report line (``done N``)."""
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def finish(self) -> int:
        """Let the process exit (closes its stdin) and reap it."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "Workload":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.finish()
