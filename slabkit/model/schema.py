"""The DataFrame contract: every table slabkit returns, its columns, dtypes and meaning.

This module is the one place the schema is written down; :func:`validate` checks a table
against it (missing columns, unknown columns, dtypes) and is called on every load. Columns a
backend cannot fill hold missing values (``pd.NA``), never invented numbers.

Tables
------
``allocs``
    One row per (host, pid, tid, comm, cgroup, call_site, stack_id): how many allocations from
    the cache that thread made from that call site with that kernel stack during the capture,
    and how many bytes.
``frames``
    One row per (stack_id, depth): the stack's frames, depth 0 innermost (the allocator).
``outstanding``
    ``mode="outstanding"`` captures only: objects still allocated at the end, by (process, stack).
``slabinfo``
    The captured cache's ``/proc/slabinfo`` line sampled about once a second during the capture.

And the capture's ``meta.json`` (:data:`META`, :func:`validate_meta`): the keys a saved capture
must have, and the JSON type of every key slabkit writes; checked on every load, like the tables.

Which counts are exact
----------------------
``meta["count_exactness"]`` (captures whose backend says it) maps each way of summing
``allocs["count"]`` to ``"exact"`` or ``"spread"``: ``process`` (by pid, tid, comm, cgroup),
``call_site`` (by the ``call_site`` column; ``"absent"`` without one) and ``stack`` (by
``stack_id``). ``"spread"``: an exact total (per process and call site) divided among the
stacks sampled for it in proportion to their samples, so sums over stacks are estimates while
the sums they add up to stay exact. ``meta["estimated_stacks"]`` is True whenever ``stack``
is not exact. ``meta["exact"]`` is about the cache itself: False where the capture could only
match a kmalloc size class that other caches share (``meta["plan"]["reason"]`` says which).
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from slabkit.errors import ParseError


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    meaning: str
    required: bool = True


ALLOCS = (
    Column("host", "string", "host the capture ran on (hostname, or the SSH target string)"),
    Column("pid", "Int64", "process id (thread group id) that allocated"),
    Column("tid", "Int64", "thread id; missing where the tracer does not report it"),
    Column("comm", "string", "task command name at allocation time (may hold spaces)"),
    Column("cgroup", "string", "cgroup v2 path of the task; missing where unknown"),
    Column("stack_id", "Int64", "key into ``frames``; -1 where no stack was recorded"),
    Column("count", "Int64", "allocations (exact unless meta says sampled/estimated)"),
    Column("bytes", "Int64", "bytes allocated: count x the cache's object slot size (bytes_alloc)"),
    Column("bytes_req", "Int64", "bytes the callers asked for (kmalloc caches); missing otherwise",
           required=False),
    Column("call_site", "string",
           "function the allocator was called from, as the allocation tracepoint reports it "
           "(its call_site, resolved through kallsyms; the address in hex where it does not "
           "resolve); missing where the backend does not record it (only ``bpf`` does)",
           required=False),
)

FRAMES = (
    Column("stack_id", "Int64", "stack this frame belongs to"),
    Column("depth", "Int64", "0 = innermost frame (the allocator), increasing towards the syscall"),
    Column("function", "string", "kernel function name; missing for an unresolved address"),
    Column("offset", "Int64", "byte offset of the return address into the function"),
    Column("module", "string", "kernel module holding the function, 'vmlinux' for the core kernel"),
    Column("address", "UInt64", "instruction address where the tracer reported it"),
)

OUTSTANDING = (
    Column("host", "string", "host the capture ran on"),
    Column("pid", "Int64", "process id that allocated the still-live objects"),
    Column("tid", "Int64", "thread id"),
    Column("comm", "string", "task command name"),
    Column("cgroup", "string", "cgroup v2 path; missing where unknown"),
    Column("stack_id", "Int64", "key into ``frames``"),
    Column("count", "Int64", "objects allocated during the capture and not freed by its end"),
    Column("bytes", "Int64", "their bytes"),
    Column("oldest_age_s", "Float64", "age of the oldest such object at the end, seconds"),
    Column("median_age_s", "Float64", "median age of such objects at the end, seconds"),
)

SLABINFO_SERIES = (
    Column("time_s", "Float64", "seconds since the capture started"),
    Column("name", "string", "slabinfo cache name"),
    Column("active_objs", "Int64", "objects in use"),
    Column("num_objs", "Int64", "object slots allocated"),
    Column("memory_bytes", "Int64", "memory held by the cache's slabs"),
)

TABLES: dict[str, tuple[Column, ...]] = {
    "allocs": ALLOCS,
    "frames": FRAMES,
    "outstanding": OUTSTANDING,
    "slabinfo": SLABINFO_SERIES,
}


def empty(table: str) -> pd.DataFrame:
    """An empty DataFrame with the table's columns and dtypes."""
    return pd.DataFrame({c.name: pd.Series(dtype=c.dtype) for c in TABLES[table]})


def table(name: str, columns: dict, *, omit: tuple[str, ...] = ()) -> pd.DataFrame:
    """Build table ``name`` from ``columns`` (column -> values, all of one length), in the
    schema's order and dtypes; every schema column not given is filled with missing values
    (a tracer that cannot tell a value leaves it ``<NA>``, never invents it). ``omit``: schema
    columns to leave out (``host``, which the capture adds later).

    >>> table("allocs", {"comm": ["a"], "count": [3]}, omit=("host",)).dtypes["pid"]
    Int64Dtype()
    """
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns of different lengths for table {name!r}: {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    spec = TABLES[name]
    unknown = set(columns) - {c.name for c in spec}
    if unknown:
        raise ValueError(f"table {name!r} has no column(s) {sorted(unknown)}")
    data = {}
    for c in spec:
        if c.name in omit:
            continue
        if c.name in columns:
            data[c.name] = pd.array(columns[c.name], dtype=c.dtype) \
                if not isinstance(columns[c.name], pd.api.extensions.ExtensionArray) \
                else columns[c.name].astype(c.dtype)
        elif c.required:
            data[c.name] = pd.array([pd.NA] * n, dtype=c.dtype)
    return pd.DataFrame(data)


def validate(df: pd.DataFrame, table: str, *, source: str | None = None) -> pd.DataFrame:
    """Check ``df`` against the table's schema and return it with the documented dtypes.

    Raises :class:`~slabkit.errors.ParseError` naming the missing or unknown columns.
    Optional columns that are absent are added as missing values.
    """
    spec = TABLES[table]
    names = [c.name for c in spec]
    missing = [c.name for c in spec if c.required and c.name not in df.columns]
    unknown = [c for c in df.columns if c not in names]
    if missing or unknown:
        raise ParseError(
            f"table {table!r} does not match the schema (missing {missing}, unknown {unknown})",
            path=source)
    out = df.copy()
    for c in spec:
        if c.name not in out.columns:
            out[c.name] = pd.Series(pd.NA, index=out.index, dtype=c.dtype)
        elif str(out[c.name].dtype) != c.dtype:
            try:
                out[c.name] = out[c.name].astype(c.dtype)
            except (TypeError, ValueError) as e:
                raise ParseError(f"column {table}.{c.name} cannot be {c.dtype}: {e}",
                                 path=source) from None
    return out[names].reset_index(drop=True)


def describe(table: str) -> pd.DataFrame:
    """The schema of one table as a DataFrame (column, dtype, meaning) for docs and notebooks;
    ``describe("meta")``: the keys of ``meta.json`` (key, JSON types, required, meaning)."""
    if table == "meta":
        return pd.DataFrame([(k.name, " or ".join(k.types), k.required, k.meaning)
                             for k in META], columns=["key", "type", "required", "meaning"])
    return pd.DataFrame([(c.name, c.dtype, c.meaning) for c in TABLES[table]],
                        columns=["column", "dtype", "meaning"])


# --------------------------------------------------------------------------------------------
# meta.json

@dataclass(frozen=True)
class MetaKey:
    """One key of a capture's ``meta.json``: its JSON types, and whether a saved capture must
    have it (``required``) or even one still running must (``running``: what a rebuild from the
    raw output, ``--reparse``, needs)."""

    name: str
    types: tuple[str, ...]
    meaning: str
    required: bool = False
    running: bool = False


#: statuses of a saved capture (``meta.json``); one still running or killed has ``running`` or
#: ``failed`` in ``meta.running.json``
SAVED_STATUSES = ("complete", "interrupted")

META = (
    MetaKey("format", ("integer",), "version of this layout (1)", required=True),
    MetaKey("cache", ("string",), "the slabinfo cache captured (an alias resolved to it)",
            required=True, running=True),
    MetaKey("backend", ("string",), "the tracer backend that ran: bpf, bpftrace, perf, ftrace, "
            "stap", required=True, running=True),
    MetaKey("mode", ("string",), "allocs or outstanding", required=True),
    MetaKey("host", ("string",), "host the capture ran on", required=True),
    MetaKey("start", ("string",), "start time, ISO 8601 (UTC)", required=True),
    MetaKey("status", ("string",), "complete (ran its full duration) or interrupted (stopped "
            "early, what was captured is kept)", required=True),
    MetaKey("duration_s", ("number",), "seconds the probe was live", required=True),
    MetaKey("total_allocs", ("integer",), "sum of allocs.count", required=True),
    MetaKey("plan", ("object",), "what was probed and why (slabkit.plan.Plan.to_json)",
            required=True, running=True),
    MetaKey("slabkit_version", ("string",), "slabkit that captured"),
    MetaKey("requested", ("string",), "the cache name as asked for"),
    MetaKey("aliases", ("array",), "caches merged into this one"),
    MetaKey("kind", ("string",), "dedicated or a kmalloc kind"),
    MetaKey("target", ("string",), "where it ran, as given (local, an SSH destination)"),
    MetaKey("via", ("string",), "direct, or helper (slabkit's capture helper)"),
    MetaKey("kernel_release", ("string", "null"), "uname -r of the traced kernel"),
    MetaKey("tracer_version", ("string", "null"), "the tracer's version"),
    MetaKey("backends_not_used", ("object",), "backend -> why it was not used"),
    MetaKey("options", ("object",), "tracer knobs (slabkit.Options): name -> whole number"),
    MetaKey("program", ("string",), "the program text that ran"),
    MetaKey("argv", ("array",), "the tracer's command line"),
    MetaKey("env", ("object",), "environment given to the tracer"),
    MetaKey("slab_size", ("integer", "null"), "the cache's object slot, bytes"),
    MetaKey("object_size", ("integer", "null"), "the cache's object size, bytes"),
    MetaKey("requested_seconds", ("number",), "duration asked for"),
    MetaKey("exact", ("boolean",), "the plan tells this cache's allocations apart exactly"),
    MetaKey("pid_filter", ("integer", "null"), "only this process id"),
    MetaKey("comm_filter", ("string", "null"), "only processes of this name"),
    MetaKey("end", ("string",), "end time, ISO 8601 (UTC)"),
    MetaKey("end_reason", ("string",), "duration, stopped, interrupted or tracer-exited"),
    MetaKey("returncode", ("integer", "null"), "the tracer's exit status"),
    MetaKey("tracer_stderr", ("string",), "the tail of what the tracer printed on stderr"),
    MetaKey("error", ("string",), "why an unfinished capture failed (meta.running.json)"),
    MetaKey("kallsyms_path", ("string",), "the saved kernel symbols (kallsyms.txt.gz)"),
    MetaKey("kallsyms_note", ("string",), "why no kernel symbols were saved"),
    MetaKey("kallsyms_trimmed", ("boolean",), "only the symbols the stacks need were kept"),
    MetaKey("losses", ("object",), "events the tracer reported it did not count, by kind"),
    MetaKey("lost_total", ("integer",), "the sum of losses"),
    MetaKey("stack_losses", ("object",), "stack samples not recorded, by kind"),
    MetaKey("estimated_stacks", ("boolean",), "counts per stack are estimates (sampling)"),
    MetaKey("notes", ("array",), "what the reader should know, one sentence each"),
    MetaKey("raw_sha256", ("object",), "raw file -> its sha256 (hex) when the capture was "
            "saved: a rebuild (--reparse) refuses a raw file that changed since"),
    MetaKey("probe_fired", ("boolean", "null"), "the probe ran at least once during the "
            "capture (null: the tracer cannot tell)"),
    MetaKey("filtered_out", ("integer", "null"), "events of the cache the pid/comm filter "
            "turned away (null: not filtered, or the tracer cannot tell)"),
)

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}
#: keys whose object values must all be whole numbers (or null)
_COUNTS = ("options", "losses", "stack_losses")


def _json_type(value: object) -> str:
    """The first JSON type of :data:`_JSON_TYPES` ``value`` is (for messages)."""
    return next((name for name in _JSON_TYPES if _is(value, name)), type(value).__name__)


def _is(value: object, json_type: str) -> bool:
    """``value`` is of the JSON type (a bool is not a number; an integer is a number)."""
    if isinstance(value, bool):
        return json_type == "boolean"
    return isinstance(value, _JSON_TYPES[json_type])


def validate_meta(meta: object, *, source: str | None = None, saved: bool = True) -> dict:
    """Check a capture's meta against :data:`META` and return it.

    ``saved``: a saved capture's ``meta.json`` (every required key, status ``complete`` or
    ``interrupted``); False: the ``meta.running.json`` of a capture that did not finish (only
    what a rebuild needs). Keys slabkit does not know are kept (a newer slabkit may add some).
    Raises :class:`~slabkit.errors.ParseError` naming the first problem.
    """
    if not isinstance(meta, dict):
        raise ParseError(f"capture meta must be a JSON object, not {_json_type(meta)}",
                         path=source)
    for key in META:
        if key.name not in meta:
            if key.running or (saved and key.required):
                raise ParseError(f"capture meta lacks {key.name!r} ({key.meaning})", path=source)
            continue
        value = meta[key.name]
        if not any(_is(value, t) for t in key.types):
            raise ParseError(f"capture meta {key.name!r} must be {' or '.join(key.types)}, not "
                             f"{_json_type(value)} {str(value)[:40]!r}", path=source)
    for name in _COUNTS:
        for k, v in (meta.get(name) or {}).items():
            if not (_is(v, "integer") or v is None):
                raise ParseError(f"capture meta {name}[{k!r}] must be a whole number, not "
                                 f"{_json_type(v)}", path=source)
    if saved and meta["status"] not in SAVED_STATUSES:
        raise ParseError(f"capture meta status must be one of {', '.join(SAVED_STATUSES)}, not "
                         f"{str(meta['status'])[:40]!r}", path=source)
    return meta
