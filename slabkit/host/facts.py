"""What the target kernel offers for tracing slab allocations, read from its own files.

Features are detected from tracefs ``format`` files, ``/proc/kallsyms`` and the presence of
kprobe/fentry interfaces, never from the version string: distribution kernels backport and
configure differently. :class:`KernelFacts` is plain data so the planner (``slabkit.plan``)
stays pure and can be tested on facts recorded from other kernels.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from slabkit.host.target import Target

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

#: events the planner looks at; the ``_node`` variants exist up to 6.0
EVENTS = ("kmem/kmem_cache_alloc", "kmem/kmem_cache_alloc_node", "kmem/kmalloc",
          "kmem/kmalloc_node", "kmem/kmem_cache_free", "kmem/kfree")

#: allocation functions a kprobe/fentry plan may attach to, oldest names first
ALLOC_FUNCTIONS = (
    "kmem_cache_alloc", "kmem_cache_alloc_node", "kmem_cache_alloc_lru",
    "kmem_cache_alloc_noprof", "kmem_cache_alloc_node_noprof", "kmem_cache_alloc_lru_noprof",
)
#: ``int kmem_cache_alloc_bulk(struct kmem_cache *s, gfp_t flags, size_t size, void **p)``
#: (``_noprof`` from 6.10) returns how many objects it allocated and fires no tracepoint: only
#: a return probe sees those objects
BULK_FUNCTIONS = ("kmem_cache_alloc_bulk", "kmem_cache_alloc_bulk_noprof")
BTF_PATH = "/sys/kernel/btf/vmlinux"


@dataclass(frozen=True)
class EventFormat:
    """One tracefs event: its fields (name -> C type) and the ``print fmt`` line."""

    system: str
    name: str
    fields: dict[str, str]
    print_fmt: str = ""
    id: int | None = None

    def has(self, field_name: str) -> bool:
        return field_name in self.fields


_FIELD_RE = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:\d+;\s*size:\d+;")


def parse_format(text: str, system: str = "", name: str = "") -> EventFormat:
    """Parse a tracefs ``events/<system>/<name>/format`` file.

    ``\\tfield:__data_loc char[] name;\\toffset:24;\\tsize:4;\\tsigned:0;``
    gives ``fields["name"] == "__data_loc char[]"``. Common fields are kept too.
    """
    fields: dict[str, str] = {}
    print_fmt = ""
    event_id = None
    for line in text.splitlines():
        m = _FIELD_RE.match(line)
        if m:
            decl = m.group("decl").strip()
            decl = re.sub(r"\[\d*\]$", "[]", decl) if decl.endswith("]") and " " in decl else decl
            # the field name is the last identifier, the type what comes before it
            dm = re.match(r"^(?P<type>.*?)[\s*]*(?P<name>[A-Za-z_][A-Za-z0-9_]*)(\[\d*\])?$", decl)
            if dm:
                ftype = decl[: dm.start("name")].strip()
                fields[dm.group("name")] = ftype + ("[]" if dm.group(3) is not None else "")
        elif line.startswith("print fmt:"):
            print_fmt = line[len("print fmt:"):].strip()
        elif line.startswith("name:") and not name:
            name = line.split(":", 1)[1].strip()
        elif line.startswith("ID:"):
            try:
                event_id = int(line.split(":", 1)[1])
            except ValueError:
                pass
    return EventFormat(system=system, name=name, fields=fields, print_fmt=print_fmt, id=event_id)


_GFP_SHIFT_RE = re.compile(
    r"\{\s*\(\s*unsigned long\s*\)\s*\(\(\s*(?:__force\s+)?gfp_t\s*\)\s*\(+\s*1UL\s*\)+\s*<<\s*\(?\s*(\d+)\s*\)?\s*\)+\s*,\s*\"(_*GFP_[A-Z_0-9]+)\"")
_GFP_HEX_RE = re.compile(
    r"\{\s*\(\s*unsigned long\s*\)\s*\(\(\s*(?:__force\s+)?gfp_t\s*\)\s*(0x[0-9a-fA-F]+)u?\s*\)\s*,\s*\"(_*GFP_[A-Z_0-9]+)\"")


def gfp_bits(print_fmt: str) -> dict[str, int]:
    """The ``__GFP_*`` flag values an event's ``print fmt`` decodes (they change by kernel)."""
    bits: dict[str, int] = {}
    for m in _GFP_SHIFT_RE.finditer(print_fmt):
        bits.setdefault(m.group(2), 1 << int(m.group(1)))
    for m in _GFP_HEX_RE.finditer(print_fmt):
        bits.setdefault(m.group(2), int(m.group(1), 16))
    # Some kernels list only the composite name of a one-bit flag ("GFP_DMA" for __GFP_DMA).
    for name, value in list(bits.items()):
        if not name.startswith("__") and value and value & (value - 1) == 0:
            bits.setdefault("__" + name, value)
    return {k: v for k, v in bits.items() if k.startswith("__GFP_")}


@dataclass
class KernelFacts:
    """Facts about one kernel, enough to plan a probe. Plain data, JSON-serialisable."""

    release: str = ""
    tracefs: str | None = None
    events: dict[str, EventFormat] = field(default_factory=dict)
    functions: set[str] = field(default_factory=set)   # allocation functions in kallsyms
    kprobes: bool = False          # kprobe events can be created
    fentry: bool = False           # BTF + fentry/kfunc attachable
    modules: bool = False          # loadable modules (SystemTap needs them)
    tracers: dict[str, str | None] = field(default_factory=dict)  # name -> version or None
    page_size: int = 4096
    #: the kernel gives its own BTF an object id, as BPF tools that look BTF up by id need
    #: (:func:`kernel_btf_has_id`); None: not checked (only bpftrace before 0.18 needs it)
    btf_has_id: bool | None = None
    #: what slabkit's BPF counter found on the target (``slabcount --probe``: raw tracepoint
    #: argument indices from the kernel's BTF) and where it is installed there; filled by the
    #: ``bpf`` backend when it is considered
    bpf: dict[str, Any] = field(default_factory=dict)

    def event(self, path: str) -> EventFormat | None:
        return self.events.get(path)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.release, "tracefs": self.tracefs,
            "events": {k: {"fields": v.fields} for k, v in self.events.items()},
            "functions": sorted(self.functions), "kprobes": self.kprobes,
            "fentry": self.fentry, "modules": self.modules, "tracers": self.tracers,
            "page_size": self.page_size, "bpf": self.bpf, "btf_has_id": self.btf_has_id,
        }


def find_tracefs(target: Target) -> str | None:
    """The mounted tracefs folder on the target, or None."""
    for path in TRACEFS_CANDIDATES:
        if target.exists(path + "/events"):
            return path
    return None


def read_event_formats(target: Target, tracefs: str) -> dict[str, EventFormat]:
    paths = {ev: f"{tracefs}/events/{ev}/format" for ev in EVENTS}
    texts = target.read_many(list(paths.values()))
    out = {}
    for ev, p in paths.items():
        text = texts.get(p)
        if text:
            system, name = ev.split("/")
            out[ev] = parse_format(text, system, name)
    return out


def alloc_functions_in_kallsyms(kallsyms_text: str) -> set[str]:
    """Which of :data:`ALLOC_FUNCTIONS` and :data:`BULK_FUNCTIONS` the kernel has (text
    symbols only)."""
    wanted = set(ALLOC_FUNCTIONS) | set(BULK_FUNCTIONS)
    found = set()
    for line in kallsyms_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in "tTwW" and parts[2] in wanted:
            found.add(parts[2])
    return found


def kernel_btf_has_id(target: Target) -> bool | None:
    """Whether the kernel lists its own BTF among BPF's BTF objects (an id, a name, the
    ``kernel_btf`` flag in ``struct bpf_btf_info``; Linux 5.11+), read from the kernel's BTF
    itself: the member name ``kernel_btf`` is in its string table exactly when the kernel has
    that API. None when the kernel has no BTF file.

    bpftrace before 0.18 finds the kernel's BTF only that way; without it, it falls back to
    kernel headers and fails (``'linux/types.h' file not found``) unless ``BPFTRACE_BTF``
    names the file."""
    try:
        data = target.read_text(BTF_PATH)
    except OSError:
        return None
    return "\0kernel_btf\0" in data


def tracer_versions(target: Target) -> dict[str, str | None]:
    """Installed tracers and their versions (None where missing)."""
    out: dict[str, str | None] = {}
    probes = {"bpftrace": ["bpftrace", "--version"], "perf": ["perf", "--version"],
              "stap": ["stap", "--version"]}
    for name, argv in probes.items():
        if not target.which(argv[0]):
            out[name] = None
            continue
        try:
            res = target.run(argv, timeout=20)
            text = (res.stdout or res.stderr).strip().splitlines()
            m = re.search(r"v?(\d+\.\d+(?:\.\d+)?)", text[0] if text else "")
            out[name] = m.group(1) if m else (text[0] if text else "unknown")
        except Exception:
            out[name] = "unknown"
    out["ftrace"] = "tracefs" if find_tracefs(target) else None
    return out


def gather_facts(target: Target) -> KernelFacts:
    """Read everything the planner needs from the target kernel."""
    tracefs = find_tracefs(target)
    events = read_event_formats(target, tracefs) if tracefs else {}
    try:
        kallsyms = target.read_text("/proc/kallsyms")
    except OSError:
        kallsyms = ""
    functions = alloc_functions_in_kallsyms(kallsyms)
    kprobes = bool(tracefs) and target.exists(f"{tracefs}/kprobe_events")
    # fentry needs BTF and a readable ftrace function list; both are missing here (6.18 VM)
    fentry = target.exists("/sys/kernel/btf/vmlinux") and bool(tracefs) and bool(
        (target.read_many([f"{tracefs}/available_filter_functions"]).get(
            f"{tracefs}/available_filter_functions") or "").strip())
    modules = target.exists("/proc/modules") and target.exists("/sys/module")
    if modules:
        try:
            modules = target.read_text("/proc/sys/kernel/modules_disabled").strip() == "0"
        except OSError:
            modules = False
    try:
        release = target.kernel_release()
    except OSError:
        release = ""
    return KernelFacts(release=release, tracefs=tracefs, events=events, functions=functions,
                       kprobes=kprobes, fentry=fentry, modules=modules,
                       tracers=tracer_versions(target))
