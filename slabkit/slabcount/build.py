"""Build ``slabcount`` (the BPF counter and its libbpf loader) once per source change.

The result is one static binary with the BPF object embedded (a libbpf skeleton), so it
also runs on targets that have no compiler and no libbpf: it is copied there over SSH.
It is cached under ``$SLABKIT_CACHE_DIR`` (default ``~/.cache/slabkit``) in a folder named
by the hash of the sources, so editing a source rebuilds and stale builds are never used.

Build needs (Debian): ``clang bpftool libbpf-dev libelf-dev zlib1g-dev gcc``; ``make system``
installs them. Without them the ``bpf`` backend says so and ``backend="auto"`` uses bpftrace.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from slabkit.errors import TracerUnavailable

SOURCES = ("slabcount.h", "slabcount.bpf.c", "slabcount.c")
HERE = Path(__file__).resolve().parent
PACKAGES = "clang bpftool libbpf-dev libelf-dev zlib1g-dev gcc"
#: a build of other sources is removed once it is this old (another checkout or process may
#: still be using a younger one)
STALE_BUILD_S = 7 * 86400


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """First 16 hex digits of the sources' SHA-256: names the build and the copy on targets.
    Computed once per process, so one process always runs one build."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("SLABKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "slabkit")
    return Path(base)


def binary_path() -> Path:
    """Where the build for the current sources is (or will be)."""
    return cache_dir() / f"slabcount-{source_hash()}" / "slabcount"


def prebuilt_path() -> Path:
    """Where a binary built for these very sources may lie beside them: the capture helper's
    root-owned copy of slabkit has one (``slabkit helper install`` builds it), so the helper
    never compiles nor runs anything from a user's cache."""
    return HERE / "prebuilt" / source_hash() / "slabcount"   # its comm: slabcount


def missing_tools() -> str | None:
    """What the build lacks on this machine, as advice, or None."""
    missing = [t for t in ("clang", "bpftool", "cc") if not shutil.which(t)]
    if not Path("/usr/include/bpf/libbpf.h").exists():
        missing.append("libbpf headers")
    if missing:
        return (f"building slabkit's BPF counter needs {', '.join(missing)} "
                f"(Debian/Ubuntu: apt-get install {PACKAGES}; `make system` does it)")
    return None


def _multiarch_include() -> list[str]:
    try:
        arch = subprocess.run(["cc", "-print-multiarch"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        arch = ""
    return [f"-I/usr/include/{arch}"] if arch else []


def _step(argv: list[str], cwd: Path, stdout=None) -> None:
    res = subprocess.run(argv, cwd=cwd, stdout=stdout or subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=300)
    if res.returncode != 0:
        raise TracerUnavailable(f"building slabkit's BPF counter failed at `{' '.join(argv)}`: "
                                f"{(res.stderr or '').strip()[-1500:]}")


def build(force: bool = False) -> Path:
    """The path of a ``slabcount`` built from the current sources (building it if needed)."""
    prebuilt = prebuilt_path()
    if prebuilt.is_file() and not force:
        return prebuilt
    out = binary_path()
    if out.exists() and not force:
        return out
    why = missing_tools()
    if why:
        raise TracerUnavailable(why)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slabcount-", dir=out.parent) as tmp:
        work = Path(tmp)
        for name in SOURCES:
            shutil.copy(HERE / name, work / name)
        _step(["clang", "-O2", "-g", "-target", "bpf", *_multiarch_include(),
               "-c", "slabcount.bpf.c", "-o", "slabcount.bpf.o"], work)
        with open(work / "slabcount.skel.h", "w") as skel:
            _step(["bpftool", "gen", "skeleton", "slabcount.bpf.o", "name", "slabcount_bpf"],
                  work, stdout=skel)
        _step(["cc", "-O2", "-Wall", "-I.", "-o", "slabcount", "slabcount.c", "-static",
               "-lbpf", "-lelf", "-lz"], work)
        os.replace(work / "slabcount", out)   # atomic: a half-built binary is never used
    import time
    for old in out.parent.parent.glob("slabcount-*"):    # builds of older sources, once idle
        try:
            idle = time.time() - old.stat().st_mtime > STALE_BUILD_S
        except OSError:
            continue
        if old != out.parent and old.is_dir() and idle:
            shutil.rmtree(old, ignore_errors=True)
    return out


if __name__ == "__main__":   # python -m slabkit.slabcount.build
    print(build(force=True))
