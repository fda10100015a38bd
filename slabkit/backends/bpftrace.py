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

Output (``-f json``): one JSON document per line; maps printed at exit as
``{"type": "map", "data": {"@c": {"<pid>,<tid>,<cgroup>,<comm>": N}}}``; the stack key
ends with ``,\\n\\t<hexaddr> <sym>+<off>\\n...``. Failed map updates (a full map) arrive as
``{"type": "helper_error", "helper": "map_update_elem", ...}`` lines (``-k``): counted.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from slabkit.errors import ParseError, ProbeFailed
from slabkit.validate import check_cache_name, check_comm
from slabkit.backends import Backend, Options, Parsed, Program, RunResult, run_marked_tracer

if TYPE_CHECKING:
    from slabkit.capturing.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.plan import Plan
    from slabkit.host.target import Target

RAW = "bpftrace.jsonl"
STDERR = "bpftrace.stderr"


def _version_tuple(text: str | None) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _filter(plan: "Plan", *, args: str = "args->") -> list[str]:
    """Predicate terms common to every probe of the plan, cheapest first."""
    terms = []
    if plan.pid is not None:
        terms.append(f"pid == {int(plan.pid)}")
    if plan.strategy == "tracepoint-name":
        if plan.match_bytes_alloc is not None:
            terms.append(f"{args}bytes_alloc == {int(plan.match_bytes_alloc)}")
        name = check_cache_name(plan.match_name or "")
        terms.append(f'str({args}name, {len(name) + 2}) == "{name}"')
    elif plan.strategy == "kprobe-cachep":
        name = check_cache_name(plan.match_name or "")
        terms.append(f'str(((struct kmem_cache *)arg0)->name, {len(name) + 2}) == "{name}"')
    elif plan.strategy == "kmalloc-size-class":
        terms.append(f"{args}bytes_alloc == {int(plan.match_bytes_alloc or 0)}")
        if plan.gfp_require:
            terms.append(f"({args}gfp_flags & {plan.gfp_require:#x}) != 0")
        if plan.gfp_forbid:
            terms.append(f"({args}gfp_flags & {plan.gfp_forbid:#x}) == 0")
    if plan.comm is not None:
        terms.append(f'comm == "{check_comm(plan.comm)}"')
    return terms


def render_program(plan: "Plan", options: Options) -> str:
    """The bpftrace program for ``plan`` (every value in it validated or an int)."""
    if plan.strategy == "kprobe-cachep":
        probes = ", ".join(f"kprobe:{f}" for f in plan.functions)
    else:
        probes = ", ".join(f"tracepoint:{e}" for e in plan.alloc_events)
    pred = " && ".join(_filter(plan))
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
    lines = ['BEGIN { printf("slabkit-attached\\n"); }', "", probes, f"/{pred}/", "{",
             *body, "}"]
    end = ["clear(@first);"] if n > 1 else []
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
        if not facts.tracers.get("bpftrace"):
            return "bpftrace is not installed (Debian/Ubuntu: apt-get install bpftrace)"
        if _version_tuple(facts.tracers["bpftrace"]) < (0, 12):
            return f"bpftrace {facts.tracers['bpftrace']} is older than 0.12"
        return None

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        if plan.strategy == "kprobe-cachep" and not facts.kprobes:
            return "the plan needs kprobes, which this kernel lacks"
        if plan.mode == "outstanding" and plan.strategy == "kprobe-cachep":
            return "outstanding mode needs allocation tracepoints with ptr"
        return None

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        text = render_program(plan, options)
        keys = options.map_keys or (262144 if plan.mode == "outstanding" else 65536)
        env = {"BPFTRACE_MAP_KEYS_MAX": str(int(keys)), "BPFTRACE_STRLEN": "64"}
        return Program(backend=self.name, argv=["bpftrace", "-f", "json", "-k", "-e", text],
                       text=text, env=env)

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        raw = folder / RAW
        # stopping it (SIGINT) makes bpftrace print its maps and exit
        reason, rc, stderr = run_marked_tracer(target, program, raw, folder / STDERR, control,
                                               what="bpftrace")
        if reason == "tracer-exited" and rc not in (0, None):
            raise ProbeFailed("bpftrace failed", returncode=rc, stderr=_clean_stderr(stderr),
                              raw_path=str(raw))
        return RunResult(end_reason=reason, returncode=rc, stderr=_clean_stderr(stderr),
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


def read_maps(path: Path) -> tuple[dict[str, dict], dict[str, int], list[str]]:
    """Maps by name, counters of helper errors, and printf lines of a bpftrace json output.

    Helper errors are counted by helper (``map_update_elem_failed``) and also by the program
    line they happened on (``map_update_elem_failed@7``), so the parser can tell a full
    counts map (events lost) from a full stack map (counts intact)."""
    maps: dict[str, dict] = {}
    errors: dict[str, int] = {}
    printed: list[str] = []
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
            kind = doc.get("type")
            if kind == "map":
                maps.update(doc["data"])
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
    return maps, errors, printed


def spread_counts(exact: pd.DataFrame, sampled: pd.DataFrame, keys: list[str], *,
                  by_thread: bool = True) -> pd.DataFrame:
    """Spread each key's exact ``count`` over its sampled stacks in proportion.

    ``exact``: keys + count. ``sampled``: keys + stack_id + samples (weighted). Uses largest
    remainders, so per-key sums stay exact. A key with no stack of its own (a thread whose
    comm changed at exec after its first stack was taken) uses its thread's stacks
    (``by_thread``); one with none at all keeps its count with stack_id -1.
    """
    if sampled.empty:
        out = exact.copy()
        out["stack_id"] = -1
        return out
    merged = sampled.merge(exact, on=keys, how="inner")
    tot = merged.groupby(keys, dropna=False)["samples"].transform("sum")
    share = merged["count"] * merged["samples"] / tot
    base = share.astype("int64")
    merged["rem"] = share - base
    merged["count"] = base
    short = (exact.set_index(keys)["count"]
             - merged.groupby(keys, dropna=False)["count"].sum()).rename("short")
    merged = merged.join(short, on=keys)
    merged = merged.sort_values(keys + ["rem"], ascending=[True] * len(keys) + [False])
    merged["rank"] = merged.groupby(keys, dropna=False).cumcount()
    merged["count"] += (merged["rank"] < merged["short"]).astype("int64")
    out = merged[keys + ["stack_id", "count"]]
    missing = exact.merge(sampled[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"].drop(columns="_merge")
    if len(missing):
        thread = [k for k in ("pid", "tid") if k in keys]
        cand = pd.DataFrame()
        if by_thread and thread and thread != keys:
            per_thread = sampled.groupby(thread + ["stack_id"], as_index=False)["samples"].sum()
            cand = missing[keys].merge(per_thread, on=thread)
        if len(cand):
            out = pd.concat([out, spread_counts(missing, cand, keys, by_thread=False)],
                            ignore_index=True)
        else:
            missing = missing.assign(stack_id=-1)[keys + ["stack_id", "count"]]
            out = pd.concat([out, missing], ignore_index=True)
    return out[out["count"] > 0].reset_index(drop=True)


_FRAME_RE = re.compile(r"^\s*([0-9a-fA-F]+)\s+(\S.*)?$")


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a bpftrace ``-f json`` output written by :func:`render_program`."""
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
    frames = frames_from_addresses(stacks, Path(path).parent / kallsyms if kallsyms else None)

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
    return Parsed(allocs=allocs, frames=frames, outstanding=outstanding, losses=losses,
                  notes=notes, estimated=every > 1, stack_losses=stack_losses)


#: maps whose failed update loses events (or tracked objects): the rest only lose stacks
_COUNTING_MAPS = ("@c[", "@r[", "@live[", "@who[", "@stk[")


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


def finish_allocs(allocs: pd.DataFrame, req: pd.DataFrame | None, plan: "Plan", meta: dict,
                  keys: list[str]) -> pd.DataFrame:
    """Add ``bytes`` (count x slot size), ``bytes_req`` (``req``: requested bytes summed per
    key, spread over the key's stacks by share of its count) and ``cgroup`` (path from the
    capture's cgroup map, else ``id:<n>``) to allocation rows keyed by ``keys``."""
    slot = int(plan.match_bytes_alloc or meta.get("slab_size") or 0) or None
    allocs["bytes"] = allocs["count"] * slot if slot else pd.NA
    if req is not None and len(req):
        allocs = allocs.merge(req, on=keys, how="left")
        tot = allocs.groupby(keys)["count"].transform("sum")
        allocs["bytes_req"] = (allocs["req"] * allocs["count"] / tot).round().astype("Int64")
        allocs = allocs.drop(columns=["req"])
    allocs["cgroup"] = allocs["cgroup_id"].map(meta.get("cgroups", {}).get).astype("string")
    missing = allocs["cgroup"].isna()
    allocs.loc[missing, "cgroup"] = "id:" + allocs.loc[missing, "cgroup_id"].astype(str)
    return allocs.drop(columns=["cgroup_id"])


def _outstanding(maps: dict, printed: list[str], path: Path, slot: int | None, meta: dict,
                 stack_ids: dict[tuple[int, ...], int]) -> pd.DataFrame:
    """Objects still live at the end, grouped by (process, stack), with their ages."""
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


def load_kallsyms(path: Path | None):
    """The capture's saved kernel symbols (``kallsyms.txt.gz``), or None."""
    import gzip
    from slabkit.model.stacks import Kallsyms
    if path is None or not Path(path).is_file():
        return None
    with gzip.open(path, "rt") as f:
        return Kallsyms.from_text(f.read())


def frames_from_addresses(stacks: dict[int, list[int]], kallsyms_path: Path | None
                          ) -> pd.DataFrame:
    """The ``frames`` table for stacks of raw addresses, resolved through saved kallsyms."""
    import numpy as np
    from slabkit.model import schema
    keys = list(stacks)
    lengths = np.fromiter((len(stacks[k]) for k in keys), dtype=np.int64, count=len(keys))
    total = int(lengths.sum())
    if total == 0:
        return schema.empty("frames")
    addrs = np.fromiter((a for k in keys for a in stacks[k]), dtype=np.uint64, count=total)
    starts = np.cumsum(lengths) - lengths
    df = pd.DataFrame({
        "stack_id": pd.array(np.repeat(np.asarray(keys, dtype=np.int64), lengths), dtype="Int64"),
        "depth": pd.array(np.arange(total, dtype=np.int64) - np.repeat(starts, lengths),
                          dtype="Int64"),
        "address": pd.array(addrs, dtype="UInt64"),
    })
    ks = load_kallsyms(kallsyms_path)
    if ks is not None:
        uniq, inv = np.unique(addrs, return_inverse=True)
        func, off, mod = ks.resolve(uniq)
        df["function"] = func.take(inv)
        df["offset"] = off.take(inv)
        df["module"] = mod.take(inv)
    else:
        df["function"] = pd.array([pd.NA] * total, dtype="string")
        df["offset"] = pd.array([pd.NA] * total, dtype="Int64")
        df["module"] = pd.array([pd.NA] * total, dtype="string")
    return df[["stack_id", "depth", "function", "offset", "module", "address"]]
