"""What the backends share when they parse: builders that turn aggregated events into
``allocs`` and ``frames`` tables (streaming tracers: :func:`keep_process`,
:func:`build_tables`; in-kernel aggregation with sampled stacks: :func:`spread_counts`,
:func:`finish_allocs`, :func:`frames_from_addresses`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from slabkit.model import schema
from slabkit.model.stacks import frames_table

if TYPE_CHECKING:
    from slabkit.plan import Plan


def keep_process(counts: dict[tuple, list[int]], plan: "Plan"
                 ) -> tuple[dict[tuple, list[int]], int]:
    """The rows of the plan's process (``plan.pid``, matched against the thread group id that
    keys each row first), and how many events were dropped because their process was unknown.

    ``counts`` is keyed ``(pid, tid, comm, stack_id)`` as :func:`build_tables` takes it. The
    streaming tracers record more than the process (perf records every process's events, an
    ftrace instance following a process also follows the children it forks): this keeps the
    events of the process itself, as the bpf and bpftrace programs count them.
    """
    if plan.pid is None:
        return counts, 0
    pid = int(plan.pid)
    unknown = sum(c[0] for k, c in counts.items() if k[0] is None)
    return {k: c for k, c in counts.items() if k[0] == pid}, unknown


def build_tables(counts: dict[tuple, list[int]], stacks: dict[tuple[str, ...], int],
                 plan: "Plan", meta: dict, *, scale: int = 1,
                 frame_lines: dict[int, list[str]] | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``allocs`` (without host) and ``frames`` from aggregated streaming events.

    ``counts``: ``(pid, tid, comm, stack_id) -> [count, bytes_req_sum]`` (pid/comm may be
    None: unknown). ``stacks``: frame-line tuple -> stack_id (lines innermost first, any form
    :func:`slabkit.model.stacks.parse_frame` reads; ``frame_lines`` overrides the lines per id).
    ``scale`` multiplies counts (sampling 1 in N).
    """
    slot = int(plan.match_bytes_alloc or meta.get("slab_size") or 0) or None
    n = len(counts)
    keys = list(counts)
    cnt = np.fromiter((counts[k][0] for k in keys), dtype=np.int64, count=n) * scale
    columns = {"pid": [k[0] for k in keys], "tid": [k[1] for k in keys],
               "comm": [k[2] for k in keys], "stack_id": [k[3] for k in keys], "count": cnt}
    if slot:
        columns["bytes"] = cnt * slot
    if plan.strategy == "kmalloc-size-class":
        columns["bytes_req"] = np.fromiter((counts[k][1] for k in keys), dtype=np.int64,
                                           count=n) * scale
    allocs = schema.table("allocs", columns, omit=("host",))
    allocs = allocs.sort_values("count", ascending=False, ignore_index=True, kind="stable")
    by_id = frame_lines if frame_lines is not None else {sid: list(t) for t, sid in
                                                         stacks.items()}
    used = {k[3] for k in keys}
    by_id = {sid: lines for sid, lines in by_id.items() if sid in used}
    frames = frames_table(by_id) if by_id else schema.empty("frames")
    return allocs, frames


# --------------------------------------------------------------------------------------------
# shared by the in-kernel aggregating backends (bpf, bpftrace): exact counts per key, sampled
# stacks, raw addresses resolved through the capture's saved kallsyms

def spread_counts(exact: pd.DataFrame, sampled: pd.DataFrame, keys: list[str], *,
                  by_thread: bool = True) -> pd.DataFrame:
    """Spread each key's exact ``count`` over its sampled stacks in proportion.

    ``exact``: keys + count. ``sampled``: keys + stack_id + samples (weighted). Uses largest
    remainders, so per-key sums stay exact. A key with no stack of its own (a thread whose
    comm changed at exec after its first stack was taken) uses its thread's stacks
    (``by_thread``); one with none at all keeps its count with stack_id -1.
    """
    if sampled.empty:
        out = exact.copy()
        out["stack_id"] = -1
        return out
    merged = sampled.merge(exact, on=keys, how="inner")
    tot = merged.groupby(keys, dropna=False)["samples"].transform("sum")
    share = merged["count"] * merged["samples"] / tot
    base = share.astype("int64")
    merged["rem"] = share - base
    merged["count"] = base
    short = (exact.set_index(keys)["count"]
             - merged.groupby(keys, dropna=False)["count"].sum()).rename("short")
    merged = merged.join(short, on=keys)
    merged = merged.sort_values(keys + ["rem"], ascending=[True] * len(keys) + [False])
    merged["rank"] = merged.groupby(keys, dropna=False).cumcount()
    merged["count"] += (merged["rank"] < merged["short"]).astype("int64")
    out = merged[keys + ["stack_id", "count"]]
    missing = exact.merge(sampled[keys].drop_duplicates(), on=keys, how="left", indicator=True)
    missing = missing[missing["_merge"] == "left_only"].drop(columns="_merge")
    if len(missing):
        thread = [k for k in ("pid", "tid") if k in keys]
        cand = pd.DataFrame()
        if by_thread and thread and thread != keys:
            per_thread = sampled.groupby(thread + ["stack_id"], as_index=False)["samples"].sum()
            cand = missing[keys].merge(per_thread, on=thread)
        if len(cand):
            out = pd.concat([out, spread_counts(missing, cand, keys, by_thread=False)],
                            ignore_index=True)
        else:
            missing = missing.assign(stack_id=-1)[keys + ["stack_id", "count"]]
            out = pd.concat([out, missing], ignore_index=True)
    return out[out["count"] > 0].reset_index(drop=True)


def finish_allocs(allocs: pd.DataFrame, req: pd.DataFrame | None, plan: "Plan", meta: dict,
                  keys: list[str]) -> pd.DataFrame:
    """Add ``bytes`` (count x slot size), ``bytes_req`` (``req``: requested bytes summed per
    key, spread over the key's stacks by share of its count) and ``cgroup`` (path from the
    capture's cgroup map, else ``id:<n>``) to allocation rows keyed by ``keys``."""
    slot = int(plan.match_bytes_alloc or meta.get("slab_size") or 0) or None
    allocs["bytes"] = allocs["count"] * slot if slot else pd.NA
    if req is not None and len(req):
        allocs = allocs.merge(req, on=keys, how="left")
        tot = allocs.groupby(keys)["count"].transform("sum")
        allocs["bytes_req"] = (allocs["req"] * allocs["count"] / tot).round().astype("Int64")
        allocs = allocs.drop(columns=["req"])
    allocs["cgroup"] = allocs["cgroup_id"].map(meta.get("cgroups", {}).get).astype("string")
    missing = allocs["cgroup"].isna()
    allocs.loc[missing, "cgroup"] = "id:" + allocs.loc[missing, "cgroup_id"].astype(str)
    return allocs.drop(columns=["cgroup_id"])


def load_kallsyms(path: Path | None):
    """The capture's saved kernel symbols (``kallsyms.txt.gz``), or None."""
    import gzip

    from slabkit.model.stacks import Kallsyms
    if path is None or not Path(path).is_file():
        return None
    with gzip.open(path, "rt") as f:
        return Kallsyms.from_text(f.read())


def frames_from_addresses(stacks: dict[int, list[int]], ks) -> pd.DataFrame:
    """The ``frames`` table for stacks of raw addresses, resolved through the capture's saved
    kernel symbols ``ks`` (:func:`load_kallsyms`; None: unresolved)."""
    import numpy as np

    from slabkit.model import schema
    keys = list(stacks)
    lengths = np.fromiter((len(stacks[k]) for k in keys), dtype=np.int64, count=len(keys))
    total = int(lengths.sum())
    if total == 0:
        return schema.empty("frames")
    addrs = np.fromiter((a for k in keys for a in stacks[k]), dtype=np.uint64, count=total)
    starts = np.cumsum(lengths) - lengths
    df = pd.DataFrame({
        "stack_id": pd.array(np.repeat(np.asarray(keys, dtype=np.int64), lengths), dtype="Int64"),
        "depth": pd.array(np.arange(total, dtype=np.int64) - np.repeat(starts, lengths),
                          dtype="Int64"),
        "address": pd.array(addrs, dtype="UInt64"),
    })
    if ks is not None:
        uniq, inv = np.unique(addrs, return_inverse=True)
        func, off, mod = ks.resolve(uniq)
        df["function"] = func.take(inv)
        df["offset"] = off.take(inv)
        df["module"] = mod.take(inv)
    else:
        df["function"] = pd.array([pd.NA] * total, dtype="string")
        df["offset"] = pd.array([pd.NA] * total, dtype="Int64")
        df["module"] = pd.array([pd.NA] * total, dtype="string")
    return df[["stack_id", "depth", "function", "offset", "module", "address"]]
