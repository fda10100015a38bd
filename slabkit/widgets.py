"""The JupyterLab widgets, at their stable import path (they live in :mod:`slabkit.ui.widgets`)."""
from slabkit.ui.widgets import CachePicker, CaptureRunner, PivotExplorer

__all__ = ["CachePicker", "CaptureRunner", "PivotExplorer"]
