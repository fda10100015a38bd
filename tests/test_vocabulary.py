"""The frame vocabulary: which frames are the allocator and the tracer's glue, and the
operations on a frames table that use it (drop glue, hide allocator frames, find call sites)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLES

import slabkit
from slabkit.model import schema, vocabulary
from slabkit.model.stacks import frames_table
from slabkit.model.vocabulary import (
    ALLOCATOR_FUNCTIONS,
    TRACER_GLUE,
    allocator_mask,
    callsites,
    drop_tracer_glue,
    hide_allocator_frames,
    is_allocator,
    is_tracer_glue,
    leading_run_lengths,
)

SLABCOUNT_C = Path(slabkit.__file__).resolve().parent / "slabcount" / "slabcount.c"

# innermost frame first, as tracers print them
STACKS = {
    7: ["kmem_cache_alloc_noprof+0x22c/0x3a0", "alloc_empty_file+0x55/0x110",
        "path_openat+0x2d/0x1130"],
    3: ["___slab_alloc.constprop.0+0x5/0x90", "kmem_cache_alloc_lru_noprof+0x1/0x2",
        "d_alloc+0x1/0x2", "d_alloc_parallel+0x1/0x2"],
    5: ["kmem_cache_alloc+0x1/0x2", "__kmalloc+0x1/0x2"],            # allocator only
    9: ["0xffffffffc0a1b2c3", "kmem_cache_alloc+0x1/0x2", "x+0x1/0x2"],  # unresolved first
    1: ["ext4_lookup+0x1a/0x50 [ext4]"],
}
CALLSITE_DEPTH = {7: 1, 3: 2, 5: None, 9: 0, 1: 0}


def _shuffled(frames: pd.DataFrame) -> pd.DataFrame:
    return frames.sample(frac=1.0, random_state=3).reset_index(drop=True)


def _is_machinery_prefixes() -> list[tuple[str, int]]:
    """(prefix, length compared) of each strncmp in slabcount.c's is_machinery_name."""
    src = SLABCOUNT_C.read_text()
    body = re.search(r"static int is_machinery_name\(const char \*n\)\s*\{(.*?)\n\}", src, re.DOTALL)
    assert body, "is_machinery_name not found in slabcount.c"
    found = re.findall(r'strncmp\(n, "([^"]+)", (\d+)\)', body.group(1))
    assert found, "no strncmp in is_machinery_name: has the C changed shape?"
    return [(prefix, int(n)) for prefix, n in found]


def _kernel_function_names() -> list[str]:
    """Text symbols of the running kernel (names are readable without root)."""
    try:
        text = Path("/proc/kallsyms").read_text()
    except OSError:
        return []
    return [p[2] for p in (line.split() for line in text.splitlines())
            if len(p) >= 3 and p[1] in "tT"]


def test_slabcount_machinery_names_are_tracer_glue_here():
    """slabcount.c cuts every function whose name starts with one of its prefixes; the Python
    list must drop each of them too, or stacks from slabcount and from other tracers differ."""
    prefixes = _is_machinery_prefixes()
    for prefix, n in prefixes:
        assert n == len(prefix), f"slabcount.c compares {n} characters of {prefix!r}"
    missing = [p + "1" for p, _ in prefixes if not is_tracer_glue(p + "1")]
    assert not missing, f"slabcount.c cuts these, TRACER_GLUE does not: {missing}"
    names = _kernel_function_names()
    cut = [name for name in names if name.startswith(tuple(p for p, _ in prefixes))]
    if names:                           # on this kernel: every real symbol slabcount cuts
        assert cut, "no kernel symbol has a machinery prefix: is /proc/kallsyms readable?"
        missing = sorted({name for name in cut if not is_tracer_glue(name)})
        assert not missing, (f"{len(missing)} kernel functions slabcount.c cuts are not "
                             f"TRACER_GLUE: {missing[:20]}")


def test_tracer_glue_is_part_of_the_allocator_list():
    assert all(entry in ALLOCATOR_FUNCTIONS for entry in TRACER_GLUE)
    for name in ["__traceiter_kmem_cache_alloc", "perf_trace_kmem_cache_alloc.cold",
                 "trace_event_raw_event_kmem_cache_alloc", "__bpf_trace_kmem_cache_alloc",
                 "bpf_trace_run4", "bpf_prog_6deef7357e_kmem", "trace_call_bpf"]:
        assert is_tracer_glue(name) and is_allocator(name), name
    for name in ["kmem_cache_alloc", "trace_kmem_cache_alloc", "stack_trace_save", "d_alloc",
                 "perf_event_alloc"]:
        assert not is_tracer_glue(name), name


def test_names_match_whole_after_the_compiler_suffix():
    assert is_allocator("___slab_alloc.constprop.0") and is_allocator("kmem_cache_alloc.cold")
    assert not is_allocator("d_alloc.isra.0")
    assert not is_allocator("xkmem_cache_alloc") and not is_allocator("kmem_cache_alloc x")
    names = pd.array(["kmem_cache_alloc", None, "d_alloc", "kmem_cache_alloc"], dtype="string")
    assert allocator_mask(pd.Series(names)).tolist() == [True, False, False, True]
    assert allocator_mask(np.array(["__kmalloc", "[unknown]"], dtype=object)).tolist() == [
        True, False]


def test_leading_run_lengths():
    ids = np.array([1, 1, 1, 2, 2, 4, 5, 5])
    mask = np.array([1, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    assert leading_run_lengths(ids, mask).tolist() == [2, 2, 0, 0]
    assert leading_run_lengths(ids[:0], mask[:0]).tolist() == []


def test_callsites_are_the_first_frames_outside_the_allocator():
    frames = _shuffled(frames_table(STACKS))
    cs = callsites(frames)
    assert cs.index.tolist() == sorted(STACKS)
    for sid, depth in CALLSITE_DEPTH.items():
        row = cs.loc[sid]
        if depth is None:
            assert row.isna().all(), row
            continue
        want = frames[(frames["stack_id"] == sid) & (frames["depth"] == depth)].iloc[0]
        assert row["depth"] == depth
        assert row["function"] is want["function"] or row["function"] == want["function"]
        assert row["address"] is want["address"] or row["address"] == want["address"]
    assert cs.loc[3, "function"] == "d_alloc" and cs.loc[1, "module"] == "ext4"
    assert pd.isna(cs.loc[9, "function"]) and cs.loc[9, "address"] == 0xFFFFFFFFC0A1B2C3


def test_hide_allocator_frames_starts_each_stack_at_its_callsite():
    frames = _shuffled(frames_table(STACKS))
    hidden = hide_allocator_frames(frames)
    schema.validate(hidden, "frames")
    for sid, lines in STACKS.items():
        got = hidden[hidden["stack_id"] == sid].sort_values("depth")
        assert got["depth"].tolist() == list(range(len(got)))
        cut = CALLSITE_DEPTH[sid] or 0               # allocator-only stacks stay whole
        want = frames_table({sid: lines[cut:]})
        assert got["function"].tolist() == want["function"].tolist(), sid
    nothing = frames_table({1: STACKS[1], 5: STACKS[5]})
    assert hide_allocator_frames(nothing) is nothing


def test_callsites_agree_with_the_pivots_on_a_sample():
    cap = slabkit.load(SAMPLES / "perf-filp")
    cs = callsites(cap.frames)["function"]
    per_stack = cap.allocs.groupby("stack_id")["count"].sum()
    by_callsite = per_stack.groupby(cs.reindex(per_stack.index).to_numpy()).sum()
    want = slabkit.by_frame(cap)["count"]
    assert by_callsite.sort_values(ascending=False).to_dict() == want.to_dict()
    top = slabkit.top_stacks(cap, 5, hide_allocator=True)
    firsts = top["stack"].str.split(" <- ").str[0]
    assert firsts.tolist() == top["callsite"].tolist() == cs.loc[top.index].tolist()
    full = slabkit.top_stacks(cap, 5)
    assert full.index.tolist() == top.index.tolist()
    assert all(f.endswith(t) for f, t in zip(full["stack"], top["stack"]))
    assert (top["frames"] < full["frames"]).all()


def _glue_tables():
    fr = pd.DataFrame({
        "stack_id": pd.array([0, 0, 0, 1, 1, 2, 2], dtype="Int64"),
        "depth": pd.array([0, 1, 2, 0, 1, 0, 1], dtype="Int64"),
        "function": pd.array(["__traceiter_kmem_cache_alloc", "kmem_cache_alloc", "f",
                              "kmem_cache_alloc", "f", "kmem_cache_alloc", "g"], dtype="string"),
        "offset": pd.array([5, 10, 3, 10, 3, 10, 4], dtype="Int64"),
        "module": pd.array(["vmlinux"] * 7, dtype="string"),
        "address": pd.array([1, 2, 3, 2, 3, 2, 9], dtype="UInt64")})
    allocs = pd.DataFrame({"pid": [1, 1, 2], "tid": [1, 1, 2], "comm": ["a", "a", "b"],
                           "cgroup": ["/"] * 3, "stack_id": pd.array([0, 1, 2], dtype="Int64"),
                           "count": [5, 7, 1], "bytes": pd.array([10, 14, pd.NA], dtype="Int64")})
    return allocs, fr


def test_tracer_glue_is_dropped_and_equal_stacks_merge():
    """Seen live: with a second probe on kmem_cache_alloc, bpftrace's stacks start with
    __traceiter_kmem_cache_alloc; the same path without it must be the same stack."""
    allocs, fr = _glue_tables()
    a, f, _ = drop_tracer_glue(allocs, fr)
    assert list(a["stack_id"]) == [0, 2] and list(a["count"]) == [12, 1]
    assert a["bytes"].iloc[0] == 24 and pd.isna(a["bytes"].iloc[1])
    assert a["stack_id"].dtype == allocs["stack_id"].dtype
    s0 = f[f["stack_id"] == 0].sort_values("depth")
    assert list(s0["function"]) == ["kmem_cache_alloc", "f"] and list(s0["depth"]) == [0, 1]
    assert set(f["stack_id"]) == {0, 2}
    # no stack starting with glue: the very same tables come back (the cheap path)
    allocs2, fr2 = _glue_tables()
    fr2 = fr2[fr2["stack_id"] != 0]
    a2, f2, _ = drop_tracer_glue(allocs2, fr2)
    assert a2 is allocs2 and f2 is fr2


def test_glue_with_a_compiler_suffix_is_dropped_as_slabcount_drops_it():
    """The kernel has perf_trace_<event>.cold symbols; slabcount.c cuts them by prefix."""
    allocs, fr = _glue_tables()
    fr["function"] = fr["function"].replace("__traceiter_kmem_cache_alloc",
                                            "perf_trace_kmem_cache_alloc.cold")
    a, f, _ = drop_tracer_glue(allocs, fr)
    assert list(a["stack_id"]) == [0, 2] and list(a["count"]) == [12, 1]
    assert f.loc[f["stack_id"] == 0, "function"].tolist() == ["kmem_cache_alloc", "f"]


@pytest.mark.parametrize("name", ["is_allocator", "ALLOCATOR_FUNCTIONS"])
def test_analysis_re_exports_the_vocabulary(name):
    from slabkit import analysis
    assert getattr(analysis, name) is getattr(vocabulary, name)
