"""A synthetic bpftrace capture folder: many distinct deep stacks, in slabkit's exact format.

``write_capture(folder, stacks=100_000, depth=30)`` writes what a real ``slabkit.capture``
with the bpftrace backend leaves (and ``slabkit.load(folder, reparse=True)`` reads):

* ``bpftrace.jsonl``: bpftrace 0.17 ``-f json`` lines, ``@c`` (exact counts per
  ``pid,tid,cgroup,comm``) and ``@s`` (``pid,tid,cgroup,comm,\\n\\t<hexaddr> <sym>+<off>\\n...``
  per sampled stack), as :func:`slabkit.backends.bpftrace.parse_output` expects;
* ``kallsyms.txt.gz``: the symbols those addresses resolve to (vmlinux and a few modules);
* ``meta.running.json``: the plan and options (``stack_sample``), as ``capture()`` writes
  before it runs (``reparse`` rebuilds ``meta.json`` and the parquet tables from these).

Stacks are built like real ones: allocator frames innermost (``kmem_cache_alloc_noprof``),
then a call site, then callers drawn from a skewed (Zipf-like) pool so frames are shared
between stacks, and the syscall entry outermost; sample counts are skewed too.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

TEXT_BASE = 0xFFFFFFFF81000000
MODULE_BASE = 0xFFFFFFFFC0000000
FUNC_SPACING = 0x400
MODULES = ("ext4", "xfs", "nf_tables", "kvm", "overlay", "btrfs", "nfsd", "tls")
ALLOCATOR = ("kmem_cache_alloc_noprof", "__slab_alloc.isra.0", "___slab_alloc")
OUTER = ("do_syscall_64", "entry_SYSCALL_64_after_hwframe")


def _symbols(n_funcs: int, n_module_funcs: int) -> tuple[list[str], np.ndarray, list[str]]:
    """Function names, start addresses and modules: vmlinux text first, then each module's
    functions in its own region (kallsyms resolves an address only inside its region)."""
    names = list(ALLOCATOR) + list(OUTER) + [f"kfunc_{i}" for i in range(n_funcs)]
    addrs = [TEXT_BASE + i * FUNC_SPACING for i in range(len(names))]
    mods = ["vmlinux"] * len(names)
    per = max(1, n_module_funcs // len(MODULES))
    for i in range(n_module_funcs):
        m = MODULES[min(i // per, len(MODULES) - 1)]
        names.append(f"{m}_func_{i}")
        addrs.append(MODULE_BASE + MODULES.index(m) * 0x1000000 + (i % per) * FUNC_SPACING)
        mods.append(m)
    return names, np.array(addrs, dtype=np.uint64), mods


def kallsyms_text(names: list[str], addrs: np.ndarray, mods: list[str]) -> str:
    """``/proc/kallsyms`` lines for the symbols, plus what bounds each region's last
    function (``_etext`` for vmlinux, a data symbol for each module)."""
    lines = []
    last: dict[str, int] = {}
    for name, a, m in zip(names, addrs, mods):
        suffix = "" if m == "vmlinux" else f"\t[{m}]"
        lines.append(f"{int(a):016x} t {name}{suffix}")
        last[m] = max(last.get(m, 0), int(a))
    for m, a in last.items():
        end = a + FUNC_SPACING
        lines.append(f"{end:016x} T _etext" if m == "vmlinux"
                     else f"{end:016x} d __this_module_end\t[{m}]")
    return "\n".join(lines) + "\n"


def write_capture(folder: str | Path, *, stacks: int = 100_000, depth: int = 30,
                  threads: int = 2_000, stack_sample: int = 8, seed: int = 1) -> dict:
    """Write the synthetic capture; returns what it holds (distinct stacks, keys, events)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_funcs, n_mod = 20_000, 2_000
    names, addrs, mods = _symbols(n_funcs, n_mod)
    first_plain = len(ALLOCATOR) + len(OUTER)
    pool = np.arange(first_plain, len(names))
    # Zipf-like popularity over the caller pool; call sites come from a smaller set
    weight = 1.0 / np.arange(1, len(pool) + 1) ** 0.9
    weight /= weight.sum()
    callsites = rng.choice(pool, size=800, replace=False)

    seen: set[tuple[int, ...]] = set()
    stack_list: list[tuple[int, ...]] = []
    while len(stack_list) < stacks:
        k = stacks - len(stack_list)
        lens = rng.integers(depth - 5, depth + 6, size=k)
        cs = rng.choice(callsites, size=k)
        body = rng.choice(pool, size=(k, depth + 5), p=weight)
        inner = rng.integers(1, len(ALLOCATOR) + 1, size=k)
        for i in range(k):
            mid = int(lens[i]) - int(inner[i]) - 1 - len(OUTER)
            s = tuple(range(int(inner[i]))) + (int(cs[i]),) + tuple(int(x) for x in body[i, :mid]) \
                + (len(ALLOCATOR), len(ALLOCATOR) + 1)
            if s not in seen:
                seen.add(s)
                stack_list.append(s)
    # frame text: "\t<hex> <sym>+<off>" with a per-frame offset inside the function
    offsets = rng.integers(0x10, FUNC_SPACING - 0x10, size=len(names))
    frame_text = [f"\t{int(a) + int(o):016x} {n}+{int(o)}" for n, a, o in zip(names, addrs, offsets)]

    comms = [f"worker{i % 97}" if i % 5 else f"app-{i % 13}" for i in range(threads)]
    tkeys = [f"{1000 + i // 4},{1000 + i},{1 + i % 7},{comms[i]}" for i in range(threads)]
    t_of = rng.integers(0, threads, size=len(stack_list))
    second = rng.random(len(stack_list)) < 0.2           # 20 % of stacks seen in 2 threads
    samples = (rng.zipf(1.6, size=len(stack_list) + int(second.sum()))).clip(max=100_000)

    s_map: dict[str, int] = {}
    per_thread = np.zeros(threads, dtype=np.int64)
    j = 0
    for i, st in enumerate(stack_list):
        text = "\n".join(frame_text[f] for f in st) + "\n"
        owners = [int(t_of[i])] + ([int((t_of[i] + 1) % threads)] if second[i] else [])
        for t in owners:
            s_map[f"{tkeys[t]},\n{text}"] = int(samples[j])
            per_thread[t] += int(samples[j])
            j += 1
    extra = rng.integers(0, stack_sample, size=threads)
    c_map = {tkeys[t]: int(per_thread[t] * stack_sample + extra[t])
             for t in range(threads) if per_thread[t]}
    with open(folder / "bpftrace.jsonl", "w") as f:
        f.write(json.dumps({"type": "attached_probes", "data": {"probes": 2}}) + "\n")
        f.write(json.dumps({"type": "printf", "data": "slabkit-attached\n"}) + "\n")
        f.write(json.dumps({"type": "map", "data": {"@c": c_map}}) + "\n")
        f.write(json.dumps({"type": "map", "data": {"@s": s_map}}) + "\n")
    with gzip.open(folder / "kallsyms.txt.gz", "wt", compresslevel=3) as f:
        f.write(kallsyms_text(names, addrs, mods))
    plan = {"cache": "filp", "requested": "filp", "kind": "dedicated",
            "strategy": "tracepoint-name", "exact": True, "reason": "synthetic capture",
            "alloc_events": ["kmem:kmem_cache_alloc"], "match_name": "filp",
            "match_bytes_alloc": 192, "mode": "allocs"}
    meta = {"format": 1, "cache": "filp", "requested": "filp", "kind": "dedicated",
            "mode": "allocs", "host": "synthetic", "target": "local", "backend": "bpftrace",
            "plan": plan, "options": {"stack_sample": stack_sample, "sample_every": 1,
                                      "map_keys": 262144, "buffer_kb": 8192},
            "slab_size": 192, "object_size": 184, "requested_seconds": 10.0,
            "duration_s": 10.0, "status": "complete", "exact": True,
            "kallsyms_path": "kallsyms.txt.gz", "start": "2026-01-01T00:00:00+00:00"}
    (folder / "meta.running.json").write_text(json.dumps(meta, indent=1))
    return {"distinct_stacks": len(stack_list), "stack_keys": len(s_map),
            "threads": len(c_map), "frames": int(sum(len(s) for s in stack_list)),
            "events": int(sum(c_map.values())),
            "jsonl_bytes": (folder / "bpftrace.jsonl").stat().st_size}
