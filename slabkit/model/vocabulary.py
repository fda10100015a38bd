"""Which kernel frames are the allocator and which are tracer glue, and what to do with them.

A kernel stack taken at an allocation starts (depth 0, innermost) with frames that say nothing
about who allocated: the tracer's own glue, then the slab allocator. This module is the one
place that lists them and the one place that acts on them in a ``frames`` table
(``slabkit.model.schema.FRAMES``):

- :data:`TRACER_GLUE` and :func:`drop_tracer_glue`: the tracing machinery, cut from every
  stack when a capture is parsed, so a stack means the same whoever else is tracing;
- :data:`ALLOCATOR_FUNCTIONS` (the glue and the rest of the tracer, plus the slab allocator)
  and :func:`hide_allocator_frames`: frames hidden when showing who allocated;
- :func:`callsites`: each stack's *call site*, its first frame going outwards that is not an
  allocator frame.

A function name is matched whole, after any compiler suffix (``.isra.0``, ``.constprop.0``,
``.cold``) is removed. ``slabkit/slabcount/slabcount.c`` (``is_machinery_name``) cuts the glue
itself, in C, because its program's ``bpf_prog_`` frame can only be named while the program is
loaded; ``tests/test_vocabulary.py`` checks that every name it cuts is glue here too.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

#: Tracing machinery a stack may start with, depending on how the tracer attached and on what
#: *else* is attached: with two or more probes on one tracepoint the kernel calls them through
#: ``__traceiter_<event>``, so the same allocation's stack gains a frame when another tracer
#: runs. Each entry: (regular expression for the whole function name; why it is here).
TRACER_GLUE: tuple[tuple[str, str], ...] = (
    (r"__traceiter_\w+",
     "the tracepoint's iterator, on the stack when two or more probes share the tracepoint"),
    (r"trace_event_raw_event_\w+|perf_trace_\w+",
     ("the tracepoint's event callbacks: the ftrace ring buffer (ftrace, its stacktrace "
      "trigger) and perf's (perf, BPF programs on a perf event)")),
    (r"__bpf_trace_\w+|bpf_trace_run\d*|trace_call_bpf",
     "the calls that run a BPF program attached to a (raw) tracepoint or a kprobe"),
    (r"bpf_prog_\w+", "the BPF program itself, bpf_prog_<tag>_<name> while it is loaded"),
)

#: Functions that belong to the allocator or to the tracer, never to the code that asked for
#: the object: the slab allocator, :data:`TRACER_GLUE`, and the rest of each tracer's path.
#: Each entry: (regular expression for the whole function name; why it is here).
ALLOCATOR_FUNCTIONS: tuple[tuple[str, str], ...] = (
    (r"_*kmem_cache_alloc\w*|kmem_cache_zalloc",
     ("the slab API entry points and their variants: _node, _lru (5.18+), _trace (<6.1), "
      "_bulk, _from_sheaf (6.18), the *_noprof names of 6.10+ and 6.1's "
      "__kmem_cache_alloc_node")),
    (r"_*kv?[mz]alloc\w*|_*kv?calloc\w*|_*kv?realloc\w*|kmalloc_array\w*",
     ("kmalloc and friends: __kmalloc, __kmalloc_node, kmalloc_trace, kmalloc_node_trace, "
      "kmalloc_large, __kmalloc_cache_noprof, __do_kmalloc_node, kvmalloc_node, krealloc")),
    ((r"_*slab_alloc\w*|new_slab|allocate_slab|alloc_slab_page|get_partial\w*|get_any_partial"
     r"|get_freelist|slab_pre_alloc_hook|slab_post_alloc_hook|_*memcg_slab_post_alloc_hook"
     r"|alloc_tagging_slab_alloc_hook|alloc_from_pcs\w*|__pcs_\w+"),
     ("SLUB internals: the fast path (slab_alloc_node), the slow path (__slab_alloc, "
      "___slab_alloc), refilling from partial or new slabs, hooks, 6.18 per-CPU sheaves")),
    (r"_*cache_alloc\w*|cache_alloc_refill|cache_grow\w*|fallback_alloc",
     "SLAB internals (SLAB was removed in 6.8): __cache_alloc, cache_alloc_refill"),
    *TRACER_GLUE,
    (r"trace_\w+",
     ("the tracepoint call (trace_kmem_cache_alloc) and ftrace's event code "
      "(trace_event_buffer_commit)")),
    (r"bpf_trampoline_\w+|_*bpf_get_stack\w*|bpf_overflow_handler|__bpf_prog_enter\w*",
     "BPF trampolines (bpftrace, fentry) and the helpers that take the stack"),
    ((r"stack_trace_save\w*|_*ftrace_trace_stack|event_triggers_call|stacktrace_\w*trigger"
     r"|ftrace_\w*call\w*|arch_ftrace_ops_list_func|kprobe_ftrace_handler"),
     ("ftrace: the stacktrace trigger (stack_trace_save, __ftrace_trace_stack, "
      "event_triggers_call, trace_event_buffer_commit) and ftrace-based kprobes")),
    ((r"perf_tp_event\w*|perf_swevent_\w+|perf_event_output\w*|_*perf_event_overflow"
     r"|perf_callchain\w*|get_perf_callchain|perf_prepare_sample"),
     ("perf: the sample path of a tracepoint event; only these names, because "
      "perf_event_alloc and other perf_* functions really do allocate perf's own objects")),
    (r"kprobe_\w+|pre_handler_kretprobe|kretprobe_\w+|asm_exc_int3|exc_int3|do_int3|_stp_\w+",
     "kprobes (SystemTap, perf probe): the int3 trap and dispatch, and stap's runtime"),
)


def _whole_name(entries: Iterable[tuple[str, str]]) -> re.Pattern[str]:
    """One pattern for a list's entries, for ``fullmatch``; a ``.suffix`` is allowed
    (``\\w`` never matches a dot, so the entries stop where the compiler suffix starts)."""
    return re.compile("(?:" + "|".join(f"(?:{p})" for p, _ in entries) + r")(?:\..*)?")


#: :data:`TRACER_GLUE` as one pattern (use ``fullmatch``).
TRACER_GLUE_RE = _whole_name(TRACER_GLUE)
_ALLOCATOR_RE = _whole_name(ALLOCATOR_FUNCTIONS)


def is_allocator(function: str) -> bool:
    """True when ``function`` is an allocator or tracer frame (see :data:`ALLOCATOR_FUNCTIONS`).

    >>> is_allocator("kmem_cache_alloc_lru_noprof"), is_allocator("d_alloc")
    (True, False)
    """
    return _ALLOCATOR_RE.fullmatch(function) is not None


def is_tracer_glue(function: str) -> bool:
    """True when ``function`` is tracing machinery (see :data:`TRACER_GLUE`).

    >>> is_tracer_glue("__traceiter_kmem_cache_alloc"), is_tracer_glue("kmem_cache_alloc")
    (True, False)
    """
    return TRACER_GLUE_RE.fullmatch(function) is not None


def _mask(functions, pattern: re.Pattern[str]) -> np.ndarray:
    """Per element: does the whole name match; each distinct name is tested once, a missing
    name (an unresolved frame) never matches."""
    values = functions.array if isinstance(functions, pd.Series) else np.asarray(functions,
                                                                                  dtype=object)
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    hit = np.fromiter((pattern.fullmatch(str(u)) is not None for u in uniques), dtype=bool,
                      count=len(uniques))
    return np.append(hit, False)[np.asarray(codes, dtype=np.intp)]  # code -1: the False


def allocator_mask(functions) -> np.ndarray:
    """:func:`is_allocator` of each of ``functions`` (a Series or array; missing -> False)."""
    return _mask(functions, _ALLOCATOR_RE)


def tracer_glue_mask(functions) -> np.ndarray:
    """:func:`is_tracer_glue` of each of ``functions`` (a Series or array; missing -> False)."""
    return _mask(functions, TRACER_GLUE_RE)


# --------------------------------------------------------------------------------------------
# operations on a frames table


def leading_run_lengths(stack_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """For frame rows sorted by (stack, depth): per stack, in order, how many of its first
    (innermost) rows ``mask`` holds for before the first it does not (its whole length when
    it holds for all). This is where a stack's call site is: ``mask`` = allocator frames.

    >>> leading_run_lengths(np.array([7, 7, 7, 9, 9]), np.array([1, 0, 1, 1, 1], bool))
    array([1, 2])
    """
    n = len(stack_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(stack_ids[1:], stack_ids[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    lead = np.diff(np.append(starts, n))                    # the whole stack, unless...
    stack_of_row = np.cumsum(start) - 1
    stop = np.flatnonzero(~np.asarray(mask, dtype=bool))    # rows the run stops at
    s = stack_of_row[stop]
    first = np.ones(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=first[1:])
    lead[s[first]] = stop[first] - starts[s[first]]
    return lead.astype(np.int64)


def _by_stack(frames: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """``frames`` sorted by (stack_id, depth) (as it is, when it already is) and its ids."""
    sid = frames["stack_id"].to_numpy(dtype=np.int64, na_value=-1)
    depth = frames["depth"].to_numpy(dtype=np.int64, na_value=0)
    if len(sid) > 1:
        d_sid = np.diff(sid)
        if (d_sid < 0).any() or ((d_sid == 0) & (np.diff(depth) < 0)).any():
            order = np.lexsort((depth, sid))
            return frames.iloc[order], sid[order]
    return frames, sid


def _cut_leading(frames: pd.DataFrame, sid: np.ndarray, lead: np.ndarray) -> pd.DataFrame:
    """Drop each stack's first ``lead`` rows (rows sorted by stack, depth) and renumber the
    depth of the rest from 0."""
    _, starts, lengths = np.unique(sid, return_index=True, return_counts=True)
    pos = np.arange(len(sid)) - np.repeat(starts, lengths)
    cut = np.repeat(lead, lengths)
    keep = pos >= cut
    out = frames.loc[keep].copy() if not keep.all() else frames.copy()
    out["depth"] = pd.array(frames["depth"].to_numpy(np.int64, na_value=0)[keep] - cut[keep],
                            dtype="Int64")
    return out.reset_index(drop=True)


def hide_allocator_frames(frames: pd.DataFrame) -> pd.DataFrame:
    """The ``frames`` table without the allocator frames at the inner end of each stack
    (:data:`ALLOCATOR_FUNCTIONS`): each stack then starts at its call site, depth 0. A stack
    made of allocator frames alone is kept whole (there is nothing else to show). Returns
    ``frames`` itself when there is nothing to hide.
    """
    if not len(frames):
        return frames
    fr, sid = _by_stack(frames)
    lead = leading_run_lengths(sid, allocator_mask(fr["function"]))
    lengths = np.unique(sid, return_counts=True)[1]
    lead[lead == lengths] = 0                     # allocator-only stacks: keep them whole
    if not lead.any():
        return frames
    return _cut_leading(fr, sid, lead)


def callsites(frames: pd.DataFrame) -> pd.DataFrame:
    """Each stack's call site: its first frame, going outwards from the innermost, that is not
    an allocator frame (:data:`ALLOCATOR_FUNCTIONS`; an unresolved frame counts as a call site).

    Index: ``stack_id`` (every stack of ``frames``, ascending). Columns: the call site frame's
    ``depth, function, offset, module, address``; all missing for a stack made of allocator
    frames alone.
    """
    columns = ["depth", "function", "offset", "module", "address"]
    fr, sid = _by_stack(frames)
    ids, starts, lengths = np.unique(sid, return_index=True, return_counts=True)
    lead = leading_run_lengths(sid, allocator_mask(fr["function"]))
    has = lead < lengths
    rows = fr.iloc[starts[has] + lead[has]][columns]
    rows.index = pd.Index(ids[has], name="stack_id")
    return rows.reindex(pd.Index(ids, name="stack_id"))


#: glue is only ever a few frames deep: deeper rows are not tested (speed)
_GLUE_DEPTH = 8


def drop_tracer_glue(allocs: pd.DataFrame, frames: pd.DataFrame,
                     outstanding: pd.DataFrame | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Drop :data:`TRACER_GLUE` frames at the inner end of every stack.

    Stacks that become equal are merged (one ``stack_id``; the rows of ``allocs`` and
    ``outstanding`` that pointed at either are summed), so a stack's identity does not depend
    on what else was attached. A stack made only of glue keeps no frames (its rows keep their
    id). Returns the tables unchanged when no stack starts with glue.
    """
    if not len(frames):
        return allocs, frames, outstanding
    inner = frames.loc[frames["depth"] == 0, "function"]
    if not tracer_glue_mask(inner).any():
        return allocs, frames, outstanding          # the common case: a cheap test
    fr, sid = _by_stack(frames)
    near = (fr["depth"] < _GLUE_DEPTH).to_numpy(dtype=bool, na_value=False)
    glue = np.zeros(len(fr), dtype=bool)
    glue[near] = tracer_glue_mask(fr.loc[near, "function"])
    kept = _cut_leading(fr, sid, leading_run_lengths(sid, glue))
    # one id per distinct remaining stack: a 64-bit signature of (depth, frame) per stack
    parts = kept[["depth", "function", "offset", "module", "address"]]
    h = pd.util.hash_pandas_object(parts, index=False).to_numpy(np.uint64)
    sig = pd.Series(h).groupby(kept["stack_id"].to_numpy()).sum()   # wraps: fine for a hash
    canon = sig.reset_index().groupby(0)["index"].transform("min")
    remap = dict(zip(sig.index, canon.to_numpy()))
    kept = kept[kept["stack_id"].map(remap) == kept["stack_id"]].reset_index(drop=True)

    def merge_rows(df: pd.DataFrame | None) -> pd.DataFrame | None:
        if df is None or not len(df):
            return df
        new = df["stack_id"].map(remap).fillna(df["stack_id"]).astype(df["stack_id"].dtype)
        if (new == df["stack_id"]).all():
            return df
        df = df.assign(stack_id=new)
        sums = [c for c in ("count", "bytes", "bytes_req") if c in df.columns]
        keys = [c for c in df.columns if c not in sums and c not in
                ("oldest_age_s", "median_age_s")]
        agg = {c: (lambda x: x.sum(min_count=1)) for c in sums}
        if "oldest_age_s" in df.columns:
            agg["oldest_age_s"] = "max"
            agg["median_age_s"] = "median"      # of the merged groups' medians: approximate
        out = df.groupby(keys, dropna=False, sort=False, as_index=False).agg(agg)
        return out.astype({c: df[c].dtype for c in out.columns})[list(df.columns)]

    return merge_rows(allocs), kept, merge_rows(outstanding)
