"""A capture in the formats other tools read: FlameGraph folded stacks and pprof.

``to_folded``/``write_folded``: one line per (process, stack) with a count, for
``flamegraph.pl`` and speedscope; one number, no labels.

``to_pprof``: pprof's ``profile.proto`` (gzip-compressed), what ``go tool pprof``, Perfetto and
continuous-profiling servers (Grafana Pyroscope, Parca) read. It carries several values per
sample and labels:

- sample types ``alloc_objects``/``count`` and ``alloc_space``/``bytes``; an outstanding capture
  adds ``inuse_objects``/``count`` and ``inuse_space``/``bytes`` (as Go's heap profiles do);
- one sample per row of ``allocs`` (and of ``outstanding``), labelled ``comm``, ``pid``,
  ``tid``, ``cgroup``, ``host`` and ``cache`` (string labels; a missing value is left out);
- one location per distinct frame (its address where the tracer gave one), innermost first,
  with one function (the frame's function, or slabkit's label for an unresolved address) and
  its module as the mapping (``vmlinux``, ``ext4``, ...);
- the capture's start time and duration, and a comment naming the cache, host and backend.

The whole stack is kept, allocator frames included, as in folded stacks. Allocations without
a stack get one location, ``[no stack]``, so totals stay whole. A value the tracer could not
give is never written as 0: where any row lacks ``bytes`` the ``*_space`` sample type is left
out and a comment says why.
"""
from __future__ import annotations

import gzip
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from slabkit._version import __version__
from slabkit.analysis.pivots import (
    NO_STACK,
    UNKNOWN,
    CaptureLike,
    _comm_codes,
    _joined_stacks,
    _prepare,
    _unpack,
    _weights,
)
from slabkit.model.tables import Capture

if TYPE_CHECKING:
    from slabkit.analysis.pprof.profile_pb2 import Profile

# --------------------------------------------------------------------------------------------
# folded stacks (FlameGraph input)


def to_folded(cap: CaptureLike) -> str:
    """The capture as FlameGraph "folded" stacks: one line per (comm, stack),
    ``comm;outermost;...;innermost count``, root first, sorted; the full stack including the
    allocator frames. ``;`` and newlines in a comm become ``_`` and space; allocations without
    a stack are a line ``comm count``.

    >>> print(to_folded(cap))          # doctest: +SKIP
    crond;syscall_call;sys_getdents;vfs_readdir;ext3_readdir;kmem_cache_alloc 2
    """
    allocs, frames, _ = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    folded = np.append(_joined_stacks(st, ";", root_first=True), None)
    ccode, cnames = _comm_codes(allocs)
    key = ccode * (st.n + 1) + w.alloc_stack
    count = allocs["count"].to_numpy(np.int64, na_value=0)
    g = pd.Series(count).groupby(key, sort=False).sum()
    g = g[g > 0]
    keys = g.index.to_numpy(np.int64)
    lines = [f"{c};{p} {n}" if p is not None else f"{c} {n}"
             for c, p, n in zip(cnames[keys // (st.n + 1)], folded[keys % (st.n + 1)],
                                g.to_numpy())]
    lines.sort()
    return "\n".join(lines) + ("\n" if lines else "")


def write_folded(cap: CaptureLike, path: str | os.PathLike) -> Path:
    """Write :func:`to_folded` to ``path`` (for ``flamegraph.pl`` or speedscope); returns it."""
    p = Path(path)
    p.write_text(to_folded(cap))
    return p


# --------------------------------------------------------------------------------------------
# pprof (profile.proto)

#: sample labels, in this order; ``cache`` comes from the capture's meta, the rest from the rows
PPROF_LABELS = ("comm", "pid", "tid", "cgroup", "host", "cache")
_ROW_LABELS = PPROF_LABELS[:-1]


class _Strings:
    """pprof's string table: index 0 is the empty string."""

    def __init__(self) -> None:
        self.table: list[str] = [""]
        self._index: dict[str, int] = {"": 0}

    def __call__(self, text: str) -> int:
        i = self._index.get(text)
        if i is None:
            i = self._index[text] = len(self.table)
            self.table.append(text)
        return i


def _start_ns(meta: dict[str, Any]) -> int:
    starts = [meta.get("start")] + [m.get("start") for m in meta.get("captures", [])]
    times = []
    for s in starts:
        try:
            times.append(datetime.fromisoformat(str(s)).timestamp())
        except ValueError:
            continue
    return int(min(times) * 1e9) if times else 0


def _tables(cap: CaptureLike) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame,
                                       dict[str, Any]]:
    allocs, frames, meta = _unpack(cap)
    outstanding = cap.outstanding if isinstance(cap, Capture) else None
    return allocs, outstanding, frames, meta


def _locations(profile: "Profile", frames: pd.DataFrame, strings: _Strings
               ) -> tuple[list[list[int]], np.ndarray]:
    """Fill functions, mappings and locations; return each stack's location ids (innermost
    first) in the order of ``_prepare``'s stack index, and those stack ids."""
    st = _prepare(frames)
    known = frames["address"].notna().to_numpy()[st.rows]
    address = frames["address"].to_numpy(dtype=np.uint64, na_value=0)[st.rows]
    offset = frames["offset"].to_numpy(dtype=np.int64, na_value=-1)[st.rows]
    # one location per distinct frame: its address where known, else function + module + offset
    key = pd.DataFrame({"label": st.label, "module": st.module, "known": known,
                        "address": address.view(np.int64), "offset": offset})
    loc_code = key.groupby(list(key.columns), sort=False).ngroup().to_numpy(np.int64)
    first = np.empty(int(loc_code.max()) + 1 if len(loc_code) else 0, dtype=np.int64)
    first[loc_code[::-1]] = np.arange(len(loc_code))[::-1]    # each location's first row

    for code, label in enumerate(st.labels):
        name = strings(str(label))
        profile.function.add(id=code + 1, name=name, system_name=name)
    # mappings: one per module, vmlinux first (pprof takes the first as the main binary)
    order = sorted((m for m in range(len(st.modules)) if st.modules[m] != UNKNOWN),
                   key=lambda m: (st.modules[m] != "vmlinux", str(st.modules[m])))
    mapping_id = {m: i + 1 for i, m in enumerate(order)}
    for m in order:
        addrs = address[(st.module == m) & known]
        profile.mapping.add(id=mapping_id[m], filename=strings(str(st.modules[m])),
                            memory_start=int(addrs.min()) if len(addrs) else 0,
                            memory_limit=int(addrs.max()) + 1 if len(addrs) else 0,
                            has_functions=True)
    for code, row in enumerate(first):
        loc = profile.location.add(id=code + 1,
                                   mapping_id=mapping_id.get(int(st.module[row]), 0),
                                   address=int(address[row]))
        loc.line.add(function_id=int(st.label[row]) + 1)
    ids = loc_code + 1
    per_stack = [ids[s:s + n].tolist() for s, n in zip(st.starts, st.lengths)]
    return per_stack, st.stack_ids


def pprof_profile(cap: CaptureLike) -> "Profile":
    """The capture as a pprof ``Profile`` message (see the module doc); :func:`to_pprof`
    writes it. ``SerializeToString()`` gives its bytes (uncompressed)."""
    from slabkit.analysis.pprof.profile_pb2 import Profile

    allocs, outstanding, frames, meta = _tables(cap)
    profile = Profile()
    strings = _Strings()
    comments = [f"slabkit {__version__}: cache {meta.get('cache', '?')} on "
                f"{meta.get('host') or ', '.join(map(str, meta.get('hosts') or [])) or '?'}"
                f" via {meta.get('backend', '?')} ({meta.get('mode', 'allocs')} mode, "
                f"{meta.get('status', '?')})"]

    if meta.get("estimated_stacks"):
        every = (meta.get("options") or {}).get("stack_sample")
        comments.append("counts per process are exact, per stack estimated (stacks sampled"
                        + (f" 1 in {every})" if every else ")"))
    parts = [("alloc", allocs)] + ([("inuse", outstanding)] if outstanding is not None else [])
    types: list[tuple[str, str, str, str]] = []      # (type, unit, part, column)
    for part, table in parts:
        types.append((f"{part}_objects", "count", part, "count"))
        if len(table) and table["bytes"].isna().any():
            comments.append(f"{part}_space left out: the tracer did not give the bytes of "
                            f"{int(table['bytes'].isna().sum())} of {len(table)} rows")
        else:
            types.append((f"{part}_space", "bytes", part, "bytes"))
    for name, unit, _, _ in types:
        profile.sample_type.add(type=strings(name), unit=strings(unit))
    profile.default_sample_type = strings(types[0][0] if outstanding is None
                                          else "inuse_objects")

    per_stack, stack_ids = _locations(profile, frames, strings)
    no_stack_id = len(profile.location) + 1
    no_stack_used = False
    stack_index = {int(s): i for i, s in enumerate(stack_ids)}
    cache_label = None
    if meta.get("cache"):
        cache_label = (strings("cache"), strings(str(meta["cache"])))
    label_keys = {c: strings(c) for c in _ROW_LABELS}

    for part, table in parts:
        if not len(table):
            continue
        columns = {c: table[c].to_numpy(dtype=object, na_value=None) for c in _ROW_LABELS}
        sids = table["stack_id"].to_numpy(dtype=np.int64, na_value=-1)
        values = {c: table[c].to_numpy(dtype=np.int64, na_value=0) for c in ("count", "bytes")}
        slots = [(i, column) for i, (_, _, p, column) in enumerate(types) if p == part]
        for r in range(len(table)):
            sample = profile.sample.add()
            vals = [0] * len(types)
            for i, column in slots:
                vals[i] = int(values[column][r])
            sample.value.extend(vals)
            i = stack_index.get(int(sids[r]))
            if i is None:
                sample.location_id.append(no_stack_id)
                no_stack_used = True
            else:
                sample.location_id.extend(per_stack[i])
            for c in _ROW_LABELS:
                v = columns[c][r]
                if v is not None and v != "":
                    sample.label.add(key=label_keys[c], str=strings(str(v)))
            if cache_label:
                sample.label.add(key=cache_label[0], str=cache_label[1])
    if no_stack_used:
        fid = len(profile.function) + 1
        profile.function.add(id=fid, name=strings(NO_STACK), system_name=strings(NO_STACK))
        profile.location.add(id=no_stack_id).line.add(function_id=fid)

    profile.time_nanos = _start_ns(meta)
    duration = meta.get("duration_s")
    if duration:
        profile.duration_nanos = int(round(float(duration) * 1e9))
    profile.period_type.type = strings(types[0][0])
    profile.period_type.unit = strings("count")
    profile.period = int((meta.get("options") or {}).get("sample_every") or 1)
    profile.comment.extend(strings(c) for c in comments)
    profile.string_table.extend(strings.table)
    return profile


def to_pprof(cap: CaptureLike, path: str | os.PathLike) -> Path:
    """Write the capture as a gzip-compressed pprof profile (``.pb.gz``) to ``path`` and
    return it: ``go tool pprof -top out.pb.gz``, or upload it to Pyroscope or Parca. See the
    module doc for what it holds.

    >>> slabkit.to_pprof(slabkit.load("data/captures/filp-..."), "filp.pb.gz")  # doctest: +SKIP
    PosixPath('filp.pb.gz')
    """
    p = Path(path)
    p.write_bytes(gzip.compress(pprof_profile(cap).SerializeToString(), mtime=0))
    return p


__all__ = ["PPROF_LABELS", "pprof_profile", "to_folded", "to_pprof", "write_folded"]
