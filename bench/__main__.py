"""``python -m bench`` (``make bench``): slabkit's probe effect, count accuracy, load and pivot speed.

    .venv/bin/python -m bench                 # everything (about 25 minutes on 2 cores)
    .venv/bin/python -m bench --quick         # fewer rounds and variants (about 6 minutes)
    .venv/bin/python -m bench --only probe    # probe | accuracy | load, comma-separated;
                                              # probe parts: variants, filp, filp-file,
                                              # kmalloc, walk

Prints one summary table (goal by goal) then the detail tables, on stdout, and writes the same
text to bench/results/latest.md (``--out`` to change; the raw numbers go next to it as .json).
Needs root, bpftrace, perf and tracefs for the live parts; every tracer it starts is stopped by
pid and every tracefs instance it makes is removed, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from slabkit.backends.control import TermAsInterrupt

from .common import RESULTS, Log, machine, table

STAGES = ("probe", "accuracy", "load")
PROBE_PARTS = ("variants", "filp", "filp-file", "kmalloc", "walk")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a fast run: 3 rounds of 1 s, 6 bpftrace variants, smaller sizes")
    p.add_argument("--only", default="",
                   help="comma-separated: probe, accuracy, load (or a probe part: "
                        "variants, filp, filp-file, kmalloc, walk)")
    p.add_argument("--rounds", type=int, help="probe-effect rounds (default 5, quick 3)")
    p.add_argument("--seconds", type=int, help="seconds per workload run (default 2, quick 1)")
    p.add_argument("--variants", default="",
                   help="comma-separated bpftrace variant names to run (default: all; "
                        "see bench/programs.py)")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.md",
                   help="where to write the results (default bench/results/latest.md)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    bad = only - set(STAGES) - set(PROBE_PARTS)
    if bad:
        print(f"--only: unknown {', '.join(sorted(bad))}; expected some of "
              f"{', '.join(STAGES + PROBE_PARTS)}", file=sys.stderr)
        return 2
    stages = [s for s in STAGES if not only or s in only
              or (s == "probe" and only & set(PROBE_PARTS))]
    probe_parts = (only & set(PROBE_PARTS)) or None
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (1 if args.quick else 2)
    log = Log(args.quiet)

    from slabkit.host.target import LocalTarget
    if not LocalTarget().is_root() and set(stages) & {"probe", "accuracy"}:
        print("the probe and accuracy stages trace the live kernel: run as root "
              "(or --only load)", file=sys.stderr)
        return 2

    info = machine()
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    head = ["# slabkit bench results", "",
            f"- date: {info['date']}",
            f"- machine: Linux {info['kernel']}, nproc {info['nproc']}, {info['bpftrace']}, "
            f"{info['perf']}; load average at start {info['loadavg']}",
            f"- command: `{command.strip()}`",
            f"- probe effect: {rounds} rounds x {seconds} s per run, baselines adjacent to "
            "every run; `ratio` = throughput under capture / uninstrumented (median "
            "[interquartile range]); `cpu` = the same on ops per CPU second of the workload", ""]
    summary: list[list] = []
    sections: list[str] = []
    data: dict = {"machine": info, "command": command, "rounds": rounds, "seconds": seconds}
    t0 = time.monotonic()
    # SIGINT (even when started in the background, where it arrives ignored), SIGTERM and
    # SIGHUP end the run through KeyboardInterrupt, so every tracer is stopped and every
    # tracefs instance removed on the way out
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_signals = TermAsInterrupt()
    stop_signals.__enter__()
    try:
        if "probe" in stages:
            from .probe import run_probe, summary_rows
            from .programs import QUICK
            chosen = tuple(v.strip() for v in args.variants.split(",") if v.strip()) or (
                QUICK if args.quick else None)
            text, d = run_probe(seconds=seconds, rounds=rounds, log=log, only=probe_parts,
                                variants=chosen)
            sections.append(text)
            data["probe"] = d
            summary += summary_rows(d)
        if "accuracy" in stages:
            from .accuracy import run_accuracy
            text, d, rows = run_accuracy(quick=args.quick, log=log)
            sections.append(text)
            data["accuracy"] = d
            summary += rows
        if "load" in stages:
            from .loadbench import run_load
            text, d, rows = run_load(quick=args.quick, log=log)
            sections.append(text)
            data["load"] = d
            summary += rows
    except KeyboardInterrupt:
        sections.append("(interrupted: partial results)\n")
    finally:
        stop_signals.__exit__(None, None, None)
        left = leftovers()
        if left:
            sections.append("WARNING: left behind: " + ", ".join(left) + "\n")
    head.append(f"- took {time.monotonic() - t0:.0f} s")
    head.append("")
    out = "\n".join(head) + "\n" + table(["goal", "measured", "target", "met"], summary,
                                          title="Summary") + "\n" + "\n".join(sections)
    print(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(out)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    print(f"(written to {args.out})", file=sys.stderr)
    return 0


def leftovers() -> list[str]:
    """tracefs instances and registered tracers of this process still there (should be none)."""
    import os

    from slabkit.host.procs import STATE_DIR
    from slabkit.host.tracefs import INSTANCE_PREFIX
    found = []
    inst = Path("/sys/kernel/tracing/instances")
    mine = f"{INSTANCE_PREFIX}{os.getpid()}-"
    if inst.is_dir():
        found += [d.name for d in inst.iterdir() if d.name.startswith(mine)]
    if STATE_DIR.is_dir():
        for rec in STATE_DIR.glob("*.json"):
            try:
                if json.loads(rec.read_text()).get("owner") == os.getpid():
                    found.append(f"tracer pid {rec.stem}")
            except (OSError, ValueError):
                pass
    return found


if __name__ == "__main__":
    sys.exit(main())
