"""HTML pieces the widgets, the summary and the notebooks share: the CSS, the sample badge,
errors and pivot tables as HTML (no ipywidgets here: the summary's HTML needs none).
"""
from __future__ import annotations

import html
import traceback
from typing import Any

import pandas as pd

from slabkit.analysis import present
from slabkit.errors import ProbeFailed, SlabkitError

# Monospace option text for the cache list, so its columns line up. An HTML widget's <style>
# applies to the whole page, so every rule is scoped to the widgets' own CSS classes.
CSS = """<style>
.slabkit-cache-list select { font-family: var(--jp-code-font-family, monospace);
                             font-size: var(--jp-code-font-size, 12px); }
.slabkit-block .widget-html-content, .slabkit-block .widget-html-content * { line-height: 1.4; }
.slabkit-table table { border-collapse: collapse; font-size: 12px; margin: 4px 0; }
.slabkit-table th, .slabkit-table td { padding: 2px 8px; text-align: right; vertical-align: top; }
.slabkit-table td.slabkit-text, .slabkit-table th.slabkit-text { text-align: left; }
.slabkit-table td.slabkit-stack { text-align: left; font-family: monospace; font-size: 11px;
                                  white-space: normal; max-width: 60em; }
.slabkit-error { color: #b00020; white-space: pre-wrap; }
.slabkit-note { color: #555; }
.slabkit-badge { display: inline-block; background: #fff3cd; color: #664d03;
                 border: 1px solid #e0c36c; border-radius: 4px; padding: 0 6px;
                 font-size: 12px; font-weight: normal; margin-left: 6px; }
.slabkit-ready { color: #1e6b2e; }
.slabkit-blocked { color: #8a4b00; white-space: pre-wrap; }
</style>"""


# --------------------------------------------------------------------------------------------
# small helpers


def badge_html(text: str | None) -> str:
    """The sample badge (``sample, recorded on vm, 2026-11-30``) as HTML, or ``""``."""
    return f'<span class="slabkit-badge">{html.escape(text)}</span>' if text else ""


def error_html(error: BaseException) -> str:
    """A readable message for an error: the text of a SlabkitError (a failed tracer: what
    happened and what to do, then the last lines of its stderr and where its output is kept);
    for anything else (a bug) its type and text, with the traceback folded away."""
    if isinstance(error, ProbeFailed):
        parts = [f'<div class="slabkit-error">{html.escape(error.summary)}</div>']
        if error.tail:
            parts.append('<div class="slabkit-note">the tracer said (last lines of its '
                         f'stderr):</div><pre class="slabkit-error">'
                         f'{html.escape(chr(10).join(error.tail))}</pre>')
        if error.raw_path:
            parts.append(f'<div class="slabkit-note">its output is kept in '
                         f"{html.escape(error.raw_path)}</div>")
        return "".join(parts)
    if isinstance(error, SlabkitError):
        return f'<div class="slabkit-error">{html.escape(str(error))}</div>'
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (f'<div class="slabkit-error">unexpected error (please report it): '
            f"{html.escape(type(error).__name__)}: {html.escape(str(error))}</div>"
            f"<details><summary>details</summary><pre>{html.escape(tb)}</pre></details>")


def frame_html(df: pd.DataFrame, *, text_columns: tuple[str, ...] = (),
               stack_columns: tuple[str, ...] = (), measure: str | None = None) -> str:
    """A pivot as a compact HTML table, every value and column name as
    :mod:`slabkit.analysis.present` writes them (counts with thousands separators, bytes in
    KiB/MiB, shares as percentages, rates per second)."""
    if df.empty:
        return '<div class="slabkit-note">no allocations recorded</div>'
    names = [present.column_label(n) if n is not None else "" for n in df.index.names]
    head = "".join(f'<th class="slabkit-text">{html.escape(str(n))}</th>' for n in names)
    head += "".join(
        f'<th class="{"slabkit-text" if c in text_columns + stack_columns else ""}">'
        f"{html.escape(present.column_label(c, measure=measure))}</th>" for c in df.columns)
    rows = []
    for key, row in df.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        cells = "".join(f'<td class="slabkit-text">{html.escape(cell(k))}</td>' for k in keys)
        for c in df.columns:
            text = present.cell_text(str(c), row[c], measure=measure)
            cls = ("slabkit-stack" if c in stack_columns
                   else "slabkit-text" if c in text_columns else "")
            cells += f'<td class="{cls}">{html.escape(text)}</td>'
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def cell(v: Any) -> str:
    if v is None or (not isinstance(v, (list, tuple)) and pd.isna(v)):
        return "-"
    return str(v)


