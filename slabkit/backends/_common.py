"""What the backends share: the in-kernel filter of the streaming tracers and the builders
that turn aggregated events into ``allocs`` and ``frames`` tables.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from slabkit.model import schema
from slabkit.model.stacks import frames_table
from slabkit.validate import check_comm

if TYPE_CHECKING:
    from slabkit.plan import Plan


# --------------------------------------------------------------------------------------------
# shared by the streaming backends

def kernel_filter(plan: "Plan") -> str:
    """The in-kernel filter for the plan's events: :meth:`Plan.tracefs_filter` plus the comm.

    ``comm`` is a special field every tracefs event filter accepts (checked here with ftrace
    and ``perf --filter``); the value is validated by :func:`slabkit.validate.check_comm`.
    """
    expr = plan.tracefs_filter()
    if plan.comm is not None:
        term = f'comm == "{check_comm(plan.comm)}"'
        expr = f"{expr} && {term}" if expr else term
    return expr


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
    allocs = pd.DataFrame({
        "pid": pd.array([k[0] for k in keys], dtype="Int64"),
        "tid": pd.array([k[1] for k in keys], dtype="Int64"),
        "comm": pd.array([k[2] for k in keys], dtype="string"),
        "cgroup": pd.array([pd.NA] * n, dtype="string"),
        "stack_id": pd.array([k[3] for k in keys], dtype="Int64"),
        "count": pd.array(cnt, dtype="Int64"),
    })
    allocs["bytes"] = pd.array(cnt * slot, dtype="Int64") if slot else pd.array(
        [pd.NA] * n, dtype="Int64")
    if plan.strategy == "kmalloc-size-class":
        req = np.fromiter((counts[k][1] for k in keys), dtype=np.int64, count=n) * scale
        allocs["bytes_req"] = pd.array(req, dtype="Int64")
    allocs = allocs.sort_values("count", ascending=False, ignore_index=True, kind="stable")
    by_id = frame_lines if frame_lines is not None else {sid: list(t) for t, sid in
                                                         stacks.items()}
    frames = frames_table(by_id) if by_id else schema.empty("frames")
    return allocs, frames

