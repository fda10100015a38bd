"""Accuracy: exact counts at full speed, and call-site shares under stack sampling.

1. Counts: ``slabwork open N /dev/null`` makes exactly N filp allocations as fast as it can
   while a slabkit capture runs; the capture's count for the workload's pid is compared with
   N, per backend, next to the losses the capture reported (``meta["losses"]``).
2. Shares: ``slabwork mixloop`` allocates filps from 7 kinds of call paths in fixed shares
   (60/20/10/4/3/2/1 %). One full-stack capture (``stack_sample=1``) and sampled captures
   (``stack_sample`` N) run *at the same time*, so they see the same events; per-function
   shares of the workload's allocations are compared (percentage points, rows >= 1 % in the
   full-stack capture), and with the shares the workload knows it made.

On this kernel every filp comes through ``alloc_empty_file``, so ``by_frame(how="callsite")``
has one row at 100 %; the call paths differ further out, so the comparison that matters is
``by_frame(how="inclusive")`` (every function on the stack) and ``top_stacks`` (whole stacks).
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from .common import Log, table
from .tracers import Bpftrace, SlabkitCapture
from .workload import Workload

#: the function each kind of mixloop call passes through (Linux 6.18 names)
MIX_FUNCTIONS = {"open": "do_sys_openat2", "eventfd": "do_eventfd", "pipe": "do_pipe2",
                 "socket": "__sys_socket", "epoll": "do_epoll_create",
                 "signalfd": "do_signalfd4", "memfd": "__do_sys_memfd_create"}
FILPS_PER_CALL = {"pipe": 2}


def _pid_view(cap, pid: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    a = cap.allocs
    return a[a["pid"] == pid].reset_index(drop=True), cap.frames


def count_accuracy(n: int, log: Log, workdir: Path) -> tuple[list[list], dict]:
    configs = [
        SlabkitCapture(name="bpf-default", label="bpf (slabkit's default), default sampling",
                       cache="filp", backend="bpf", keep=True),
        SlabkitCapture(name="bpf-full", label="bpf, stack_sample=1", cache="filp",
                       backend="bpf", stack_sample=1, keep=True),
        SlabkitCapture(name="bpftrace-default", label="bpftrace, default stack sampling",
                       cache="filp", backend="bpftrace", keep=True),
        SlabkitCapture(name="bpftrace-full", label="bpftrace, stack_sample=1", cache="filp",
                       backend="bpftrace", stack_sample=1, keep=True),
        SlabkitCapture(name="perf", label="perf", cache="filp", backend="perf", keep=True),
        SlabkitCapture(name="ftrace", label="ftrace", cache="filp", backend="ftrace", keep=True),
    ]
    rows, data = [], {}
    for t in configs:
        log(f"accuracy/count: {t.name}, {n:,} opens")
        try:
            with Workload("open", n, "/dev/null") as w:
                with t.session(workdir) as info:
                    t0 = time.monotonic()
                    done = w.go()
                    secs = time.monotonic() - t0
                    time.sleep(0.3)
                t1 = time.monotonic()
            post = None
            if "cap" not in info:
                raise RuntimeError(info.get("error", "no capture"))
            cap = info["cap"]
            got = int(_pid_view(cap, w.pid)[0]["count"].sum())
            losses = cap.meta.get("losses") or {}
            lost = int(cap.meta.get("lost_total") or 0)
            post = time.monotonic() - t1
            ok = "exact" if got == n else f"{got - n:+,} ({(got - n) / n:+.2%})"
            rows.append([t.name, f"{n:,}", f"{got:,}", ok, f"{lost:,}",
                         ", ".join(f"{k}={v:,}" for k, v in losses.items()) or "-",
                         f"{n / secs:,.0f}", done])
            data[t.name] = {"n": n, "reported": got, "lost_total": lost, "losses": losses,
                            "rate": n / secs, "stop_and_parse_s": post}
        except Exception as e:
            rows.append([t.name, f"{n:,}", "-", f"FAILED: {str(e)[:80]}", "-", "-", "-", "-"])
            data[t.name] = {"error": str(e)}
        finally:
            for f in workdir.glob(f"{t.name}-*"):
                shutil.rmtree(f, ignore_errors=True)
    return rows, data


def _stacks_taken(folder: Path, pid: int) -> int | None:
    """Stacks the sampled bpftrace program really took for ``pid`` (``@s`` and ``@w``, raw
    output); None for the bpf backend, whose samples are stored already weighted."""
    from slabkit.backends.bpftrace import RAW, read_maps
    if not (folder / RAW).exists():
        return None
    maps, _, _ = read_maps(folder / RAW)
    return sum(n for m in ("@s", "@w") for k, n in maps.get(m, {}).items()
               if k.split(",", 1)[0] == str(pid))


NO_STACK = "[no stack]"
#: the bpf backend's sampling measured next to bpftrace's (32 is slabkit's default)
BPF_SAMPLES = (32,)


@dataclass
class Candidate(Bpftrace):
    """A proposed bpftrace program, parsed afterwards by slabkit's own bpftrace parser."""

    stack_sample: int = 8

    def parse(self, info: dict, full_meta: dict, folder: Path) -> SimpleNamespace:
        import gzip
        import os

        from slabkit.backends.bpftrace import RAW, parse_output
        from slabkit.plan import Plan
        raw = folder / RAW
        os.replace(info["output"], raw)
        text = Path("/proc/kallsyms").read_text()
        with gzip.open(folder / "kallsyms.txt.gz", "wt", compresslevel=1) as f:
            f.write("\n".join(l for l in text.splitlines() if len(l) > 19 and l[17] in "tTwW"))
        meta = dict(full_meta, kallsyms_path="kallsyms.txt.gz",
                    options=dict(full_meta.get("options") or {}, stack_sample=self.stack_sample))
        parsed = parse_output(raw, Plan.from_json(meta["plan"]), meta)
        # as slabkit.capture does: stacks must not depend on what else was attached
        from slabkit.model.vocabulary import drop_tracer_glue
        allocs, frames, _ = drop_tracer_glue(parsed.allocs, parsed.frames)
        return SimpleNamespace(allocs=allocs, frames=frames, meta=meta)


def _row_label(t) -> str:
    if isinstance(t, Candidate):
        return t.label
    return f"{t.stack_sample} ({t.backend})"


@contextlib.contextmanager
def _short_lived_processes(events_each: int = 5):
    """Start ``slabwork -n open 5 /dev/null`` over and over while the block runs: many short
    processes with a few allocations each (as shell scripts make). Yields [processes run]."""
    import subprocess
    import threading

    from .workload import binary
    stop, done = threading.Event(), [0]

    def spawn() -> None:
        argv = [str(binary()), "-n", "open", str(events_each), "/dev/null"]
        while not stop.is_set():
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            done[0] += 1
            time.sleep(0.002)
    t = threading.Thread(target=spawn, daemon=True)
    t.start()
    try:
        yield done
    finally:
        stop.set()
        t.join()


def _shares(view, how: str) -> pd.Series:
    from slabkit import analysis
    if how == "stack":
        df = analysis.top_stacks(view, n=1000)
        return pd.Series(df["share"].to_numpy(float), index=df["stack"].astype(str))
    df = analysis.by_frame(view, how)
    return df["share"].astype(float)


def share_accuracy(samples: tuple[int, ...], seconds: int, log: Log, workdir: Path,
                   candidates: tuple[tuple[int, str], ...] = ()
                   ) -> tuple[list[list], list[list], dict, list[list]]:
    """Shares under 1-in-N stack sampling vs a full-stack capture of the same events.

    ``candidates``: (N, @first key) programs from bench/programs.py run next to slabkit's own
    captures and parsed by slabkit's bpftrace parser, to check a proposed program change."""
    full = SlabkitCapture(name="full", label="stack_sample=1", cache="filp",
                          backend="bpftrace", stack_sample=1, keep=True)
    sampled = [SlabkitCapture(name=f"N{n}", label=f"stack_sample={n}", cache="filp",
                              backend="bpftrace", stack_sample=n, keep=True) for n in samples]
    # slabkit's default backend with its default sampling, on the same events
    sampled += [SlabkitCapture(name=f"bpfN{n}", label=f"bpf stack_sample={n}", cache="filp",
                               backend="bpf", stack_sample=n, keep=True) for n in BPF_SAMPLES]
    from .common import run_loop
    from .programs import ENV
    from .programs import sampled as program
    for n, first in candidates:
        sampled.append(Candidate(name=f"cand{n}-{first.replace(', ', '-')}",
                                 label=f"{n}, @first[{first}] (candidate)",
                                 program=program(n, first=first), env=dict(ENV),
                                 stack_sample=n))
    log(f"accuracy/shares: mixloop {seconds} s under stack_sample=1 and "
        f"{', '.join(t.label for t in sampled)} at once")
    with contextlib.ExitStack() as stack:
        infos = {}
        for t in [full, *sampled]:
            where = workdir
            if isinstance(t, Candidate):
                where = workdir / t.name
                where.mkdir()
            infos[t.name] = stack.enter_context(t.session(where))
        with _short_lived_processes() as spawned:
            res = run_loop("mixloop", seconds)
        time.sleep(0.3)
    caps = {k: v["cap"] for k, v in infos.items() if "cap" in v}
    if "full" not in caps:
        raise RuntimeError(f"the full-stack capture failed: {infos['full'].get('error')}")
    for t in sampled:
        if isinstance(t, Candidate):
            infos[t.name]["folder"] = workdir / t.name
            caps[t.name] = t.parse(infos[t.name], caps["full"].meta, workdir / t.name)
    pid = res.pid
    filps = {k: v * FILPS_PER_CALL.get(k, 1) for k, v in res.extra.items()}
    total_known = sum(filps.values())
    truth = pd.Series({MIX_FUNCTIONS[k]: v / total_known for k, v in filps.items()})

    rows, detail, data = [], [], {"ops": res.ops, "events_per_capture": {}, "truth": truth.to_dict()}
    views = {k: _pid_view(c, pid) for k, c in caps.items()}
    for k, (a, _) in views.items():
        data["events_per_capture"][k] = int(a["count"].sum())
    ref = {how: _shares(views["full"], how) for how in ("callsite", "inclusive", "stack")}
    # full-stack capture against what the workload knows it did
    inc_full = ref["inclusive"]
    truth_err = max(abs(inc_full.get(f, 0.0) - s) for f, s in truth.items()) * 100
    rows.append(["1 (full)", f"{int(views['full'][0]['count'].sum()):,}",
                 f"{int(views['full'][0]['count'].sum()):,}", "0 (reference)",
                 "0 (reference)", "0 (reference)", f"{truth_err:.2f}", "yes"])
    for t in sampled:
        if t.name not in views:
            rows.append([_row_label(t), "-", "-", "FAILED", "-", "-", "-", "-"])
            continue
        v = views[t.name]
        n = t.stack_sample
        diffs, found = {}, True
        for how in ("callsite", "inclusive", "stack"):
            r = ref[how][ref[how] >= 0.01]
            s = _shares(v, how)
            d = [(abs(s.get(i, 0.0) - r[i]) * 100, i) for i in r.index]
            found &= all(s.get(i, 0.0) > 0 for i in r.index)
            diffs[how] = max(d) if d else (0.0, "")
        inc = _shares(v, "inclusive")
        t_err = max(abs(inc.get(f, 0.0) - s) for f, s in truth.items()) * 100
        samples_taken = _stacks_taken(infos[t.name]["folder"], pid)
        rows.append([_row_label(t), f"{int(v[0]['count'].sum()):,}",
                     "-" if samples_taken is None else f"{samples_taken:,}",
                     f"{diffs['callsite'][0]:.2f}",
                     f"{diffs['inclusive'][0]:.2f} ({diffs['inclusive'][1]})",
                     f"{diffs['stack'][0]:.2f}", f"{t_err:.2f}", "yes" if found else "NO"])
        data[t.name] = {"callsite_pp": diffs["callsite"][0], "inclusive_pp": diffs["inclusive"][0],
                        "stack_pp": diffs["stack"][0], "truth_pp": t_err, "all_found": found}
    # the per-function shares themselves
    for f, s in truth.sort_values(ascending=False).items():
        row = [f, f"{s * 100:.2f}", f"{inc_full.get(f, 0.0) * 100:.2f}"]
        for t in sampled:
            row.append(f"{_shares(views[t.name], 'inclusive').get(f, 0.0) * 100:.2f}"
                       if t.name in views else "-")
        detail.append(row)
    data["exact_pid_count"] = {k: (int(a["count"].sum()), res.ops) for k, (a, _) in views.items()}

    # every process of the capture (the mix, short-lived processes, the rest of the machine):
    # threads with fewer events than N: their first event's stack (slabkit's @first) carries
    # them; a process that exec'ed changes comm after that first stack, and slabkit then
    # spreads its new-comm events over the thread's stacks from before the exec.
    everyone = {k: (c.allocs, c.frames) for k, c in caps.items()}
    ref_all = _shares(everyone["full"], "inclusive")
    data["all_processes"] = {"spawned_processes": spawned[0],
                             "events": int(caps["full"].allocs["count"].sum())}
    all_rows = []
    for t in sampled:
        if t.name not in everyone:
            continue
        row = [_row_label(t)]
        for label, view in (("as slabkit", everyone[t.name]),):
            sh = _shares(view, "inclusive")
            keys = set(ref_all[ref_all >= 0.01].index) | set(sh[sh >= 0.01].index)
            worst = max(((abs(sh.get(i, 0.0) - ref_all.get(i, 0.0)) * 100, i) for i in keys),
                        default=(0.0, ""))
            nostack = sh.get(NO_STACK, 0.0) * 100
            row += [f"{worst[0]:.2f} ({worst[1]})", f"{nostack:.2f}"]
            data["all_processes"][f"{t.name} {label}"] = {"max_pp": worst[0], "where": worst[1],
                                                         "no_stack_pct": nostack}
        all_rows.append(row)
    return rows, detail, data, all_rows


def run_accuracy(*, quick: bool, log: Log) -> tuple[str, dict, list[list]]:
    n = 200_000 if quick else 2_000_000
    samples = (8, 32) if quick else (4, 8, 16, 32, 64)
    # c200d88's program (@first keyed by tid only), to keep its exec bias measured
    candidates = ((32, "tid"),)
    seconds = 2 if quick else 5
    workdir = Path(tempfile.mkdtemp(prefix="slabkit-bench-acc-"))
    out, data, summary = [], {}, []
    try:
        rows, d = count_accuracy(n, log, workdir)
        data["counts"] = d
        out.append(table(["backend", "allocations made", "reported for the pid", "error",
                          "lost_total", "losses", "workload ops/s", "slabwork said"], rows,
                         title=f"count accuracy at full speed: `slabwork open {n:,} /dev/null` "
                               "under each backend"))
        for name, v in d.items():
            if name.startswith("bpf") and "reported" in v:
                summary.append([f"exact count per process ({name}, {n:,} at full speed)",
                                f"{v['reported']:,} of {n:,}, lost {v['lost_total']}",
                                "exact", "yes" if v["reported"] == n else "NO"])
        try:
            rows, detail, d, all_rows = share_accuracy(samples, seconds, log, workdir,
                                                       candidates=candidates)
            data["shares"] = d
            ev = d["events_per_capture"].get("full", 0)
            out.append(table(["stack_sample", "events (workload pid)", "stacks taken",
                              "callsite max |diff| pp", "inclusive max |diff| pp (where)",
                              "whole-stack max |diff| pp", "vs known mix, max pp",
                              "every >=1% site found"], rows,
                             title=f"call-site shares vs a full-stack capture of the same "
                                   f"events (`slabwork mixloop {seconds}`, {ev:,} filps; "
                                   "functions/stacks >= 1 %)"))
            out.append(table(["function (call path)", "known share %", "N=1 %",
                              *[f"N={s} %" for s in samples],
                              *[f"bpf N={s} %" for s in BPF_SAMPLES],
                              *[f"N={n} first[{f}] %" for n, f in candidates]], detail,
                             title="inclusive share per call path (by_frame how='inclusive')"))
            ap = d["all_processes"]
            out.append(table(["stack_sample", "max |diff| pp (where)", "[no stack] %"],
                             all_rows,
                             title=f"the same captures over every process ({ap['events']:,} "
                                   f"filps, {ap['spawned_processes']:,} short-lived processes "
                                   "of 5 opens each running alongside): by_frame inclusive, "
                                   "rows >= 1 %"))
            names = [(f"N{s}", f"stack_sample={s}") for s in samples]
            names += [(f"bpfN{s}", f"bpf backend stack_sample={s} (1 in {8 * s} once a key "
                                   "has had 128 samples on a CPU)") for s in BPF_SAMPLES]
            names += [(f"cand{n}-{f.replace(', ', '-')}", f"N={n}, @first[{f}] (candidate)")
                      for n, f in candidates]
            for key, what in names:
                v = d.get(key)
                if not v:
                    continue
                worst = max(v["callsite_pp"], v["inclusive_pp"], v["stack_pp"])
                everyone = ap.get(f"{key} as slabkit", {}).get("max_pp", float("nan"))
                ok = worst <= 2 and everyone <= 2 and v["all_found"]
                summary.append([f"share error, {what}: workload pid (callsite, inclusive, "
                                "stacks) / every process (inclusive), rows >= 1 %",
                                f"{worst:.2f} / {everyone:.2f} pp, all found: {v['all_found']}",
                                "<= 2 pp, all found", "yes" if ok else "NO"])
        except Exception as e:
            out.append(f"call-site share check FAILED: {e}\n")
            log(f"accuracy/shares FAILED: {e}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(out), data, summary
