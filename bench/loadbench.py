"""Load and pivot speed and memory, each measured in a fresh subprocess.

1. A synthetic bpftrace capture of 100,000 distinct ~30-frame stacks (``bench/synth.py``):
   ``slabkit.load(folder, reparse=True)`` (parse the raw JSON, resolve through kallsyms, save
   parquet), ``slabkit.load(folder)`` (the saved tables), then the main pivots.
2. A real streaming capture: ``slabkit.capture("filp", backend="perf")`` around
   ``slabwork open 1,000,000``; then ``perf script`` alone (slabkit's fields, to /dev/null)
   against slabkit's parser of the text ``perf script`` wrote (the capture's
   ``perf.script.txt``), and the parser's peak memory on prefixes of that text (250k, 500k
   and all events): memory should follow distinct stacks, not events.

Memory is the child's peak resident size (``VmHWM``) minus its size after imports, so the
numbers are what loading and pivoting add, not Python and pandas themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Log, table

PIVOTS = ("by_process", "by_module", "by_frame callsite", "by_frame inclusive", "top_stacks")


# ------------------------------------------------------------------------------------------
# child side: ``python -m bench.loadbench TASK ARG`` prints one JSON line

def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _time_pivots(view, repeat: int = 3) -> dict[str, float]:
    from slabkit import analysis as an
    calls = {"by_process": lambda: an.by_process(view),
             "by_module": lambda: an.by_module(view),
             "by_frame callsite": lambda: an.by_frame(view, "callsite"),
             "by_frame inclusive": lambda: an.by_frame(view, "inclusive"),
             "top_stacks": lambda: an.top_stacks(view, 10)}
    out = {}
    for name, fn in calls.items():
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = sorted(times)[len(times) // 2]   # median of 3
    return out


def child(task: str, arg: str) -> dict:
    import pandas  # noqa: F401  (imported before the baseline is read)

    import slabkit
    from slabkit import analysis  # noqa: F401
    base = _hwm_mb()
    res: dict = {"base_rss_mb": base}
    if task == "synth":
        t = time.perf_counter()
        cap = slabkit.load(arg, reparse=True)
        res["reparse_s"] = time.perf_counter() - t
        res["reparse_peak_mb"] = _hwm_mb() - base
        res["rows_allocs"], res["rows_frames"] = len(cap.allocs), len(cap.frames)
        res["stacks"] = int(cap.frames["stack_id"].nunique())
        del cap
        t = time.perf_counter()
        cap = slabkit.load(arg)
        res["load_saved_s"] = time.perf_counter() - t
        res["pivots_s"] = _time_pivots(cap)
        res["peak_mb"] = _hwm_mb() - base
    elif task == "perf-parse":
        from slabkit.backends.perf import parse_output as parse_script
        from slabkit.plan import Plan
        path, meta_path = arg.split("::")
        meta = json.loads(Path(meta_path).read_text())
        t = time.perf_counter()
        parsed = parse_script(Path(path), Plan.from_json(meta["plan"]), meta)
        res["parse_s"] = time.perf_counter() - t
        res["parse_peak_mb"] = _hwm_mb() - base
        res["events"] = int(parsed.allocs["count"].sum())
        res["rows_allocs"], res["rows_frames"] = len(parsed.allocs), len(parsed.frames)
        res["stacks"] = int(parsed.frames["stack_id"].nunique()) if len(parsed.frames) else 0
        res["pivots_s"] = _time_pivots((parsed.allocs.assign(host="x"), parsed.frames))
        res["peak_mb"] = _hwm_mb() - base
    elif task == "reparse":
        t = time.perf_counter()
        cap = slabkit.load(arg, reparse=True)
        res["reparse_s"] = time.perf_counter() - t
        res["peak_mb"] = _hwm_mb() - base
        res["events"] = int(cap.allocs["count"].sum())
    else:
        raise SystemExit(f"unknown task {task}")
    return res


def _run_child(task: str, arg: str, timeout: float = 1800) -> dict:
    r = subprocess.run([sys.executable, "-m", "bench.loadbench", task, arg],
                       capture_output=True, text=True, timeout=timeout,
                       cwd=Path(__file__).resolve().parent.parent)
    if r.returncode != 0:
        raise RuntimeError(f"{task} child failed: {r.stderr.strip()[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# parent side

def _timed(argv: list[str], stdout) -> tuple[float, float]:
    """Run argv; (wall seconds, peak RSS MB of the child)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[:2]} exited {p.returncode}")
    return time.perf_counter() - t, ru.ru_maxrss / 1024


def prefix_events(src: Path, dst: Path, n_events: int) -> int:
    """Copy the first ``n_events`` blocks (events) of a ``perf script`` text."""
    n = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        carry = b""
        while n < n_events:
            data = f.read(1 << 24)
            if not data:
                if carry.strip():
                    out.write(carry)
                    n += 1
                break
            blocks = (carry + data).split(b"\n\n")
            carry = blocks.pop()
            take = blocks[:n_events - n]
            out.write(b"\n\n".join(take) + b"\n\n")
            n += len(take)
    return n


def synth_stage(stacks: int, log: Log, workdir: Path) -> tuple[list[list], dict]:
    from .synth import write_capture
    folder = workdir / "synthetic"
    log(f"load/synthetic: writing {stacks:,} distinct stacks")
    t = time.perf_counter()
    facts = write_capture(folder, stacks=stacks)
    facts["write_s"] = time.perf_counter() - t
    log(f"load/synthetic: {facts}; loading in a child process")
    res = _run_child("synth", str(folder))
    rows = [["synthetic bpftrace capture", f"{facts['distinct_stacks']:,} stacks, "
             f"{facts['stack_keys']:,} (thread, stack) keys, {facts['frames']:,} frames, "
             f"{facts['jsonl_bytes'] / 1e6:.0f} MB JSON", "", ""],
            ["load(reparse=True): parse, resolve, save", f"{res['reparse_s']:.2f} s",
             f"+{res['reparse_peak_mb']:.0f} MB", ""],
            ["load(): saved parquet tables", f"{res['load_saved_s']:.2f} s", "", ""]]
    for name, s in res["pivots_s"].items():
        rows.append([f"pivot {name}", f"{s * 1000:.0f} ms", "",
                     "yes" if s < 1.0 else "NO"])
    rows.append(["peak memory over imports (all of the above)", "",
                 f"+{res['peak_mb']:.0f} MB (base {res['base_rss_mb']:.0f} MB)", ""])
    return rows, {"facts": facts, **res}


def perf_stage(n_events: int, log: Log, workdir: Path) -> tuple[list[list], dict]:
    from .tracers import SlabkitCapture
    from .workload import Workload
    t = SlabkitCapture(name="perf1m", label="perf", cache="filp", backend="perf", keep=True)
    log(f"load/perf: capturing slabwork open {n_events:,} with the perf backend")
    with Workload("open", n_events, "/dev/null") as w:
        with t.session(workdir) as info:
            w.go()
            time.sleep(0.3)
            t_stop = time.perf_counter()
        capture_end_s = time.perf_counter() - t_stop
    if "cap" not in info:
        raise RuntimeError(f"perf capture failed: {info.get('error')}")
    folder = info["folder"]
    cap = info.pop("cap")
    total = int(cap.meta.get("total_allocs") or 0)
    lost = int(cap.meta.get("lost_total") or 0)
    script = folder / "perf.script.txt"
    meta_path = folder / "meta.json"
    data: dict = {"events": total, "lost": lost, "capture_stop_script_parse_save_s": capture_end_s,
                  "perf_data_mb": (folder / "perf.data").stat().st_size / 1e6,
                  "script_mb": script.stat().st_size / 1e6}
    del cap
    # perf script alone, as the backend runs it, to /dev/null (twice: the second has a warm
    # page cache, as the parser's runs below do)
    meta = json.loads(meta_path.read_text())
    from slabkit.backends.perf import script_fields
    from slabkit.plan import Plan
    argv = ["perf", "script", "-i", str(folder / "perf.data"), "-F",
            script_fields(Plan.from_json(meta["plan"])), "--show-lost-events"]
    log("load/perf: perf script > /dev/null")
    with open(os.devnull, "wb") as null:
        _timed(argv, null)
        ps_s, ps_mb = _timed(argv, null)
    data["perf_script_s"], data["perf_script_rss_mb"] = ps_s, ps_mb
    rows = [["perf capture", f"{total:,} events ({lost:,} lost), perf.data "
             f"{data['perf_data_mb']:.0f} MB, perf script text {data['script_mb']:.0f} MB", "", ""],
            ["capture end: stop, perf script, parse, save",
             f"{capture_end_s:.1f} s", "", ""],
            ["`perf script` alone > /dev/null", f"{ps_s:.2f} s", f"{ps_mb:.0f} MB (peak RSS)", ""]]
    # the parser on prefixes of the same text
    sizes = sorted({max(1, total // 4), max(1, total // 2), total})
    data["parse"] = {}
    for k in sizes:
        path = script if k == total else workdir / f"prefix-{k}.txt"
        got = k if k == total else prefix_events(script, path, k)
        log(f"load/perf: slabkit parser on {got:,} events")
        res = _run_child("perf-parse", f"{path}::{meta_path}")
        data["parse"][got] = res
        if path != script:
            path.unlink()
        rows.append([f"slabkit perf parser, {got:,} events -> DataFrames",
                     f"{res['parse_s']:.2f} s ({res['stacks']:,} distinct stacks)",
                     f"+{res['parse_peak_mb']:.0f} MB (base {res['base_rss_mb']:.0f} MB)",
                     "yes" if k != total or res["parse_s"] < ps_s else "NO"])
    full = data["parse"][max(data["parse"])]
    for name, s in full["pivots_s"].items():
        rows.append([f"pivot {name} ({full['rows_allocs']:,} allocs rows)",
                     f"{s * 1000:.0f} ms", "", "yes" if s < 1.0 else "NO"])
    res = _run_child("reparse", str(folder))
    data["reparse"] = res
    rows.append(["load(reparse=True) of the perf capture folder", f"{res['reparse_s']:.2f} s",
                 f"+{res['peak_mb']:.0f} MB", ""])
    shutil.rmtree(folder, ignore_errors=True)
    return rows, data


def run_load(*, quick: bool, log: Log) -> tuple[str, dict, list[list]]:
    stacks = 20_000 if quick else 100_000
    n_events = 250_000 if quick else 1_000_000
    workdir = Path(tempfile.mkdtemp(prefix="slabkit-bench-load-"))
    out, data, summary = [], {}, []
    try:
        rows, d = synth_stage(stacks, log, workdir)
        data["synthetic"] = d
        out.append(table(["step", "time", "memory", "< 1 s"], rows,
                         title=f"load and pivots: synthetic capture, {stacks:,} distinct "
                               "stacks of ~30 frames (subprocess)"))
        worst = max(d["pivots_s"].items(), key=lambda kv: kv[1])
        summary.append([f"slowest pivot on {stacks:,} distinct stacks ({worst[0]})",
                        f"{worst[1] * 1000:.0f} ms", "< 1 s", "yes" if worst[1] < 1 else "NO"])
        try:
            rows, d = perf_stage(n_events, log, workdir)
            data["perf"] = d
            out.append(table(["step", "time", "memory", "goal met"], rows,
                             title=f"streaming capture: perf, `slabwork open {n_events:,}` "
                                   "(parser runs in subprocesses)"))
            parses = d["parse"]
            top = parses[max(parses)]
            summary.append([f"perf: slabkit parser vs `perf script` alone ({max(parses):,} "
                            "events)", f"{top['parse_s']:.2f} s vs {d['perf_script_s']:.2f} s",
                            "faster", "yes" if top["parse_s"] < d["perf_script_s"] else "NO"])
            lo = parses[min(parses)]
            summary.append([f"perf parser memory, {min(parses):,} vs {max(parses):,} events",
                            f"+{lo['parse_peak_mb']:.0f} MB vs +{top['parse_peak_mb']:.0f} MB",
                            "similar (grows with stacks)",
                            "yes" if top["parse_peak_mb"] <= 1.5 * lo["parse_peak_mb"] + 20
                            else "NO"])
        except Exception as e:
            out.append(f"perf streaming stage FAILED: {e}\n")
            log(f"load/perf FAILED: {e}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(out), data, summary


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], sys.argv[2])))
