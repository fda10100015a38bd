"""slabkit: who allocates from a Linux slab cache.

The public API (stable; see README "Python API" and ``slabkit.model.schema`` for the tables)::

    slabkit.caches(target=None)              # the slab cache table (this machine)
    slabkit.resolve_cache("eventpoll_pwq")   # alias -> the slabinfo name it lives in
    slabkit.sample(10, 1) / slabkit.growth(series)
    cap = slabkit.capture("filp", seconds=10, backend="auto", mode="allocs",
                          pid=None, comm=None, target=None, options=Options(), out=None)
    cap = slabkit.load(path)                 # a capture folder, folders/globs, or raw output
    slabkit.list_captures()
    slabkit.by_process(cap), by_module, by_frame, top_stacks, callers, callees, matrix,
    diff(a, b), kmalloc_waste(cap, by="callsite"), kmalloc_waste_total(cap),
    to_folded(cap), to_pprof(cap, "out.pb.gz")
    slabkit.summarize(cap)                   # what `slabkit show` prints, as data
    slabkit.sample_path("bpftrace-filp")     # a sample capture shipped with slabkit
    slabkit.plot_top_processes(cap), plot_top_callsites, plot_process_module_heatmap,
    plot_flame, plot_slab_growth, plot_kmalloc_waste

Imports are lazy so ``import slabkit`` is quick and matplotlib loads only when plotting.
"""
from __future__ import annotations

import importlib
from typing import Any

from slabkit._version import __version__

_EXPORTS = {
    "caches": "host.slabinfo", "resolve_cache": "host.slabinfo", "read_slabinfo": "host.slabinfo",
    "sample": "host.slabinfo", "growth": "host.slabinfo",
    "capture": "capturing.run", "prepare": "capturing.run", "Options": "backends.base",
    "load": "capturing.load", "merge": "capturing.load",
    "list_captures": "capturing.store",
    "Capture": "model.tables",
    "by_process": "analysis", "by_module": "analysis", "by_frame": "analysis",
    "top_stacks": "analysis", "callers": "analysis", "callees": "analysis",
    "matrix": "analysis", "diff": "analysis", "to_folded": "analysis",
    "write_folded": "analysis", "to_pprof": "analysis",
    "summarize": "ui.summary",
    "sample_path": "samples", "sample_names": "samples",
    "plot_top_processes": "plots", "plot_top_callsites": "plots",
    "plot_process_module_heatmap": "plots", "plot_flame": "plots", "plot_slab_growth": "plots",
    "plot_kmalloc_waste": "plots",
    "kmalloc_waste": "analysis", "kmalloc_waste_total": "analysis",
    "SlabkitError": "errors", "InvalidInput": "errors", "UnknownCache": "errors",
    "PermissionNeeded": "errors", "TracerUnavailable": "errors", "ProbeFailed": "errors",
    "ParseError": "errors", "CaptureNotFound": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'slabkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
