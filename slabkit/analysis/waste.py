"""kmalloc waste: the bytes of each slot the caller did not ask for, as ``perf kmem`` reports it.

A ``kmalloc(48)`` is served from ``kmalloc-64``: 16 of the slot's 64 bytes are wasted (internal
fragmentation). For kmalloc caches the tracepoint gives both numbers, ``bytes_req`` (asked
for) and ``bytes_alloc`` (the slot), and ``allocs`` carries their sums as ``bytes_req`` and
``bytes``; the waste is ``bytes - bytes_req``.

Where a backend cannot give ``bytes_req`` (a dedicated cache, the classic stap output) the
waste is missing (``<NA>``), never 0: a group is missing as soon as one of its rows is.
``bytes_req`` per stack is spread from each thread's exact sum when stacks are sampled (the
default bpf capture), so waste per process is exact and per call site an estimate there, as
counts are.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from slabkit.analysis.pivots import (
    _ALLOC_KEYS,
    _STACK_KEYS,
    CaptureLike,
    _keys_for,
    _prepare,
    _unpack,
    _weights,
)
from slabkit.errors import InvalidInput, expected_one_of
from slabkit.model.tables import Capture

COLUMNS = ["count", "bytes", "bytes_req", "waste_bytes", "fragmentation", "share",
           "memory_share"]


def cache_memory_bytes(cap: CaptureLike) -> int | None:
    """Memory the captured cache's slabs held at the end of the capture (the last sample of
    its slabinfo series), or None: no series, or a merge of several hosts' captures (their
    series are not told apart)."""
    if not isinstance(cap, Capture) or cap.slabinfo is None or not len(cap.slabinfo):
        return None
    hosts = cap.meta.get("hosts") or []
    if cap.meta.get("merged") and len(set(hosts)) > 1:
        return None
    series = cap.slabinfo[cap.slabinfo["name"] == cap.meta.get("cache")]
    if series.empty or series["memory_bytes"].isna().all():
        return None
    last = series.sort_values("time_s", kind="stable").dropna(subset=["memory_bytes"]).iloc[-1]
    return int(last["memory_bytes"])


def _table(cap: CaptureLike, keys: list[str]) -> pd.DataFrame:
    """allocs' count, bytes, bytes_req with the grouping keys (allocs columns, module or
    callsite) as columns."""
    allocs, frames, _ = _unpack(cap)
    allocs = allocs.reset_index(drop=True)
    out = pd.DataFrame({k: allocs[k] for k in keys if k in _ALLOC_KEYS})
    if any(k in _STACK_KEYS for k in keys):
        st = _prepare(frames)
        w = _weights(allocs, st)
        for k in keys:
            if k in _STACK_KEYS:
                out[k] = pd.array(_keys_for(allocs, st, w, k), dtype="string")
    out = out[keys]
    for c in ("count", "bytes", "bytes_req"):
        out[c] = allocs[c].astype("Int64") if c in allocs.columns \
            else pd.array([pd.NA] * len(allocs), dtype="Int64")
    return out


def _sums(grouped, size: pd.Series) -> pd.DataFrame:
    """count, bytes, bytes_req summed; bytes and bytes_req missing where any row is."""
    df = grouped[["count", "bytes", "bytes_req"]].sum(min_count=1)
    known = grouped[["bytes", "bytes_req"]].count()
    for c in ("bytes", "bytes_req"):
        df[c] = df[c].astype("Int64").where(known[c].to_numpy() == size.to_numpy())
    df["count"] = df["count"].fillna(0).astype("Int64")
    return df


def _with_ratios(df: pd.DataFrame, total_waste: Any, memory: int | None) -> pd.DataFrame:
    df["waste_bytes"] = (df["bytes"] - df["bytes_req"]).astype("Int64")
    waste = df["waste_bytes"].astype("Float64")
    df["fragmentation"] = (waste / df["bytes"].astype("Float64").replace(0, pd.NA)) \
        .astype("Float64")
    df["share"] = (waste / float(total_waste) if not pd.isna(total_waste) and total_waste
                   else pd.Series(pd.NA, index=df.index)).astype("Float64")
    df["memory_share"] = (waste / memory if memory else
                          pd.Series(pd.NA, index=df.index)).astype("Float64")
    return df[COLUMNS]


def kmalloc_waste_total(cap: CaptureLike) -> pd.Series:
    """The capture's kmalloc waste in one: ``count``, ``bytes`` (slots), ``bytes_req`` (asked
    for), ``waste_bytes``, ``fragmentation`` (waste / bytes, perf kmem's "internal
    fragmentation"), ``cache_memory_bytes`` (:func:`cache_memory_bytes`) and ``memory_share``
    (waste / that memory). A capture with no allocations has no waste to tell (missing).

    >>> kmalloc_waste_total(cap)[["waste_bytes", "fragmentation"]]     # doctest: +SKIP
    """
    t = _table(cap, [])

    def total(column: str) -> Any:
        values = t[column]
        return pd.NA if values.isna().any() or not len(values) else int(values.sum())

    byt, req = total("bytes"), total("bytes_req")
    waste = pd.NA if pd.isna(byt) or pd.isna(req) else byt - req
    memory = cache_memory_bytes(cap)
    return pd.Series({
        "count": int(t["count"].sum()), "bytes": byt, "bytes_req": req, "waste_bytes": waste,
        "fragmentation": waste / byt if not pd.isna(waste) and byt else pd.NA,
        "cache_memory_bytes": pd.NA if memory is None else memory,
        "memory_share": waste / memory if not pd.isna(waste) and memory else pd.NA,
    }, name="all", dtype=object)


def kmalloc_waste(cap: CaptureLike, by: str | Sequence[str] = "callsite") -> pd.DataFrame:
    """kmalloc waste per call site (default) or per process, like ``perf kmem stat
    --caller``/``--alloc``.

    ``by``: ``"callsite"`` (the first frame outside the allocator), ``"module"``
    (responsible module), or allocs columns ``comm``, ``pid``, ``tid``, ``cgroup``, ``host``
    (several: a list, e.g. ``["comm", "pid"]``).

    Index: the ``by`` key(s). Columns: ``count``, ``bytes`` (slots), ``bytes_req`` (asked
    for), ``waste_bytes`` (bytes - bytes_req) as Int64; ``fragmentation`` (waste / bytes),
    ``share`` (of the capture's waste) and ``memory_share`` (waste / the cache's memory at the
    end, :func:`cache_memory_bytes`) as Float64. Largest waste first, missing last.
    :func:`kmalloc_waste_total` gives the totals.
    """
    keys = [by] if isinstance(by, str) else list(by)
    allowed = [*_STACK_KEYS[::-1], *_ALLOC_KEYS]
    for k in keys:
        if k not in allowed:
            raise InvalidInput(expected_one_of("by", k, allowed))
    t = _table(cap, keys)
    g = t.groupby(keys, dropna=False, sort=False, observed=True)
    df = _sums(g, g.size())
    total = kmalloc_waste_total(cap)
    df = _with_ratios(df, total["waste_bytes"], cache_memory_bytes(cap))
    order = np.argsort(-df["waste_bytes"].astype("float64").fillna(-np.inf).to_numpy(),
                       kind="stable")
    df = df.iloc[order]
    df.index.names = keys
    return df
