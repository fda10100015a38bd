"""bpf backend: slabkit's own BPF program on the *raw* allocation tracepoint (libbpf).

The cheapest way to count one cache's allocations exactly (``bench/``: within a few hundredths
of an empty program on the same tracepoint): a raw tracepoint hands the program the
tracepoint's arguments without building an event record, the cache is recognised by its
``struct kmem_cache *`` (compared by name once per pointer, then one integer compare), and
counts are exact per (pid, tid, cgroup, comm, call site), the call site being the
tracepoint's ``call_site`` (the allocator's caller). A thread allocating again on the same CPU
only adds to that CPU's pending count. Stacks are sampled: each key's first event, then 1 in
``stack_sample`` (1 in 8x that once a key has had 128 samples on a CPU), weighted; the
exact count of each (process, call site) is spread over its stacks. See
``slabkit/slabcount/slabcount.bpf.c``.

Needs a kernel with BTF (``/sys/kernel/btf/vmlinux``; the argument layout is read from it,
never assumed from the version) whose ``kmem_cache_alloc`` tracepoint passes the cache
pointer (Linux 6.0+); the kmalloc family uses the ``kmalloc`` raw tracepoint, or with full
stacks (``stack_sample=1``) of a size-class plan the regular one, whose record the kernel
builds anyway cheaply and from where the stack walk starts shallower. Where ``slabcount
--probe`` finds and checks a way to read each object's own slab (``slab_lookup``), a kmalloc
plan becomes ``kmalloc-slab`` (:func:`slabkit.plan.for_backend`): exact whatever shares the
size class. The binary is built here (:mod:`slabkit.slabcount.build`) and copied to remote
targets, which need nothing else.

Output of ``slabcount`` (tab-separated, printed after detaching; format 3)::

    slabkit-attached  kmem_cache_alloc
    format  3
    stat    count_map_full   0            # also stack_failed, stack_map_full, ...,
                                          # filtered_out, probe_fired (0/1: ran at all)
    count   <pid> <tid> <cgroup> <comm hex> <call site hex> <count> <bytes_req>
    sample  <pid> <tid> <cgroup> <comm hex> <call site hex> <stack hash> <weight> <bytes_req>
                                          # full stacks (stack_sample=1): these are the counts
    stack   <stack hash> <hex address>...  # allocator first; tracing frames cut
    end                                    # the last line: anything after it is refused

A key may have two count lines (its CPU's pending events and the map's): they add up.
Formats 1 and 2 (no format line, no call site; format 1 without the samples' bytes_req)
still parse.
"""
from __future__ import annotations

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
from slabkit.errors import ParseError, ProbeFailed, TracerUnavailable
from slabkit.validate import check_cache_name, check_comm, check_function_name

if TYPE_CHECKING:
    import pandas as pd

    from slabkit.backends.control import RunControl
    from slabkit.host.facts import KernelFacts
    from slabkit.host.target import Target
    from slabkit.plan import Plan

RAW = "slabcount.tsv"
STDERR = "slabcount.stderr"
#: where the binary is copied on SSH targets (tmpfs on most systems: gone at reboot), in a
#: folder named by the source hash so an old copy is never run
REMOTE_DIR = "/run/slabkit/bin"
BTF = "/sys/kernel/btf/vmlinux"

#: the kmalloc events slabcount attaches to (kmalloc_node: kernels before 6.1)
KMALLOC_EVENTS = ("kmem:kmalloc", "kmem:kmalloc_node")
#: plans of a dedicated cache (matched by its struct kmem_cache *)
DEDICATED_STRATEGIES = ("tracepoint-name", "kprobe-cachep")
#: plans of kmalloc caches (kmem:kmalloc events, requested bytes known)
KMALLOC_STRATEGIES = ("kmalloc-size-class", "kmalloc-slab")

#: losses ``slabcount`` reports: events not counted at all
COUNT_LOSSES = ("count_map_full", "nested_lost")
#: stacks not recorded (counts stay exact; the per-stack split is less complete)
STACK_LOSSES = ("stack_failed", "stack_map_full", "sample_map_full")


def install(target: "Target") -> str:
    """The path of the current ``slabcount`` on the target (built here, copied if remote)."""
    from slabkit.slabcount.build import build, source_hash
    local = build()
    if target.is_this_machine:
        return str(local)
    folder = f"{REMOTE_DIR}/{source_hash()}"
    path = f"{folder}/slabcount"          # named so that its comm is "slabcount" there too
    if not target.exists(path):
        res = target.run(["mkdir", "-p", folder])
        if res.returncode != 0:
            raise TracerUnavailable(f"cannot create {folder} on {target.name}: "
                                    f"{res.stderr.strip()}")
        tmp = f"{path}.part"
        target.write_bytes(tmp, local.read_bytes())
        res = target.run(["sh", "-c", 'chmod 0755 "$0" && mv "$0" "$1"', tmp, path])
        if res.returncode != 0:
            raise TracerUnavailable(f"cannot install slabcount on {target.name}: "
                                    f"{res.stderr.strip()}")
    return path


def probe_kernel(target: "Target", binary: str) -> dict[str, int]:
    """``slabcount --probe`` on the target: raw tracepoint argument indices (-1: absent)."""
    res = target.run([binary, "--probe"], timeout=60)
    if res.returncode != 0:
        raise TracerUnavailable((res.stderr or res.stdout).strip() or
                                f"slabcount --probe failed ({res.returncode})")
    out: dict[str, int] = {}
    for line in res.stdout.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value)
    return out


def render_argv(binary: str, plan: "Plan", options: Options, *,
                kmalloc_record: bool = False, kprobes: bool = False) -> list[str]:
    """The ``slabcount`` command line for ``plan`` (every value validated or an int).

    ``kmalloc_record``: the kernel's BTF describes the kmalloc event record (``slabcount
    --probe``); full-stack kmalloc captures then use the regular tracepoint, whose stack
    walk starts shallower (``bench/``: about as fast as the raw one or a little faster).
    ``kprobes``: a dedicated cache is counted by kprobes on the plan's allocation functions
    (kernels whose raw tracepoint has no cache pointer).
    """
    argv = [binary]
    if plan.strategy in DEDICATED_STRATEGIES:
        argv += ["--cache", check_cache_name(plan.match_name or "")]
        if kprobes:
            argv += ["--functions", ",".join(check_function_name(f) for f in plan.functions)]
    elif plan.strategy == "kmalloc-slab":   # the size class, then the object's own slab
        argv += ["--kmalloc-size", str(int(plan.match_bytes_alloc or 0)),
                 "--cache", check_cache_name(plan.match_name or plan.cache)]
        if kmalloc_record and int(options.stack_sample) <= 1:
            argv.append("--record-event")
    elif plan.strategy == "kmalloc-size-class":
        argv += ["--kmalloc-size", str(int(plan.match_bytes_alloc or 0))]
        if plan.gfp_require:
            argv += ["--gfp-require", hex(int(plan.gfp_require))]
        if plan.gfp_forbid:
            argv += ["--gfp-forbid", hex(int(plan.gfp_forbid))]
        if kmalloc_record and int(options.stack_sample) <= 1:
            argv.append("--record-event")
    else:
        raise ProbeFailed(f"the bpf backend cannot carry out strategy {plan.strategy!r}")
    if plan.pid is not None:
        argv += ["--pid", str(int(plan.pid))]
    if plan.comm is not None:
        argv += ["--comm", check_comm(plan.comm)]
    keys = int(options.map_keys or 65536)
    argv += ["--stack-every", str(max(1, int(options.stack_sample))),
             "--count-keys", str(keys), "--sample-keys", str(keys)]
    return argv


class BpfBackend(Backend):
    name = "bpf"
    streaming = False
    modes = ("allocs",)
    package = "clang bpftool libbpf-dev libelf-dev zlib1g-dev (to build slabcount here)"

    def unavailable(self, target: "Target", facts: "KernelFacts") -> str | None:
        if not target.exists(BTF):
            return f"the kernel has no BTF ({BTF}), which slabkit's BPF counter needs"
        if not facts.bpf.get("binary"):
            try:
                binary = install(target)
                facts.bpf.update(probe_kernel(target, binary), binary=binary)
            except (TracerUnavailable, OSError) as e:
                return str(e)
            from slabkit.slabcount.build import source_hash
            facts.tracers["bpf"] = f"slabcount {source_hash()}"
        return None

    def unsupported(self, plan: "Plan", facts: "KernelFacts") -> str | None:
        args = facts.bpf
        if plan.strategy in DEDICATED_STRATEGIES:
            if not _raw_has_cache(args) and not _by_kprobes(plan, facts):
                return ("the raw tracepoint kmem_cache_alloc does not pass the cache pointer "
                        "on this kernel (Linux 6.0+ does), and the kernel offers no kprobes "
                        "on its allocation functions (slabcount reads them on x86-64)")
            if _raw_has_cache(args) and args.get("cache_node", 0) < 0:
                return ("the raw tracepoint kmem_cache_alloc_node does not pass the cache "
                        "pointer where kmem_cache_alloc does")
        elif plan.strategy in KMALLOC_STRATEGIES:
            other = [e for e in plan.alloc_events if e not in KMALLOC_EVENTS]
            if other:
                return f"only the kmalloc events are handled, the plan needs {other}"
            if "kmem:kmalloc_node" in plan.alloc_events and args.get("kmalloc_node") != 1:
                return "the raw tracepoint kmalloc_node is not laid out as kmalloc's here"
            if min(args.get(k, -1) for k in ("size_arg", "gfp_arg", "req_arg")) < 0:
                return "the raw tracepoint kmalloc lacks bytes_alloc or gfp_flags here"
            if max(args.get(k, -1) for k in ("size_arg", "gfp_arg", "req_arg", "ptr_arg")) > 4:
                return ("the raw tracepoint kmalloc has bytes_alloc, bytes_req, gfp_flags or "
                        "ptr beyond its fifth argument here, which slabcount does not read")
        else:
            return f"strategy {plan.strategy!r} is not handled"
        return None

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        binary = facts.bpf.get("binary") or "slabcount"
        args = facts.bpf
        # the event record: only where slabcount reads tasks through BTF and no kmalloc_node
        # tracepoint would be left out
        record = (args.get("kmalloc_record") == 1 and args.get("task_btf", 1) == 1
                  and args.get("kmalloc_node", 0) == 0)
        kprobes = (plan.strategy in DEDICATED_STRATEGIES and not _raw_has_cache(args)
                   and _by_kprobes(plan, facts))
        argv = render_argv(binary, plan, options, kmalloc_record=record, kprobes=kprobes)
        event = ("raw tracepoints kmalloc, kmalloc_node"
                 if "kmem:kmalloc_node" in plan.alloc_events
                 else "raw tracepoint kmalloc" if plan.strategy in KMALLOC_STRATEGIES
                 else "raw tracepoints kmem_cache_alloc, kmem_cache_alloc_node"
                 if args.get("cache_node") == 1 else "raw tracepoint kmem_cache_alloc")
        how = ("tracepoint kmem:kmalloc (its event record: full stacks walk fewer frames)"
               if "--record-event" in argv
               else f"kprobes on {', '.join(plan.functions)} (this kernel's raw tracepoint "
                    "has no cache pointer)" if kprobes else event)
        if plan.strategy == "kmalloc-slab":
            how += ", each object's cache read from its slab"
        text = (f"# {how}: slabkit/slabcount/slabcount.bpf.c, loaded by slabcount\n"
                + " ".join(argv) + "\n")
        return Program(backend=self.name, argv=argv, text=text)

    def run(self, target: "Target", program: Program, folder: Path,
            control: "RunControl") -> RunResult:
        raw = folder / RAW
        # stopping it (SIGINT) makes slabcount detach, print its maps and exit
        reason, rc, stderr = run_marked_tracer(target, program, raw, folder / STDERR, control,
                                               what="slabcount")
        if rc not in (0, None) and not _complete(raw):
            raise ProbeFailed("slabcount failed", returncode=rc, stderr=stderr.strip(),
                              raw_path=str(raw))
        return RunResult(end_reason=reason, returncode=rc, stderr=stderr.strip(),
                         raw_files=[RAW, STDERR])

    def parse(self, folder: Path, plan: "Plan", meta: dict) -> Parsed:
        return parse_output(folder / RAW, plan, meta)


def _raw_has_cache(args: dict) -> bool:
    """Does the raw kmem_cache_alloc tracepoint pass the cache (``slabcount --probe``)?"""
    return args.get("cache_arg") in (2, 3)


def _by_kprobes(plan: "Plan", facts: "KernelFacts") -> bool:
    """Can a dedicated cache be counted by kprobes on its allocation functions here?"""
    return (bool(plan.functions) and bool(facts.kprobes)
            and facts.bpf.get("kprobe_regs") == 1)


def _complete(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 8))
            return f.read().endswith(b"end\n")
    except OSError:
        return False


def _comm(text: str) -> str:
    return "" if text == "-" else bytes.fromhex(text).decode("utf-8", "replace")


class SlabcountOutput(NamedTuple):
    """What one ``slabcount`` output holds, as read (before stacks get ids and names)."""
    exact: "pd.DataFrame"                    # exact counts per key (and call site)
    sampled: "pd.DataFrame"                  # weighted stack samples per key
    stacks: dict[int, tuple[int, ...]]       # addresses by stack hash, allocator first
    stats: dict[str, int]                    # the stat lines, and "format"


def read_output(path: Path) -> SlabcountOutput:
    """Exact counts, weighted samples, stacks by hash and stats from a ``slabcount`` output.

    Both tables have a ``call_site`` column: the tracepoint's call-site address (format 3),
    missing in older outputs, which had none. A key printed twice (a CPU's pending events and
    the map's, format 3) is summed. ``stats["format"]`` is the output's format."""
    import pandas as pd  # the parser needs pandas; rendering and running do not
    path = Path(path)
    counts, samples, stacks, stats = [], [], {}, {}
    ended = False
    fmt = 1
    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if ended:                 # slabcount prints nothing after 'end'
                if not line.strip():
                    continue
                raise ParseError.forged("slabcount output goes on after its final 'end' line",
                                        path=str(path), lineno=lineno, line=line.rstrip("\n"))
            parts = line.rstrip("\n").split("\t")
            kind = parts[0]
            try:
                if kind == "count":
                    cs, rest = (int(parts[5], 16), parts[6:]) if fmt >= 3 else (None, parts[5:])
                    counts.append((int(parts[1]), int(parts[2]), int(parts[3]),
                                   _comm(parts[4]), cs, int(rest[0]), int(rest[1])))
                elif kind == "sample":   # (format 1 has no bytes_req column)
                    cs, rest = (int(parts[5], 16), parts[6:]) if fmt >= 3 else (None, parts[5:])
                    samples.append((int(parts[1]), int(parts[2]), int(parts[3]),
                                    _comm(parts[4]), cs, int(rest[0], 16), int(rest[1]),
                                    int(rest[2]) if len(rest) > 2 else None))
                elif kind == "stack":
                    stacks[int(parts[1], 16)] = tuple(int(a, 16) for a in parts[2:])
                elif kind == "stat":
                    stats[parts[1]] = int(parts[2])
                elif kind == "format":
                    fmt = int(parts[1])
                elif kind == "end":
                    ended = True
            except (IndexError, ValueError):
                raise ParseError("not a slabcount output line", path=str(path),
                                 lineno=lineno, line=line.rstrip("\n")) from None
    if not ended:
        raise ParseError("slabcount output has no final 'end' line: the tracer did not finish "
                         "(killed?); its counts are lost", path=str(path))
    stats["format"] = fmt
    keys = KEYS + ["call_site"]
    exact = pd.DataFrame(counts, columns=keys + ["count", "bytes_req"])
    sampled = pd.DataFrame(samples, columns=keys + ["stack", "samples", "bytes_req"])
    for df in (exact, sampled):
        df["call_site"] = df["call_site"].astype("UInt64")
    sampled["bytes_req"] = sampled["bytes_req"].astype("Int64")   # missing where not given
    exact = exact.groupby(keys, as_index=False, dropna=False, sort=False)[
        ["count", "bytes_req"]].sum()
    return SlabcountOutput(exact, sampled, stacks, stats)


#: what one count of ``slabcount`` is kept per (the call site comes on top, format 3)
KEYS = ["pid", "tid", "cgroup_id", "comm"]


def _spread(exact: pd.DataFrame, sampled: pd.DataFrame) -> pd.DataFrame:
    """Each (process, call site)'s exact count spread over its sampled stacks (largest
    remainders: per-(process, call site) sums stay exact). A (process, call site) with no
    stack of its own (a thread whose comm changed at exec after its first stack) uses its
    thread's stacks from the same call site; with none at all it keeps stack_id -1."""
    import pandas as pd
    from slabkit.backends._tables import spread_counts
    keys = KEYS + ["call_site"]
    out = spread_counts(exact[keys + ["count"]], sampled[keys + ["stack_id", "samples"]], keys,
                        by_thread=False)
    lone = out["stack_id"] == -1
    if not lone.any() or sampled.empty:
        return out
    thread = ["pid", "tid", "call_site"]
    per_thread = sampled.groupby(thread + ["stack_id"], as_index=False, dropna=False)[
        "samples"].sum()
    cand = out.loc[lone, keys].merge(per_thread, on=thread)
    if cand.empty:
        return out
    again = spread_counts(out.loc[lone, keys + ["count"]], cand, keys, by_thread=False)
    return pd.concat([out[~lone], again], ignore_index=True)


def _name_call_sites(allocs: pd.DataFrame, ks) -> pd.DataFrame:
    """The call_site column as the function called from (through the saved kallsyms ``ks``;
    the address in hex where it does not resolve), rows that become equal summed."""
    import numpy as np
    import pandas as pd
    addrs = allocs["call_site"]
    known = (addrs != 0).to_numpy()
    names = pd.array([pd.NA] * len(allocs), dtype="string")
    if known.any():
        uniq, inv = np.unique(addrs[known].to_numpy(dtype=np.uint64), return_inverse=True)
        func = (ks.resolve(uniq)[0] if ks is not None
                else pd.array([pd.NA] * len(uniq), dtype="string"))
        label = pd.array([f if isinstance(f, str) else f"{int(a):#x}"
                          for f, a in zip(func, uniq)], dtype="string")
        names[known] = label.take(inv)
    allocs = allocs.assign(call_site=names)
    sums = [c for c in ("count", "bytes", "bytes_req") if c in allocs.columns]
    keys = [c for c in allocs.columns if c not in sums]
    agg = {c: (lambda x: x.sum(min_count=1)) for c in sums}
    out = allocs.groupby(keys, dropna=False, sort=False, as_index=False).agg(agg)
    return out.astype({c: allocs[c].dtype for c in out.columns})[list(allocs.columns)]


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a ``slabcount`` output (see the module doc).

    Sets ``meta["count_exactness"]``: which sums of ``allocs["count"]`` are exact."""
    from slabkit.backends._tables import finish_allocs, frames_from_addresses, load_kallsyms
    exact, sampled, by_hash, stats = read_output(path)
    with_sites = stats["format"] >= 3
    for df in (exact, sampled):     # 0 for the call site of an output that has none
        df["call_site"] = df["call_site"].fillna(0).astype("uint64")
    keys = KEYS + ["call_site"]
    # stack ids: one per distinct address tuple (hashes of frames cut to the same stack merge)
    ids: dict[tuple[int, ...], int] = {}
    hash_to_id = {h: ids.setdefault(addrs, len(ids)) for h, addrs in by_hash.items() if addrs}
    sampled["stack_id"] = sampled["stack"].map(hash_to_id).fillna(-1).astype("int64")
    sampled = sampled.groupby(keys + ["stack_id"], as_index=False, dropna=False)[
        ["samples", "bytes_req"]].sum(min_count=1)      # bytes_req stays missing if not given
    every = int(meta.get("options", {}).get("stack_sample", 1) or 1)
    kmalloc = plan.strategy in KMALLOC_STRATEGIES
    full = every == 1 and exact.empty
    if full:
        # full-stack mode: every event was recorded with its stack; these are the counts
        allocs = sampled.rename(columns={"samples": "count"})
        allocs = allocs[allocs["count"] > 0].reset_index(drop=True)
        req_exact = allocs.pop("bytes_req")
        allocs = finish_allocs(allocs, None, plan, meta, keys)
        if kmalloc:
            allocs["bytes_req"] = req_exact.astype("Int64")
    else:
        allocs = _spread(exact, sampled)
        req = exact[keys + ["bytes_req"]].rename(columns={"bytes_req": "req"}) \
            if kmalloc else None
        allocs = finish_allocs(allocs, req, plan, meta, keys)
    kallsyms = meta.get("kallsyms_path")
    ks = load_kallsyms(Path(path).parent / kallsyms if kallsyms else None)   # read once
    if with_sites:
        allocs = _name_call_sites(allocs, ks)
    else:
        allocs = allocs.drop(columns=["call_site"])     # an older output: no call sites

    stacks = {sid: list(addrs) for addrs, sid in ids.items()}
    frames = frames_from_addresses(stacks, ks)

    losses = {k: v for k, v in stats.items() if k in COUNT_LOSSES and v}
    stack_losses = {k: v for k, v in stats.items() if k in STACK_LOSSES and v}
    notes = []
    if losses.get("count_map_full"):
        notes.append(f"WARNING: the counts map was full: {losses['count_map_full']} events were "
                     "not counted; raise map_keys")
    lost_stacks = sum(stack_losses.values())
    if lost_stacks:
        notes.append(f"{lost_stacks} stack samples were not recorded (map full or stack walk "
                     "failed): counts per process and call site stay exact; their share shows "
                     "as stack -1")
    if losses.get("nested_lost"):
        notes.append(f"WARNING: {losses['nested_lost']} events of the cache came while the "
                     "program was updating the same CPU's count (an interrupt's allocation on "
                     "a kernel without the raw tracepoint recursion guard) and were not "
                     "counted")
    if stats.get("nested_skipped", 0) < 0:
        notes.append("this kernel does not count allocation events the program was skipped "
                     "for while it was already running on the same CPU (interrupts' "
                     "allocations): a few of this cache's may be missing")
    elif stats.get("nested_skipped"):
        notes.append(f"{stats['nested_skipped']} allocation events (of any cache) came while "
                     "the program was already running on the same CPU (an interrupt's "
                     "allocation) and were skipped by the kernel; those of this cache are not "
                     "counted")
    if every > 1:
        notes.append(f"stacks sampled (each key's first event, then 1 in {every}, and 1 in "
                     f"{8 * every} once a thread's call site has had 128 samples on a CPU; "
                     "weighted): counts per process and per call site are exact, counts per "
                     "stack are estimates")
    meta["count_exactness"] = exactness(full=full, call_sites=with_sites)
    return Parsed(allocs=allocs, frames=frames, losses=losses, notes=notes,
                  estimated=not full, stack_losses=stack_losses,
                  fired=bool(stats["probe_fired"]) if "probe_fired" in stats else None,
                  filtered_out=stats.get("filtered_out") if plan.pid is not None
                  or plan.comm is not None else None)


def exactness(*, full: bool, call_sites: bool) -> dict[str, str]:
    """``meta["count_exactness"]`` of a slabcount capture: for each way of summing
    ``allocs["count"]``, "exact" or "spread" (an exact total spread over sampled stacks in
    proportion to their samples: an estimate)."""
    sites = "exact" if call_sites else "absent"
    return {"process": "exact", "call_site": sites, "stack": "exact" if full else "spread"}
