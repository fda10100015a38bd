"""The JupyterLab widgets, at their stable import path (they live in :mod:`slabkit.ui.widgets`,
which also says which of them load only when asked for)."""
from typing import Any

from slabkit.ui import widgets as _widgets
from slabkit.ui.widgets import CachePicker, CaptureRunner, PivotExplorer, __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    return getattr(_widgets, name)     # FlameGraph: loaded there, when asked for
