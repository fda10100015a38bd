"""The ``slabkit`` command line: thin wrappers over the public API.

Every :class:`~slabkit.errors.SlabkitError` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from slabkit._version import __version__
from slabkit.errors import SlabkitError


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="[USER@]HOST[:PORT]", default=None,
                   help="run on this SSH host instead of this machine")
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)  # fake trees in tests


def _target(args):
    from slabkit.host.where import as_target
    if getattr(args, "host", None):
        return as_target(args.host if "@" in args.host or args.host.startswith("ssh://")
                         else "ssh://" + args.host)
    return as_target(getattr(args, "root", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slabkit",
        description="Who allocates from a Linux slab cache: list caches, capture allocations "
                    "with slabkit's BPF counter/bpftrace/perf/ftrace/SystemTap, and analyse them.")
    parser.add_argument("--version", action="version", version=f"slabkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("caches", help="the slab cache table, biggest (or fastest growing) first")
    p.add_argument("--top", type=int, default=None, metavar="N", help="show only the first N")
    p.add_argument("--watch", type=float, default=None, metavar="SECONDS",
                   help="sample for SECONDS and sort by growth")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                   help="sampling interval with --watch (default 1)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON records for scripts")
    fmt.add_argument("--csv", action="store_true", help="CSV for scripts")
    p.add_argument("--file", default=None, help="read a saved copy of /proc/slabinfo instead")
    _add_target(p)
    p.set_defaults(func=cmd_caches)

    p = sub.add_parser("capture", help="capture who allocates from CACHE for a while")
    p.add_argument("cache", help="slab cache name as /proc/slabinfo shows it (or a merged alias)")
    p.add_argument("-d", "--duration", type=float, default=10.0, metavar="SECONDS",
                   help="how long to capture (default 10)")
    p.add_argument("-b", "--backend", default="auto",
                   help="auto (default: bpf, else bpftrace, perf, ftrace, stap), bpf, "
                        "bpftrace, perf, ftrace or stap")
    p.add_argument("--outstanding", action="store_true",
                   help="track frees too and report objects still allocated at the end")
    p.add_argument("--pid", default=None, help="only this process id")
    p.add_argument("--comm", default=None, help="only processes with this name")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="capture folder to write (default: new folder in data/captures)")
    p.add_argument("--stack-sample", type=int, default=None, metavar="N",
                   help="bpf/bpftrace: take a stack for 1 event in N, count all (default 32)")
    p.add_argument("--full-stacks", action="store_true", help="a stack for every event")
    p.add_argument("--sample-every", type=int, default=1, metavar="N",
                   help="perf: record 1 event in N and scale counts back (default 1)")
    p.add_argument("--print-program", action="store_true",
                   help="show the plan and the program that would run, and exit")
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows in the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_target(p)
    p.set_defaults(func=cmd_capture)

    p = sub.add_parser("list", help="saved captures")
    p.add_argument("where", nargs="*", help="folders or globs (default data/captures)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="summary of a saved capture (or raw tracer output)")
    p.add_argument("path", nargs="+", help="capture folder(s), glob, or raw output file")
    p.add_argument("--reparse", action="store_true", help="rebuild tables from the raw output")
    p.add_argument("--top", type=int, default=10, metavar="N")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("cleanup", help="stop tracers and remove tracefs instances a killed "
                                       "slabkit run left behind")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("report", help="a self-contained HTML report of a capture "
                                      "(notebook 02 executed for it)")
    p.add_argument("capture", help="capture folder or raw tracer output")
    p.add_argument("-o", "--output", default=None, metavar="HTML",
                   help="where to write it (default: <capture name>.html here)")
    p.add_argument("--show-code", action="store_true", help="keep the code cells in the page")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("helper", help="slabkit's capture helper for normal users: install "
                                      "(root), uninstall (root), status",
                       add_help=False)
    p.add_argument("helper_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_helper)

    p = sub.add_parser("export", help="a capture in other tools' formats: pprof "
                                      "(go tool pprof, Pyroscope, Parca), folded stacks")
    p.add_argument("capture", nargs="+", help="capture folder(s), glob, or raw tracer output")
    p.add_argument("--pprof", default=None, metavar="OUT.pb.gz",
                   help="write a gzip-compressed pprof profile (profile.proto)")
    p.add_argument("--folded", default=None, metavar="OUT.folded",
                   help="write FlameGraph folded stacks (flamegraph.pl, speedscope)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the README's demo: caches, then a capture and a report")
    p.add_argument("-d", "--duration", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--cache", default=None, help="capture this cache (default: the busiest)")
    p.set_defaults(func=cmd_demo)

    return parser


def cmd_capture(args) -> int:
    from slabkit.backends.base import DEFAULT_STACK_SAMPLE, Options
    from slabkit.capturing.run import capture, prepare
    stack_sample = 1 if args.full_stacks else args.stack_sample
    opts = dict(backend=args.backend, mode="outstanding" if args.outstanding else "allocs",
                pid=args.pid, comm=args.comm, target=_target(args),
                options=Options(stack_sample=DEFAULT_STACK_SAMPLE if stack_sample is None
                                else stack_sample,
                                sample_every=args.sample_every))
    if args.print_program:
        from slabkit.validate import check_seconds
        check_seconds(args.duration)
        prep = prepare(args.cache, **opts)
        plan = prep.plan
        print(f"# cache {plan.cache} ({plan.kind}), strategy {plan.strategy}, "
              f"{'exact' if plan.exact else 'estimate'}: {plan.reason}")
        for note in plan.notes:
            print(f"# note: {note}")
        print(f"# backend {prep.backend.name}; not used: " + "; ".join(
            f"{k}: {v}" for k, v in prep.not_used.items()) if prep.not_used else
            f"# backend {prep.backend.name}")
        if prep.program.env:
            print("# environment: " + " ".join(f"{k}={v}" for k, v in prep.program.env.items()))
        print(prep.program.text if prep.program.text else " ".join(prep.program.argv))
        return 0
    cap = capture(args.cache, args.duration, out=args.output, progress=not args.quiet, **opts)
    _print_summary(cap, top=args.top)
    return 0


def cmd_list(args) -> int:
    from slabkit.capturing.store import list_captures
    df = list_captures(args.where or None)
    if df.empty:
        print("no captures found")
    else:
        _print_table(df, args)
    return 0


def cmd_show(args) -> int:
    from slabkit.capturing.load import load
    cap = load(args.path if len(args.path) > 1 else args.path[0], reparse=args.reparse)
    _print_summary(cap, top=args.top)
    return 0


def _print_summary(cap, *, top: int) -> None:
    from slabkit.ui.summary import summarize
    print(summarize(cap, top=top).to_text())


def cmd_helper(args) -> int:
    from slabkit.helper.install import main as helper_main
    return helper_main(args.helper_args or ["status"])


def cmd_cleanup(args) -> int:
    import os

    from slabkit.host.cleanup import cleanup_leftovers
    if os.geteuid() == 0:
        done = cleanup_leftovers()
    else:
        from slabkit.host.helper import Helper
        from slabkit.host.target import LocalTarget
        helper = Helper(LocalTarget())
        why = helper.unavailable()
        if why:
            from slabkit.errors import PermissionNeeded
            raise PermissionNeeded(f"slabkit cleanup ends root's tracers: run it with sudo "
                                   f"(or {why})")
        done = helper.cleanup()
    print("\n".join(done) if done else "nothing left behind")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from slabkit.ui.report import write_report
    out = args.output or f"{Path(args.capture).resolve().name}.html"
    print(f"report: {write_report(args.capture, out, show_code=args.show_code)}")
    return 0


def cmd_export(args) -> int:
    from slabkit.analysis.export import to_pprof, write_folded
    from slabkit.capturing.load import load
    if not (args.pprof or args.folded):
        raise SlabkitError_("say what to write: --pprof OUT.pb.gz and/or --folded OUT.folded")
    cap = load(args.capture if len(args.capture) > 1 else args.capture[0])
    if args.pprof:
        print(f"pprof: {to_pprof(cap, args.pprof)}")
    if args.folded:
        print(f"folded: {write_folded(cap, args.folded)}")
    return 0


def cmd_demo(args) -> int:
    from slabkit.ui.demo import run_demo
    return run_demo(duration=args.duration, cache=args.cache)


def _print_table(df, args) -> None:
    if getattr(args, "json", False):
        print(df.to_json(orient="records", indent=1))
    elif getattr(args, "csv", False):
        df.to_csv(sys.stdout, index=False)
    else:
        import pandas as pd
        with pd.option_context("display.max_rows", None, "display.width", 200,
                               "display.max_columns", None, "display.max_colwidth", 40):
            print(df.to_string(index=False))


def cmd_caches(args) -> int:
    from slabkit.host import slabinfo
    if args.top is not None and args.top <= 0:
        raise SlabkitError_("--top must be a positive number of rows")
    if args.watch is not None:
        series = slabinfo.sample(duration_s=args.watch, interval_s=args.interval,
                                 target=_target(args))
        df = slabinfo.growth(series)
    else:
        df = slabinfo.caches(args.file or _target(args))
        df = df.sort_values("memory_bytes", ascending=False)
        cols = [c for c in ("name", "kind", "active_objs", "num_objs", "objsize", "memory_bytes",
                            "utilisation", "aliases") if c in df.columns]
        if not (args.json or args.csv):
            df = df[cols]
    if args.top:
        df = df.head(args.top)
    _print_table(df, args)
    return 0


class SlabkitError_(SlabkitError):
    """A usage error found by the CLI itself."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except SlabkitError as e:
        print(f"slabkit: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slabkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `slabkit caches | head`
        return 0
