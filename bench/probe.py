"""Probe effect: workload throughput under a tracer / throughput without one.

Method (the machine is shared and noisy): many short rounds; in each round every
configuration runs once, in a rotated order, with an uninstrumented baseline run before and
after it (``B C1 B C2 B ... Cn B``), and its ratio is taken against the mean of its two
adjacent baselines. The tables give the median ratio and the interquartile range over rounds,
for wall-clock throughput (the issue's measure) and for operations per CPU second of the
workload (steadier: CPU taken by other load on the machine drops out, the probe's in-kernel
work, which runs in the workload's context, stays in).

Every workload part also runs the *floor*: an empty BPF program on the same raw tracepoint
(bench/rawtp.py), the least any BPF probe there costs; ``floor - ratio`` says how far a
configuration is above it. ``+ns/op`` is the CPU time a configuration adds per operation of
the workload, which makes one allocation from the traced cache (and a few from others: an
open also allocates a names_cache and an lsm_file_cache object, whose events every program on
kmem_cache_alloc sees too).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import Guard, Log, WorkResult, fmt_ratio, median, table
from .tracers import SlabkitCapture, Tracer


@dataclass
class Outcome:
    tracer: Tracer
    ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    added_ns: list[float] = field(default_factory=list)   # CPU ns per operation added
    errors: list[str] = field(default_factory=list)
    infos: list[dict] = field(default_factory=list)


def interleave(tracers: list[Tracer], mode: str, seconds: int, rounds: int, log: Log,
               *, settle_s: float = 0.3, guard: Guard | None = None, path: str = "/dev/null"
               ) -> tuple[dict[str, Outcome], list[WorkResult]]:
    """Run every tracer ``rounds`` times between baselines; see the module doc.

    Every workload run (baseline or not) goes through ``guard``: it waits while another
    user's tracer is live on this shared machine and repeats a run that one overlapped."""
    guard = guard or Guard(log)

    def run_loop(mode: str, seconds: int) -> WorkResult:
        return guard.run(mode, seconds, path)
    outcomes = {t.name: Outcome(t) for t in tracers}
    baselines: list[WorkResult] = []
    workdir = Path(tempfile.mkdtemp(prefix="slabkit-bench-"))
    try:
        for r in range(rounds):
            k = r % len(tracers) if tracers else 0
            order = tracers[k:] + tracers[:k]
            before = run_loop(mode, seconds)
            baselines.append(before)
            for t in order:
                o = outcomes[t.name]
                if len(o.errors) >= 2 and not o.ratios:
                    continue   # it failed twice: do not spend the rounds on it
                try:
                    with t.session(workdir) as info:
                        res = run_loop(mode, seconds)
                except Exception as e:  # a tracer that cannot run here: reported, not fatal
                    o.errors.append(f"{type(e).__name__}: {e}"[:300])
                    log(f"  {t.name}: FAILED {o.errors[-1][:160]}")
                    continue
                time.sleep(settle_s)
                after = run_loop(mode, seconds)
                baselines.append(after)
                base = (before.rate + after.rate) / 2
                cbase = (before.cpu_rate + after.cpu_rate) / 2
                o.ratios.append(res.rate / base)
                o.cpu_ratios.append(res.cpu_rate / cbase if cbase else float("nan"))
                o.rates.append(res.rate)
                if res.cpu_rate and cbase:
                    o.added_ns.append((1 / res.cpu_rate - 1 / cbase) * 1e9)
                info.pop("cap", None)   # keep memory small; the numbers are copied below
                o.infos.append(info)
                log(f"  round {r + 1}/{rounds} {t.name}: {res.rate:,.0f} ops/s, "
                    f"ratio {o.ratios[-1]:.2f} (cpu {o.cpu_ratios[-1]:.2f}; baselines "
                    f"{before.rate:,.0f}/{after.rate:,.0f})")
                before = after
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcomes, baselines


def outcome_rows(outcomes: dict[str, Outcome], *, show_text: bool = False) -> list[list]:
    rows = []
    floor = outcomes.get(FLOOR)
    floor_ratio = median(floor.ratios) if floor and floor.ratios else None
    for o in outcomes.values():
        if not o.ratios:
            rows.append([o.tracer.name, o.tracer.label, "-", "-", "-", "-", "-", 0,
                         ("FAILED: " + o.errors[0][:90]) if o.errors else "not run"])
            continue
        note = _note(o)
        to_floor = ("-" if floor_ratio is None or o.tracer.name == FLOOR
                    else f"{floor_ratio - median(o.ratios):+.2f}")
        rows.append([o.tracer.name, o.tracer.label, fmt_ratio(o.ratios), fmt_ratio(o.cpu_ratios),
                     f"{median(o.added_ns):,.0f}" if o.added_ns else "-", to_floor,
                     f"{median(o.rates):,.0f}", len(o.ratios), note])
    return rows


def _note(o: Outcome) -> str:
    """Losses and failures the tracer reported, over all its rounds."""
    parts = []
    lost = [i.get("lost_total") for i in o.infos if i.get("lost_total") is not None]
    if lost:
        parts.append(f"lost {sum(lost):,} (max/run {max(lost):,})")
    failed = [i.get("helper_errors") for i in o.infos if i.get("helper_errors")]
    if failed:
        parts.append(f"map update failures {sum(failed):,}")
    chunks = [i.get("lost_chunks") for i in o.infos if i.get("lost_chunks")]
    if chunks:
        parts.append(f"perf lost chunks {sum(chunks):,}")
    drop = [i.get("overrun", 0) + i.get("dropped", 0) for i in o.infos if "overrun" in i]
    if drop and sum(drop):
        parts.append(f"ftrace overrun+dropped {sum(drop):,}")
    if o.errors:
        parts.append(f"{len(o.errors)} failed run(s)")
    return "; ".join(parts)


HEADERS = ["config", "what", "ratio wall [IQR]", "ratio cpu [IQR]", "+CPU ns/op",
           "floor - ratio", "ops/s (median)", "n", "notes"]

#: the empty raw-tracepoint program every workload part measures beside the others
FLOOR = "floor"


def floor(tracepoint: str) -> Tracer:
    from .rawtp import RawTpEmpty
    return RawTpEmpty(name=FLOOR, label=f"empty BPF program on the raw tracepoint {tracepoint} "
                                        "(the floor)", tracepoint=tracepoint)


def _filp_main_configs() -> list[Tracer]:
    """The floor and slabkit's main captures of filp, in every filp workload."""
    return [
        floor("kmem_cache_alloc"),
        SlabkitCapture(name="slabkit-default", label="slabkit.capture('filp') default (auto)",
                       cache="filp"),
        SlabkitCapture(name="slabkit-bpf-full", label="slabkit bpf stack_sample=1 (full stacks)",
                       cache="filp", backend="bpf", stack_sample=1),
        SlabkitCapture(name="slabkit-bpftrace", label="slabkit bpftrace backend (default sampling)",
                       cache="filp", backend="bpftrace"),
    ]


def filp_configs() -> list[Tracer]:
    from .programs import anchors_filp
    return [
        *_filp_main_configs(),
        SlabkitCapture(name="slabkit-bpftrace-full", label="slabkit bpftrace stack_sample=1",
                       cache="filp", backend="bpftrace", stack_sample=1),
        SlabkitCapture(name="slabkit-perf", label="slabkit perf backend", cache="filp",
                       backend="perf"),
        SlabkitCapture(name="slabkit-ftrace", label="slabkit ftrace backend", cache="filp",
                       backend="ftrace"),
        *anchors_filp(),
    ]


def filp_file_configs() -> list[Tracer]:
    """The fast workload (open/close of a small regular file): slabkit's bpf captures next to
    the floor and the anchors (other backends are measured on the /dev/null loop)."""
    from .programs import anchors_filp
    return [
        *_filp_main_configs(),
        *[t for t in anchors_filp() if t.name.startswith("anchor-bpftrace")],
    ]


#: the stack walk against its depth, and what the default program's parts cost (filp, the
#: fast workload): slabcount run directly, as the bpf backend runs it
WALK_DEPTHS = (2, 4, 8, 16, 127)


def walk_configs() -> list[Tracer]:
    from .tracers import Slabcount
    base = ["--cache", "filp"]
    return [
        floor("kmem_cache_alloc"),
        Slabcount(name="count-only", label="exact counts, a stack for each key's first event "
                                           "only (--stack-every 1048576)",
                  args=base + ["--stack-every", str(1 << 20)]),
        Slabcount(name="default", label="slabkit's default: 1 in 32, 1 in 256 once a key has "
                                        "had 128 samples on a CPU", args=base),
        Slabcount(name="fixed-32", label="1 in 32 throughout (--hot-every 32)",
                  args=base + ["--hot-every", "32"]),
        *[Slabcount(name=f"full-depth-{d}", label=f"full stacks, walk at most {d} frames "
                                                   f"(--stack-every 1 --max-depth {d})",
                    args=base + ["--stack-every", "1", "--max-depth", str(d)])
          for d in WALK_DEPTHS],
    ]


def kmalloc_configs() -> list[Tracer]:
    from .programs import anchors_kmalloc64
    return [
        floor("kmalloc"),
        SlabkitCapture(name="slabkit-default", label="slabkit.capture('kmalloc-64') default",
                       cache="kmalloc-64"),
        SlabkitCapture(name="slabkit-bpf-full", label="slabkit bpf stack_sample=1 (full stacks)",
                       cache="kmalloc-64", backend="bpf", stack_sample=1),
        SlabkitCapture(name="slabkit-bpftrace", label="slabkit bpftrace backend (default sampling)",
                       cache="kmalloc-64", backend="bpftrace"),
        SlabkitCapture(name="slabkit-bpftrace-full", label="slabkit bpftrace stack_sample=1",
                       cache="kmalloc-64", backend="bpftrace", stack_sample=1),
        SlabkitCapture(name="slabkit-perf", label="slabkit perf backend", cache="kmalloc-64",
                       backend="perf"),
        SlabkitCapture(name="slabkit-ftrace", label="slabkit ftrace backend",
                       cache="kmalloc-64", backend="ftrace"),
        *anchors_kmalloc64(),
    ]


def run_probe(*, seconds: int, rounds: int, log: Log, only: set[str] | None = None,
              variants: tuple[str, ...] | None = None) -> tuple[str, dict]:
    """The probe-effect stage: bpftrace variants, then filp (/dev/null and a regular file),
    kmalloc-64 and the bpf program's parts. Returns the text section and the raw numbers."""
    from .programs import variant_tracers
    out, data = [], {}
    small = Path(tempfile.mkdtemp(prefix="slabkit-bench-file-")) / "small"
    small.write_text("slabkit bench\n")
    stages = [
        ("variants", "bpftrace program variants (filp, `slabwork loop`, open+close of /dev/null)",
         "loop", "/dev/null", lambda: variant_tracers(variants)),
        ("filp", "probe effect, filp (`slabwork loop /dev/null`: one filp allocation per open)",
         "loop", "/dev/null", filp_configs),
        ("filp-file", "probe effect, filp, the fast workload (`slabwork loop FILE`, FILE a "
         "14-byte regular file: one filp allocation per open)", "loop", str(small),
         filp_file_configs),
        ("kmalloc", "probe effect, kmalloc-64 (`slabwork eventfdloop`: one kmalloc-64 "
         "(eventfd_ctx) per eventfd)", "eventfdloop", "/dev/null", kmalloc_configs),
        ("walk", "what the bpf program's parts cost, and the stack walk against its depth "
         "(filp, the fast workload; slabcount run directly)", "loop", str(small), walk_configs),
    ]
    try:
        for key, title, mode, path, make in stages:
            if only and key not in only:
                continue
            part = _probe_part(key, title, mode, path, make, seconds=seconds, rounds=rounds,
                               log=log)
            out.append(part[0])
            data[key] = part[1]
    finally:
        shutil.rmtree(small.parent, ignore_errors=True)
    return "\n".join(out), data


def _probe_part(key: str, title: str, mode: str, path: str, make, *, seconds: int,
                rounds: int, log: Log) -> tuple[str, dict]:
    """One workload part: its configurations interleaved, the table and the raw numbers."""
    tracers = make()
    log(f"probe/{key}: {len(tracers)} configurations x {rounds} rounds of {seconds} s")
    note = _current_check() if key == "variants" else ""
    guard = Guard(log)
    outcomes, baselines = interleave(tracers, mode, seconds, rounds, log, guard=guard,
                                     path=path)
    rates = [b.rate for b in baselines]
    text = (table(HEADERS, outcome_rows(outcomes),
                  title=f"{title}; uninstrumented {median(rates):,.0f} ops/s median over "
                        f"{len(rates)} baseline runs; {rounds} rounds x {seconds} s; "
                        f"{guard.repeated} runs repeated because another user's tracer "
                        f"overlapped them, {guard.contaminated} overlapped anyway")
            + note)
    data = {n: {"ratios": o.ratios, "cpu_ratios": o.cpu_ratios, "rates": o.rates,
                "added_ns": o.added_ns,
                "errors": o.errors, "text": o.tracer.text()}
            for n, o in outcomes.items()}
    data["_baselines"] = rates
    return text, data


def _current_check() -> str:
    """A line saying whether variant ``CURRENT`` is still slabkit's program for filp."""
    from .programs import CURRENT, VARIANTS
    try:
        from slabkit.capturing.run import prepare
        theirs = prepare("filp", backend="bpftrace").program.text
    except Exception as e:  # not root, no bpftrace: say so
        return f"\n(could not render slabkit's own program to compare: {e})\n"
    mine = dict((n, p) for n, _, p in VARIANTS)[CURRENT]

    def norm(text: str) -> list[str]:
        return [l.strip() for l in text.splitlines() if l.strip() and "slabkit-attached" not in l]
    if norm(theirs) == norm(mine):
        return (f"\n`{CURRENT}` is exactly the program slabkit's bpftrace backend renders for "
                "filp today.\n")
    return (f"\nWARNING: slabkit's filp program differs from `{CURRENT}` here; slabkit's:\n\n"
            + "\n".join("    " + l for l in theirs.splitlines()) + "\n")


def _med(d: dict, part: str, name: str, key: str = "ratios") -> float | None:
    xs = d.get(part, {}).get(name, {}).get(key) or []
    return median(xs) if xs else None


def summary_rows(d: dict) -> list[list]:
    """Goal rows for the summary table (issue 17's goals: the default at >= 0.90 of
    uninstrumented and within 0.05 of the floor; full stacks at >= 1.5x the anchor)."""
    rows = []

    def r(x):
        return "-" if x is None else f"{x:.2f}"

    def ns(part, name):
        return _med(d, part, name, "added_ns")
    for part, what in (("filp", "filp, /dev/null"), ("filp-file", "filp, regular file"),
                       ("kmalloc", "kmalloc-64, eventfd")):
        if part not in d:
            continue
        dflt, fl = _med(d, part, "slabkit-default"), _med(d, part, FLOOR)
        n_d, n_f = ns(part, "slabkit-default"), ns(part, FLOOR)
        rows.append([f"probe effect, slabkit default capture ({what})",
                     f"{r(dflt)} (+{n_d or 0:,.0f} ns/op; floor {r(fl)}, +{n_f or 0:,.0f} ns/op)",
                     ">= 0.90", "-" if dflt is None else ("yes" if dflt >= 0.9 else "NO")])
        if dflt is not None and fl is not None:
            rows.append([f"distance to the floor, slabkit default ({what})",
                         f"{fl - dflt:+.2f} ({(n_d or 0) - (n_f or 0):+,.0f} ns/op)", "<= 0.05",
                         "yes" if fl - dflt <= 0.05 else "NO"])
        anchor = _med(d, part, "anchor-bpftrace-stacks")
        for name, label in (("slabkit-bpf-full", "bpf"), ("slabkit-bpftrace-full", "bpftrace")):
            full = _med(d, part, name)
            if full is None:
                continue
            goal = 1.5 if label == "bpf" else 1.0
            rows.append([f"full-stack mode ({label}) vs anchor bpftrace @[comm, kstack] "
                         f"({what})", f"{r(full)} vs {r(anchor)}"
                         + (f" ({full / anchor:.2f}x)" if anchor else ""),
                         f">= {goal:g}x anchor",
                         "-" if anchor is None else ("yes" if full >= goal * anchor else "NO")])
    if "walk" in d:
        only = ns("walk", "count-only")
        walks = [(dep, ns("walk", f"full-depth-{dep}")) for dep in WALK_DEPTHS]
        text = ", ".join(f"{dep}: {(v or 0) - (only or 0):,.0f}" for dep, v in walks
                         if v is not None)
        rows.append(["a stack walk per event, ns/op above exact counting, by the depth walked "
                     "(filp, regular file)", text or "-", "(measured)", "-"])
    if "variants" in d:
        best = [(median(v["ratios"]), n) for n, v in d["variants"].items()
                if not n.startswith("_") and v["ratios"] and n.startswith("N=")]
        if best:
            from .programs import CURRENT
            cur = _med(d, "variants", CURRENT)
            rows.append([f"bpftrace variant: current program ({CURRENT})", r(cur), ">= 0.80",
                         "-" if cur is None else ("yes" if cur >= 0.8 else "NO")])
    return rows
