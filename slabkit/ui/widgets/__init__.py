"""JupyterLab widgets (ipywidgets 8) over the public API: pick a cache, capture it, explore it.

Each widget is a small :class:`ipywidgets.VBox` subclass: display it, or drive it from Python
(set the controls' values, call ``.click()`` on its buttons) as the tests do::

    picker = CachePicker()                      # the cache table with a search box
    runner = CaptureRunner(picker=picker, seconds=10)
    runner.start_button.click(); runner.wait()  # or click Start in the notebook
    PivotExplorer(runner.result)                # table + chart, by process/module/call site/stack

They call only slabkit's public functions (``slabkit.caches``, ``sample``, ``growth``,
``prepare``, ``capture``, the pivots of :mod:`slabkit.analysis.pivots`), looked up on the ``slabkit``
package at call time. A :class:`~slabkit.errors.SlabkitError` (not root, no tracer, a bad pid)
shows as a message inside the widget, never as a traceback.

Captures run in a background thread so the notebook stays usable; widget updates from that
thread are sent over the kernel's IOPub channel, which is thread-safe.
"""
from slabkit.ui.widgets.explorer import PivotExplorer
from slabkit.ui.widgets.picker import CachePicker
from slabkit.ui.widgets.runner import CaptureRunner

__all__ = ["CachePicker", "CaptureRunner", "PivotExplorer"]
