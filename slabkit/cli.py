"""The ``slabkit`` command line: thin wrappers over the public API.

Every :class:`~slabkit.errors.SlabkitError` becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import SlabkitError


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", metavar="[USER@]HOST[:PORT]", default=None,
                   help="run on this SSH host instead of this machine")
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)  # fake trees in tests


def _target(args):
    from .target import as_target
    if getattr(args, "host", None):
        return as_target(args.host if "@" in args.host or args.host.startswith("ssh://")
                         else "ssh://" + args.host)
    return as_target(getattr(args, "root", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slabkit",
        description="Who allocates from a Linux slab cache: list caches, capture allocations "
                    "with bpftrace/perf/ftrace/SystemTap, and analyse them.")
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

    return parser


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
    from . import slabinfo
    if args.top is not None and args.top <= 0:
        raise SlabkitError_("--top must be a positive number of rows")
    if args.watch is not None:
        series = slabinfo.sample(duration_s=args.watch, interval_s=args.interval,
                                 root=_target(args))
        df = slabinfo.growth(series)
    else:
        df = slabinfo.caches(root=args.file or _target(args))
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
