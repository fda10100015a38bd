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
    """The schema of one table as a DataFrame (column, dtype, meaning) for docs and notebooks."""
    return pd.DataFrame([(c.name, c.dtype, c.meaning) for c in TABLES[table]],
                        columns=["column", "dtype", "meaning"])
