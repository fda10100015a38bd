"""SystemTap backend: the script, its command lines, the output parsers, and the runner.

slabkit's own script is ``slabkit.stp`` beside this module (see its header for the argument
scheme and output format). It probes the kernel's allocation functions with
``kernel.function(...)`` (kprobes plus the kernel's debuginfo, for ``$s->name``), keeps the
calls whose ``kmem_cache->name`` equals the cache given as argument ``@1``, and aggregates in
the kernel by ``[pid(), tid(), execname(), backtrace()]``.

Arguments (always all three, so the script text never depends on what the user typed)::

    stap slabkit.stp CACHE PID MS
         @1 CACHE   slab cache name (checked against a strict character set first)
         $2 PID     only this process; 0 = every process
         $3 MS      stop after this many milliseconds; 0 = until SIGINT/SIGTERM

Compile here, run there: a target with ``staprun`` (Debian: ``systemtap-runtime``) but no
``stap``, headers or debuginfo gets a module built on this machine for its kernel release::

    SLABKIT_STAP_ROOT=/srv/stap-6.1 slabkit capture filp --host root@box --backend stap
    # here:  chroot /srv/stap-6.1 stap -r 6.1.0-57-amd64 -m slabkit_<id> -p4 slabkit.stp filp 0 0
    # there: staprun /tmp/slabkit_<id>.ko   (stopped with SIGINT; the .ko is removed after)

``SLABKIT_STAP_ROOT`` is a directory holding a Linux userland with stap, the target kernel's
headers and its debug vmlinux (tests/kernels/stap_root.py builds one for Debian's 6.1); the
build runs chrooted into it, so it needs root here. ``SLABKIT_STAP_COMPILE`` is the stap
command itself, split like a shell would (default ``stap``; inside the root when both are
set); it runs in an empty working directory holding ``slabkit.stp`` and must leave
``<module>.ko`` there, as ``stap -p4 -m`` does. Either one set turns this mode on; it is also
used without them when the target lacks stap and this machine has stap and
``/lib/modules/<release>/build``. See :class:`StapBackend` and :func:`compile_argv`.

:func:`parse_classic` also reads the output of the classic ``slab.stp`` script that slabkit
replaces (``shared/reference/slab.stp``).

Limits of this backend: stap's ``backtrace()`` keeps at most ``MAXBACKTRACE`` (20) frames, and
a table of ``max_stacks`` distinct (pid, tid, comm, stack) keys; when it fills, stap stops with
"Array overflow", runs ``probe error`` (which still prints the counts so far) and
:func:`parse_stderr` reports ``overflow``. ``probe begin`` runs before the kprobes are
registered, so the capture counts as attached only at the script's ``armed`` line (format 2).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slabkit.model import schema
from slabkit.errors import InvalidInput, ParseError, ProbeFailed
from slabkit.model.stacks import frames_table
from slabkit.validate import check_cache_name, check_pid, check_seconds
from slabkit.backends import Program

SCRIPT_NAME = "slabkit.stp"
#: distinct (pid, tid, comm, stack) keys the script's table holds (stap preallocates them)
DEFAULT_MAX_STACKS = 20000
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: stap stops a session after 100 skipped probes (MAXSKIPPED) by default; slabkit counts
#: skipped probes as losses (:func:`parse_stderr`) instead of throwing the capture away.
#: The overload guard (a probe using too much CPU) stays on. Every probe may run at most
#: MAXACTION_INTERRUPTIBLE statements (default 10000); the end probe's listing takes about 20
#: per stack (print_stack), so the default cut it after ~460 stacks (seen on 6.1 with 400
#: short-lived processes): raised to cover DEFAULT_MAX_STACKS stacks of 20 frames.
DEFINES = ("-DMAXSKIPPED=1000000", "-DMAXACTION_INTERRUPTIBLE=4000000")


def script_template() -> str:
    """The text of ``slabkit.stp`` with its ``@@...@@`` markers unfilled."""
    return resources.files(__package__).joinpath(SCRIPT_NAME).read_text()


def render(cache: str, seconds: float | None, *, function_names: Sequence[str], param: str,
           max_stacks: int = DEFAULT_MAX_STACKS) -> str:
    """slabkit's SystemTap script for one capture.

    ``function_names``: the kernel allocation functions to probe, as the plan found them on
    this kernel, e.g. ``["kmem_cache_alloc", "kmem_cache_alloc_lru"]`` (5.18-6.9) or
    ``["kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof"]`` (6.10+).
    ``param``: the name of their ``struct kmem_cache *`` parameter: ``"s"`` on 6.1,
    ``"cachep"`` on older kernels.

    ``cache`` and ``seconds`` are checked here but are NOT written into the script: they are
    passed as arguments by :func:`argv` (``@1`` and ``$3``), as is the pid filter (``$2``).
    Raises :class:`~slabkit.errors.InvalidInput` for a bad name, duration or size.
    """
    check_cache_name(cache)
    if seconds is not None:
        check_seconds(seconds)
    names = list(function_names)
    if not names:
        raise InvalidInput("no kernel allocation function to probe (function_names is empty)")
    for name in [*names, param]:
        if not isinstance(name, str) or not _IDENT.match(name):
            raise InvalidInput(f"{name!r} is not a kernel identifier (letters, digits, _)")
    if isinstance(max_stacks, bool) or not isinstance(max_stacks, int) \
            or not 1 <= max_stacks <= 1_000_000:
        raise InvalidInput(f"max_stacks must be an integer in 1..1000000, not {max_stacks!r}")
    points = ",\n      ".join(f'kernel.function("{n}")' for n in names)
    return (script_template()
            .replace("@@MAX_STACKS@@", str(max_stacks))
            .replace("@@PROBE_POINTS@@", points)
            .replace("@@PARAM@@", param))


def argv(script_path: str | Path, cache: str, seconds: float | None, pid: int | None = None,
         *, last_pass: int | None = None, stap: str = "stap") -> list[str]:
    """The command line that runs ``script_path`` (from :func:`render`) for ``cache``.

    ``seconds=None`` runs until the tracer is sent SIGINT; ``pid`` traces one process.
    ``last_pass`` (1-5) stops stap after that pass (``-p``): 1 parses the script, 4 builds the
    module without loading it.

    >>> argv("/tmp/c/slabkit.stp", "dentry", 10)     # doctest: +NORMALIZE_WHITESPACE
    ['stap', '-DMAXSKIPPED=1000000', '-DMAXACTION_INTERRUPTIBLE=4000000', '/tmp/c/slabkit.stp',
     'dentry', '0', '10000']
    """
    check_cache_name(cache)
    ms = 0 if seconds is None else max(1, round(check_seconds(seconds) * 1000))
    pid_arg = 0 if pid is None else check_pid(pid)
    cmd = [stap, *DEFINES]
    if last_pass is not None:
        if last_pass not in (1, 2, 3, 4, 5):
            raise InvalidInput(f"last_pass must be 1..5, not {last_pass!r}")
        cmd.append(f"-p{last_pass}")
    return [*cmd, str(script_path), cache, str(pid_arg), str(ms)]


# --------------------------------------------------------------------------------------------
# slabkit's own output

_BEGIN = re.compile(r"^slabkit-stap begin format=(?P<format>\d+) pid_filter=(?P<pid>\d+) "
                    r"ms=(?P<ms>\d+) cache=(?P<cache>.*)$")
_STACK = re.compile(r"^slabkit-stap stack count=(?P<count>\d+) pid=(?P<pid>-?\d+) "
                    r"tid=(?P<tid>-?\d+) comm=(?P<len>\d+):(?P<comm>.*)$")
_END_STACK = "slabkit-stap end-stack"
_ARMED = "slabkit-stap armed"  # format 2: the allocation probes are registered
_DONE = re.compile(r"^slabkit-stap done how=(?P<how>\w+) entries=(?P<entries>\d+) "
                   r"allocs=(?P<allocs>\d+) elapsed_ms=(?P<ms>-?\d+)$")
_STAP_DIAG = ("WARNING:", "ERROR:", "Pass ", "semantic error:", "Tip:")


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


_Block = tuple[int, int, int, str, tuple[str, ...]]


def _read_own(text: str, path: str | None) -> tuple[list[_Block], dict[str, Any]]:
    """Blocks ``(count, pid, tid, comm, frame lines)`` and the begin/done facts."""
    lines = text.splitlines()
    blocks: list[_Block] = []
    info: dict[str, Any] = {}
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        i += 1
        m = _STACK.match(line)
        if m:
            want = int(m.group("len"))
            comm = m.group("comm")
            # a comm holding a newline continues on the next lines
            while _blen(comm) < want and i < n and not lines[i].startswith("slabkit-stap "):
                comm += "\n" + lines[i]
                i += 1
            frames: list[str] = []
            while i < n and lines[i] != _END_STACK:
                if lines[i].startswith("slabkit-stap "):
                    raise ParseError(f"stack block not closed by {_END_STACK!r}", path=path,
                                     lineno=i + 1, line=lines[i])
                if lines[i].strip():
                    frames.append(lines[i].strip())
                i += 1
            if i >= n:
                info["truncated"] = True  # output cut inside a block: keep what is there
            i += 1
            blocks.append((int(m.group("count")), int(m.group("pid")), int(m.group("tid")),
                           comm, tuple(frames)))
            continue
        if (m := _BEGIN.match(line)) is not None:
            info.update(format=int(m.group("format")), pid_filter=int(m.group("pid")),
                        ms=int(m.group("ms")), cache=m.group("cache"))
            continue
        if line == _ARMED:
            info["armed"] = True
            continue
        if (m := _DONE.match(line)) is not None:
            info.update(how=m.group("how"), entries=int(m.group("entries")),
                        allocs=int(m.group("allocs")), elapsed_ms=int(m.group("ms")))
            continue
        if not line.strip() or line.startswith(_STAP_DIAG):
            continue
        raise ParseError("unexpected line in slabkit stap output", path=path, lineno=i, line=line)
    return blocks, info


def parse(text: str, *, object_size: int | None = None, path: str | None = None
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read slabkit's own stap output (format in ``slabkit.stp``) into ``(allocs, frames)``.

    One ``allocs`` row per printed block: pid, tid and comm as stap saw them, ``count`` from
    ``@count``; ``bytes`` is ``count * object_size`` where the caller knows the cache's slot
    size (``/sys/kernel/slab/<cache>/slab_size``), else missing; ``host`` and ``cgroup`` are
    missing (the capture fills ``host``). Identical stacks share one ``stack_id``
    (0, 1, ... in order of first appearance). ``path`` is only used in error messages.
    """
    blocks, _ = _read_own(text, path)
    stack_ids: dict[tuple[str, ...], int] = {}
    rows_sid = []
    for count, pid, tid, comm, frames in blocks:
        rows_sid.append(stack_ids.setdefault(frames, len(stack_ids)) if frames else -1)
    counts = np.array([b[0] for b in blocks], dtype=np.int64)
    allocs = pd.DataFrame({
        "host": pd.array([pd.NA] * len(blocks), dtype="string"),
        "pid": pd.array([b[1] for b in blocks], dtype="Int64"),
        "tid": pd.array([b[2] for b in blocks], dtype="Int64"),
        "comm": pd.array([b[3] for b in blocks], dtype="string"),
        "cgroup": pd.array([pd.NA] * len(blocks), dtype="string"),
        "stack_id": pd.array(rows_sid, dtype="Int64"),
        "count": pd.array(counts, dtype="Int64"),
        "bytes": _bytes(counts, object_size),
    })
    frames = frames_table({sid: list(fr) for fr, sid in stack_ids.items()})
    return schema.validate(allocs, "allocs", source=path), schema.validate(frames, "frames",
                                                                              source=path)


def _bytes(counts: np.ndarray, object_size: int | None):
    if object_size is None:
        return pd.array([pd.NA] * len(counts), dtype="Int64")
    return pd.array(counts * int(object_size), dtype="Int64")


def parse_meta(stdout: str, stderr: str = "") -> dict[str, Any]:
    """What slabkit's stap output says about the run itself.

    Keys: ``cache``, ``pid_filter`` (None for all), ``duration_s`` (stap's own clock),
    ``entries`` and ``allocs`` (totals the script printed), ``complete`` (the ``done`` line was
    printed after an ordinary end), ``how`` (``end`` or ``error``), ``truncated`` (output cut
    inside a block), ``armed`` (format 2 said its probes were registered), plus everything
    :func:`parse_stderr` finds.
    """
    _, info = _read_own(stdout, None)
    out: dict[str, Any] = {
        "cache": info.get("cache"),
        "pid_filter": info.get("pid_filter") or None,
        "duration_s": info["elapsed_ms"] / 1000 if "elapsed_ms" in info else None,
        "entries": info.get("entries"),
        "allocs": info.get("allocs"),
        "how": info.get("how"),
        "truncated": bool(info.get("truncated", False)),
        "armed": bool(info.get("armed", False)),
    }
    out["complete"] = out["how"] == "end" and not out["truncated"]
    out.update(parse_stderr(stderr))
    return out


_ERRORS_SKIPPED = re.compile(r"Number of errors: (\d+), skipped probes: (\d+)")
_SKIPPED_DUE = re.compile(r"Skipped due to (.+?): (\d+)")
_TRANSPORT = re.compile(r"There were (\d+) transport failures")


def parse_stderr(text: str) -> dict[str, Any]:
    """Losses and errors stap reports on stderr at the end of a run.

    Returns ``errors`` and ``skipped`` (from "WARNING: Number of errors: N, skipped probes:
    M"; probes skipped were calls not counted), ``skipped_reasons`` (``{"reentrancy": 2, ...}``
    from "Skipped due to ...: N"), ``transport_failures`` (output lost between kernel and
    stap), ``overflow`` (the stack table filled: raise ``max_stacks``), ``overload`` (stap's
    guard stopped probes that used too much CPU), ``too_many_skipped`` (MAXSKIPPED reached)
    and ``error_lines`` (every line starting with ``ERROR:``). Counts are 0 when stap printed
    nothing about them.
    """
    errors = skipped = transport = 0
    reasons: dict[str, int] = {}
    error_lines = []
    for line in text.splitlines():
        if m := _ERRORS_SKIPPED.search(line):
            errors, skipped = int(m.group(1)), int(m.group(2))
        elif m := _SKIPPED_DUE.search(line):
            reasons[m.group(1)] = reasons.get(m.group(1), 0) + int(m.group(2))
        elif m := _TRANSPORT.search(line):
            transport = int(m.group(1))
        if line.lstrip().startswith("ERROR:"):
            error_lines.append(line.strip())
    return {
        "errors": errors,
        "skipped": skipped,
        "skipped_reasons": reasons,
        "transport_failures": transport,
        "overflow": any("Array overflow" in e or "MAXMAPENTRIES" in e for e in error_lines),
        "overload": any("probe overhead exceeded" in e for e in error_lines),
        "too_many_skipped": any("Skipped too many probes" in e for e in error_lines),
        "error_lines": error_lines,
    }


# --------------------------------------------------------------------------------------------
# the classic slab.stp output

_CLASSIC_HEADER = re.compile(r"^Number of (?P<cache>.*) slab allocations by process\s*$")
_CLASSIC_TOTAL = re.compile(r"^(?P<comm>.*):[ \t]+(?P<count>\d+)\s*$")
_CLASSIC_BT = "Backtrace of processes when allocating"
_CLASSIC_EXEC = re.compile(r"^Exec: (?P<comm>.*) Name: (?P<cache>\S*)\s+Count: (?P<count>\d+)\s*$")
_CLASSIC_SEP = re.compile(r"^-{3,}\s*$")
_ELISION = "[...]"


def _read_classic(text: str, path: str | None):
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if _CLASSIC_HEADER.match(l)), None)
    if start is None:
        raise ParseError("not the classic slab.stp output: no line 'Number of CACHE slab "
                         "allocations by process'", path=path)
    cache = _CLASSIC_HEADER.match(lines[start]).group("cache")  # type: ignore[union-attr]
    totals: dict[str, int] = {}
    blocks: list[tuple[str, int, list[str]]] = []
    elided_totals = elided_stacks = False
    i = start + 1
    while i < len(lines) and lines[i].strip() != _CLASSIC_BT:
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        if line.strip() == _ELISION:
            elided_totals = True
            continue
        m = _CLASSIC_TOTAL.match(line)
        if not m:
            raise ParseError("expected 'comm: count' in the per-process totals", path=path,
                             lineno=i, line=line)
        totals[m.group("comm")] = totals.get(m.group("comm"), 0) + int(m.group("count"))
    i += 1
    current: tuple[str, int, list[str]] | None = None
    while i < len(lines):
        line = lines[i]
        i += 1
        if (m := _CLASSIC_EXEC.match(line)) is not None:
            current = (m.group("comm"), int(m.group("count")), [])
            blocks.append(current)
        elif _CLASSIC_SEP.match(line):
            current = None
        elif line.strip() == _ELISION:
            elided_stacks = True
            current = None  # the listing was cut here: the rest of this stack is not shown
        elif not line.strip():
            continue
        elif current is not None:
            current[2].append(line.strip())
        else:
            raise ParseError("frame line outside an 'Exec: ...' block", path=path, lineno=i,
                             line=line)
    return cache, totals, blocks, elided_totals, elided_stacks


def parse_classic(text: str, *, object_size: int | None = None, path: str | None = None
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the output of the classic ``slab.stp`` into ``(allocs, frames)``.

    The classic output has two sections::

        Number of size-32 slab allocations by process      <- header: the cache
        crond:  2                                          <- comm: total allocations
        Backtrace of processes when allocating
        Exec: crond Name: size-32  Count: 2                <- one stack of one comm
        0xc045d717 : kmem_cache_alloc+0x2/0x4f []          <- frames, innermost first
        -------------------------------------------------------
        [...]                                              <- the listing was cut here

    The per-process totals of the first section are authoritative. Every printed stack is one
    ``allocs`` row; whatever part of a process's total its printed stacks do not cover
    (stacks elided by ``[...]``) goes to one row with ``stack_id`` -1, so the counts summed by
    comm equal the first section. A stack cut by ``[...]`` keeps the frames shown. The script
    records no pid, tid or cgroup: those are missing, never invented; ``bytes`` is
    ``count * object_size`` when the caller passes the cache's slot size.

    Raises :class:`~slabkit.errors.ParseError` when the text is not this format or the printed
    stacks of a comm add up to more than its total.
    """
    _, totals, blocks, elided_totals, _ = _read_classic(text, path)
    stack_ids: dict[tuple[str, ...], int] = {}
    by_comm: dict[str, list[tuple[int, int]]] = {}
    for comm, count, frames in blocks:
        sid = stack_ids.setdefault(tuple(frames), len(stack_ids)) if frames else -1
        by_comm.setdefault(comm, []).append((sid, count))
    comms: list[str] = []
    sids: list[int] = []
    counts: list[int] = []
    for comm in [*totals, *(c for c in by_comm if c not in totals)]:
        printed = by_comm.get(comm, [])
        shown = sum(c for _, c in printed)
        for sid, c in printed:
            comms.append(comm)
            sids.append(sid)
            counts.append(c)
        if comm not in totals:
            if not elided_totals:
                raise ParseError(f"stacks of {comm!r} are printed but the totals do not list it",
                                 path=path)
            continue
        rest = totals[comm] - shown
        if rest < 0:
            raise ParseError(f"the printed stacks of {comm!r} add up to {shown}, more than its "
                             f"total of {totals[comm]}", path=path)
        if rest > 0:
            comms.append(comm)
            sids.append(-1)
            counts.append(rest)
    n = len(comms)
    counts_a = np.array(counts, dtype=np.int64)
    allocs = pd.DataFrame({
        "host": pd.array([pd.NA] * n, dtype="string"),
        "pid": pd.array([pd.NA] * n, dtype="Int64"),
        "tid": pd.array([pd.NA] * n, dtype="Int64"),
        "comm": pd.array(comms, dtype="string"),
        "cgroup": pd.array([pd.NA] * n, dtype="string"),
        "stack_id": pd.array(sids, dtype="Int64"),
        "count": pd.array(counts_a, dtype="Int64"),
        "bytes": _bytes(counts_a, object_size),
    })
    frames = frames_table({sid: list(fr) for fr, sid in stack_ids.items()})
    return schema.validate(allocs, "allocs", source=path), schema.validate(frames, "frames",
                                                                              source=path)


def parse_classic_meta(text: str) -> dict[str, Any]:
    """Facts about a classic ``slab.stp`` output: ``cache`` (from its header), ``elided``
    (``[...]`` cut the listing), ``complete`` (nothing was cut), and ``allocs`` (the sum of the
    per-process totals)."""
    cache, totals, _, elided_totals, elided_stacks = _read_classic(text, None)
    return {"cache": cache, "elided": elided_totals or elided_stacks,
            "complete": not (elided_totals or elided_stacks),
            "allocs": sum(totals.values())}


# --------------------------------------------------------------------------------------------
# compiling here for another kernel ("compile here, run there")

#: the stap command that compiles, split like a shell would (default ``stap``)
ENV_COMPILE = "SLABKIT_STAP_COMPILE"
#: a directory holding a Linux userland with stap, the target kernel's headers and debuginfo;
#: the compile command runs chrooted into it
ENV_ROOT = "SLABKIT_STAP_ROOT"
#: seconds a compile may take (a cold stap cache on a busy machine: minutes)
COMPILE_TIMEOUT_S = 1800
# `uname -r` strings: 6.1.0-57-amd64, 6.12.117+deb12-amd64, 5.14.0-427.el9.x86_64, 6.8.0-1012-aws
_RELEASE_RE = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,127}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,54}$")  # MODULE_NAME_LEN is 56 with its NUL
_ROOT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def check_release(release: object) -> str:
    """Return a kernel release string (``uname -r``) if it is safe on a command line."""
    if not isinstance(release, str) or not _RELEASE_RE.fullmatch(release):
        raise InvalidInput(f"kernel release {release!r} is not a `uname -r` string (a digit, "
                           "then letters, digits and . _ + ~ -, 128 characters at most)")
    return release


def module_name() -> str:
    """A fresh kernel module name for one capture: ``slabkit_`` and 12 hex digits."""
    import uuid
    return f"slabkit_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class CompileSettings:
    """How slabkit compiles a stap module here for the target's kernel.

    ``stap``: the command (``SLABKIT_STAP_COMPILE``, e.g. ``"stap"`` or ``"/opt/stap/bin/stap
    --poison-cache"``); ``root``: a chroot to run it in (``SLABKIT_STAP_ROOT``), or None to run
    it on this machine as is. ``configured``: the user set either.
    """

    stap: tuple[str, ...] = ("stap",)
    root: str | None = None
    configured: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CompileSettings:
        env = os.environ if env is None else env
        text = env.get(ENV_COMPILE, "").strip()
        root = env.get(ENV_ROOT, "").strip() or None
        try:
            stap = tuple(shlex.split(text)) if text else ("stap",)
        except ValueError as e:
            raise InvalidInput(f"{ENV_COMPILE}={text!r} cannot be split like a shell "
                               f"would: {e}") from None
        return cls(stap=stap, root=root, configured=bool(text or root))

    def problem(self) -> str | None:
        """Why compiling here cannot work, or None (checked before anything runs)."""
        if self.root is not None:
            if not os.path.isabs(self.root) or not os.path.isdir(self.root):
                return f"{ENV_ROOT}={self.root!r} is not an existing absolute directory"
            if os.geteuid() != 0:
                return f"compiling in {ENV_ROOT} needs root here (it runs chrooted)"
            exe = self.stap[0]
            found = (os.path.exists(os.path.join(self.root, exe.lstrip("/"))) if exe.startswith("/")
                     else any(os.path.exists(os.path.join(self.root, d.lstrip("/"), exe))
                              for d in _ROOT_PATH))
            if not found:
                return (f"{exe!r} is not installed in {ENV_ROOT}={self.root} (install systemtap "
                        "there, with the target kernel's headers and debuginfo)")
            return None
        if not shutil.which(self.stap[0]):
            return (f"{self.stap[0]!r} ({ENV_COMPILE}) is not installed here; install "
                    f"systemtap or point {ENV_ROOT} at a root that has it")
        return None


def compile_argv(script: str, cache: str, seconds: float | None, pid: int | None, *,
                 release: str, module: str, stap: Sequence[str] = ("stap",)) -> list[str]:
    """The command that builds ``script`` into ``<module>.ko`` for kernel ``release``, without
    loading it: :func:`argv` with ``-r RELEASE -p4 -m MODULE``. Cache, pid and duration are
    compiled into the module (stap substitutes ``@1 $2 $3`` when it builds).

    >>> compile_argv("slabkit.stp", "filp", None, None, release="6.1.0-57-amd64",
    ...              module="slabkit_0123abcd")       # doctest: +NORMALIZE_WHITESPACE
    ['stap', '-r', '6.1.0-57-amd64', '-m', 'slabkit_0123abcd', '-DMAXSKIPPED=1000000',
     '-DMAXACTION_INTERRUPTIBLE=4000000', '-p4', 'slabkit.stp', 'filp', '0', '0']
    """
    check_release(release)
    if not isinstance(module, str) or not _MODULE_RE.fullmatch(module):
        raise InvalidInput(f"module name {module!r} is not usable (letters, digits, _)")
    stap = list(stap)
    if not stap or not all(isinstance(a, str) and a and "\0" not in a for a in stap):
        raise InvalidInput(f"the stap command {stap!r} is empty or not a list of strings")
    base = argv(script, cache, seconds, pid, last_pass=4)
    return [*stap, "-r", release, "-m", module, *base[1:]]


def _in_root(root: str, workdir: str):
    """preexec_fn: chroot into ``root``, go to ``workdir`` there, die with the parent."""
    def enter() -> None:
        from slabkit.host.target import _die_with_parent
        _die_with_parent()
        os.chroot(root)
        os.chdir(workdir)
    return enter


def build_module(script_text: str, cmd: list[str], module: str, *, root: str | None = None,
                 timeout_s: float = COMPILE_TIMEOUT_S) -> tuple[bytes, subprocess.CompletedProcess]:
    """Run a :func:`compile_argv` command here and return the module's bytes and the run.

    The script is written as ``slabkit.stp`` into a fresh working directory (under
    ``root``/tmp when ``root`` is given, the command then running chrooted into ``root``), the
    command runs there and must leave ``<module>.ko`` in it (``stap -p4 -m`` does), or print
    the module's path as the last line of its output. The directory is removed afterwards.
    Raises :class:`~slabkit.errors.ProbeFailed` with stap's messages when the build fails.
    """
    import signal
    import tempfile

    from slabkit.host.target import _die_with_parent
    if root is not None:
        base = os.path.join(root, "tmp")
        os.makedirs(base, mode=0o1777, exist_ok=True)
        work = tempfile.mkdtemp(prefix="slabkit-stap-", dir=base)
        inner = "/tmp/" + os.path.basename(work)
        popen_kw: dict[str, Any] = {
            "preexec_fn": _in_root(root, inner),
            "env": {"PATH": ":".join(_ROOT_PATH), "HOME": "/root", "LC_ALL": "C",
                    "TMPDIR": "/tmp"}}
    else:
        work = tempfile.mkdtemp(prefix="slabkit-stap-")
        popen_kw = {"cwd": work, "preexec_fn": _die_with_parent,
                    "env": dict(os.environ, LC_ALL="C")}
    try:
        with open(os.path.join(work, SCRIPT_FILE), "w") as f:
            f.write(script_text)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True, **popen_kw)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except BaseException:  # timeout or Ctrl-C: stap's make and gcc children too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        where = f" in {root}" if root else ""
        if done.returncode != 0:
            raise ProbeFailed(f"stap could not build the module{where} ({' '.join(cmd[:6])} ...)",
                              returncode=done.returncode, stderr=err)
        ko = os.path.join(work, module + ".ko")
        if not os.path.exists(ko):
            printed = (out.strip().splitlines() or [""])[-1].strip()
            if printed.endswith(".ko") and os.path.isabs(printed):
                ko = os.path.join(root, printed.lstrip("/")) if root else printed
        if not os.path.exists(ko):
            raise ProbeFailed(f"stap{where} reported success but left no {module}.ko",
                              stderr=err + out)
        with open(ko, "rb") as f:
            return f.read(), done
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"stap did not build the module within {timeout_s:.0f} s") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the backend: run slabkit.stp through stap on the target, or build here and staprun there

RAW = "stap.out"
STDERR_FILE = "stap.stderr"
SCRIPT_FILE = "slabkit.stp"
BUILD_LOG = "stap.build.log"
BUILD_INFO = "stap.build.json"


@dataclass
class StapProgram(Program):
    """A stap :class:`~slabkit.backends.Program`; in "compile here" mode ``build_argv`` builds
    the module on this machine (in ``build_root``) and ``argv`` is the ``staprun`` that loads
    it on the target."""

    build_argv: list[str] = field(default_factory=list)
    build_root: str | None = None
    module: str | None = None
    release: str | None = None


class StapBackend:
    """SystemTap on kernels with kprobes and loadable modules (the classic tool's home).

    Two ways to run, chosen per target:

    * **stap on the target** (it has ``stap``, the kernel's headers and debuginfo): the script
      is written there and run with the cache, pid filter and duration as arguments.
    * **compile here, run there**: the module is built on this machine for the target's kernel
      (``stap -r RELEASE -p4 -m slabkit_<id>``, see :func:`compile_argv`), copied to the target
      and loaded with ``staprun``, which is all the target needs (Debian:
      ``systemtap-runtime``). Used when ``SLABKIT_STAP_COMPILE`` (the stap command, split like a
      shell would) or ``SLABKIT_STAP_ROOT`` (a chroot with stap, the target kernel's headers
      and debuginfo; needs root here) is set, or when the target has ``staprun`` but no
      ``stap`` and this machine has ``stap`` and ``/lib/modules/RELEASE/build``.

    Either way stap is stopped with SIGINT, which runs the script's ``end`` probe that prints
    the aggregated stacks, and the same output is parsed.
    """

    name = "stap"
    streaming = False
    modes = ("allocs",)
    package = "systemtap"

    def __init__(self, settings: CompileSettings | None = None):
        self._settings = settings

    @property
    def settings(self) -> CompileSettings:
        return self._settings if self._settings is not None else CompileSettings.from_env()

    def _compile_here(self, facts) -> bool:
        return self.settings.configured or not facts.tracers.get("stap")

    def unavailable(self, target, facts) -> str | None:
        missing = [what for what, ok in (("kprobes", facts.kprobes),
                                         ("loadable modules", facts.modules)) if not ok]
        if missing:
            return (f"SystemTap needs {' and '.join(missing)}, which this kernel "
                    f"({facts.release or 'unknown'}) lacks; use bpftrace, perf or ftrace here")
        settings = self.settings
        if not settings.configured and facts.tracers.get("stap"):
            return None  # stap on the target
        if not settings.configured:
            release = facts.release if _RELEASE_RE.fullmatch(facts.release or "") else ""
            local = bool(release) and bool(shutil.which("stap")) and os.path.isdir(
                f"/lib/modules/{release}/build")
            if not (local and target.which("staprun")):
                return ("SystemTap is not installed on the target (Debian/Ubuntu: apt-get "
                        "install systemtap linux-headers-$(uname -r), and the kernel's debug "
                        "symbols); or, with only staprun there (systemtap-runtime), compile "
                        f"here: set {ENV_ROOT} to a root with stap and the headers and "
                        f"debuginfo of {facts.release or 'its kernel'}, or {ENV_COMPILE}")
        why = settings.problem()
        if why:
            return why
        try:
            check_release(facts.release)
        except InvalidInput as e:
            return str(e)
        if not target.which("staprun"):
            return ("staprun is not installed on the target, which runs the module built here "
                    "(Debian/Ubuntu: apt-get install systemtap-runtime)")
        return None

    def _functions(self, plan, facts) -> list[str]:
        if plan.functions:
            return list(plan.functions)
        from slabkit.host.facts import ALLOC_FUNCTIONS
        return [f for f in ALLOC_FUNCTIONS if f in facts.functions]

    def unsupported(self, plan, facts) -> str | None:
        if plan.kind != "dedicated":
            return "slabkit's stap script probes dedicated caches only (use bpftrace for kmalloc)"
        if plan.comm is not None:
            return "the stap script filters by pid, not by comm"
        if not self._functions(plan, facts):
            return "no kmem_cache_alloc* function found in /proc/kallsyms"
        return None

    def render(self, plan, options, facts):
        functions = self._functions(plan, facts)
        text = render(plan.cache, None, function_names=functions, param="s")
        if not self._compile_here(facts):
            cmd = argv("{folder}/" + SCRIPT_FILE, plan.cache, None, plan.pid)
            return StapProgram(backend=self.name, argv=cmd, text=text)
        settings = self.settings
        module = module_name()
        build = compile_argv(SCRIPT_FILE, plan.cache, None, plan.pid,
                             release=check_release(facts.release), module=module,
                             stap=settings.stap)
        return StapProgram(backend=self.name, argv=["staprun", f"/tmp/{module}.ko"], text=text,
                           build_argv=build, build_root=settings.root, module=module,
                           release=facts.release)

    def _build(self, program: StapProgram, folder: Path) -> bytes:
        """Compile the module here; its log and facts go into the capture folder."""
        t = time.monotonic()
        try:
            data, done = build_module(program.text, program.build_argv, program.module or "",
                                      root=program.build_root)
        except ProbeFailed as e:
            (folder / BUILD_LOG).write_text(e.stderr)
            e.raw_path = str(folder / BUILD_LOG)
            raise
        seconds = time.monotonic() - t
        (folder / BUILD_LOG).write_text(
            f"$ {shlex.join(program.build_argv)}\n{done.stdout}{done.stderr}")
        (folder / BUILD_INFO).write_text(json.dumps({
            "argv": program.build_argv, "root": program.build_root, "release": program.release,
            "module": program.module, "module_bytes": len(data),
            "build_seconds": round(seconds, 2)}, indent=2) + "\n")
        return data

    def run(self, target, program, folder, control):
        import uuid

        from slabkit.host.procs import tracer_process
        from slabkit.host.target import LocalTarget
        from slabkit.backends import RunResult
        (folder / SCRIPT_FILE).write_text(program.text)
        build = isinstance(program, StapProgram) and bool(program.build_argv)
        raw_files = [RAW, STDERR_FILE, SCRIPT_FILE]
        if build:
            data = self._build(program, folder)
            remote_file = program.argv[-1]
            target.write_bytes(remote_file, data)
            cmd = list(program.argv)
            raw_files += [BUILD_LOG, BUILD_INFO]
        elif isinstance(target, LocalTarget):
            remote_file = None
            cmd = [str(folder / SCRIPT_FILE) if a == "{folder}/" + SCRIPT_FILE else a
                   for a in program.argv]
        else:
            remote_file = f"/tmp/slabkit-{uuid.uuid4().hex}.stp"
            target.write_text(remote_file, program.text)
            cmd = [remote_file if a == "{folder}/" + SCRIPT_FILE else a for a in program.argv]
        raw, errf = folder / RAW, folder / STDERR_FILE
        what = "staprun" if build else "stap"
        try:
            with open(raw, "wb") as out, open(errf, "wb") as err:
                with tracer_process(target, cmd, stdout=out, stderr=err) as proc:
                    def attached() -> bool:  # "begin" runs before the kprobes exist
                        with open(raw, "rb") as f:
                            return _ARMED.encode() in f.read(4096)
                    # stap on the target compiles the module first: allow it
                    control.wait_attached(attached, lambda: proc.poll() is None,
                                          timeout_s=120 if build else 600, what=what)
                    reason = control.run_for(lambda: proc.poll() is None)
        except ProbeFailed as e:
            e.stderr = errf.read_text(errors="replace") if errf.exists() else ""
            raise ProbeFailed(str(e).split(" (")[0], stderr=e.stderr, raw_path=str(raw)) from None
        finally:
            if remote_file is not None:
                try:
                    target.run(["rm", "-f", remote_file], timeout=30)
                except Exception:
                    pass
        stderr = errf.read_text(errors="replace")
        info = parse_stderr(stderr)
        losses = {k: int(info[k]) for k in ("skipped", "transport_failures") if info[k]}
        if info["overflow"]:
            losses["table_overflow"] = 1
        if info["overload"]:  # stap's guard ended the session early: later calls not counted
            losses["overload_stop"] = 1
        return RunResult(end_reason=reason, returncode=proc.returncode, stderr=stderr,
                         losses=losses, raw_files=raw_files)

    def parse(self, folder, plan, meta):
        from slabkit.backends import Parsed
        path = folder / RAW
        allocs, frames = parse(path.read_text(errors="replace"),
                               object_size=meta.get("slab_size"), path=str(path))
        notes: list[str] = []
        losses: dict[str, int] = {}
        errf = folder / STDERR_FILE
        info = parse_meta(path.read_text(errors="replace"),
                          errf.read_text(errors="replace") if errf.exists() else "")
        why = "; ".join(info["error_lines"][:3]) or "no error printed"
        if info["truncated"] or info["how"] is None:
            losses["report_truncated"] = 1
            notes.append(f"stap's listing stopped part way ({why}): only the stacks printed "
                         "before that are counted")
        elif info["how"] == "error":
            notes.append(f"stap stopped on an error ({why}); the counts are those up to it")
        if (folder / BUILD_INFO).exists():
            b = json.loads((folder / BUILD_INFO).read_text())
            where = f" in the root {b['root']}" if b.get("root") else ""
            notes.append(f"stap module {b['module']} built here{where} for {b['release']} in "
                         f"{b['build_seconds']:g} s ({b['module_bytes']} bytes) and loaded on "
                         f"the target with staprun")
        return Parsed(allocs=allocs.drop(columns=["host"]), frames=frames, notes=notes,
                      losses=losses)
