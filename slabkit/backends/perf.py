"""perf backend: ``perf record`` the allocation tracepoint with kernel stacks, then ``perf script``.

What runs (``slabkit capture filp --backend perf --print-program``)::

    perf record -e kmem:kmem_cache_alloc --filter 'bytes_alloc == 192 && name == "filp"' \\
        -a -g --kernel-callchains -B -D 1 -m 2048 -o {folder}/perf.data
    perf script -i {folder}/perf.data -F trace:comm,pid,tid,event,ip,sym,symoff,dso \\
        --show-lost-events > perf.script.txt

Choices, checked here (perf 6.1, Linux 6.18):

* Attachment: with ``-D 1`` perf prints ``Events disabled`` and, once the events are enabled
  (after it synthesized the existing tasks, which takes a while on a busy machine),
  ``Events enabled`` on stderr: that line is the attach signal (perf >= 5.9). Older perf gets
  no ``-D`` and a fixed settle time of :data:`SETTLE_S`.
* ``--kernel-callchains``: user stacks are not recorded (cheaper; the tables hold kernel
  frames only). The parser still stops at the first user-space address.
* ``-B`` (no build-ids): perf record would otherwise re-read the whole perf.data at exit, which
  for a 300 MB file can outlast the stop grace period; symbols still come from kallsyms.
* Sampling: ``-c N`` alone on a tracepoint recorded 27,405 samples for 10,000 events here;
  ``-c N --no-period`` records exactly 1 in N (1,000 of 10,000). Counts are scaled back by N
  in :func:`parse_output` and the capture is marked estimated.
* cgroup: perf 6.1's ``perf script -F`` has no cgroup field, so the cgroup column is missing.
* Fields: no ``time``/``cpu`` and, for dedicated caches, no ``trace`` either: every event of a
  thread with the same stack then prints the same text block, so the parser counts identical
  blocks at C speed (1.3 M events, 714 MB, in about 3 s) and parses each distinct block once.
  kmalloc plans keep ``trace`` for ``bytes_req``. ``perf.data`` stays in the capture: run
  ``perf script -i perf.data`` for every field.

``perf script`` output, one block per event, blank-line separated::

    slabwork 27999/27999 kmem:kmem_cache_alloc: <trace fields, kmalloc plans only>
    ^comm    ^pid  ^tid  ^event
    \\tffffffff81638677 kmem_cache_alloc_noprof+0x227 ([kernel.kallsyms])
    \\tffffffff816bdd0c alloc_empty_file+0x3c ([kernel.kallsyms])

Lost samples arrive as ``comm pid/tid PERF_RECORD_LOST lost N`` lines (glued to the next
block); their sum is reported as ``lost_samples``. They count every record the ring buffer
dropped, including perf's side-band records, so it is an upper bound on lost allocations.
"""
from __future__ import annotations

import re
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from slabkit.backends import Backend, Options, Parsed, Program, RunResult
from slabkit.backends._common import tracefs_filter
from slabkit.errors import ParseError, ProbeFailed

if TYPE_CHECKING:
    from slabkit.backends.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.host.target import Target
    from slabkit.plan import Plan

DATA = "perf.data"
RAW = "perf.script.txt"
RECORD_LOG = "perf.record.log"
SCRIPT_STDERR = "perf.script.stderr"
FOLDER = "{folder}"                   # replaced by the folder perf writes into, at run time
SETTLE_S = 1.0                        # attach wait for perf without "Events enabled"
ENABLED_MSG = b"Events enabled"
SCRIPT_FIELDS = "comm,pid,tid,event,ip,sym,symoff,dso"
CHUNK_BYTES = 1 << 24


def _version_tuple(text: str | None) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def mmap_pages(buffer_kb: int, page_size: int = 4096) -> int:
    """``-m`` pages for a per-CPU buffer of ``buffer_kb``: perf wants a power of two."""
    pages = max(1, int(buffer_kb) * 1024 // max(page_size, 1))
    return 1 << (pages - 1).bit_length()


def script_fields(plan: "Plan") -> str:
    """``perf script -F`` fields: ``trace`` (with bytes_req) only where the plan needs it."""
    fields = SCRIPT_FIELDS
    if plan.strategy == "kmalloc-size-class":
        fields = fields.replace("event,", "event,trace,")
    return "trace:" + fields


def render_argv(plan: "Plan", options: Options, perf_version: str | None,
                page_size: int = 4096) -> list[str]:
    """The ``perf record`` argv; ``{folder}`` stands for where perf.data goes."""
    version = _version_tuple(perf_version)
    known = version != (0, 0)
    expr = tracefs_filter(plan)
    argv = ["perf", "record"]
    for ev in plan.alloc_events:
        argv += ["-e", ev]
        if expr:
            argv += ["--filter", expr]
    argv += ["-a", "-g"]
    if not known or version >= (5, 3):
        argv.append("--kernel-callchains")
    argv.append("-B")
    if not known or version >= (5, 9):
        argv += ["-D", "1"]
    every = int(options.sample_every)
    if every > 1:
        argv += ["-c", str(every), "--no-period"]
    argv += ["-m", str(mmap_pages(options.buffer_kb, page_size)), "-o", f"{FOLDER}/{DATA}"]
    return argv


@dataclass
class PerfProgram(Program):
    """``perf record`` (``argv``) and the ``perf script`` run after it; ``{folder}`` is where
    perf.data goes (the capture folder, or a temporary folder on a remote target)."""

    script_argv: list[str] = field(default_factory=list)


class PerfBackend(Backend):
    name = "perf"
    streaming = True
    modes = ("allocs",)
    package = "linux-perf"

    def unavailable(self, target: "Target", facts: "KernelFacts") -> str | None:
        if not facts.tracers.get("perf"):
            return "perf is not installed (Debian: apt-get install linux-perf)"
        if not facts.tracefs:
            return "perf needs tracefs for tracepoints, and it is not mounted"
        return None

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        if plan.strategy == "kprobe-cachep":
            why = ("this kernel lacks kprobes" if not facts.kprobes else
                   "reading the cache name through struct kmem_cache with perf probe needs "
                   "kernel debuginfo for the field offset, which slabkit does not use")
            return f"the plan needs a kprobe comparing the cache's name: {why}; use bpftrace"
        if plan.mode != "allocs":
            return f"perf does not implement mode {plan.mode!r}"
        return None

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        argv = render_argv(plan, options, facts.tracers.get("perf"), facts.page_size)
        script = ["perf", "script", "-i", f"{FOLDER}/{DATA}", "-F", script_fields(plan),
                  "--show-lost-events"]
        text = (shlex.join(argv) + "\n# then, after SIGINT:\n" + shlex.join(script)
                + f" > {RAW}\n")
        return PerfProgram(backend=self.name, argv=argv, text=text, env={"LC_ALL": "C"},
                           script_argv=script)

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        if not isinstance(program, PerfProgram):
            raise ProbeFailed("the perf backend needs the program its render() made")
        workdir, remote_dir = _workdir(target, folder)
        try:
            return self._run(target, program, folder, control, workdir)
        finally:
            if remote_dir:
                try:
                    target.run(["rm", "-rf", "--", remote_dir], timeout=60)
                except Exception:
                    pass

    def _run(self, target: "Target", program: "PerfProgram", folder: Path, control: "RunControl",
             workdir: str) -> RunResult:
        argv = [a.replace(FOLDER, workdir) for a in program.argv]
        log = folder / RECORD_LOG
        uses_delay = "-D" in argv
        with open(log, "wb") as logf:
            with target.start(argv, stdout=logf, stderr=logf, env=program.env) as proc:
                started = time.monotonic()

                def attached() -> bool:
                    if uses_delay:
                        return ENABLED_MSG in log.read_bytes()
                    return time.monotonic() - started >= SETTLE_S
                try:
                    control.wait_attached(attached, lambda: proc.poll() is None,
                                          what="perf record")
                except ProbeFailed:
                    what = ("perf record exited before enabling its events"
                            if proc.poll() is not None
                            else "perf record did not enable its events in time")
                    raise ProbeFailed(what, returncode=proc.poll(),
                                      stderr=log.read_text(errors="replace"),
                                      raw_path=str(folder)) from None
                reason = control.run_for(lambda: proc.poll() is None)
            # leaving the block sent SIGINT: perf wrote perf.data's header and exited
        record_log = log.read_text(errors="replace")
        rc = proc.returncode
        if reason == "tracer-exited" and rc not in (0, 130, -2, None):
            raise ProbeFailed("perf record failed", returncode=rc, stderr=record_log,
                              raw_path=str(folder))

        script = [a.replace(FOLDER, workdir) for a in program.script_argv]
        with open(folder / RAW, "wb") as out, open(folder / SCRIPT_STDERR, "wb") as err:
            with target.start(script, stdout=out, stderr=err, env=program.env) as sp:
                sp.wait()
        script_err = (folder / SCRIPT_STDERR).read_text(errors="replace")
        if sp.returncode != 0:
            raise ProbeFailed("perf script failed", returncode=sp.returncode,
                              stderr=script_err, raw_path=str(folder))
        kept = [DATA] if Path(workdir) == Path(folder) else []  # remote: perf.data stays there
        return RunResult(end_reason=reason, returncode=rc,
                         stderr=(record_log + script_err).strip(),
                         raw_files=kept + [RAW, RECORD_LOG, SCRIPT_STDERR])

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        return parse_output(folder / RAW, plan, meta)


def _workdir(target: "Target", folder: Path) -> tuple[str, str | None]:
    """Where perf.data is written: the capture folder here, a temporary folder on a remote
    target (removed after ``perf script`` streamed its text back)."""
    if target.runs_here:
        return str(folder), None
    res = target.run(["mktemp", "-d", "/tmp/slabkit-perf.XXXXXX"], timeout=30)
    path = (res.stdout or "").strip()
    if res.returncode != 0 or not path:
        raise ProbeFailed("cannot make a temporary folder for perf.data on the target",
                          returncode=res.returncode, stderr=res.stderr or "")
    return path, path


# --------------------------------------------------------------------------------------------
# parsing

_LOST = b" PERF_RECORD_LOST lost "


def _is_kernel_frame(line: str) -> bool:
    """A perf callchain line of kernel code: its address is in the kernel half (ffff...)."""
    addr = line.split(None, 1)[0] if line else ""
    return len(addr) == 16 and addr.startswith("ffff")


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from ``perf script`` text written by :class:`PerfBackend` (see module doc).

    Streams the file in 16 MB chunks; memory grows with distinct (thread, stack) blocks, not
    with events. Counts are multiplied by the recorded ``sample_every``.
    """
    path = Path(path)
    if not path.is_file():
        raise ParseError("perf script output is missing", path=str(path))
    markers = [f" {ev}: ".encode() for ev in plan.alloc_events]
    with_trace = plan.strategy == "kmalloc-size-class"
    every = int((meta.get("options") or {}).get("sample_every", 1) or 1)

    # 1. aggregate raw blocks: key bytes -> [count, bytes_req]
    agg: dict[bytes, list[int]] = {}
    lost = 0

    def add_block(block: bytes, mult: int) -> None:
        """Slow path, once per distinct block: LOST lines, several events in one block."""
        nonlocal lost
        head_key: bytes | None = None
        frames: list[bytes] = []
        req = 0

        def flush() -> None:
            if head_key is not None:
                key = head_key + b"\n" + b"\n".join(frames)
                c = agg.get(key)
                if c is None:
                    agg[key] = [mult, req * mult]
                else:
                    c[0] += mult
                    c[1] += req * mult
        for line in block.split(b"\n"):
            if not line.strip():
                continue
            if line[:1] == b"\t":
                frames.append(line)
                continue
            i = line.find(_LOST)
            if i >= 0:
                try:
                    lost += int(line[i + len(_LOST):].split()[0]) * mult
                except (ValueError, IndexError):
                    raise ParseError("bad PERF_RECORD_LOST line", path=str(path),
                                     line=line.decode(errors="replace")) from None
                continue
            for marker in markers:
                j = line.find(marker)
                if j >= 0:
                    flush()
                    head_key, frames, req = line[:j + len(marker)], [], _bytes_req(line, j)
                    break
            # other PERF_RECORD_* lines carry no allocation
        flush()

    with open(path, "rb") as f:
        carry = b""
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            blocks = (carry + data).split(b"\n\n")
            carry = blocks.pop()
            if with_trace:
                marker = markers[0]
                for block in blocks:
                    head, _, rest = block.partition(b"\n")
                    j = head.find(marker)
                    if j < 0 or len(markers) > 1:
                        add_block(block, 1)
                        continue
                    key = head[:j + len(marker)] + b"\n" + rest
                    c = agg.get(key)
                    if c is None:
                        agg[key] = [1, _bytes_req(head, j)]
                    else:
                        c[0] += 1
                        c[1] += _bytes_req(head, j)
            else:
                for block, n in Counter(blocks).items():
                    add_block(block, n)
        if carry.strip():
            add_block(carry, 1)

    # 2. distinct keys -> (pid, tid, comm, stack_id)
    counts: dict[tuple, list[int]] = {}
    stacks: dict[tuple[str, ...], int] = {}
    for key, (n, req) in agg.items():
        text = key.decode(errors="replace")
        head, _, frame_text = text.partition("\n")
        head = head.rstrip()
        ev_at = max(head.rfind(" " + ev + ":") for ev in plan.alloc_events)
        comm, _, ids = head[:ev_at].rstrip().rpartition(" ")  # "comm  pid/tid " (padded)
        comm = comm.strip()  # perf pads comm to 16 columns on events without a callchain
        pid_s, _, tid_s = ids.partition("/")
        try:
            pid, tid = int(pid_s), int(tid_s or pid_s)
        except ValueError:
            raise ParseError("perf script header without pid/tid", path=str(path),
                             line=head) from None
        frames = []
        for line in frame_text.split("\n"):
            line = line.strip()
            if not line:
                continue
            if not _is_kernel_frame(line):
                break  # user-space frames follow the kernel ones
            frames.append(line)
        sid = -1
        if frames:
            t = tuple(frames)
            sid = stacks.get(t, -1)
            if sid < 0:
                sid = stacks[t] = len(stacks)
        k = (pid if pid >= 0 else None, tid if tid >= 0 else None, comm, sid)
        c = counts.get(k)
        if c is None:
            counts[k] = [n, req]
        else:
            c[0] += n
            c[1] += req
    from slabkit.backends._tables import build_tables  # pandas: only when parsing
    allocs, frames_df = build_tables(counts, stacks, plan, meta, scale=every)
    notes = ["perf script has no cgroup field here: cgroup is missing"]
    if every > 1:
        notes.append(f"perf recorded 1 event in {every} (-c {every} --no-period): counts are "
                     f"estimates, scaled by {every}")
    return Parsed(allocs=allocs, frames=frames_df, losses={"lost_samples": lost},
                  notes=notes, estimated=every > 1)


def _bytes_req(head: bytes, start: int) -> int:
    """``bytes_req=N`` from a header's trace fields (0 where the header has none)."""
    j = head.find(b" bytes_req=", start)
    if j < 0:
        return 0
    k = head.find(b" ", j + 11)
    try:
        return int(head[j + 11:k if k >= 0 else None])
    except ValueError:
        return 0
