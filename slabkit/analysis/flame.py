"""Flame graph trees: a capture's allocations as a tree of process and kernel stack frames,
and the difference of two captures as one tree.

The tree (FlameGraph's, upside down as an icicle): level 0 is everything (``all``), level 1
the process (comm), then the stack frames from the outermost (the syscall entry) inwards to
the allocator; allocations recorded without a stack sit under their process as ``[no
stack]``. Siblings are in alphabetical order, as in FlameGraph. Nodes narrower than
``min_share`` of the whole are left out, and so are their descendants.

- :func:`flame_tree`: one capture; each node's allocations and bytes (what the interactive
  flame graph hovers over) and its position (``x0``, ``width``) for a static drawing;
- :func:`flame_diff`: two captures (before, after) on one tree of the code paths either
  has, matched by function names; each node's rate before and after, the change, and a
  width that is the mean of the two rates (so a path that is gone still shows);
- :func:`icicle`: :func:`flame_tree`'s layout columns, as :func:`slabkit.plots.plot_flame`
  draws them.

Vectorised as :mod:`slabkit.analysis.pivots` is: the paths are rows of integer label codes,
sorted once; each level's nodes are runs of equal codes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from slabkit.analysis.pivots import (
    NO_STACK,
    CaptureLike,
    _comm_codes,
    _durations,
    _prepare,
    _unpack,
    _weights,
)
from slabkit.errors import InvalidInput

TREE_COLUMNS = ["id", "parent", "level", "label", "kind"]


def _paths(cap: CaptureLike) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(names, paths, per-path weights): one path per (comm, stack) with allocations, as a
    row of codes into ``names`` (sorted, so codes order as the names do): the comm first,
    then the frames root first (``[no stack]`` for allocations without one), -1 after."""
    allocs, frames, _ = _unpack(cap)
    st = _prepare(frames)
    w = _weights(allocs, st)
    ccode, cnames = _comm_codes(allocs)
    b = allocs["bytes"].to_numpy(dtype=np.float64, na_value=np.nan)
    pairs = pd.DataFrame({"c": ccode, "s": w.alloc_stack,
                          "n": allocs["count"].to_numpy(np.float64, na_value=0.0),
                          "b": np.where(np.isnan(b), 0.0, b), "known": ~np.isnan(b)})
    g = pairs.groupby(["c", "s"], sort=False).agg(n=("n", "sum"), b=("b", "sum"),
                                                  known=("known", "any"))
    g = g[g["n"] > 0]
    labels = np.asarray(st.labels, dtype=object).astype(str)
    comms = np.asarray(cnames, dtype=object).astype(str)
    names = np.unique(np.concatenate([comms, labels, [NO_STACK]]))
    # each stack's frames, root first, as codes (row st.n: allocations without a stack)
    stacks = np.full((st.n + 1, max(int(st.lengths.max()) if st.n else 0, 1)), -1, np.int64)
    if len(st.label):
        stacks[st.row_stack, st.lengths[st.row_stack] - 1 - st.pos] = \
            np.searchsorted(names, labels)[st.label]
    stacks[st.n, 0] = np.searchsorted(names, NO_STACK)
    c = g.index.get_level_values("c").to_numpy(np.int64)
    s = g.index.get_level_values("s").to_numpy(np.int64)
    paths = np.column_stack([np.searchsorted(names, comms)[c], stacks[s]])
    return names, paths, g.reset_index(drop=True)


def _joint(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
           ) -> tuple[np.ndarray, np.ndarray]:
    """Two captures' (names, paths) on one vocabulary, the paths of ``a`` first."""
    names = np.union1d(a[0], b[0])
    width = max(a[1].shape[1], b[1].shape[1])
    out = []
    for own, paths in (a, b):
        codes = np.searchsorted(names, own)
        joint = np.full((len(paths), width), -1, np.int64)
        joint[:, :paths.shape[1]] = np.where(paths >= 0, codes[np.maximum(paths, 0)], -1)
        out.append(joint)
    return names, np.vstack(out)


def _tree(names: np.ndarray, P: np.ndarray, weights: dict[str, np.ndarray], *, by: str,
          min_share: float) -> pd.DataFrame:
    """The tree of the paths ``P`` (rows of codes into ``names``, level 1 first) with each
    weight summed per node; nodes whose ``by`` weight is below ``min_share`` of the total
    are dropped with their descendants. Columns: id, parent (-1 for the root), level,
    label, kind, the weights, x0 and width (shares of the ``by`` total)."""
    total = float(np.sum(weights[by])) if len(P) else 0.0
    columns = TREE_COLUMNS + list(weights) + ["x0", "width"]
    if total <= 0:
        return pd.DataFrame({c: [] for c in columns})
    depth = P.shape[1]
    order = np.lexsort(P.T[::-1])
    P = P[order]
    w = {k: np.asarray(v, dtype=np.float64)[order] for k, v in weights.items()}
    cum = {k: np.concatenate([[0.0], np.cumsum(v)]) for k, v in w.items()}

    rows = [{"id": 0, "parent": -1, "level": 0, "label": "all", "kind": "all",
             **{k: float(v.sum()) for k, v in w.items()}, "x0": 0.0, "width": 1.0}]
    parts = [pd.DataFrame(rows)]
    next_id = 1
    node_of_row = np.zeros(len(P), dtype=np.int64)          # the root
    boundary = np.zeros(len(P), dtype=bool)
    boundary[0] = True
    alive = np.ones(len(P), dtype=bool)
    for level in range(depth):
        col = P[:, level]
        change = np.empty(len(P), dtype=bool)
        change[0] = True
        np.not_equal(col[1:], col[:-1], out=change[1:])
        boundary |= change
        starts = np.flatnonzero(boundary)
        ends = np.append(starts[1:], len(P))
        sums = {k: c[ends] - c[starts] for k, c in cum.items()}
        keep = (col[starts] >= 0) & alive[starts] & (sums[by] >= min_share * total) \
            & (sums[by] > 0)
        alive &= np.repeat(keep, ends - starts)
        if not keep.any():
            break
        ids = np.arange(next_id, next_id + int(keep.sum()))
        next_id += len(ids)
        parts.append(pd.DataFrame({
            "id": ids, "parent": node_of_row[starts[keep]], "level": level + 1,
            "label": names[col[starts[keep]]], "kind": "comm" if level == 0 else "frame",
            **{k: v[keep] for k, v in sums.items()},
            "x0": cum[by][starts[keep]] / total, "width": sums[by][keep] / total}))
        run_id = np.full(len(starts), -1, dtype=np.int64)
        run_id[keep] = ids
        node_of_row = np.repeat(run_id, ends - starts)
    df = pd.concat(parts, ignore_index=True)
    df["label"] = df["label"].astype("string")
    return df[columns]


def flame_tree(cap: CaptureLike, *, value: str = "count", min_share: float = 0.005
               ) -> pd.DataFrame:
    """A capture's flame graph tree (see the module docs); ``value`` (``"count"`` or
    ``"bytes"``) decides the widths and what ``min_share`` prunes.

    Index: a RangeIndex. Columns: ``id``, ``parent`` (the parent's id; -1 for the root),
    ``level``, ``label`` (function, comm, ``all`` or ``[no stack]``), ``kind`` (``all``,
    ``comm``, ``frame``), ``count`` (allocations through the node, Int64), ``bytes``
    (Int64, missing where no allocation through it knew its size), ``share`` (of all, by
    ``value``), ``x0`` and ``width`` (its place across, as shares of all, 0..1).
    """
    if value not in ("count", "bytes"):
        raise InvalidInput(f"value must be 'count' or 'bytes', not {value!r}")
    names, paths, g = _paths(cap)
    df = _tree(names, paths, {"count": g["n"].to_numpy(), "bytes": g["b"].to_numpy(),
                       "known": g["known"].to_numpy(dtype=np.float64)},
               by="count" if value == "count" else "bytes", min_share=min_share)
    out = df[TREE_COLUMNS].copy()
    out["count"] = pd.array(np.rint(df["count"].to_numpy(np.float64)).astype(np.int64),
                            dtype="Int64")
    out["bytes"] = pd.arrays.IntegerArray(np.rint(df["bytes"].to_numpy(np.float64))
                                          .astype(np.int64), df["known"].to_numpy() <= 0)
    out["share"] = df["width"].astype("float64")
    out["x0"], out["width"] = df["x0"].astype("float64"), df["width"].astype("float64")
    return out.astype({"id": "int64", "parent": "int64", "level": "int64"})


def flame_diff(before: CaptureLike, after: CaptureLike, *, min_share: float = 0.005
               ) -> pd.DataFrame:
    """The difference of two captures as one flame graph tree: the code paths of both,
    matched by process name and function names (not addresses), each with its rate before
    and after. A node's width is the mean of its two rates (``width`` as a share of the
    mean total), so paths that grew, shrank, appeared or went away all show; colour it by
    ``delta_per_s`` or ``change``. Both captures need a duration (rates compare captures of
    different lengths fairly, as :func:`slabkit.diff` does).

    Columns: those of the tree (``id``, ``parent``, ``level``, ``label``, ``kind``) and
    ``a_count``, ``b_count`` (allocations), ``a_per_s``, ``b_per_s``, ``delta_per_s``
    (after - before), ``change`` (``delta / (before + after)``: -1 gone, 0 same, +1 new),
    ``x0``, ``width``.
    """
    durations = _durations({"the before capture": before, "the after capture": after},
                           "a difference flame graph")
    names_a, pa, ga = _paths(before)
    names_b, pb, gb = _paths(after)
    names, paths = _joint((names_a, pa), (names_b, pb))
    na, nb = ga["n"].to_numpy(), gb["n"].to_numpy()
    weights = {"a_count": np.concatenate([na, np.zeros(len(nb))]),
               "b_count": np.concatenate([np.zeros(len(na)), nb]),
               "a_per_s": np.concatenate([na / durations[0], np.zeros(len(nb))]),
               "b_per_s": np.concatenate([np.zeros(len(na)), nb / durations[1]])}
    weights["mean_per_s"] = (weights["a_per_s"] + weights["b_per_s"]) / 2
    df = _tree(names, paths, weights, by="mean_per_s", min_share=min_share)
    out = df[TREE_COLUMNS].copy()
    for k in ("a_count", "b_count"):
        out[k] = pd.array(np.rint(df[k].to_numpy(np.float64)).astype(np.int64), dtype="Int64")
    out["a_per_s"] = df["a_per_s"].astype("float64")
    out["b_per_s"] = df["b_per_s"].astype("float64")
    out["delta_per_s"] = out["b_per_s"] - out["a_per_s"]
    both = out["a_per_s"] + out["b_per_s"]
    out["change"] = (out["delta_per_s"] / both.where(both > 0)).fillna(0.0)
    out["x0"], out["width"] = df["x0"].astype("float64"), df["width"].astype("float64")
    return out.astype({"id": "int64", "parent": "int64", "level": "int64"})


def icicle(cap: CaptureLike, *, min_share: float = 0.005) -> pd.DataFrame:
    """The layout of an icicle (upside-down flame) chart of the capture, ready to draw: the
    :func:`flame_tree` by allocations.

    Index: a RangeIndex. Columns: ``level`` (int), ``label`` (function or comm), ``count``
    (allocations through this node), ``x0`` and ``width`` (its position and width as shares
    of all allocations, 0..1), ``kind`` (``"all"``, ``"comm"`` or ``"frame"``).
    """
    tree = flame_tree(cap, min_share=min_share)
    return tree[["level", "label", "count", "x0", "width", "kind"]].reset_index(drop=True)
