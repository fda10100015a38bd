"""HTML pieces the widgets share (:mod:`slabkit.ui.html`), and the CSS as a widget.
"""
from __future__ import annotations

import ipywidgets as W

from slabkit.ui.html import (  # noqa: F401  (the widgets import them from here)
    CSS,
    badge_html,
    cell,
    error_html,
    frame_html,
)


def style() -> W.HTML:
    """The CSS, as a hidden HTML widget in each widget (a <style> applies even so)."""
    return W.HTML(CSS, layout=W.Layout(display="none"))
