"""What to do next with a capture shown in a widget: its path to copy, a link that opens it in
notebook 02, and a button that makes its report.

The links are notebook outputs (an ``Output`` widget), so JupyterLab opens them itself: a
notebook in a new tab of the same JupyterLab, the report in JupyterLab's HTML viewer (its
"Trust HTML" button runs the interactive flame graph; until then its static image shows) or,
with a middle click, in a browser tab of its own. Both files are written next to the
notebook, in ``analyses/`` (``work_dir``), where JupyterLab can reach them; the capture
itself stays where captures go (:func:`slabkit.capturing.store.default_base`).
"""
from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import ipywidgets as W

from slabkit.errors import SlabkitError
from slabkit.ui.widgets.background import Background
from slabkit.ui.widgets.html import error_html

#: where the notebooks and reports made from a capture are written, next to the notebook
WORK_DIR = "analyses"
EXPLORE_NOTEBOOK = "02-explore-a-capture.ipynb"


def explore_notebook_name(capture_path: Path) -> str:
    return f"02-explore-{capture_path.name}.ipynb"


def report_name(capture_path: Path) -> str:
    return f"{capture_path.name}.html"


class CaptureActions(Background, W.VBox):
    """The path of a capture to copy, "Open in notebook 02" and "Make report".

    Attributes:
        path_box: a Text holding the capture's path (select and copy it).
        open_button, report_button: the two actions (``.click()`` them from Python).
        links: the Output widget where the links to what they made appear.
        notebook, report: the paths written by the last click, or None.
        error: the exception of the last failed action, or None.

    ``work_dir``: where to write them (default ``./analyses``, next to the notebook).
    """

    def __init__(self, *, work_dir: str | os.PathLike | None = None, **kwargs):
        self.capture = None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(WORK_DIR)
        self.notebook: Path | None = None
        self.report: Path | None = None
        self.error: BaseException | None = None
        self.path_box = W.Text(description="Saved in", layout=W.Layout(width="46em"),
                               tooltip="the capture's folder: select it and copy")
        self.path_box.add_class("slabkit-capture-path")
        self.open_button = W.Button(description="Open in notebook 02", icon="book",
                                    tooltip="a copy of notebook 02 set to this capture, "
                                            "opened in JupyterLab",
                                    layout=W.Layout(width="auto"))
        self.report_button = W.Button(description="Make report", icon="file",
                                      tooltip="a self-contained HTML report for colleagues",
                                      layout=W.Layout(width="auto"))
        self.status = W.HTML()
        self.links = W.Output()
        self.links.add_class("slabkit-capture-links")
        super().__init__([W.HBox([self.path_box, self.open_button, self.report_button,
                                  self.status]), self.links], **kwargs)
        self.add_class("slabkit-capture-actions")
        self.open_button.on_click(lambda _: self.open_in_notebook())
        self.report_button.on_click(lambda _: self.make_report())
        self.show(None)

    def show(self, cap: Any) -> None:
        """Act on ``cap`` (a Capture; without a saved folder the actions are disabled)."""
        self.capture = cap
        path = getattr(cap, "path", None)
        self.path_box.value = "" if path is None else str(path)
        self.path_box.disabled = path is None
        for button in (self.open_button, self.report_button):
            button.disabled = path is None
        self.status.value = ""
        self.links.clear_output()

    def _path(self) -> Path:
        if self.capture is None or getattr(self.capture, "path", None) is None:
            raise SlabkitError("no saved capture is shown: make or load one first")
        return Path(self.capture.path).resolve()

    def _link(self, href: Path, text: str, note: str) -> None:
        try:
            rel = os.path.relpath(href, Path.cwd())
        except ValueError:
            rel = str(href)
        from IPython.display import HTML
        self.links.append_display_data(HTML(
            f'<div class="slabkit-note">{html.escape(note)} '
            f'<a href="{html.escape(Path(rel).as_posix())}" class="slabkit-link">'
            f"{html.escape(text)}</a> <code>{html.escape(str(href))}</code></div>"))

    def open_in_notebook(self) -> Path | None:
        """Write ``analyses/02-explore-<capture>.ipynb`` (notebook 02 with ``capture_path``
        set to this capture) and show a link that opens it; returns its path."""
        import nbformat

        from slabkit.ui.report import inject_parameters, notebook_path
        try:
            capture = self._path()
            nb = nbformat.read(notebook_path(EXPLORE_NOTEBOOK), as_version=4)
            nb = inject_parameters(nb, {"capture_path": str(capture)})
            self.work_dir.mkdir(parents=True, exist_ok=True)
            out = (self.work_dir / explore_notebook_name(capture)).resolve()
            nbformat.write(nb, out)
        except (SlabkitError, OSError) as e:
            self.error = e
            self.status.value = error_html(e)
            return None
        self.notebook = out
        self._link(out, f"open {out.name}", "Notebook 02 for this capture:")
        return out

    def make_report(self) -> None:
        """Write the capture's HTML report to ``analyses/<capture>.html`` in the background,
        then show a link to it (:meth:`wait` waits for it)."""
        if self.busy:
            return
        try:
            capture = self._path()
        except SlabkitError as e:
            self.status.value = error_html(e)
            return
        self.report_button.disabled = True
        self.status.value = '<span class="slabkit-note">making the report...</span>'

        def work() -> None:
            from slabkit.ui.report import write_report
            try:
                self.work_dir.mkdir(parents=True, exist_ok=True)
                out = write_report(capture, self.work_dir / report_name(capture)).resolve()
            except Exception as e:  # noqa: BLE001 - a thread: shown in the widget
                self.error = e
                self.status.value = error_html(e)
            else:
                self.report, self.error = out, None
                self.status.value = ""
                self._link(out, f"open {out.name}", "Report:")
            finally:
                self.report_button.disabled = False

        self._in_background(work, "slabkit-report")

