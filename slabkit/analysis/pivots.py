"""Pivots over a capture: who allocated, from where, and how that changed.

Every function is pure: it takes a :class:`~slabkit.model.tables.Capture` (or a plain
``(allocs, frames)`` pair, tables as in ``slabkit.model.schema``) and returns a new DataFrame; none
prints, plots or touches the capture. Each docstring gives the index and columns.

Common columns of the ``by_*`` pivots:

``count``   allocations (Int64)
``bytes``   bytes allocated (Int64; missing where the backend did not know the slot size)
``share``   fraction of all the capture's allocations (of ``value``, Float64). Inclusive
            pivots count a stack once under each function/module on it, so their shares can
            add up to more than 1.
``per_s``   ``value`` per second of capture (``meta["duration_s"]``); missing when the
            duration is unknown (a plain ``(allocs, frames)`` pair has none).

How frames are named (the "label" of a frame): its function; for an unresolved frame its
address as ``0xffffffffc0a1b2c3`` (plus `` [module]`` where known), else ``[unknown]``.
Two special labels keep totals whole: ``[no stack]`` for allocations recorded without a stack
(``stack_id`` -1, e.g. the part of the classic slab.stp output that was cut, or a stack_id
that has no rows in ``frames``) and ``[allocator only]`` for a stack made of allocator frames
alone.

The allocator frames at the inner end of every stack (``kmem_cache_alloc``, ``___slab_alloc``,
the tracer's own glue, ...) say nothing about who allocated; :mod:`slabkit.model.vocabulary`
lists them (:data:`ALLOCATOR_FUNCTIONS`, :func:`is_allocator`, re-exported here). The
*callsite* of a stack is its first frame, going outwards from the innermost, that is not one
of them.

How exact the sums are: ``df.attrs["exactness"]`` of ``by_process``, ``by_frame`` and
``top_stacks`` is ``"exact"`` or ``"spread"`` (an exact total divided among sampled stacks:
an estimate), from the capture's ``meta["count_exactness"]`` (see ``slabkit.model.schema``),
or None where the backend did not say. ``by_frame(how="callsite")`` is exact where the
capture counted call sites exactly and every (process, call site) count went to stacks with
one callsite label.

Speed: the work is done on integer codes per distinct stack and per distinct frame label
(numpy ``bincount``/``unique``), then joined to the (much shorter) per-stack totals, so a
capture of 100,000 distinct 30-frame stacks pivots in well under a second.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import pandas as pd

from slabkit.errors import InvalidInput, expected_one_of
from slabkit.model.tables import Capture

# ALLOCATOR_FUNCTIONS and is_allocator: re-exported, as before the vocabulary had its module
from slabkit.model.vocabulary import (  # noqa: F401
    ALLOCATOR_FUNCTIONS,
    allocator_mask,
    hide_allocator_frames,
    is_allocator,
    leading_run_lengths,
)

CaptureLike = Union[Capture, "tuple[pd.DataFrame, pd.DataFrame]"]

NO_STACK = "[no stack]"
ALLOCATOR_ONLY = "[allocator only]"
UNKNOWN = "[unknown]"
INNERMOST = "[innermost]"
OUTERMOST = "[outermost]"

# --------------------------------------------------------------------------------------------
# preparation: integer codes for stacks and frame labels


def _unpack(cap: CaptureLike) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    if isinstance(cap, Capture):
        return cap.allocs, cap.frames, cap.meta
    if isinstance(cap, tuple) and len(cap) == 2:
        return cap[0], cap[1], {}
    raise InvalidInput("expected a Capture or an (allocs, frames) pair of DataFrames, "
                       f"not {type(cap).__name__}")


def _duration(meta: dict[str, Any]) -> float | None:
    d = meta.get("duration_s")
    try:
        d = float(d)
    except (TypeError, ValueError):
        return None
    return d if d > 0 else None


def _durations(captures: dict[str, Any], what: str) -> list[float]:
    """The duration of each capture (named for the error), for comparing rates; ``what``
    compares them. Raises InvalidInput for one without a duration."""
    out = []
    for name, cap in captures.items():
        d = _duration(_unpack(cap)[2])
        if d is None:
            raise InvalidInput(f"{name} has no duration (meta['duration_s']): {what} compares "
                               "rates, so both captures need one")
        out.append(d)
    return out


@dataclass
class _Stacks:
    """Frames as integer codes, rows sorted by (stack, depth)."""

    stack_ids: np.ndarray     # sorted distinct stack ids that have frames
    row_stack: np.ndarray     # per frame row: index into stack_ids
    pos: np.ndarray           # per row: 0 = innermost frame of its stack
    label: np.ndarray         # per row: code into labels
    labels: np.ndarray        # object array of frame labels
    module: np.ndarray        # per row: code into modules
    modules: np.ndarray       # object array of module names ("[unknown]" for missing)
    starts: np.ndarray        # per stack: first row
    lengths: np.ndarray       # per stack: number of frames
    first_caller: np.ndarray  # per stack: pos of the first non-allocator frame (= length: none)
    rows: np.ndarray          # per row: its row position in the frames table given

    @property
    def n(self) -> int:
        return len(self.stack_ids)

    def caller_rows(self, *, allocator_only_stacks: bool = True) -> np.ndarray:
        """Rows at or beyond the callsite; for a stack of allocator frames only, all its rows
        (or none, with ``allocator_only_stacks=False``)."""
        fc = self.first_caller[self.row_stack]
        rows = self.pos >= fc
        if allocator_only_stacks:
            rows |= fc == self.lengths[self.row_stack]
        return rows


def _codes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values.array, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


def _prepare(frames: pd.DataFrame) -> _Stacks:
    sid = frames["stack_id"].to_numpy(dtype=np.int64, na_value=-1)
    depth = frames["depth"].to_numpy(dtype=np.int64, na_value=0)
    order = None
    if len(sid) > 1:
        d_sid = np.diff(sid)
        if (d_sid < 0).any() or ((d_sid == 0) & (np.diff(depth) < 0)).any():
            order = np.lexsort((depth, sid))
    func = frames["function"]
    mod = frames["module"]
    addr = frames["address"]
    rows = np.arange(len(sid))
    if order is not None:
        sid, rows = sid[order], order
        func, mod, addr = func.iloc[order], mod.iloc[order], addr.iloc[order]
    keep = sid >= 0
    if not keep.all():
        sid, rows = sid[keep], rows[keep]
        func, mod, addr = func[keep], mod[keep], addr[keep]

    fcode, labels = _codes(func)
    mcode, modules = _codes(mod)
    missing_mod = mcode < 0
    if missing_mod.any():
        modules = np.append(modules, UNKNOWN)
        mcode[missing_mod] = len(modules) - 1
    unresolved = np.flatnonzero(fcode < 0)
    if len(unresolved):
        a = addr.to_numpy(dtype=np.float64, na_value=np.nan)  # only to test for missing
        au = addr.to_numpy(dtype=object, na_value=None)
        extra: dict[str, int] = {}
        for r in unresolved:
            if np.isnan(a[r]):
                text = UNKNOWN
            else:
                m = modules[mcode[r]]
                text = f"0x{int(au[r]):x}" + (f" [{m}]" if m != UNKNOWN else "")
            code = extra.get(text)
            if code is None:
                code = extra[text] = len(labels) + len(extra)
            fcode[r] = code
        labels = np.append(labels, np.array(list(extra), dtype=object))

    stack_ids, first_row, lengths = _runs(sid)
    row_stack = np.repeat(np.arange(len(stack_ids)), lengths)
    pos = np.arange(len(sid)) - np.repeat(first_row, lengths)
    first_caller = leading_run_lengths(row_stack, allocator_mask(labels)[fcode])
    return _Stacks(stack_ids, row_stack, pos, fcode, labels, mcode, modules, first_row,
                   lengths, first_caller, rows)


@dataclass
class _Weights:
    """Allocation totals per stack index (index ``n`` = allocations without a stack)."""

    alloc_stack: np.ndarray   # per allocs row: stack index, n for none
    count: np.ndarray         # per stack index (len n + 1)
    bytes: np.ndarray         # float, NA as 0
    bytes_known: np.ndarray   # per stack index: some row had bytes
    rows: np.ndarray          # per stack index: allocs rows on it

    def total(self, value: str) -> float:
        return float(self.count.sum() if value == "count" else self.bytes.sum())


def _weights(allocs: pd.DataFrame, st: _Stacks) -> _Weights:
    sid = allocs["stack_id"].to_numpy(dtype=np.int64, na_value=-1)
    idx = np.searchsorted(st.stack_ids, sid)
    idx_c = np.minimum(idx, max(st.n - 1, 0))
    found = (st.n > 0) & (st.stack_ids[idx_c] == sid) if st.n else np.zeros(len(sid), bool)
    idx = np.where(found, idx_c, st.n)
    count = allocs["count"].to_numpy(dtype=np.float64, na_value=0.0)
    b = allocs["bytes"].to_numpy(dtype=np.float64, na_value=np.nan)
    known = ~np.isnan(b)
    return _Weights(idx,
                    np.bincount(idx, weights=count, minlength=st.n + 1),
                    np.bincount(idx, weights=np.where(known, b, 0.0), minlength=st.n + 1),
                    np.bincount(idx, weights=known, minlength=st.n + 1) > 0,
                    np.bincount(idx, minlength=st.n + 1))


def _runs(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a sorted array: its distinct values, the index of each one's first element, and
    how many there are of each (what ``np.unique(return_index, return_counts)`` gives)."""
    if len(a) == 0:
        return a, np.zeros(0, np.intp), np.zeros(0, np.intp)
    start = np.empty(len(a), dtype=bool)
    start[0] = True
    np.not_equal(a[1:], a[:-1], out=start[1:])
    first = np.flatnonzero(start)
    return a[first], first, np.diff(np.append(first, len(a)))


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (sort-based: numpy 2.x's hash-based ``np.unique`` is ~10x slower
    on millions of int64 pairs)."""
    if len(x) == 0:
        return x
    a = np.sort(x, kind="stable")
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _sum_by(codes: np.ndarray, stacks: np.ndarray, names: np.ndarray, w: _Weights
            ) -> pd.DataFrame:
    """Sum the weights of ``stacks[i]`` into ``names[codes[i]]`` -> DataFrame(count, bytes)."""
    k = len(names)
    count = np.bincount(codes, weights=w.count[stacks], minlength=k)
    byt = np.bincount(codes, weights=w.bytes[stacks], minlength=k)
    known = np.bincount(codes, weights=w.bytes_known[stacks], minlength=k) > 0
    used = np.bincount(codes, weights=w.rows[stacks], minlength=k) > 0  # some allocs row
    return pd.DataFrame({
        "count": pd.array(np.rint(count[used]).astype(np.int64), dtype="Int64"),
        "bytes": pd.arrays.IntegerArray(np.rint(byt[used]).astype(np.int64), ~known[used]),
    }, index=pd.Index(np.asarray(names, dtype=object)[used]))


def _finish(df: pd.DataFrame, value: str, total: float, duration: float | None,
            index_name: str | Sequence[str]) -> pd.DataFrame:
    v = df[value].astype("Float64")
    df = df.assign(share=v / total if total else pd.NA,
                   per_s=v / duration if duration else pd.NA)
    df["share"] = df["share"].astype("Float64")
    df["per_s"] = df["per_s"].astype("Float64")
    df = df.sort_values([value], ascending=False, kind="stable", na_position="last")
    if isinstance(index_name, str):
        df.index.name = index_name
    else:
        df.index.names = list(index_name)
    return df[["count", "bytes", "share", "per_s"]]


def _exactness(meta: dict[str, Any], level: str) -> str | None:
    """"exact" / "spread" for sums at ``level`` (process, call_site, stack), or None."""
    said = (meta.get("count_exactness") or {}).get(level)
    return said if said in ("exact", "spread") else None


def _callsite_exactness(allocs: pd.DataFrame, meta: dict[str, Any], row_codes: np.ndarray
                        ) -> str | None:
    """Exactness of callsite sums: exact when each (process, call site)'s exact count went to
    stacks of one callsite label (``row_codes``: per allocs row), else spread."""
    if _exactness(meta, "stack") == "exact":
        return "exact"
    if _exactness(meta, "call_site") != "exact" or "call_site" not in allocs.columns:
        return _exactness(meta, "stack")
    keys = [c for c in ("host", "pid", "tid", "comm", "cgroup", "call_site")
            if c in allocs.columns]
    labels = pd.Series(row_codes).groupby([allocs[k].to_numpy() for k in keys], dropna=False)
    return "exact" if not len(allocs) or int(labels.nunique().max()) <= 1 else "spread"


def _check_value(value: str) -> None:
    if value not in ("count", "bytes"):
        raise InvalidInput(expected_one_of("value", value, ["count", "bytes"]))


def _with_specials(st: _Stacks, per_stack: np.ndarray, names: np.ndarray,
                   none_code_name: str = ALLOCATOR_ONLY) -> tuple[np.ndarray, np.ndarray]:
    """Per-stack codes (``-1`` = ``none_code_name``) plus a no-stack bucket -> codes, names."""
    names = np.append(np.asarray(names, dtype=object), [none_code_name, NO_STACK])
    codes = np.where(per_stack < 0, len(names) - 2, per_stack)
    return np.append(codes, len(names) - 1), names


def _callsite_codes(st: _Stacks) -> np.ndarray:
    """Per stack: label code of its callsite, -1 for an allocator-only stack."""
    out = np.full(st.n, -1, dtype=np.int64)
    has = st.first_caller < st.lengths
    out[has] = st.label[st.starts[has] + st.first_caller[has]]
    return out


def _responsible_codes(st: _Stacks) -> tuple[np.ndarray, np.ndarray]:
    """Per stack: code of the responsible module, and the module names (maybe extended)."""
    modules = st.modules
    names = list(modules)
    vml = names.index("vmlinux") if "vmlinux" in names else -1
    unk = names.index(UNKNOWN) if UNKNOWN in names else -1
    if vml < 0:
        names.append("vmlinux")
        vml = len(names) - 1
    if unk < 0:
        names.append(UNKNOWN)
        unk = len(names) - 1
    caller = st.caller_rows()
    ext = caller & (st.module != vml) & (st.module != unk)
    rows = np.flatnonzero(ext)
    out = np.full(st.n, unk, dtype=np.int64)
    seen_vml = np.zeros(st.n, dtype=bool)
    seen_vml[st.row_stack[caller & (st.module == vml)]] = True
    out[seen_vml] = vml
    s_idx, first, _ = _runs(st.row_stack[rows])
    out[s_idx] = st.module[rows[first]]
    return out, np.array(names, dtype=object)


def _stack_labels_text(st: _Stacks, idx: int, *, sep: str = " <- ", with_module: bool = True,
                       max_frames: int | None = None) -> str:
    length = int(st.lengths[idx]) if max_frames is None else min(int(st.lengths[idx]),
                                                                  max_frames)
    parts = []
    for r in range(st.starts[idx], st.starts[idx] + length):
        text = str(st.labels[st.label[r]])
        m = st.modules[st.module[r]]
        if with_module and m not in ("vmlinux", UNKNOWN) and not text.endswith("]"):
            text += f" [{m}]"
        parts.append(text)
    return sep.join(parts)


def stack_text(cap: CaptureLike, stack_ids: Sequence[int] | None = None, *,
               hide_allocator: bool = False, max_frames: int | None = None,
               sep: str = " <- ") -> pd.Series:
    """Stacks as one line of text each, as in :func:`top_stacks`' ``stack`` column: frame
    labels innermost first joined by ``sep``, module functions marked ``[module]``.

    ``stack_ids``: which stacks, in this order (default: every stack of the capture); one
    without frames (-1) is ``[no stack]``. ``hide_allocator``: start at the call site
    (:func:`slabkit.model.vocabulary.hide_allocator_frames`). ``max_frames``: only the first
    (innermost) ones.

    Index: ``stack_id``. Values: ``string``.
    """
    _, frames, _ = _unpack(cap)
    if hide_allocator:
        frames = hide_allocator_frames(frames)
    st = _prepare(frames)
    ids = st.stack_ids if stack_ids is None else np.asarray(list(stack_ids), dtype=np.int64)
    idx = np.searchsorted(st.stack_ids, ids)
    texts = []
    for sid, i in zip(ids, idx):
        found = i < st.n and st.stack_ids[i] == sid
        texts.append(_stack_labels_text(st, i, sep=sep, max_frames=max_frames) if found
                     else NO_STACK)
    return pd.Series(pd.array(texts, dtype="string"),
                     index=pd.Index(ids, dtype="int64", name="stack_id"), name="stack")


# --------------------------------------------------------------------------------------------
# pivots


def by_process(cap: CaptureLike, *, by: str | Sequence[str] = ("comm",),
               value: str = "count") -> pd.DataFrame:
    """Allocations per process.

    ``by``: allocs columns to group on: ``("comm",)`` (default) or ``("comm", "pid")``, or any
    of ``host, pid, tid, comm, cgroup``. Missing values (pid in the classic stap output) form
    their own group. ``value``: ``"count"`` or ``"bytes"``, what ``share``/``per_s`` measure
    and the sort order (largest first).

    Index: the ``by`` columns. Columns: count, bytes, share, per_s.
    """
    _check_value(value)
    allocs, _, meta = _unpack(cap)
    keys = [by] if isinstance(by, str) else list(by)
    allowed = ["host", "pid", "tid", "comm", "cgroup"]
    for k in keys:
        if k not in allowed:
            raise InvalidInput(expected_one_of("by", k, allowed))
    g = allocs.groupby(keys, dropna=False, sort=False, observed=True)[["count", "bytes"]]
    df = g.sum(min_count=1)
    df["count"] = df["count"].fillna(0).astype("Int64")
    df["bytes"] = df["bytes"].astype("Int64")
    total = float(df[value].sum())
    out = _finish(df, value, total, _duration(meta), keys[0] if len(keys) == 1 else keys)
    out.attrs["exactness"] = _exactness(meta, "process")
    return out


def by_module(cap: CaptureLike, how: str = "responsible", *, value: str = "count"
              ) -> pd.DataFrame:
    """Allocations per kernel module.

    ``how="responsible"``: each stack goes to one module, the first one other than vmlinux
    met going outwards from the callsite (allocator frames skipped); a stack with none goes
    to ``vmlinux``, or to ``[unknown]`` when none of its frames has a known module
    (bpftrace prints none). ``how="inclusive"``: each module counted once per stack it
    appears on (so ``vmlinux`` is near 100%). Allocations without a stack: ``[no stack]``.

    Index: ``module``. Columns: count, bytes, share, per_s.
    """
    _check_value(value)
    allocs, frames, meta = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    if how == "responsible":
        per_stack, names = _responsible_codes(st)
        codes, names = _with_specials(st, per_stack, names)
        df = _sum_by(codes, np.arange(st.n + 1), names, w)
    elif how == "inclusive":
        pair = _unique(st.row_stack.astype(np.int64) * len(st.modules) + st.module)
        stacks, mods = pair // max(len(st.modules), 1), pair % max(len(st.modules), 1)
        names = np.append(st.modules, NO_STACK)
        df = _sum_by(np.append(mods, len(names) - 1), np.append(stacks, st.n), names, w)
    else:
        raise InvalidInput(expected_one_of("how", how, ["responsible", "inclusive"]))
    return _finish(df, value, w.total(value), _duration(meta), "module")


def by_frame(cap: CaptureLike, how: str = "callsite", *, keep_allocator: bool = False,
             value: str = "count") -> pd.DataFrame:
    """Allocations per kernel function.

    ``how="callsite"``: each stack counted under its callsite, the first frame going outwards
    that is not an allocator frame (:data:`ALLOCATOR_FUNCTIONS`); ``keep_allocator=True``
    counts it under its innermost frame instead. ``how="inclusive"``: each function counted
    once per stack it appears on; the allocator frames at the inner end (and so stacks made of
    nothing else) are left out unless ``keep_allocator``.

    Index: ``function``. Columns: count, bytes, share, per_s.
    """
    _check_value(value)
    allocs, frames, meta = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    if how == "callsite":
        if keep_allocator:
            per_stack = st.label[st.starts] if st.n else np.zeros(0, np.int64)
        else:
            per_stack = _callsite_codes(st)
        codes, names = _with_specials(st, per_stack, st.labels)
        df = _sum_by(codes, np.arange(st.n + 1), names, w)
        exactness = _callsite_exactness(allocs, meta, codes[w.alloc_stack])
    elif how == "inclusive":
        rows = (np.ones(len(st.label), bool) if keep_allocator
                else st.caller_rows(allocator_only_stacks=False))
        k = max(len(st.labels), 1)
        pair = _unique(st.row_stack[rows].astype(np.int64) * k + st.label[rows])
        names = np.append(st.labels, NO_STACK)
        df = _sum_by(np.append(pair % k, len(names) - 1), np.append(pair // k, st.n), names, w)
        exactness = _exactness(meta, "stack")
    else:
        raise InvalidInput(expected_one_of("how", how, ["callsite", "inclusive"]))
    out = _finish(df, value, w.total(value), _duration(meta), "function")
    out.attrs["exactness"] = exactness
    return out


def top_stacks(cap: CaptureLike, n: int = 10, *, value: str = "count",
               hide_allocator: bool = False) -> pd.DataFrame:
    """The ``n`` stacks that allocated most (summed over processes).

    Index: ``stack_id`` (-1: allocations recorded without a stack). Columns: count, bytes,
    share, per_s, ``callsite``, ``module`` (responsible, as in :func:`by_module`), ``comms``
    (the processes, most allocations first, as ``"crond (2), ps (1)"``), ``frames`` (how
    many frames ``stack`` shows) and ``stack``: the frames innermost first joined by
    ``" <- "`` (read it as "allocated by ... called from ..."), module functions marked
    ``[module]``. ``hide_allocator=True`` leaves out the allocator frames at the inner end,
    so ``stack`` starts at the call site (a stack of allocator frames alone is shown whole).
    """
    _check_value(value)
    allocs, frames, meta = _unpack(cap)
    if hide_allocator:
        frames = hide_allocator_frames(frames)
    st = _prepare(frames)
    w = _weights(allocs, st)
    vals = w.count if value == "count" else w.bytes
    order = np.argsort(-vals, kind="stable")
    order = order[vals[order] > 0][:n]
    callsite = _callsite_codes(st)
    resp, mod_names = _responsible_codes(st)
    rows = []
    for i in order:
        if i == st.n:
            rows.append((-1, NO_STACK, NO_STACK, 0, NO_STACK))
            continue
        cs = st.labels[callsite[i]] if callsite[i] >= 0 else ALLOCATOR_ONLY
        rows.append((int(st.stack_ids[i]), cs, mod_names[resp[i]], int(st.lengths[i]),
                     _stack_labels_text(st, i)))
    df = pd.DataFrame({
        "count": pd.array(np.rint(w.count[order]).astype(np.int64), dtype="Int64"),
        "bytes": pd.arrays.IntegerArray(np.rint(w.bytes[order]).astype(np.int64),
                                        ~w.bytes_known[order]),
    }, index=pd.Index([r[0] for r in rows], dtype="int64"))
    out = _finish(df, value, w.total(value), _duration(meta), "stack_id")
    out = out.loc[df.index]  # keep the order chosen above (ties stable)
    # the processes on each of these stacks
    sel = np.isin(w.alloc_stack, order)
    sub = pd.DataFrame({"s": w.alloc_stack[sel], "comm": allocs["comm"].to_numpy(object)[sel],
                        "count": allocs["count"].to_numpy(np.float64, na_value=0)[sel]})
    per = sub.groupby(["s", "comm"], dropna=False, sort=False)["count"].sum().reset_index()
    per = per.sort_values(["s", "count"], ascending=[True, False], kind="stable")
    comms = {s: ", ".join(f"{c if isinstance(c, str) else UNKNOWN} ({int(k)})"
                          for c, k in zip(g["comm"], g["count"]))
             for s, g in per.groupby("s", sort=False)}
    out["callsite"] = pd.array([r[1] for r in rows], dtype="string")
    out["module"] = pd.array([r[2] for r in rows], dtype="string")
    out["comms"] = pd.array([comms.get(i, "") for i in order], dtype="string")
    out["frames"] = pd.array([r[3] for r in rows], dtype="Int64")
    out["stack"] = pd.array([r[4] for r in rows], dtype="string")
    out.attrs["exactness"] = _exactness(meta, "stack")
    return out


def _find_label(st: _Stacks, function: str) -> int:
    hits = np.flatnonzero(st.labels == function)
    if not len(hits):
        close = difflib.get_close_matches(function, [str(x) for x in st.labels], n=5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise InvalidInput(f"no frame of this capture is in function {function!r}{hint}")
    return int(hits[0])


def _neighbours(cap: CaptureLike, function: str, step: int, edge: str, name: str,
                value: str) -> pd.DataFrame:
    _check_value(value)
    allocs, frames, meta = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    code = _find_label(st, function)
    rows = np.flatnonzero(st.label == code)
    other = rows + step
    inside = (other >= 0) & (other < len(st.label))
    inside[inside] &= st.row_stack[other[inside]] == st.row_stack[rows[inside]]
    k = len(st.labels) + 1
    nb = np.where(inside, st.label[np.clip(other, 0, len(st.label) - 1)], k - 1)
    pair = _unique(st.row_stack[rows].astype(np.int64) * k + nb)
    names = np.append(st.labels, edge)
    df = _sum_by(pair % k, pair // k, names, w)
    through = _runs(st.row_stack[rows])[0]
    total = float((w.count if value == "count" else w.bytes)[through].sum())
    return _finish(df, value, total, _duration(meta), name)


def callers(cap: CaptureLike, function: str, *, value: str = "count") -> pd.DataFrame:
    """Who calls ``function`` on the allocating stacks (the frame just outside it).

    Each (stack, caller) pair is counted once. ``[outermost]``: ``function`` was the
    outermost frame. ``share`` is of the allocations whose stack passes through ``function``.
    Raises :class:`~slabkit.errors.InvalidInput` (with close names) if no frame is in it.

    Index: ``caller``. Columns: count, bytes, share, per_s.
    """
    return _neighbours(cap, function, +1, OUTERMOST, "caller", value)


def callees(cap: CaptureLike, function: str, *, value: str = "count") -> pd.DataFrame:
    """What ``function`` calls on the allocating stacks (the frame just inside it).

    ``[innermost]``: ``function`` was the innermost frame (it is the allocator). Otherwise as
    :func:`callers`.

    Index: ``callee``. Columns: count, bytes, share, per_s.
    """
    return _neighbours(cap, function, -1, INNERMOST, "callee", value)


_ALLOC_KEYS = ("host", "pid", "tid", "comm", "cgroup")
_STACK_KEYS = ("module", "callsite")


def _keys_for(allocs: pd.DataFrame, st: _Stacks, w: _Weights, what: str) -> np.ndarray:
    """Per allocs row: its value of ``what`` (an allocs column, module or callsite)."""
    if what in _ALLOC_KEYS:
        return allocs[what].to_numpy(dtype=object, na_value=UNKNOWN)
    if what == "module":
        per_stack, names = _responsible_codes(st)
    else:
        per_stack, names = _callsite_codes(st), st.labels
    codes, names = _with_specials(st, per_stack, names)
    return names[codes[w.alloc_stack]]


def matrix(cap: CaptureLike, rows: str = "comm", cols: str = "module", *,
           value: str = "count") -> pd.DataFrame:
    """A cross table of allocations: ``rows`` x ``cols``.

    Each of ``rows``/``cols`` is an allocs column (``comm``, ``pid``, ``tid``, ``cgroup``,
    ``host``) or ``"module"`` (responsible module) or ``"callsite"``. Values are ``value``
    (count or bytes) summed; 0 where a pair never occurred.

    Index: the ``rows`` values; columns: the ``cols`` values; both sorted by their totals,
    largest first. dtype int64.
    """
    _check_value(value)
    allowed = [*_ALLOC_KEYS, *_STACK_KEYS]
    for what, v in (("rows", rows), ("cols", cols)):
        if v not in allowed:
            raise InvalidInput(expected_one_of(what, v, allowed))
    allocs, frames, _ = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    v = allocs[value].to_numpy(dtype=np.float64, na_value=0.0)
    df = pd.DataFrame({"r": _keys_for(allocs, st, w, rows), "c": _keys_for(allocs, st, w, cols),
                       "v": v})
    m = df.groupby(["r", "c"], sort=False)["v"].sum().unstack(fill_value=0.0)
    m = m.loc[m.sum(axis=1).sort_values(ascending=False, kind="stable").index,
              m.sum(axis=0).sort_values(ascending=False, kind="stable").index]
    m = m.round().astype(np.int64)
    m.index.name, m.columns.name = rows, cols
    return m


def _joined_stacks(st: _Stacks, sep: str, *, root_first: bool) -> np.ndarray:
    """Per stack index: its frame labels joined by ``sep``, innermost first or root first.

    Vectorised: one ``str.join`` over all frames with a newline at each stack's end, then
    one split, instead of a join per stack.
    """
    if st.n == 0:
        return np.zeros(0, dtype=object)
    label = st.label[::-1] if root_first else st.label
    lengths = st.lengths[::-1] if root_first else st.lengths
    both = np.empty(2 * len(label), dtype=object)
    both[0::2] = st.labels[label]
    both[1::2] = sep
    both[2 * np.cumsum(lengths) - 1] = "\n"
    joined = "".join(both).split("\n")[:-1]
    return np.array(joined[::-1] if root_first else joined, dtype=object)


def _stack_keys(cap: CaptureLike) -> pd.DataFrame:
    """Per (stack text) totals for diff: stacks compared by function names, not offsets."""
    allocs, frames, _ = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    texts = np.append(_joined_stacks(st, " <- ", root_first=False), NO_STACK)
    codes, names = pd.factorize(texts)
    return _sum_by(np.asarray(codes, np.int64), np.arange(st.n + 1), np.asarray(names, object),
                   w)


def diff(a: Capture, b: Capture, by: str = "comm") -> pd.DataFrame:
    """How allocations changed from capture ``a`` to capture ``b``, per second.

    ``by``: ``"comm"``, ``"callsite"``, ``"module"`` (responsible) or ``"stack"`` (the whole
    stack, compared by its function names innermost first, so the same code path matches
    across captures even where stack ids or offsets differ). Both captures need a known
    ``meta["duration_s"]``; captures of different lengths compare fairly.

    Index: the ``by`` key. Columns: a_count, b_count (Int64), a_per_s, b_per_s,
    ``delta_per_s`` = b_per_s - a_per_s, ``ratio`` = b_per_s / a_per_s (inf for a key new in
    ``b``, 0 for one gone); sorted by the size of the change, largest first.
    """
    choices = ["comm", "callsite", "module", "stack"]
    if by not in choices:
        raise InvalidInput(expected_one_of("by", by, choices))
    durations = _durations({"capture a": a, "capture b": b}, "diff")

    def counts(cap: Capture) -> pd.Series:
        if by == "comm":
            s = by_process(cap)["count"]
        elif by == "callsite":
            s = by_frame(cap, "callsite")["count"]
        elif by == "module":
            s = by_module(cap, "responsible")["count"]
        else:
            s = _stack_keys(cap)["count"]
        return s.astype("float64")

    ca, cb = counts(a), counts(b)
    df = pd.concat({"a_count": ca, "b_count": cb}, axis=1).fillna(0.0)
    df["a_per_s"] = df["a_count"] / durations[0]
    df["b_per_s"] = df["b_count"] / durations[1]
    df["delta_per_s"] = df["b_per_s"] - df["a_per_s"]
    with np.errstate(divide="ignore", invalid="ignore"):
        df["ratio"] = np.where(df["a_per_s"] > 0, df["b_per_s"] / df["a_per_s"].where(
            df["a_per_s"] > 0, 1.0), np.inf)
    df["a_count"] = df["a_count"].round().astype("Int64")
    df["b_count"] = df["b_count"].round().astype("Int64")
    df = df.iloc[np.argsort(-df["delta_per_s"].abs().to_numpy(), kind="stable")]
    df.index.name = by
    return df[["a_count", "b_count", "a_per_s", "b_per_s", "delta_per_s", "ratio"]]


# --------------------------------------------------------------------------------------------
# process names as frames (folded stacks, icicle)


def _clean_comm(comm: object) -> str:
    if not isinstance(comm, str):
        return UNKNOWN
    return comm.replace(";", "_").replace("\n", " ")


def _comm_codes(allocs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per allocs row: a code into the returned comms, cleaned for folded stacks and sorted
    (two comms that clean to the same text share a code)."""
    codes, uniq = pd.factorize(allocs["comm"].array, use_na_sentinel=False)
    cleaned = np.array([_clean_comm(c) for c in uniq], dtype=object)
    names, inverse = np.unique(cleaned.astype(str), return_inverse=True)
    return inverse[np.asarray(codes, np.int64)].astype(np.int64), names.astype(object)


#: captures shorter than this compare poorly: rates of all but the busiest keys swing by chance
MIN_COMPARE_SECONDS = 5.0
#: nor do captures with fewer allocations than this
MIN_COMPARE_ALLOCS = 1000


def diff_warnings(a: Capture, b: Capture, *, min_seconds: float = MIN_COMPARE_SECONDS,
                  min_allocs: int = MIN_COMPARE_ALLOCS) -> list[str]:
    """Why :func:`diff` of ``a`` and ``b`` may mislead, one sentence each (empty: none):
    different caches, a capture without a duration, captures too short or too small to tell
    a change from chance (a key seen ``n`` times has a rate uncertain by about ``sqrt(n)``
    counts), different hosts or kernels."""
    out = []
    metas = [_unpack(a)[2], _unpack(b)[2]]
    caches = [m.get("cache") for m in metas]
    if caches[0] != caches[1]:
        out.append(f"these capture different caches ({caches[0]} and {caches[1]}): the "
                   "comparison mixes two things")
    durations = [_duration(m) for m in metas]
    if None in durations:
        out.append("a capture has no duration: rates per second cannot be compared")
    short = [d for d in durations if d is not None and d < min_seconds]
    if short:
        out.append(f"captures of {' and '.join(f'{d:.1f} s' for d in durations if d)} are "
                   f"too short to compare reliably (under {min_seconds:g} s): rates of all but "
                   "the busiest processes and paths swing by chance; capture 30 s or more of "
                   "each")
    totals = [int(c.allocs["count"].sum()) if len(c.allocs) else 0 for c in (a, b)]
    if min(totals) < min_allocs:
        out.append(f"{min(totals):,} allocations in the smaller capture: too few to tell most "
                   f"changes from chance (want {min_allocs:,} or more)")
    hosts = [m.get("host") for m in metas]
    if hosts[0] != hosts[1] and all(hosts):
        out.append(f"the captures come from different hosts ({hosts[0]} and {hosts[1]})")
    kernels = [m.get("kernel_release") for m in metas]
    if kernels[0] != kernels[1] and all(kernels):
        out.append(f"the kernels differ ({kernels[0]} and {kernels[1]}): function names and "
                   "stacks may differ for that reason alone")
    return out
