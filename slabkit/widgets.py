"""The JupyterLab widgets, at their stable import path (they live in :mod:`slabkit.ui.widgets`)."""
from typing import Any

from slabkit.ui.widgets import CachePicker, CaptureRunner, PivotExplorer

__all__ = ["CachePicker", "CaptureRunner", "FlameGraph", "PivotExplorer"]


def __getattr__(name: str) -> Any:
    if name == "FlameGraph":    # loaded when asked for: it carries plotly.js
        from slabkit.ui.flame.widget import FlameGraph
        return FlameGraph
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
