"""Shared test fixtures.

Live tests (marked ``live``) need root and the kernel's tracing. Where the machine lacks them
they skip with the reason, except when ``SLABKIT_REQUIRE_LIVE=1`` (set by ``.ci/run``): there a
skip is a failure, because CI runs on a machine that has everything.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slabkit.samples import SAMPLES_DIR as SAMPLES  # noqa: F401  (the sample captures)

REQUIRE_LIVE = os.environ.get("SLABKIT_REQUIRE_LIVE") == "1"
TRACEFS = Path("/sys/kernel/tracing")
HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures"


def skip_or_fail(reason: str) -> None:
    """Skip a live test with ``reason``, or fail it where CI demands live tests run."""
    if REQUIRE_LIVE:
        pytest.fail(f"live test cannot run (SLABKIT_REQUIRE_LIVE=1): {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        skip_or_fail(f"{name} is not installed (make system installs it)")
    return path  # type: ignore[return-value]


def _tracing_leftovers() -> list[str]:
    """slabkit tracefs instances that are ours (this process) or orphaned (owner gone).

    Instances are named ``slabkit-<owner pid>-<owner start time>-<n>``; one whose owner is
    another live process (a concurrent test run) is not this test's business.
    """
    from slabkit.host.tracefs import INSTANCE_PREFIX, owner_alive, owner_of
    left = []
    inst = TRACEFS / "instances"
    if inst.is_dir():
        for p in inst.iterdir():
            if not p.name.startswith(INSTANCE_PREFIX):
                continue
            owner = owner_of(p.name)
            if not owner_alive(p.name) or (owner and owner[0] == os.getpid()):
                left.append(f"tracefs instance {p.name}")
    return left


def _child_tracers(before) -> list[str]:
    """Tracer processes (and their supervisors) a test started below this process and left."""
    import procs
    return [f"{p.comm} pid {p.pid}" for p in procs.started_below(os.getpid(), before)
            if p.comm in ("slabcount", "bpftrace", "perf", "stap", "staprun", "ssh", "sh", "cat",
                          "dd")]


def require_bpf() -> Path:
    """slabkit's BPF counter, built (needs clang/libbpf and a kernel with BTF), or skip/fail."""
    from slabkit.slabcount.build import build, missing_tools
    if missing_tools():
        skip_or_fail(missing_tools())
    if not Path("/sys/kernel/btf/vmlinux").exists():
        skip_or_fail("this kernel has no BTF (/sys/kernel/btf/vmlinux)")
    return build()


#: the backends that capture on this machine's kernel (stap needs kprobes and modules)
LIVE_BACKENDS = ("bpf", "bpftrace", "ftrace", "perf")


def require_backend(name: str) -> None:
    """What backend ``name`` needs here (its tool, or slabcount's build), or skip/fail."""
    if name == "bpf":
        require_bpf()
    elif name != "ftrace":
        require_tool(name)


@pytest.fixture
def live():
    """Root, tracefs mounted: the live kernel can be traced. Checks nothing is left behind."""
    if os.geteuid() != 0:
        skip_or_fail("needs root to trace the kernel (run `sudo make test`)")
    if not (TRACEFS / "events").is_dir():
        skip_or_fail(f"tracefs is not mounted on {TRACEFS} (make system mounts it)")
    import procs
    before = set(_tracing_leftovers())
    running = procs.descendants(os.getpid())
    yield
    after = set(_tracing_leftovers()) - before
    children = _child_tracers(running)
    assert not after, f"capture left tracing state behind: {sorted(after)}"
    assert not children, f"capture left tracer processes running: {children}"


def tables(parsed):
    """(allocs, frames) of a parser's :class:`~slabkit.backends.Parsed` result."""
    return parsed.allocs, parsed.frames


def cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """``python -m slabkit ARGS`` from this checkout, its output captured."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-m", "slabkit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def one_line_error(res, *words) -> str:
    """The CLI failed with exit status 2 and one line on stderr holding ``words``; that line."""
    assert res.returncode == 2, (res.stdout[-500:], res.stderr)
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    for w in words:
        assert w in res.stderr, res.stderr
    return res.stderr
