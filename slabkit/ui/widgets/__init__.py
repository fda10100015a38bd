"""JupyterLab widgets (ipywidgets 8) over the public API: pick a cache, capture it, explore it.

Each widget is a small :class:`ipywidgets.VBox` subclass: display it, or drive it from Python
(set the controls' values, call ``.click()`` on its buttons) as the tests do::

    picker = CachePicker()                      # the cache table with a search box
    runner = CaptureRunner(picker=picker, seconds=10)
    runner.start_button.click(); runner.wait()  # or click Start in the notebook
    PivotExplorer(follow=runner)                # shows each capture the runner makes
    FlameGraph(cap)                             # click to zoom, hover, search

They call only slabkit's public functions (``slabkit.caches``, ``sample``, ``growth``,
``prepare``, ``capture``, the pivots of :mod:`slabkit.analysis.pivots`), looked up on the ``slabkit``
package at call time. A :class:`~slabkit.errors.SlabkitError` (not root, no tracer, a bad pid)
shows as a message inside the widget, never as a traceback.

Captures run in a background thread so the notebook stays usable; widget updates from that
thread are sent over the kernel's IOPub channel, which is thread-safe.
"""
from typing import Any

from slabkit.ui.widgets.explorer import PivotExplorer
from slabkit.ui.widgets.picker import CachePicker
from slabkit.ui.widgets.runner import CaptureRunner

__all__ = ["CachePicker", "CaptureRunner", "FlameGraph", "PivotExplorer"]


def __getattr__(name: str) -> Any:
    # the flame graph widget carries plotly.js (~5 MB): loaded when first asked for
    if name == "FlameGraph":
        from slabkit.ui.flame.widget import FlameGraph
        return FlameGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
