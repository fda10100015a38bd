"""Pivots over a capture (:mod:`slabkit.analysis.pivots`) and exports to other tools
(:mod:`slabkit.analysis.export`: folded stacks, pprof); kmalloc waste
(:mod:`slabkit.analysis.waste`).

``ALLOCATOR_FUNCTIONS`` and ``is_allocator`` live in :mod:`slabkit.model.vocabulary` (the one
list of allocator and tracer frames); they are re-exported here.
"""
from slabkit.analysis.export import pprof_profile, to_folded, to_pprof, write_folded
from slabkit.analysis.pivots import (
    ALLOCATOR_ONLY,
    NO_STACK,
    UNKNOWN,
    CaptureLike,
    by_frame,
    by_module,
    by_process,
    callees,
    callers,
    diff,
    icicle,
    matrix,
    stack_text,
    top_stacks,
)
from slabkit.analysis.waste import kmalloc_waste, kmalloc_waste_total
from slabkit.model.vocabulary import ALLOCATOR_FUNCTIONS, is_allocator

__all__ = ["ALLOCATOR_FUNCTIONS", "ALLOCATOR_ONLY", "NO_STACK", "UNKNOWN", "CaptureLike",
           "by_frame", "by_module", "by_process", "callees", "callers", "diff", "icicle",
           "is_allocator", "kmalloc_waste", "kmalloc_waste_total", "matrix", "pprof_profile",
           "stack_text", "to_folded", "to_pprof", "top_stacks", "write_folded"]
