"""Read an HTML report back: its tables as rows of cell text, its text, and a check that a
DataFrame is shown in it with every value (not just its first row)."""
from __future__ import annotations

import html
import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self._row = []
            self.tables[-1].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(page: str) -> list[list[list[str]]]:
    """Every ``<table>`` of ``page``: a list of rows, each a list of cell texts."""
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def page_text(page: str) -> str:
    """The page's text: tags removed, entities decoded (what a reader sees, line by line)."""
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _shown(value, cell: str, formats: dict, column: str) -> bool:
    """Whether ``cell`` is how the report shows ``value`` (display precision 3)."""
    if column in formats:
        return cell == formats[column].format(value)
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return cell in ("<NA>", "NaN", "nan", "None")
    if isinstance(value, (bool, np.bool_)):
        return cell == str(bool(value))
    if isinstance(value, (int, np.integer)):
        return cell == str(int(value))
    if isinstance(value, (float, np.floating)):
        try:
            return math.isclose(float(cell), round(float(value), 3), abs_tol=1e-9)
        except ValueError:
            return False
    return cell == str(value)


def assert_frame_in_report(df: pd.DataFrame, tables: list[list[list[str]]], *,
                           formats: dict | None = None) -> None:
    """Some table of the report shows ``df`` whole: its columns, and each row's index and
    every value in order. ``formats``: column -> format string (a Styler's ``format``)."""
    formats = formats or {}
    header = ["", *map(str, df.columns)]
    want = [[str(i), *map(str, row)] for i, row in zip(df.index, df.itertuples(index=False))]
    for table in tables:
        if not table or table[0] != header:
            continue
        rows = [r for r in table[1:] if any(r[1:])]          # not the index-name row
        if len(rows) != len(df):
            continue
        ok = all(r[0] == str(i) and len(r) == len(header) and all(
            _shown(v, c, formats, col) for v, c, col in zip(row, r[1:], df.columns))
            for r, i, row in zip(rows, df.index, df.itertuples(index=False)))
        if ok:
            return
    near = [t[:4] for t in tables if t and t[0] == header]
    raise AssertionError(f"no table of the report shows {want[:3]}... (columns {header}); "
                         f"tables with those columns start: {near}")
