"""Pivots over a capture (:mod:`slabkit.analysis.pivots`) and exports to other tools."""
from slabkit.analysis.pivots import (
    ALLOCATOR_FUNCTIONS, ALLOCATOR_ONLY, NO_STACK, UNKNOWN, CaptureLike, by_frame, by_module,
    by_process, callees, callers, diff, icicle, is_allocator, matrix, to_folded, top_stacks,
    write_folded,
)

__all__ = ["ALLOCATOR_FUNCTIONS", "ALLOCATOR_ONLY", "NO_STACK", "UNKNOWN", "CaptureLike",
           "by_frame", "by_module", "by_process", "callees", "callers", "diff", "icicle",
           "is_allocator", "matrix", "to_folded", "top_stacks", "write_folded"]
