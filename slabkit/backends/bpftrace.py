"""bpftrace backend: count in the kernel by (pid, tid, cgroup, comm), stacks by the same key.

Program shape for a dedicated cache on 6.18+ (``slabkit capture filp --print-program``)::

    tracepoint:kmem:kmem_cache_alloc
    /args->bytes_alloc == 192 && str(args->name, 6) == "filp"/
    {
      @c[pid, tid, cgroup, comm] = count();            // every event: exact counts
      if (@first[tid, comm] == 0) {                     // a thread's first event (and its
        @first[tid, comm] = 1;                          // first after an exec): always
        @s[pid, tid, cgroup, comm, kstack(perf)] = count();
      } else if (rand % 32 == 0) {                      // then 1 in 32, weighted by 32
        @w[pid, tid, cgroup, comm, kstack(perf)] = count();
      }
    }

Why this shape (measured in ``bench/``): the integer test on the slot size rejects most events
of other caches before the string compare, and the compare reads ``len(name) + 2`` bytes
instead of the 64-byte default. Taking a kernel stack is the most expensive step, so by default
a stack is taken for one event in ``stack_sample`` (recorded in the capture), plus each
thread's first event so that no thread is left without a stack; each thread's exact count is
then spread over its stacks in proportion to their weight (1 for ``@s``, N for ``@w``; see
:func:`spread_counts`). ``stack_sample=1`` is the full-stack mode (only ``@s``).

With a pid or comm filter, the filter is tested inside the program, after the cache's terms,
and the cache's events it turns away are counted in ``@f`` (so a capture that counted nothing
can say whether the cache was busy with other processes).

Output (``-f json``): one JSON document per line; maps printed at exit as
``{"type": "map", "data": {"@c": {"<pid>,<tid>,<cgroup>,<comm>": N}}}``; the stack key
ends with ``,\\n\\t<hexaddr> <sym>+<off>\\n...``. Failed map updates (a full map) arrive as
``{"type": "helper_error", "helper": "map_update_elem", ...}`` lines (``-k``): counted.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from slabkit.backends import (
    Backend,
    Options,
    Parsed,
    Program,
    RunResult,
    run_marked_tracer,
)
from slabkit.errors import ParseError, ProbeFailed
from slabkit.host.facts import BTF_PATH, kernel_btf_has_id

if TYPE_CHECKING:
    import pandas as pd

    from slabkit.backends.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.host.target import Target
    from slabkit.plan import Plan, Term

RAW = "bpftrace.jsonl"
STDERR = "bpftrace.stderr"


def _version_tuple(text: str | None) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


#: bpftrace that finds a kernel's BTF without the kernel giving it an object id
BTF_BY_FILE_VERSION = (0, 18)


def btf_workaround(version: str | None, btf_has_id: bool | None) -> dict[str, str]:
    """``{"BPFTRACE_BTF": "/sys/kernel/btf/vmlinux"}`` where bpftrace ``version`` cannot find
    the kernel's BTF by itself: before 0.18 it looks it up by BTF object id, which kernels
    before 5.11 do not give it (``btf_has_id`` False, read from the kernel's own BTF by
    :func:`slabkit.host.facts.kernel_btf_has_id`), and then fails on missing headers."""
    if btf_has_id is False and _version_tuple(version) < BTF_BY_FILE_VERSION:
        return {"BPFTRACE_BTF": BTF_PATH}
    return {}


#: why :func:`btf_workaround` sets what it sets (the capture's ``tracer_workarounds``)
BTF_WORKAROUND_WHY = ("bpftrace {version} looks the kernel's BTF up by object id, which this "
                      "kernel does not give it (its BTF has no bpf_btf_info.kernel_btf: Linux "
                      "before 5.11); without it, it wants kernel headers and fails with "
                      "'linux/types.h' file not found")


#: the fields of a pid/comm filter (tested inside the program, so it can count what they turn
#: away); the other terms pick the cache
FILTER_FIELDS = ("pid", "comm")


def render_predicate(plan: "Plan", *, args: str = "args->", terms: "list[Term] | None" = None
                     ) -> str:
    """The plan's filter (:meth:`Plan.predicate`, or ``terms``) as a bpftrace predicate, in
    its order.

    ``pid`` is bpftrace's process id (the thread group); a string compare reads only the
    name's length plus 2 bytes, not the 64-byte default."""
    parts = []
    for term in (plan.predicate() if terms is None else terms):
        f, op, v = term.field, term.op, term.value
        if f == "bytes_alloc" and op == "==":
            parts.append(f"{args}bytes_alloc == {int(v)}")
        elif f == "pid" and op == "==":
            parts.append(f"pid == {int(v)}")
        elif f == "name" and op == "==":
            parts.append(f'str({args}name, {len(str(v)) + 2}) == "{v}"')
        elif f == "cache_name" and op == "==":
            parts.append(f'str(((struct kmem_cache *)arg0)->name, {len(str(v)) + 2}) == "{v}"')
        elif f == "gfp_flags" and op in ("any", "none"):
            parts.append(f"({args}gfp_flags & {int(v):#x}) {'!=' if op == 'any' else '=='} 0")
        elif f == "comm" and op == "==":
            parts.append(f'comm == "{v}"')
        else:
            raise ProbeFailed(f"a bpftrace predicate cannot test {f} {op} {v!r}")
    return " && ".join(parts)


def render_bulk(plan: "Plan") -> list[str]:
    """Probes that count the objects ``kmem_cache_alloc_bulk`` returned for the plan's cache.

    The entry probe compares the cache (first argument) and keeps the stack; the return
    probe adds the returned count under that stack. Entry and return are paired by thread and
    nesting depth, because an interrupt may allocate in bulk (another cache) inside a task's
    call. The stack is taken on entry: a kretprobe's own stack ends at the kretprobe
    trampoline on older kernels (seen on 5.10)."""
    key = "pid, tid, cgroup, comm"
    pred = render_predicate(plan, terms=plan.bulk_predicate())
    entries = ", ".join(f"kprobe:{f}" for f in plan.bulk_functions)
    returns = ", ".join(f"kretprobe:{f}" for f in plan.bulk_functions)
    return [
        "", entries, "{",
        "  $d = @bd[tid] + 1;",
        "  @bd[tid] = $d;",
        f"  if ({pred}) {{",
        "    @bm[tid, $d] = 1;",
        "    @bs[tid, $d] = kstack(perf);",
        "  }",
        "}",
        "", returns, "/@bd[tid]/", "{",
        "  $d = @bd[tid];",
        "  if (@bm[tid, $d]) {",
        f"    @b[{key}, @bs[tid, $d]] = sum((int32)retval);",
        f"    @bn[{key}] = count();",
        "    delete(@bm[tid, $d]);",
        "    delete(@bs[tid, $d]);",
        "  }",
        "  if ($d <= 1) { delete(@bd[tid]); } else { @bd[tid] = $d - 1; }",
        "}",
    ]


def render_program(plan: "Plan", options: Options, *, bulk: bool = True) -> str:
    """The bpftrace program for ``plan`` (every value in it validated or an int).

    ``bulk``: also count the plan's bulk allocations (:func:`render_bulk`; needs kprobes)."""
    if plan.strategy == "kprobe-cachep":
        probes = ", ".join(f"kprobe:{f}" for f in plan.functions)
    else:
        probes = ", ".join(f"tracepoint:{e}" for e in plan.alloc_events)
    terms = plan.predicate()
    who = [t for t in terms if t.field in FILTER_FIELDS]
    pred = render_predicate(plan, terms=[t for t in terms if t.field not in FILTER_FIELDS])
    key = "pid, tid, cgroup, comm"
    n = max(1, int(options.stack_sample))
    body = [f"  @c[{key}] = count();"]
    if plan.strategy == "kmalloc-size-class":
        body.append(f"  @r[{key}] = sum(args->bytes_req);")
    if plan.mode == "outstanding":
        ptr = "retval" if plan.strategy == "kprobe-cachep" else "args->ptr"
        body += [f"  @live[{ptr}] = nsecs;",
                 f"  @who[{ptr}] = ({key});",
                 f"  @stk[{ptr}] = kstack(perf);"]
    if n == 1:
        body.append(f"  @s[{key}, kstack(perf)] = count();")
    else:
        body += ["  if (@first[tid, comm] == 0) {",
                 f"    @first[tid, comm] = 1; @s[{key}, kstack(perf)] = count();",
                 f"  }} else if (rand % {n} == 0) {{",
                 f"    @w[{key}, kstack(perf)] = count();",
                 "  }"]
    if who:   # the cache's events the pid/comm filter turns away are counted in @f
        body = [f"  if (!({render_predicate(plan, terms=who)})) {{ @f = count(); }} else {{",
                *("  " + line for line in body), "  }"]
    lines = ['BEGIN { printf("slabkit-attached\\n"); }', "", probes, f"/{pred}/", "{",
             *body, "}"]
    end = ["clear(@first);"] if n > 1 else []
    if bulk and plan.bulk_functions:
        lines += render_bulk(plan)
        end += ["clear(@bd); clear(@bm); clear(@bs);"]
    if plan.mode == "outstanding":
        if plan.strategy == "kprobe-cachep":
            raise ProbeFailed("outstanding mode with kprobes is not implemented; "
                              "use a kernel whose tracepoints carry ptr")
        for ev in plan.free_events:
            lines += ["", f"tracepoint:{ev}", "/@live[args->ptr]/", "{",
                      "  delete(@live[args->ptr]); delete(@who[args->ptr]); "
                      "delete(@stk[args->ptr]);", "}"]
        end.insert(0, 'printf("slabkit-end %lld\\n", nsecs);')
    if end:
        lines += ["", "END { " + " ".join(end) + " }"]
    return "\n".join(lines) + "\n"


class BpftraceBackend(Backend):
    name = "bpftrace"
    streaming = False
    modes = ("allocs", "outstanding")
    package = "bpftrace"

    def unavailable(self, target: "Target", facts: "KernelFacts") -> str | None:
        version = facts.tracers.get("bpftrace")
        if not version:
            return "bpftrace is not installed (Debian/Ubuntu: apt-get install bpftrace)"
        if _version_tuple(version) < (0, 12):
            return f"bpftrace {version} is older than 0.12"
        if _version_tuple(version) < BTF_BY_FILE_VERSION and facts.btf_has_id is None:
            facts.btf_has_id = kernel_btf_has_id(target)
            if facts.btf_has_id is None and not target.exists(
                    f"/lib/modules/{facts.release}/build/include"):
                return (f"bpftrace {version} needs the kernel's types, and this kernel has "
                        f"neither BTF ({BTF_PATH}) nor headers (/lib/modules/{facts.release}/"
                        f"build): install linux-headers-{facts.release}")
        return None

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        if plan.strategy == "kprobe-cachep" and not facts.kprobes:
            return "the plan needs kprobes, which this kernel lacks"
        if plan.mode == "outstanding" and plan.strategy == "kprobe-cachep":
            return "outstanding mode needs allocation tracepoints with ptr"
        return None

    def counts_bulk(self, plan: "Plan", facts: "KernelFacts") -> bool:
        return bool(plan.bulk_functions) and facts.kprobes

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        text = render_program(plan, options, bulk=self.counts_bulk(plan, facts))
        keys = options.map_keys or (262144 if plan.mode == "outstanding" else 65536)
        env = {"BPFTRACE_MAP_KEYS_MAX": str(int(keys)), "BPFTRACE_STRLEN": "64"}
        workarounds = btf_workaround(facts.tracers.get("bpftrace"), facts.btf_has_id)
        env.update(workarounds)
        why = {f"{k}={v}": BTF_WORKAROUND_WHY.format(version=facts.tracers.get("bpftrace"))
               for k, v in workarounds.items()}
        return Program(backend=self.name, argv=["bpftrace", "-f", "json", "-k", "-e", text],
                       text=text, env=env, workarounds=why)

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        raw = folder / RAW
        # stopping it (SIGINT) makes bpftrace print its maps and exit
        reason, rc, stderr = run_marked_tracer(target, program, raw, folder / STDERR, control,
                                               what="bpftrace", clean=_clean_stderr)
        stderr = _clean_stderr(stderr)
        if reason == "tracer-exited" and rc not in (0, None):
            raise ProbeFailed("bpftrace failed", returncode=rc, stderr=stderr, raw_path=str(raw))
        return RunResult(end_reason=reason, returncode=rc, stderr=stderr,
                         raw_files=[RAW, STDERR])

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        return parse_output(folder / RAW, plan, meta)


def _clean_stderr(text: str) -> str:
    """Drop bpftrace 0.17's harmless RLIMIT_MEMLOCK complaint (it still loads)."""
    return "\n".join(l for l in text.splitlines() if "RLIMIT_MEMLOCK" not in l)


def _split_key(key: str, nfixed: int, path: Path) -> list[str]:
    """Split ``pid,tid,cgroup,comm[,stack]``: the first fields cannot hold commas."""
    parts = key.split(",", nfixed)
    if len(parts) != nfixed + 1:
        raise ParseError("bpftrace map key has too few fields", path=str(path), line=key)
    return parts


class BpftraceOutput(NamedTuple):
    """What a bpftrace ``-f json`` output holds (see :func:`read_maps`)."""

    maps: dict[str, dict]          # map name ("@c") -> key text -> value
    errors: dict[str, int]         # helper errors and lost events, counted
    printed: list[str]             # printf lines


def read_maps(path: Path) -> BpftraceOutput:
    """Maps by name, counters of helper errors, and printf lines of a bpftrace json output.

    Helper errors are counted by helper (``map_update_elem_failed``) and also by the program
    line they happened on (``map_update_elem_failed@7``), so the parser can tell a full
    counts map (events lost) from a full stack map (counts intact).

    bpftrace has no end marker; its output has a shape instead: ``attached_probes`` once at
    the start, and the maps once each at exit, after everything else. A second run's lines, a
    map printed twice, or anything after the maps (a file appended to, twice over, or forged)
    is refused rather than counted."""
    maps: dict[str, dict] = {}
    errors: dict[str, int] = {}
    printed: list[str] = []
    runs = 0

    def refuse(why: str, lineno: int, line: str) -> ParseError:
        return ParseError.forged(why, path=str(path), lineno=lineno, line=line)

    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                raise ParseError("not a bpftrace JSON line (was it cut off?)", path=str(path),
                                 lineno=lineno, line=line) from None
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind is None:
                raise ParseError("not a bpftrace JSON document", path=str(path),
                                 lineno=lineno, line=line)
            if maps and kind != "map":
                raise refuse("bpftrace output goes on after its maps (printed once, at exit)",
                             lineno, line)
            if kind == "map":
                data = doc.get("data")
                if not isinstance(data, dict):
                    raise ParseError("bpftrace map line without its data", path=str(path),
                                     lineno=lineno, line=line)
                for name in data:
                    if name in maps:
                        raise refuse(f"bpftrace map {name} printed twice", lineno, line)
                maps.update(data)
            elif kind == "attached_probes":
                runs += 1
                if runs > 1:
                    raise refuse("a second bpftrace run in one output", lineno, line)
            elif kind == "helper_error":
                h = f"{doc.get('helper', '?')}_failed"
                errors[h] = errors.get(h, 0) + 1
                if doc.get("line") is not None:
                    at = f"{h}@{doc['line']}"
                    errors[at] = errors.get(at, 0) + 1
            elif kind == "printf":
                printed.append(str(doc.get("data", "")))
            elif kind == "lost_events":
                errors["lost_events"] = errors.get("lost_events", 0) + int(
                    doc.get("data", {}).get("events", 0))
    return BpftraceOutput(maps, errors, printed)


_FRAME_RE = re.compile(r"^\s*([0-9a-fA-F]+)\s+(\S.*)?$")


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a bpftrace ``-f json`` output written by :func:`render_program`."""
    import pandas as pd  # the parser needs pandas; rendering and running do not

    from slabkit.backends._tables import (
        finish_allocs,
        frames_from_addresses,
        load_kallsyms,
        spread_counts,
    )
    path = Path(path)
    maps, errors, printed = read_maps(path)
    keys = ["pid", "tid", "cgroup_id", "comm"]
    rows = []
    for key, n in maps.get("@c", {}).items():
        pid, tid, cg, comm = _split_key(key, 3, path)
        rows.append((int(pid), int(tid), int(cg), comm, int(n)))
    exact = pd.DataFrame(rows, columns=keys + ["count"])
    req = {}
    for key, n in maps.get("@r", {}).items():
        pid, tid, cg, comm = _split_key(key, 3, path)
        req[(int(pid), int(tid), int(cg), comm)] = int(n)

    stack_ids: dict[tuple[int, ...], int] = {}
    srows = []
    every = int(meta.get("options", {}).get("stack_sample", 1) or 1)
    weighted = [(key, n) for key, n in maps.get("@s", {}).items()]
    weighted += [(key, n * every) for key, n in maps.get("@w", {}).items()]
    for key, n in weighted:
        pid, tid, cg, rest = _split_key(key, 3, path)
        comm, _, stack_text = rest.partition(",\n")
        addrs = []
        for fl in stack_text.splitlines():
            m = _FRAME_RE.match(fl)
            if m:
                addrs.append(int(m.group(1), 16))
        sid = stack_ids.setdefault(tuple(addrs), len(stack_ids))
        srows.append((int(pid), int(tid), int(cg), comm, sid, int(n)))
    sampled = pd.DataFrame(srows, columns=keys + ["stack_id", "samples"])
    sampled = sampled.groupby(keys + ["stack_id"], as_index=False)["samples"].sum()
    if every == 1 and len(sampled):
        allocs = sampled.rename(columns={"samples": "count"})
        # a stack map that lost updates (full) would leave counts short: fill from @c
        allocs = spread_counts(exact, allocs.rename(columns={"count": "samples"}), keys) \
            if errors else allocs
    else:
        allocs = spread_counts(exact, sampled, keys)

    bulk, bulk_calls = _bulk_rows(maps, path, stack_ids)
    if len(bulk):
        allocs = pd.concat([allocs, bulk], ignore_index=True)

    slot = int(plan.match_bytes_alloc or meta.get("slab_size") or 0) or None
    req_df = None
    if plan.strategy == "kmalloc-size-class" and req:
        req_df = pd.DataFrame([(*k, v) for k, v in req.items()], columns=keys + ["req"])
    allocs = finish_allocs(allocs, req_df, plan, meta, keys)

    outstanding = None
    if plan.mode == "outstanding":
        outstanding = _outstanding(maps, printed, path, slot, meta, stack_ids)

    stacks = {sid: list(addrs) for addrs, sid in stack_ids.items()}
    kallsyms = meta.get("kallsyms_path")
    frames = frames_from_addresses(
        stacks, load_kallsyms(Path(path).parent / kallsyms if kallsyms else None))

    losses, stack_losses = _split_helper_errors(errors, meta.get("program") or "", plan)
    notes = []
    failed = losses.get("map_updates_failed", 0)
    if failed:
        what = ("objects were not tracked: outstanding counts are a lower bound"
                if plan.mode == "outstanding" else "events were not counted")
        notes.append(f"WARNING: a bpftrace map was full ({failed} failed updates): {what}; "
                     "raise map_keys")
    if stack_losses.get("stack_map_updates_failed"):
        notes.append(f"a bpftrace stack map was full ({stack_losses['stack_map_updates_failed']} "
                     "failed updates): counts per process stay exact, stacks of the threads it "
                     "missed are borrowed from their other stacks or shown as stack -1; raise "
                     "map_keys")
    if every > 1:
        notes.append(f"stacks sampled 1 in {every}: counts per process are exact, counts per "
                     "stack are estimates")
    if "@bn[" in (meta.get("program") or ""):
        notes.append(f"{int(bulk['count'].sum())} objects came from {bulk_calls} bulk "
                     f"allocations ({', '.join(plan.bulk_functions) or 'kmem_cache_alloc_bulk'}, "
                     "counted at its return, every one with its stack)")
    filtered_out = None
    if plan.pid is not None or plan.comm is not None:
        f = maps.get("@f", 0)
        filtered_out = int(f) if isinstance(f, int) else 0
    return Parsed(allocs=allocs, frames=frames, outstanding=outstanding, losses=losses,
                  notes=notes, estimated=every > 1, stack_losses=stack_losses,
                  fired=True if len(exact) or len(bulk) or filtered_out else None,
                  filtered_out=filtered_out)


def _bulk_rows(maps: dict, path: Path, stack_ids: dict[tuple[int, ...], int]
               ) -> tuple[pd.DataFrame, int]:
    """Rows (pid, tid, cgroup_id, comm, stack_id, count) of the objects bulk allocations
    returned (``@b``, keyed with the stack taken on entry), and the number of calls (``@bn``)."""
    import pandas as pd
    keys = ["pid", "tid", "cgroup_id", "comm"]
    rows = []
    for key, n in maps.get("@b", {}).items():
        pid, tid, cg, rest = _split_key(key, 3, path)
        comm, _, stack_text = rest.partition(",\n")
        addrs = tuple(int(m.group(1), 16) for m in map(_FRAME_RE.match, stack_text.splitlines())
                      if m)
        sid = stack_ids.setdefault(addrs, len(stack_ids)) if addrs else -1
        rows.append((int(pid), int(tid), int(cg), comm, sid, int(n)))
    df = pd.DataFrame(rows, columns=keys + ["stack_id", "count"])
    df = df[df["count"] > 0].groupby(keys + ["stack_id"], as_index=False)["count"].sum()
    calls = sum(int(n) for n in maps.get("@bn", {}).values())
    return df, calls


#: maps whose failed update loses events (or tracked objects): the rest only lose stacks
_COUNTING_MAPS = ("@c[", "@r[", "@live[", "@who[", "@stk[", "@b[", "@bn[", "@bd[", "@bm[")


def _split_helper_errors(errors: dict[str, int], program: str, plan: "Plan"
                         ) -> tuple[dict[str, int], dict[str, int]]:
    """(losses, stack losses) from :func:`read_maps` errors: a failed map update on a line
    of ``program`` that updates a counting map is a loss; one on a stack/first-seen map line
    is a stack loss. Without line numbers (older output), every failure counts as a loss."""
    lines = program.splitlines()
    losses: dict[str, int] = {}
    stack: dict[str, int] = {}
    by_line = {k: v for k, v in errors.items() if "@" in k}
    for k, v in errors.items():
        if "@" in k:
            continue
        if k != "map_update_elem_failed":
            losses[k] = v
            continue
        line_known = {int(x.split("@")[1]): n for x, n in by_line.items()
                      if x.startswith(k + "@") and x.split("@")[1].isdigit()}
        if not line_known or not lines:
            losses["map_updates_failed"] = v
            continue
        for lineno, n in line_known.items():
            text = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
            if any(m in text for m in _COUNTING_MAPS) or not text:
                losses["map_updates_failed"] = losses.get("map_updates_failed", 0) + n
            else:
                stack["stack_map_updates_failed"] = stack.get("stack_map_updates_failed", 0) + n
    return losses, stack


def _outstanding(maps: dict, printed: list[str], path: Path, slot: int | None, meta: dict,
                 stack_ids: dict[tuple[int, ...], int]) -> pd.DataFrame:
    """Objects still live at the end, grouped by (process, stack), with their ages."""
    import pandas as pd
    end_ns = None
    for line in printed:
        if line.startswith("slabkit-end "):
            end_ns = int(line.split()[1])
    live = maps.get("@live", {})
    who = maps.get("@who", {})
    stk = maps.get("@stk", {})
    rows = []
    for ptr, ts in live.items():
        w = who.get(ptr)
        if not w:
            continue
        addrs = tuple(int(m.group(1), 16) for m in map(_FRAME_RE.match, stk.get(ptr, "").splitlines())
                      if m)
        sid = stack_ids.setdefault(addrs, len(stack_ids)) if addrs else -1
        age = (end_ns - int(ts)) / 1e9 if end_ns else float("nan")
        rows.append((int(w[0]), int(w[1]), int(w[2]), str(w[3]), sid, age))
    keys = ["pid", "tid", "cgroup_id", "comm", "stack_id"]
    df = pd.DataFrame(rows, columns=keys + ["age"])
    out = df.groupby(keys, as_index=False).agg(count=("age", "size"),
                                                 oldest_age_s=("age", "max"),
                                                 median_age_s=("age", "median"))
    out["bytes"] = out["count"] * slot if slot else pd.NA
    out["cgroup"] = out["cgroup_id"].map(meta.get("cgroups", {}).get).astype("string")
    return out.drop(columns=["cgroup_id"]).sort_values("count", ascending=False,
                                                      ignore_index=True)
