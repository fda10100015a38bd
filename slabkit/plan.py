"""Decide how to catch one cache's allocations on one kernel: pure, testable without root.

``plan_capture(resolved, facts)`` looks at what the kernel offers (``slabkit.host.facts``) and
returns a :class:`Plan`: which event or functions, which filter, whether the attribution is
exact or a size-class estimate, and why. It refuses with a clear reason when nothing works.

The cases (see ``shared/KERNEL-NOTES.md``):

* dedicated cache, ``kmem:kmem_cache_alloc`` has ``name`` (Linux 6.18+): filter on the
  slabinfo name (plus the object slot size, a cheap integer test that rejects most events
  before the string compare). Exact.
* dedicated cache, no ``name`` field: kprobe/fentry on the allocation functions the kernel has
  (``kmem_cache_alloc``, ``_lru``, ``_node``, or their 6.10+ ``_noprof`` names), comparing
  ``cachep->name``. Exact. Without kprobes or fentry: refused.
* the kmalloc family: ``kmem:kmalloc`` (and ``kmalloc_node`` where it exists) with
  ``bytes_alloc`` equal to the size class and the gfp bits that select the cache type.
  Exact unless random kmalloc copies or slab buckets share the size class.
* bulk allocations of a dedicated cache: ``kmem_cache_alloc_bulk`` fires no tracepoint on
  any kernel (io_uring's requests, socket buffers, maple tree nodes are allocated that way).
  Where the kernel has kprobes or fentry, the plan lists it in ``bulk_functions``: a return
  probe counts the objects it returned, comparing the cache on entry. Where it has neither, the
  plan's notes say those allocations are not seen. (kmalloc() has no bulk form: callers of
  ``kmem_cache_alloc_bulk`` pass a cache they created.)
* the kmalloc family with slabkit's own BPF counter where it can read each object's own slab
  (object address -> struct slab -> slab_cache; ``slabcount --probe`` found the way and checked
  it on live events: ``facts.bpf["slab_lookup"]``): the size class as a prefilter, then the
  cache the slab names. Exact, whatever shares the size. :func:`for_backend` turns a
  size-class plan into this one once the backend is known.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from slabkit.errors import InvalidInput, TracerUnavailable, expected_one_of
from slabkit.host.facts import BULK_FUNCTIONS, KernelFacts, gfp_bits
from slabkit.host.slabinfo import optional_int
from slabkit.validate import check_cache_name, check_comm, check_pid

MODES = ("allocs", "outstanding")
#: backends that render :meth:`Plan.predicate` as a filter on the event's fields (a bpftrace
#: predicate, a tracefs filter for perf and ftrace); slabkit's bpf counter matches the cache
#: by its ``struct kmem_cache *`` instead
FIELD_FILTER_BACKENDS = ("bpftrace", "perf", "ftrace")

#: largest kmalloc slab size class (2 pages); bigger kmallocs go to the page allocator
#: and still fire ``kmem:kmalloc`` with bytes_alloc = PAGE_SIZE << order.
def kmalloc_max_cache_size(page_size: int) -> int:
    return 2 * page_size


@dataclass
class Plan:
    """How a capture will catch the cache's allocations, and why. JSON-serialisable."""

    cache: str                      # slabinfo name the kernel reports
    requested: str                  # what the user asked for
    kind: str                       # dedicated | kmalloc | bucket
    strategy: str                   # tracepoint-name | kprobe-cachep | kmalloc-size-class
                                    # | kmalloc-slab
    exact: bool
    reason: str
    alloc_events: list[str] = field(default_factory=list)   # "kmem:kmem_cache_alloc"
    functions: list[str] = field(default_factory=list)      # kprobe/fentry targets
    #: kmem_cache_alloc_bulk (its name on this kernel): a return probe adds the objects it
    #: returned for this cache; empty where the kernel allows no such probe (see notes)
    bulk_functions: list[str] = field(default_factory=list)
    match_name: str | None = None   # compare against the event's / cachep's name
    match_bytes_alloc: int | None = None
    gfp_type: str | None = None     # normal | cg | rcl | dma for kmalloc plans
    gfp_require: int = 0            # bits that must be set
    gfp_forbid: int = 0             # bits that must be clear
    free_events: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    mode: str = "allocs"
    pid: int | None = None
    comm: str | None = None
    notes: list[str] = field(default_factory=list)   # true whichever backend captures
    #: notes true only of some backends, by backend name (e.g. how their kernel filter works)
    backend_notes: dict[str, list[str]] = field(default_factory=dict)

    def notes_for(self, backend: str | None) -> list[str]:
        """The notes that apply to a capture by ``backend``: :attr:`notes`, then that
        backend's own (:attr:`backend_notes`)."""
        return list(self.notes) + list(self.backend_notes.get(backend or "", []))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def predicate(self) -> list[Term]:
        """The capture's filter as typed terms, all of which must hold: the one filter model
        every backend renders in its own syntax (:func:`slabkit.backends._common.tracefs_filter`,
        :func:`slabkit.backends.bpftrace.render_predicate`, slabcount's flags). Integer tests
        come before string compares, so most events are dropped cheaply; every value is
        validated here again, so a hand-made Plan cannot smuggle text into a program."""
        terms: list[Term] = []
        if self.match_bytes_alloc is not None:
            terms.append(Term("bytes_alloc", "==", int(self.match_bytes_alloc)))
        if self.strategy == "tracepoint-name":
            terms.append(Term("name", "==", check_cache_name(self.match_name or "")))
        elif self.strategy == "kprobe-cachep":
            terms.append(Term("cache_name", "==", check_cache_name(self.match_name or "")))
        if self.gfp_require:
            terms.append(Term("gfp_flags", "any", int(self.gfp_require)))
        if self.gfp_forbid:
            terms.append(Term("gfp_flags", "none", int(self.gfp_forbid)))
        return terms + self._task_terms()

    def bulk_predicate(self) -> list[Term]:
        """The filter of the bulk allocation probe (:attr:`bulk_functions`): the cache's name
        through the function's first argument, then the process filters."""
        return [Term("cache_name", "==", check_cache_name(self.cache))] + self._task_terms()

    def _task_terms(self) -> list[Term]:
        terms = []
        if self.pid is not None:
            terms.append(Term("pid", "==", check_pid(self.pid)))
        if self.comm is not None:
            terms.append(Term("comm", "==", check_comm(self.comm)))
        return terms


@dataclass(frozen=True)
class Term:
    """One test of a capture's filter: ``field op value``.

    Fields: ``bytes_alloc`` (the event's slot size), ``name`` (the event's cache name, 6.18+),
    ``cache_name`` (``struct kmem_cache *`` first argument's name, kprobe plans), ``gfp_flags``
    (``any``: one of the bits set; ``none``: none of them), ``pid`` (the process, i.e. thread
    group id), ``comm`` (the task's name). Ops: ``==``, ``any``, ``none``."""

    field: str
    op: str
    value: int | str


def _kmalloc_gfp(gfp_type: str, bits: dict[str, int], has_cg: bool) -> tuple[int, int]:
    """(require, forbid) gfp masks that send a kmalloc to a cache of ``gfp_type``.

    Mirrors ``kmalloc_type()``: DMA wins, then RECLAIMABLE, then ACCOUNT (only when
    kmalloc-cg caches exist, i.e. memcg kmem accounting is on), else normal.
    """
    dma = bits.get("__GFP_DMA", 0)
    rcl = bits.get("__GFP_RECLAIMABLE", 0)
    acct = bits.get("__GFP_ACCOUNT", 0) if has_cg else 0
    if gfp_type == "normal" or gfp_type == "rnd":
        return 0, dma | rcl | acct
    if gfp_type == "dma":
        if not dma:
            raise TracerUnavailable("this kernel's kmalloc event does not decode __GFP_DMA")
        return dma, 0
    if gfp_type == "rcl":
        return rcl, dma
    if gfp_type == "cg":
        return acct, dma | rcl
    raise InvalidInput(expected_one_of("kmalloc type", gfp_type, ("normal", "cg", "rcl", "dma")))


def plan_capture(resolved, facts: KernelFacts, *, mode: str = "allocs", pid: int | None = None,
                 comm: str | None = None, cache_table=None) -> Plan:
    """Plan a capture of ``resolved`` (a ``slabinfo.ResolvedCache``) on the kernel ``facts``.

    ``cache_table`` is ``slabinfo.cache_records()`` (or the ``caches()`` DataFrame) of that
    kernel (name, kind, size_class): used to
    see whether random kmalloc copies, kmalloc-cg caches or slab buckets share the size class.
    Raises :class:`TracerUnavailable` with what is missing when no exact or estimated
    attribution is possible.
    """
    if mode not in MODES:
        raise InvalidInput(expected_one_of("mode", mode, MODES))
    pid = check_pid(pid) if pid is not None else None
    comm = check_comm(comm) if comm is not None else None
    name = check_cache_name(resolved.name)
    names: dict[str, tuple[str, int | None]] = {}
    records = cache_table.to_dict("records") if hasattr(cache_table, "to_dict") \
        else (cache_table or [])
    for rec in records:
        names[str(rec["name"])] = (str(rec["kind"]), optional_int(rec.get("size_class")))
    common = dict(cache=name, requested=resolved.requested, aliases=list(resolved.aliases),
                  mode=mode, pid=pid, comm=comm)
    notes: list[str] = []
    if resolved.via_alias:
        notes.append(f"{resolved.requested!r} is merged into {name!r}: the kernel reports its "
                     f"allocations under {name!r}")
    if resolved.aliases:
        notes.append(f"{name!r} is shared by merged caches {', '.join(resolved.aliases)}: "
                     "their allocations are counted together")

    if not facts.tracefs:
        raise TracerUnavailable("tracefs is not mounted: run `mount -t tracefs nodev "
                                "/sys/kernel/tracing` as root (make system does it)")

    if resolved.kind in ("kmalloc", "bucket"):
        return _plan_kmalloc(resolved, facts, names, notes, common)
    return _plan_dedicated(resolved, facts, notes, common)


def _free_events(facts: KernelFacts, mode: str) -> list[str]:
    if mode != "outstanding":
        return []
    events = [e for e in ("kmem/kmem_cache_free", "kmem/kfree") if facts.event(e)]
    if not events:
        raise TracerUnavailable("outstanding mode needs the kmem:kmem_cache_free / kmem:kfree "
                                "tracepoints, which this kernel lacks")
    for e in events:
        if not facts.event(e).has("ptr"):  # type: ignore[union-attr]
            raise TracerUnavailable(f"tracepoint {e} has no ptr field: cannot match frees")
    return [e.replace("/", ":") for e in events]


def _bulk_functions(resolved, facts: KernelFacts, notes: list[str], mode: str) -> list[str]:
    """The bulk allocation function to probe on return, or a note that its objects are not
    seen (no kprobes or fentry, no such function in kallsyms, or outstanding mode: their
    frees, ``kmem_cache_free_bulk``, fire no tracepoint either)."""
    bulk = [f for f in BULK_FUNCTIONS if f in facts.functions]
    if bulk and (facts.kprobes or facts.fentry) and mode == "allocs":
        return bulk
    why = ("objects are tracked from the allocation tracepoints only in outstanding mode"
           if mode != "allocs" else
           "this kernel offers no kprobes or fentry for a return probe on "
           f"{bulk[0]}" if bulk else "kmem_cache_alloc_bulk is not in /proc/kallsyms")
    notes.append(f"bulk allocations of {resolved.name!r} (kmem_cache_alloc_bulk: io_uring "
                 "requests, socket buffers, maple tree nodes) fire no tracepoint and are not "
                 f"seen: {why}")
    return []


def _plan_dedicated(resolved, facts: KernelFacts, notes: list[str], common: dict) -> Plan:
    ev = facts.event("kmem/kmem_cache_alloc")
    slot = int(resolved.slab_size) if resolved.slab_size else None
    free = _free_events(facts, common["mode"])
    bulk = _bulk_functions(resolved, facts, notes, common["mode"])
    if ev is not None and ev.has("name"):
        filtered = {}
        if slot is not None and ev.has("bytes_alloc"):
            # the bpf backend recognises the cache by its pointer instead: not said of it
            filtered = {name: [f"the kernel filter tests bytes_alloc == {slot} (the slot size) "
                               "before the name, so most other caches' events are dropped by "
                               "an integer compare"] for name in FIELD_FILTER_BACKENDS}
        return Plan(kind=resolved.kind, strategy="tracepoint-name", exact=True,
                    reason="kmem:kmem_cache_alloc carries the cache name on this kernel",
                    alloc_events=["kmem:kmem_cache_alloc"], match_name=resolved.name,
                    match_bytes_alloc=int(slot) if slot and ev.has("bytes_alloc") else None,
                    bulk_functions=bulk, free_events=free, notes=notes,
                    backend_notes=filtered, **common)
    missing_name = ("kmem:kmem_cache_alloc has no name field" if ev is not None
                    else "this kernel has no kmem:kmem_cache_alloc tracepoint")
    functions = [f for f in ("kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node",
                             "kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof",
                             "kmem_cache_alloc_node_noprof") if f in facts.functions]
    if functions and (facts.kprobes or facts.fentry):
        return Plan(kind=resolved.kind, strategy="kprobe-cachep", exact=True,
                    reason=f"{missing_name}; probing {', '.join(functions)} and comparing "
                           "the cache's name through its first argument",
                    functions=functions, match_name=resolved.name, bulk_functions=bulk,
                    free_events=free, notes=notes, **common)
    what = "kprobes or fentry" if functions else "allocation functions in /proc/kallsyms"
    raise TracerUnavailable(
        f"cannot attribute allocations to {resolved.name!r} on this kernel: {missing_name}, "
        f"and it offers no {what}. A kernel with CONFIG_KPROBES (or 6.18+'s named "
        "tracepoint) is needed")


def _plan_kmalloc(resolved, facts: KernelFacts, names: dict[str, tuple[str, int | None]],
                  notes: list[str],
                  common: dict) -> Plan:
    events = [e for e in ("kmem/kmalloc", "kmem/kmalloc_node") if facts.event(e)]
    if not events:
        raise TracerUnavailable("this kernel has no kmem:kmalloc tracepoint")
    ev = facts.event(events[0])
    assert ev is not None
    size = resolved.size_class or resolved.slab_size
    if not size:
        raise TracerUnavailable(f"cannot tell the size class of {resolved.name!r}")
    if size > kmalloc_max_cache_size(facts.page_size):
        raise InvalidInput(f"{resolved.name!r} is bigger than the largest kmalloc slab")
    bits = {}
    for e in events:
        bits.update(gfp_bits(facts.event(e).print_fmt))  # type: ignore[union-attr]
    has_cg = any(n.startswith("kmalloc-cg-") for n in names)
    gfp_type = resolved.kmalloc_type or "normal"
    if resolved.kind == "bucket":
        gfp_type = "normal"
    require, forbid = _kmalloc_gfp(gfp_type, bits, has_cg)
    exact = True
    why = [f"kmalloc fires kmem:kmalloc without a cache name; matching bytes_alloc == {size} "
           f"and the gfp bits of {gfp_type} kmalloc caches"]
    same_size = sorted(n for n, (kind, cls) in names.items()
                       if n != resolved.name and kind in ("kmalloc", "bucket") and cls == size)
    if resolved.kind == "bucket" or gfp_type == "rnd" or any(
            n.startswith("kmalloc-rnd-") for n in same_size):
        exact = False
        why.append("other caches of this size class (random kmalloc copies or slab buckets: "
                   f"{', '.join(same_size) or 'see slabinfo'}) fire the same event: the count "
                   "is a size-class estimate")
    buckets = [n for n in same_size if names[n][0] == "bucket"]
    if buckets and exact:
        exact = False
        why.append(f"slab buckets of this size ({', '.join(buckets)}) fire the same event: "
                   "size-class estimate")
    if not has_cg and bits.get("__GFP_ACCOUNT"):
        notes.append("no kmalloc-cg caches: __GFP_ACCOUNT allocations go to the normal caches")
    return Plan(kind=resolved.kind, strategy="kmalloc-size-class", exact=exact,
                reason="; ".join(why), alloc_events=[e.replace("/", ":") for e in events],
                match_bytes_alloc=int(size), gfp_type=gfp_type, gfp_require=require,
                gfp_forbid=forbid, free_events=_free_events(facts, common["mode"]),
                notes=notes, **common)


#: backends that can match a kmalloc object by its own slab where ``facts.bpf`` says so
SLAB_READERS = ("bpf",)


def for_backend(plan: Plan, backend: str, facts: KernelFacts) -> Plan:
    """``plan`` as ``backend`` will carry it out on the kernel ``facts`` describe.

    A kmalloc size-class plan becomes ``kmalloc-slab`` (exact) for a backend that reads each
    object's own slab, where the kernel allows it (``facts.bpf["slab_lookup"] == 1``: found
    and checked on live events by ``slabcount --probe``); every other plan is returned as is.
    """
    if (plan.strategy != "kmalloc-size-class" or backend not in SLAB_READERS
            or facts.bpf.get("slab_lookup") != 1):
        return plan
    how = ("the kernel's bpf_get_kmem_cache" if facts.bpf.get("slab_lookup_kfunc") == 1
           else "virt_to_page with the kernel's page_offset_base and vmemmap_base")
    was = "" if plan.exact else " (the size class alone would have been an estimate)"
    return replace(plan, strategy="kmalloc-slab", exact=True, match_name=plan.cache,
                   reason=(f"kmalloc fires kmem:kmalloc without a cache name; bytes_alloc == "
                           f"{plan.match_bytes_alloc} selects candidates, then each object's "
                           f"own slab names its cache ({how}, checked on live events): "
                           f"exact{was}"),
                   notes=list(plan.notes))
