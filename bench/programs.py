"""Candidate bpftrace programs for slabkit's default capture, and the hand-typed anchors.

Every variant counts the ``filp`` cache on ``kmem:kmem_cache_alloc`` (6.18+: the event has the
cache name) and changes one thing against slabkit's current program (``CURRENT``), so the
table in ``bench/results/latest.md`` shows what each piece costs. They run as slabkit runs
bpftrace (``-f json -k``, ``BPFTRACE_MAP_KEYS_MAX=65536``, ``BPFTRACE_STRLEN=64``).
"""
from __future__ import annotations

from .tracers import Bpftrace, FtraceTrigger, PerfRecord

ENV = {"BPFTRACE_MAP_KEYS_MAX": "65536", "BPFTRACE_STRLEN": "64"}
EVENT = "tracepoint:kmem:kmem_cache_alloc"
PRE = 'args->bytes_alloc == 192 && str(args->name, 6) == "filp"'   # slabkit's filter
KEY = "pid, tid, cgroup, comm"                                      # slabkit's key
COUNT = f"@c[{KEY}] = count();"
STACK = f"@s[{KEY}, kstack(perf)] = count();"


def _prog(body: str, pred: str = PRE) -> str:
    return f"{EVENT}\n/{pred}/\n{{\n{body}\n}}\n"


def sampled(n: int, *, key: str = KEY, stack: str = "kstack(perf)", how: str = "rand",
            first: str | None = "tid, comm") -> str:
    """slabkit's program shape: exact counts, a stack for 1 event in ``n``.

    ``first``: the key of the ``@first`` map: the first event of each key always gets a stack
    (in ``@s``), the 1-in-N ones go to ``@w``, weighted by N. ``"tid, comm"``: slabkit since
    a5029ca (a thread's first event after exec, under its new comm, gets one too); ``"tid"``:
    c200d88; None: the earlier shape (``rand`` only, all into ``@s``)."""
    take = f"@s[{key}, {stack}] = count();"
    if n == 1:
        return _prog(f"  {COUNT}\n  {take}")
    cond = {"rand": f"rand % {n} == 0",
            "nsecs": f"(nsecs & {n - 1}) == 0",
            "cpu-counter": f"(uint64)@n[cpu] % {n} == 0"}[how]
    pre = "  @n[cpu]++;\n" if how == "cpu-counter" else ""
    if first is None:
        return _prog(f"  {COUNT}\n{pre}  if ({cond}) {{ {take} }}")
    weighted = f"@w[{key}, {stack}] = count();"
    return (_prog(f"  {COUNT}\n{pre}  if (@first[{first}] == 0) {{\n"
                  f"    @first[{first}] = 1; {take}\n"
                  f"  }} else if ({cond}) {{\n    {weighted}\n  }}")
            + "\nEND { clear(@first); }\n")


#: (name, what changes, program); the first rows take pieces away, the later ones vary the
#: stack sampling. ``CURRENT`` is what slabkit runs today (DEFAULT_STACK_SAMPLE = 32); the
#: bench checks at run time that it still is.
VARIANTS: list[tuple[str, str, str]] = [
    ("empty", "probe only, empty action, no filter: the floor of the tracepoint path",
     f"{EVENT}\n{{\n}}\n"),
    ("filter-int", "probe + `bytes_alloc == 192` only (not exact: the floor)",
     _prog("", "args->bytes_alloc == 192")),
    ("filter-str64", "probe + `str(args->name) == \"filp\"` (64-byte compare, no prefilter)",
     _prog("", 'str(args->name) == "filp"')),
    ("filter-str6", "probe + `str(args->name, 6) == \"filp\"` (short compare, no prefilter)",
     _prog("", 'str(args->name, 6) == "filp"')),
    ("filter", "probe + slabkit's filter (int prefilter, short compare), empty body",
     _prog("")),
    ("count", "filter + exact counts `@c[pid, tid, cgroup, comm] = count()`", _prog(f"  {COUNT}")),
    ("count-keyless", "filter + `@n = count()` (one per-CPU counter, no key built)",
     _prog("  @n = count();")),
    ("count-incr", "same with `@c[...]++` (shared hash) instead of count() (per-CPU)",
     _prog(f"  @c[{KEY}]++;")),
    ("count-tid", "exact counts keyed by `tid` only", _prog("  @c[tid] = count();")),
    ("count-pid-comm", "exact counts keyed by `pid, comm`", _prog("  @c[pid, comm] = count();")),
    ("stacks-only", "full stacks, no @c: `@s[pid, tid, cgroup, comm, kstack(perf)] = count()`",
     _prog(f"  {STACK}")),
    ("anchor", "the issue's anchor as a variant: `/str(args->name) == \"filp\"/ "
     "{ @[comm, kstack] = count(); }`",
     _prog("  @[comm, kstack] = count();", 'str(args->name) == "filp"')),
    ("anchor+prefilter", "the anchor's body behind slabkit's filter",
     _prog("  @[comm, kstack] = count();")),
    ("N=1", "slabkit full-stack mode (stack_sample=1): @c + @s every event", sampled(1)),
    ("N=1 kstack", "same with `kstack` (bpftrace's default format)",
     sampled(1, stack="kstack")),
    ("N=4", "slabkit's shape, 1 in 4", sampled(4)),
    ("N=8", "slabkit's shape, 1 in 8 (the default before a5029ca)", sampled(8)),
    ("N=16", "slabkit's shape, 1 in 16", sampled(16)),
    ("N=32 (current)", "slabkit today: @c; the first event of each (tid, comm) and 1 in 32 "
     "(`rand % 32 == 0`, weighted) get a stack", sampled(32)),
    ("N=64", "slabkit's shape, 1 in 64", sampled(64)),
    ("N=8 first-tid", "c200d88's shape: `@first[tid]` (not per comm), 1 in 8",
     sampled(8, first="tid")),
    ("N=32 first-tid", "c200d88's shape, 1 in 32", sampled(32, first="tid")),
    ("N=8 no-first", "the earlier shape: @c + stack for 1 in 8 (`rand` only, no @first)",
     sampled(8, first=None)),
    ("N=32 no-first", "the earlier shape, 1 in 32", sampled(32, first=None)),
    ("N=8 nsecs", "earlier shape, 1 in 8 chosen by `(nsecs & 7) == 0`",
     sampled(8, how="nsecs", first=None)),
    ("N=8 cpu-counter", "earlier shape, 1 in 8 by a per-CPU counter `@n[cpu]++` (systematic)",
     sampled(8, how="cpu-counter", first=None)),
    ("N=8 tid-key", "earlier shape, 1 in 8, stack map keyed `@s[tid, kstack(perf)]`",
     sampled(8, key="tid", first=None)),
]

#: variants a quick run keeps
QUICK = ("empty", "count", "N=1", "N=8", "N=32 (current)", "N=32 no-first", "raw-tp empty")

CURRENT = "N=32 (current)"


RAW_TP = "raw-tp empty"


def variant_tracers(names: tuple[str, ...] | None = None) -> list:
    """The variants (all, or those named), then the raw tracepoint floor (bench/rawtp.py)."""
    from .rawtp import RawTpEmpty
    out: list = [Bpftrace(name=n, label=what, program=p, env=dict(ENV))
                 for n, what, p in VARIANTS if names is None or n in names]
    if names is None or RAW_TP in names:
        out.append(RawTpEmpty(name=RAW_TP, label="empty BPF program on the *raw* tracepoint "
                                                  "(no event record; bpftrace >= 0.18 "
                                                  "`rawtracepoint:`): floor of that path"))
    return out


# ------------------------------------------------------------------------------------------
# the hand-typed anchors of the issue (as typed: plain output, bpftrace's default env)

def anchors_filp() -> list:
    return [
        Bpftrace(name="anchor-bpftrace-stacks", label="bpftrace @[comm, kstack] (anchor)",
                 program=('tracepoint:kmem:kmem_cache_alloc /str(args->name) == "filp"/ '
                          "{ @[comm, kstack] = count(); }\n"), json=False),
        Bpftrace(name="anchor-bpftrace-comm", label="bpftrace @[comm] (anchor)",
                 program=('tracepoint:kmem:kmem_cache_alloc /str(args->name) == "filp"/ '
                          "{ @[comm] = count(); }\n"), json=False),
        PerfRecord(name="anchor-perf", label="perf record -g (anchor)",
                   args=["-e", "kmem:kmem_cache_alloc", "--filter", 'name == "filp"', "-g",
                         "-a"]),
        FtraceTrigger(name="anchor-ftrace", label="ftrace stacktrace trigger (anchor)"),
    ]


def anchors_kmalloc64() -> list:
    return [
        Bpftrace(name="anchor-bpftrace-stacks", label="bpftrace @[comm, kstack] (anchor)",
                 program=("tracepoint:kmem:kmalloc /args->bytes_alloc == 64/ "
                          "{ @[comm, kstack] = count(); }\n"), json=False),
        PerfRecord(name="anchor-perf", label="perf record -g (anchor)",
                   args=["-e", "kmem:kmalloc", "--filter", "bytes_alloc == 64", "-g", "-a"]),
        FtraceTrigger(name="anchor-ftrace", label="ftrace stacktrace trigger (anchor)",
                      event="kmem/kmalloc", expr="bytes_alloc == 64"),
    ]
