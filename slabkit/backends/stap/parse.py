"""Parse the output of slabkit's own SystemTap script, and stap's stderr.

The script's output ends with a ``slabkit-stap done`` line giving the number of stacks and
allocations it listed: anything after it (but stap's own diagnostics), a second ``begin``, or
a listing whose totals differ from that line is refused. Output cut before ``done`` is read
as truncated (noted, counts kept).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slabkit.backends.base import Parsed
from slabkit.backends.stap.program import BUILD_INFO, STDERR_FILE
from slabkit.errors import ParseError

if TYPE_CHECKING:
    from slabkit.plan import Plan

# --------------------------------------------------------------------------------------------
# slabkit's own output

_BEGIN = re.compile(r"^slabkit-stap begin format=(?P<format>\d+) pid_filter=(?P<pid>\d+) "
                    r"ms=(?P<ms>\d+) cache=(?P<cache>.*)$")
_STACK = re.compile(r"^slabkit-stap stack count=(?P<count>\d+) pid=(?P<pid>-?\d+) "
                    r"tid=(?P<tid>-?\d+) comm=(?P<len>\d+):(?P<comm>.*)$")
_END_STACK = "slabkit-stap end-stack"
ARMED = "slabkit-stap armed"  # format 2: the allocation probes are registered
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
    def refuse(why: str, lineno: int, line: str) -> ParseError:
        return ParseError.forged(why, path=path, lineno=lineno, line=line)

    while i < n:
        line = lines[i]
        i += 1
        if "how" in info and line.strip() and not line.startswith(_STAP_DIAG):
            raise refuse("slabkit stap output goes on after its final 'done' line", i, line)
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
            if "format" in info:
                raise refuse("a second 'begin' line: two runs in one output", i, line)
            info.update(format=int(m.group("format")), pid_filter=int(m.group("pid")),
                        ms=int(m.group("ms")), cache=m.group("cache"))
            continue
        if line == ARMED:
            info["armed"] = True
            continue
        if (m := _DONE.match(line)) is not None:
            info.update(how=m.group("how"), entries=int(m.group("entries")),
                        allocs=int(m.group("allocs")), elapsed_ms=int(m.group("ms")))
            continue
        if not line.strip() or line.startswith(_STAP_DIAG):
            continue
        raise ParseError("unexpected line in slabkit stap output", path=path, lineno=i, line=line)
    if "entries" in info and (len(blocks), sum(b[0] for b in blocks)) != (info["entries"],
                                                                          info["allocs"]):
        raise ParseError(f"the listing holds {len(blocks)} stacks and "
                         f"{sum(b[0] for b in blocks)} allocations, but its 'done' line says "
                         f"{info['entries']} and {info['allocs']}: the file was edited or "
                         "damaged; its counts are not trusted", path=path)
    return blocks, info


def parse_text(text: str, *, object_size: int | None = None, path: str | None = None
               ) -> Parsed:
    """Read slabkit's own stap output (format in ``slabkit.stp``) into tables.

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
    from slabkit.model import schema   # pandas: only when parsing
    from slabkit.model.stacks import frames_table
    counts = [b[0] for b in blocks]
    allocs = schema.table("allocs", {
        "pid": [b[1] for b in blocks], "tid": [b[2] for b in blocks],
        "comm": [b[3] for b in blocks], "stack_id": rows_sid, "count": counts,
        **({"bytes": [c * int(object_size) for c in counts]} if object_size else {})})
    frames = frames_table({sid: list(fr) for fr, sid in stack_ids.items()})
    return Parsed(allocs=schema.validate(allocs, "allocs", source=path),
                  frames=schema.validate(frames, "frames", source=path))


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




def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a stap capture's output (``stap.out``, with ``stap.stderr`` and the build
    record beside it): counts, and what stap said about stopping early or building."""
    path = Path(path)
    folder = path.parent
    text = path.read_text(errors="replace")
    parsed = parse_text(text, object_size=meta.get("slab_size"), path=str(path))
    errf = folder / STDERR_FILE
    info = parse_meta(text, errf.read_text(errors="replace") if errf.exists() else "")
    why = "; ".join(info["error_lines"][:3]) or "no error printed"
    if info["truncated"] or info["how"] is None:
        parsed.losses["report_truncated"] = 1
        parsed.notes.append(f"stap's listing stopped part way ({why}): only the stacks printed "
                            "before that are counted")
    elif info["how"] == "error":
        parsed.notes.append(f"stap stopped on an error ({why}); the counts are those up to it")
    if (folder / BUILD_INFO).exists():
        b = json.loads((folder / BUILD_INFO).read_text())
        where = f" in the root {b['root']}" if b.get("root") else ""
        parsed.notes.append(f"stap module {b['module']} built here{where} for {b['release']} in "
                            f"{b['build_seconds']:g} s ({b['module_bytes']} bytes) and loaded on "
                            "the target with staprun")
    parsed.allocs = parsed.allocs.drop(columns=["host"])
    return parsed
