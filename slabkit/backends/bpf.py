"""bpf backend: slabkit's own BPF program on the *raw* allocation tracepoint (libbpf).

The cheapest way to count one cache's allocations exactly (``bench/``: about 0.84 of
uninstrumented throughput on a filp open/close loop, where bpftrace 0.17's tracepoint program
gives 0.72): a raw tracepoint hands the program the tracepoint's arguments without building
an event record, the cache is recognised by its ``struct kmem_cache *`` (compared by name
once per pointer, then one integer compare), and counts go to a per-CPU hash. Stacks are
sampled as in the bpftrace backend: each key's first event, then 1 in ``stack_sample``,
weighted; per-key counts stay exact. See ``slabkit/bpf/slabcount.bpf.c``.

Needs a kernel with BTF (``/sys/kernel/btf/vmlinux``; the argument layout is read from it,
never assumed from the version) whose ``kmem_cache_alloc`` tracepoint passes the cache
pointer (Linux 6.0+); the kmalloc family uses the ``kmalloc`` raw tracepoint, or with full
stacks (``stack_sample=1``) the regular one, whose record the kernel builds anyway cheaply and
from where the stack walk starts shallower. The binary is
built here (:mod:`slabkit.slabcount.build`) and copied to remote targets, which need nothing else.

Output of ``slabcount`` (tab-separated, printed after detaching)::

    slabkit-attached  kmem_cache_alloc
    stat    count_map_full   0            # also stack_failed, stack_map_full, ...,
                                          # filtered_out, probe_fired (0/1: ran at all)
    count   <pid> <tid> <cgroup> <comm hex> <count> <bytes_req>
    sample  <pid> <tid> <cgroup> <comm hex> <stack hash> <weight> <bytes_req>
                                          # full stacks (stack_sample=1): these are the counts
    stack   <stack hash> <hex address>...  # allocator first; tracing frames cut
    end                                    # the last line: anything after it is refused
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slabkit.backends import (
    Backend,
    Options,
    Parsed,
    Program,
    RunResult,
    run_marked_tracer,
)
from slabkit.errors import ParseError, ProbeFailed, TracerUnavailable
from slabkit.validate import check_cache_name, check_comm

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

#: losses ``slabcount`` reports: events not counted at all
COUNT_LOSSES = ("count_map_full",)
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
                kmalloc_record: bool = False) -> list[str]:
    """The ``slabcount`` command line for ``plan`` (every value validated or an int).

    ``kmalloc_record``: the kernel's BTF describes the kmalloc event record (``slabcount
    --probe``); full-stack kmalloc captures then use the regular tracepoint, whose stack
    walk starts shallower (``bench/``: about as fast as the raw one or a little faster).
    """
    argv = [binary]
    if plan.strategy in ("tracepoint-name", "kprobe-cachep"):
        argv += ["--cache", check_cache_name(plan.match_name or "")]
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
        if plan.strategy in ("tracepoint-name", "kprobe-cachep"):
            if args.get("cache_arg") not in (2, 3):
                return ("the raw tracepoint kmem_cache_alloc does not pass the cache pointer "
                        "on this kernel (Linux 6.0+ does)")
        elif plan.strategy == "kmalloc-size-class":
            if any(e != "kmem:kmalloc" for e in plan.alloc_events):
                return f"only the kmalloc event is handled, the plan needs {plan.alloc_events}"
            if min(args.get(k, -1) for k in ("size_arg", "gfp_arg", "req_arg")) < 0:
                return "the raw tracepoint kmalloc lacks bytes_alloc or gfp_flags here"
        else:
            return f"strategy {plan.strategy!r} is not handled"
        return None

    def render(self, plan: "Plan", options: Options, facts: "KernelFacts") -> Program:
        binary = facts.bpf.get("binary") or "slabcount"
        argv = render_argv(binary, plan, options,
                           kmalloc_record=facts.bpf.get("kmalloc_record") == 1)
        event = "kmalloc" if plan.strategy == "kmalloc-size-class" else "kmem_cache_alloc"
        how = ("tracepoint kmem:kmalloc (its event record: full stacks walk fewer frames)"
               if "--record-event" in argv else f"raw tracepoint {event}")
        text = (f"# {how}: slabkit/bpf/slabcount.bpf.c, loaded by slabcount\n"
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


def _complete(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 8))
            return f.read().endswith(b"end\n")
    except OSError:
        return False


def _comm(text: str) -> str:
    return "" if text == "-" else bytes.fromhex(text).decode("utf-8", "replace")


def read_output(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, tuple[int, ...]],
                                     dict[str, int]]:
    """(exact counts, weighted samples, stacks by hash, stats) from a ``slabcount`` output."""
    import pandas as pd  # the parser needs pandas; rendering and running do not
    path = Path(path)
    counts, samples, stacks, stats = [], [], {}, {}
    ended = False
    with open(path, errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if ended:                 # slabcount prints nothing after 'end'
                if not line.strip():
                    continue
                raise ParseError("slabcount output goes on after its final 'end' line: the "
                                 "file was appended to or forged; its counts are not "
                                 "trusted", path=str(path), lineno=lineno,
                                 line=line.rstrip("\n"))
            parts = line.rstrip("\n").split("\t")
            kind = parts[0]
            try:
                if kind == "count":
                    counts.append((int(parts[1]), int(parts[2]), int(parts[3]),
                                   _comm(parts[4]), int(parts[5]), int(parts[6])))
                elif kind == "sample":   # (older outputs have no bytes_req column)
                    samples.append((int(parts[1]), int(parts[2]), int(parts[3]),
                                    _comm(parts[4]), int(parts[5], 16), int(parts[6]),
                                    int(parts[7]) if len(parts) > 7 else None))
                elif kind == "stack":
                    stacks[int(parts[1], 16)] = tuple(int(a, 16) for a in parts[2:])
                elif kind == "stat":
                    stats[parts[1]] = int(parts[2])
                elif kind == "end":
                    ended = True
            except (IndexError, ValueError):
                raise ParseError("not a slabcount output line", path=str(path),
                                 lineno=lineno, line=line.rstrip("\n")) from None
    if not ended:
        raise ParseError("slabcount output has no final 'end' line: the tracer did not finish "
                         "(killed?); its counts are lost", path=str(path))
    keys = ["pid", "tid", "cgroup_id", "comm"]
    exact = pd.DataFrame(counts, columns=keys + ["count", "bytes_req"])
    sampled = pd.DataFrame(samples, columns=keys + ["stack", "samples", "bytes_req"])
    sampled["bytes_req"] = sampled["bytes_req"].astype("Int64")   # missing where not given
    return exact, sampled, stacks, stats


def parse_output(path: Path, plan: "Plan", meta: dict) -> Parsed:
    """Tables from a ``slabcount`` output (see the module doc)."""
    from slabkit.backends._tables import (
        finish_allocs,
        frames_from_addresses,
        spread_counts,
    )
    exact, sampled, by_hash, stats = read_output(path)
    keys = ["pid", "tid", "cgroup_id", "comm"]
    # stack ids: one per distinct address tuple (hashes of frames cut to the same stack merge)
    ids: dict[tuple[int, ...], int] = {}
    hash_to_id = {h: ids.setdefault(addrs, len(ids)) for h, addrs in by_hash.items() if addrs}
    sampled["stack_id"] = sampled["stack"].map(hash_to_id).fillna(-1).astype("int64")
    sampled = sampled.groupby(keys + ["stack_id"], as_index=False)[
        ["samples", "bytes_req"]].sum(min_count=1)      # bytes_req stays missing if not given
    every = int(meta.get("options", {}).get("stack_sample", 1) or 1)
    kmalloc = plan.strategy == "kmalloc-size-class"
    if every == 1 and exact.empty:
        # full-stack mode: every event was recorded with its stack; these are the counts
        allocs = sampled.rename(columns={"samples": "count"})
        allocs = allocs[allocs["count"] > 0].reset_index(drop=True)
        req_exact = allocs.pop("bytes_req")
        allocs = finish_allocs(allocs, None, plan, meta, keys)
        if kmalloc:
            allocs["bytes_req"] = req_exact.astype("Int64")
    else:
        allocs = spread_counts(exact[keys + ["count"]], sampled[keys + ["stack_id", "samples"]],
                               keys)
        req = exact[keys + ["bytes_req"]].rename(columns={"bytes_req": "req"}) \
            if kmalloc else None
        allocs = finish_allocs(allocs, req, plan, meta, keys)

    stacks = {sid: list(addrs) for addrs, sid in ids.items()}
    kallsyms = meta.get("kallsyms_path")
    frames = frames_from_addresses(stacks, Path(path).parent / kallsyms if kallsyms else None)

    losses = {k: v for k, v in stats.items() if k in COUNT_LOSSES and v}
    stack_losses = {k: v for k, v in stats.items() if k in STACK_LOSSES and v}
    notes = []
    if losses.get("count_map_full"):
        notes.append(f"WARNING: the counts map was full: {losses['count_map_full']} events were "
                     "not counted; raise map_keys")
    lost_stacks = sum(stack_losses.values())
    if lost_stacks:
        notes.append(f"{lost_stacks} stack samples were not recorded (map full or stack walk "
                     "failed): counts per process stay exact; their share shows as stack -1")
    if every > 1:
        notes.append(f"stacks sampled 1 in {every}: counts per process are exact, counts per "
                     "stack are estimates")
    return Parsed(allocs=allocs, frames=frames, losses=losses, notes=notes,
                  estimated=every > 1, stack_losses=stack_losses,
                  fired=bool(stats["probe_fired"]) if "probe_fired" in stats else None,
                  filtered_out=stats.get("filtered_out") if plan.pid is not None
                  or plan.comm is not None else None)
