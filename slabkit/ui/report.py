"""Shareable reports: notebook 02 executed for one capture and saved as one HTML file.

``write_report("data/captures/filp-...", "report.html")`` (``slabkit report CAPTURE -o
report.html``) does what papermill would, with nbformat and nbclient only:

1. read ``02-explore-a-capture.ipynb`` (shipped in ``slabkit/notebooks``; ``notebooks/`` of a
   checkout links to the same files), insert a cell tagged ``injected-parameters`` after the
   cell tagged ``parameters`` setting ``capture_path`` (absolute) and ``interactive = False``;
2. execute it headless in a fresh kernel (a time limit per cell), in a temporary folder;
3. export it with nbconvert's ``HTMLExporter`` (lab template): plots are inline PNG
   (``data:`` URIs), tables are HTML, the CSS is inlined, and the template's external scripts
   (require.js, MathJax, mermaid, the widget manager) are left out, so the file is
   self-contained and reads in any browser with no kernel and no network.

Code cells are hidden by default (``show_code=True`` keeps them): the report is for people
reading the findings; each step is explained by the notebook's markdown, and the code is the
notebook itself, named in the report's header, for anyone who wants to re-run it.

A cell that fails raises :class:`~slabkit.errors.SlabkitError` with the cell's number, its
first line and the error text.
"""
from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slabkit.errors import SlabkitError

PathLike = str | os.PathLike

#: the notebooks shipped with slabkit (package data); ``notebooks/`` in a checkout links here
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
REPORT_NOTEBOOK = "02-explore-a-capture.ipynb"
#: seconds one cell may run before the report gives up
CELL_TIMEOUT_S = 300

_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# The lab template minus every <script src=...> it would fetch from a CDN: nothing in a report
# needs JavaScript (no widgets: interactive=False; no LaTeX; no mermaid diagrams).
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def notebook_path(name: str = REPORT_NOTEBOOK) -> Path:
    """The path of one of slabkit's notebooks (``01-...``, ``02-...``, ``03-...``)."""
    path = NOTEBOOK_DIR / name
    if not path.is_file():
        have = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
        raise SlabkitError(f"no notebook {name!r} in {NOTEBOOK_DIR} (have: {', '.join(have)}): "
                           "is slabkit installed with its package data?")
    return path


def inject_parameters(nb: Any, parameters: Mapping[str, Any]) -> Any:
    """A copy of ``nb`` with a cell setting ``parameters`` after its "parameters" cell.

    Like papermill: the new cell is tagged ``injected-parameters`` and holds one
    ``name = repr(value)`` line per parameter; without a "parameters" cell it goes first.
    Values must be Python literals (str, numbers, bools, None, lists/dicts of those).
    """
    import nbformat
    nb = copy.deepcopy(nb)
    lines = ["# Parameters injected by slabkit.ui.report"]
    for name, value in parameters.items():
        if not name.isidentifier():
            raise SlabkitError(f"parameter name {name!r} is not a Python identifier")
        lines.append(f"{name} = {value!r}")
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    cells = nb.cells
    # a re-injection replaces the previous injected cell, as papermill does
    cells[:] = [c for c in cells if "injected-parameters" not in c.metadata.get("tags", [])]
    at = next((i + 1 for i, c in enumerate(cells)
               if "parameters" in c.metadata.get("tags", [])), 0)
    cells.insert(at, cell)
    return nb


def execute_notebook(notebook: PathLike | Any, parameters: Mapping[str, Any] | None = None,
                     *, cwd: PathLike | None = None, timeout_s: float = CELL_TIMEOUT_S,
                     name: str | None = None) -> Any:
    """Execute a notebook (a path or a ``NotebookNode``) headless and return it with outputs.

    ``parameters`` are injected first (:func:`inject_parameters`). The kernel is the
    ``python3`` kernel of this Python; it starts in ``cwd`` (default: a temporary folder,
    removed afterwards). Raises :class:`~slabkit.errors.SlabkitError` when a cell fails, runs
    longer than ``timeout_s``, or the kernel dies or cannot start; ``name`` names the
    notebook in those messages (default: its file name).
    """
    import nbformat
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient import NotebookClient
    from nbclient.exceptions import (
        CellExecutionError,
        CellTimeoutError,
        DeadKernelError,
    )

    if isinstance(notebook, (str, os.PathLike)):
        name = name or Path(notebook).name
        try:
            nb = nbformat.read(os.fspath(notebook), as_version=4)
        except (OSError, ValueError) as e:
            raise SlabkitError(f"cannot read notebook {notebook}: {e}") from None
    else:
        nb, name = copy.deepcopy(notebook), name or "notebook"
    if parameters:
        nb = inject_parameters(nb, parameters)

    with tempfile.TemporaryDirectory(prefix="slabkit-nb-") as tmp:
        client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                                resources={"metadata": {"path": os.fspath(cwd or tmp)}},
                                config=_kernel_config(Path(tmp)))
        try:
            client.execute()
        except CellExecutionError as e:
            raise SlabkitError(_cell_error(name, nb, e)) from None
        except CellTimeoutError as e:
            raise SlabkitError(f"{name}: a cell ran longer than {timeout_s:g} s "
                               f"({_failing_cell(nb) or 'unknown cell'}): {e}") from None
        except DeadKernelError as e:
            raise SlabkitError(f"{name}: the kernel died while executing "
                               f"({_failing_cell(nb) or 'unknown cell'}): {e}") from None
        except NoSuchKernel:
            raise SlabkitError(f"{name}: no 'python3' Jupyter kernel: install ipykernel "
                               "in slabkit's environment (pip install ipykernel)") from None
        except (RuntimeError, TimeoutError) as e:   # "Kernel didn't respond in 60 seconds"
            raise SlabkitError(f"{name}: the Jupyter kernel did not start: {e}") from None
    return nb


def _kernel_config(folder: Path) -> Any:
    """Talk to the kernel over Unix sockets in ``folder`` (absolute, as the kernel runs in
    another working folder) where their paths fit in 108 bytes; else over local TCP, where
    ipykernel warns on every start that the connection is not encrypted."""
    from traitlets.config import Config
    sockets = folder.resolve() / "kernel"
    if len(os.fspath(sockets)) > 90:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": os.fspath(sockets)}})


def _failing_cell(nb: Any) -> str:
    """'cell N (first line)' of the cell that holds an error output, or of the last cell run."""
    last = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            last = (i, cell)
            break
        if cell.get("execution_count"):
            last = (i, cell)
    if last is None:
        return ""
    i, cell = last
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {i + 1} ({first.strip()[:80]!r})"


def _cell_error(name: str, nb: Any, e: Any) -> str:
    tb = _ANSI_RE.sub("", str(getattr(e, "traceback", "") or e))
    # the last few lines of the kernel's traceback: where it happened and the error itself
    tail = [line for line in tb.strip().splitlines() if line.strip()][-6:]
    where = _failing_cell(nb) or "a cell"
    return (f"{name}: {where} failed: {e.ename}: {_ANSI_RE.sub('', str(e.evalue))}\n"
            + "\n".join(tail))


def to_html(nb: Any, *, show_code: bool = False) -> str:
    """An executed notebook as one self-contained HTML page (see the module docs)."""
    import jinja2
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            exclude_input=not show_code, exclude_input_prompt=not show_code,
                            exclude_output_prompt=True,
                            extra_loaders=[jinja2.DictLoader({"slabkit-report.html.j2":
                                                              _TEMPLATE})],
                            template_file="slabkit-report.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    return body


def write_report(capture_path: PathLike, out_html: PathLike, *, show_code: bool = False,
                 notebook: PathLike | None = None, timeout_s: float = CELL_TIMEOUT_S) -> Path:
    """Execute notebook 02 for ``capture_path`` and write it to ``out_html``; returns the path.

    ``capture_path``: anything :func:`slabkit.load` reads (a capture folder, raw tracer
    output). ``notebook``: another parameterised notebook to use instead. The page is
    self-contained (plots inline); code cells are hidden unless ``show_code``.

    >>> write_report("data/captures/filp-20261130-091812-vm", "filp.html")   # doctest: +SKIP
    PosixPath('filp.html')
    """
    import nbformat

    from slabkit.capturing.load import load

    capture = Path(capture_path).resolve()
    cap = load(capture)   # a clear CaptureNotFound/ParseError now, before starting a kernel
    source = Path(notebook) if notebook is not None else notebook_path(REPORT_NOTEBOOK)
    try:
        nb = nbformat.read(os.fspath(source), as_version=4)
    except (OSError, ValueError) as e:
        raise SlabkitError(f"cannot read notebook {source}: {e}") from None
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = nbformat.v4.new_markdown_cell(
        f"*slabkit report: capture `{capture}` ({cap.cache}, {cap.meta.get('backend', '?')}),"
        f" made {stamp} by executing the notebook `{source.name}` of slabkit "
        f"{_version()}; open that notebook in JupyterLab with `capture_path` set to this "
        "capture to explore it interactively.*")
    header.metadata["tags"] = ["injected-header"]
    nb.cells.insert(0, header)
    nb.metadata["title"] = f"slabkit report: {cap.cache}"
    executed = execute_notebook(nb, {"capture_path": str(capture), "interactive": False},
                                timeout_s=timeout_s, name=source.name)
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_html(executed, show_code=show_code), encoding="utf-8")
    return out


def _version() -> str:
    from slabkit._version import __version__
    return __version__
