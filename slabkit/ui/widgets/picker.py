"""The cache picker: the slab cache table with a search box.
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import pandas as pd
import traitlets

import slabkit
from slabkit.analysis import present
from slabkit.errors import SlabkitError
from slabkit.host.where import legacy_target
from slabkit.ui.widgets.background import Background
from slabkit.ui.widgets.html import error_html, style

# --------------------------------------------------------------------------------------------
# cache picker


class CachePicker(Background, W.VBox):
    """The slab cache table with a search box; the chosen cache's name is :attr:`value`.

    Sorted by memory (``sort="memory"``), or by growth over a short window
    (``sort="growth"``: ``/proc/slabinfo`` is sampled for :attr:`growth_seconds` in the
    background, then the list is ordered by bytes gained per second). The search matches
    cache names and the names merged into them (``cred`` finds ``pid``); the details pane of
    the chosen cache shows its object size, memory and which caches are merged into it.

    Attributes:
        value: the chosen cache's name as ``/proc/slabinfo`` reports it, or None (a trait:
            ``picker.observe(callback, "value")``; set it to choose a cache, an alias chooses
            the cache it is merged into).
        table: the :func:`slabkit.caches` table (None when it could not be read).
        growth: the :func:`slabkit.growth` table of the last growth window, or None.
        search, sort, refresh_button, select, details, message: the controls and panes.

    ``target``: what :func:`slabkit.caches` reads (None: this machine; a fake root folder, a
    saved slabinfo file, an SSH destination); ``table``: use this table instead of reading one.
    (``root=`` still works, with a DeprecationWarning.)
    """

    value = traitlets.Unicode(None, allow_none=True)

    def __init__(self, *, target: Any = None, table: pd.DataFrame | None = None,
                 sort: str = "memory", growth_seconds: float = 2.0, rows: int = 12,
                 value: str | None = None, **kwargs):
        if "root" in kwargs:
            target = legacy_target(target, {"root": kwargs.pop("root")}, func="CachePicker")
        self.target = target
        self.growth_seconds = growth_seconds
        self.table: pd.DataFrame | None = None
        self.growth: pd.DataFrame | None = None
        self._syncing = False

        self.search = W.Text(placeholder="name or merged alias, e.g. dentry, kmalloc-64, cred",
                             description="Search", continuous_update=True,
                             layout=W.Layout(width="28em"))
        self.sort = W.ToggleButtons(options=[("by memory", "memory"), ("by growth", "growth")],
                                    value="memory", tooltips=[
                                        "biggest first",
                                        "sample /proc/slabinfo, fastest growing first"],
                                    style={"button_width": "8.5em"})
        self.refresh_button = W.Button(description="Refresh", icon="refresh",
                                       tooltip="read /proc/slabinfo again",
                                       layout=W.Layout(width="7em"))
        self.select = W.Select(options=[], rows=rows, layout=W.Layout(width="100%"))
        self.select.add_class("slabkit-cache-list")
        self.count_label = W.HTML()
        self.details = W.HTML()
        self.message = W.HTML()
        for pane in (self.details, self.message):
            pane.add_class("slabkit-block")
        header = W.HTML('<b>Slab caches</b> <span class="slabkit-note">'
                        "(name, memory held, object size, caches merged into it)</span>")
        super().__init__([style(), header,
                          W.HBox([self.search, self.refresh_button]),
                          W.HBox([W.Label("Sort", layout=W.Layout(width="auto",
                                                                   margin="0 8px 0 40px")),
                                  self.sort, self.count_label]),
                          self.message, self.select, self.details], **kwargs)
        self.add_class("slabkit-cache-picker")

        self.search.observe(lambda _: self._render(), "value")
        self.sort.observe(self._on_sort, "value")
        self.select.observe(self._on_select, "value")
        self.refresh_button.on_click(lambda _: self.refresh())

        if table is not None:
            self.table = table
            self._render()
        else:
            self.refresh()
        if value is not None:
            self.value = value
        if sort != "memory":
            self.sort.value = sort

    # -- data -------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the cache table again (and re-measure growth when sorted by growth)."""
        try:
            self.table = slabkit.caches(self.target)
            self.message.value = ""
        except SlabkitError as e:
            self.table = None
            self.message.value = error_html(e)
        self._render()
        if self.sort.value == "growth":
            self.measure_growth()

    def measure_growth(self) -> None:
        """Sample ``/proc/slabinfo`` for :attr:`growth_seconds` in the background, then sort
        by growth. :meth:`wait` waits for it."""
        if self.busy:
            return
        seconds = float(self.growth_seconds)
        self.message.value = (f'<div class="slabkit-note">measuring growth: sampling '
                              f"/proc/slabinfo for {seconds:g} s...</div>")

        def work():
            try:
                series = slabkit.sample(seconds, min(1.0, seconds), target=self.target)
                self.growth = slabkit.growth(series)
                self.message.value = ""
            except Exception as e:  # noqa: BLE001 - a thread: shown in the widget, not raised
                self.growth = None
                self.message.value = error_html(e)
            self._render()

        self._in_background(work, "slabkit-growth")

    def rows(self) -> pd.DataFrame:
        """The rows the list shows now: filtered by the search, in the chosen order."""
        if self.table is None:
            return pd.DataFrame()
        df = self.table
        text = self.search.value.strip().lower()
        if text:
            names = df["name"].astype(str).str.lower()
            aliases = df["aliases"].map(
                lambda a: any(text in x.lower() for x in a) if isinstance(a, list) else False)
            df = df[names.str.contains(text, regex=False) | aliases.astype(bool)]
        if self.sort.value == "growth" and self.growth is not None:
            g = self.growth[["name", "delta_objs", "delta_bytes", "bytes_per_s"]]
            df = df.merge(g.astype({"name": df["name"].dtype}), on="name", how="left")
            return df.sort_values(["delta_bytes", "delta_objs", "memory_bytes"],
                                  ascending=False, kind="stable", na_position="last",
                                  ignore_index=True)
        return df.sort_values("memory_bytes", ascending=False, kind="stable",
                              ignore_index=True)

    # -- rendering --------------------------------------------------------------------------

    def _label(self, row: pd.Series) -> str:
        name = str(row["name"])
        size = row["object_size"] if not pd.isna(row["object_size"]) else row["objsize"]
        aliases = row["aliases"] if isinstance(row["aliases"], list) else []
        merged = f"  +{', '.join(aliases)}" if aliases else ""
        if len(merged) > 40:
            merged = merged[:38] + ".."
        grow = ""
        if "delta_bytes" in row.index:
            d = row["delta_bytes"]
            grow = " " * 11 if pd.isna(d) else f"{'+' if d >= 0 else '-'}{present.bytes_text(abs(d)):>9} "
        return (f"{name[:30]:<30} {grow}{present.bytes_text(row['memory_bytes']):>9}  "
                f"{present.count_text(size):>6} B{merged}")

    def _render(self) -> None:
        df = self.rows()
        total = 0 if self.table is None else len(self.table)
        options = [(self._label(r), str(r["name"])) for _, r in df.iterrows()]
        self._syncing = True
        try:
            current = self.value
            self.select.options = options
            names = [o[1] for o in options]
            self.select.value = current if current in names else (names[0] if names else None)
        finally:
            self._syncing = False
        self.value = self.select.value
        growth = (f", growth over {self.growth_seconds:g} s"
                  if self.sort.value == "growth" and self.growth is not None else "")
        self.count_label.value = (f'<span class="slabkit-note">{len(df)} of {total} '
                                  f"caches{growth}</span>")
        self._show_details()

    def _on_sort(self, change) -> None:
        if change["new"] == "growth" and self.growth is None:
            self.measure_growth()    # renders when it has measured (rendering here too
            return                   # could finish last and undo its order)
        self._render()

    def _on_select(self, change) -> None:
        if not self._syncing:
            self.value = change["new"]

    @traitlets.observe("value")
    def _value_changed(self, change) -> None:
        if self._syncing:
            self._show_details()
            return
        name = change["new"]
        if name is not None and self.table is not None:
            name = self._resolve(name)
            if name is None:
                self.message.value = error_html(slabkit.UnknownCache(change["new"]))
        names = [o[1] for o in self.select.options]
        if name is not None and name not in names and self.search.value:
            self.search.value = ""  # the chosen cache was filtered out: show all again
            names = [o[1] for o in self.select.options]
        if name != change["new"]:
            self.value = name
            return
        if name in names and self.select.value != name:
            self._syncing = True
            try:
                self.select.value = name
            finally:
                self._syncing = False
        self._show_details()

    def _resolve(self, name: str) -> str | None:
        """A slabinfo name, or the name an alias is merged into; unknown names give None."""
        df = self.table
        if (df["name"] == name).any():
            return name
        has = df["aliases"].map(lambda a: isinstance(a, list) and name in a)
        return str(df[has].iloc[0]["name"]) if has.any() else None

    def _show_details(self) -> None:
        if self.table is None or self.value is None:
            self.details.value = ""
            return
        rows = self.table[self.table["name"] == self.value]
        if rows.empty:
            self.details.value = ""
            return
        r = rows.iloc[0]
        aliases = r["aliases"] if isinstance(r["aliases"], list) else []
        if aliases:
            merged = (f"<b>{html.escape(', '.join(aliases))}</b> (the kernel reports their "
                      f"allocations under {html.escape(str(r['name']))})")
        elif isinstance(r["aliases"], list):
            merged = "none"
        else:
            merged = "unknown (no /sys/kernel/slab entry)"
        util = "-" if pd.isna(r["utilisation"]) else f"{float(r['utilisation']):.0%}"
        items = [
            ("kind", str(r["kind"]) + (f" ({r['kmalloc_type']})"
                                       if not pd.isna(r["kmalloc_type"]) else "")),
            ("object size", f"{present.count_text(r['object_size'])} B (slot {present.count_text(r['objsize'])} B)"),
            ("objects", (f"{present.count_text(r['active_objs'])} in use of "
                         f"{present.count_text(r['num_objs'])} ({util})")),
            ("memory", f"{present.bytes_text(r['memory_bytes'])} in {present.count_text(r['num_slabs'])} slabs"),
            ("merged into it", merged),
        ]
        if self.sort.value == "growth" and self.growth is not None:
            g = self.growth[self.growth["name"] == self.value]
            if len(g):
                g = g.iloc[0]
                items.append(("growth", (f"{int(g['delta_objs']):+,} objects, "
                                         f"{present.bytes_text(g['delta_bytes'])} in "
                                         f"{float(g['seconds']):.1f} s")))
        body = "".join(f"<tr><th class='slabkit-text'>{html.escape(k)}</th>"
                       f"<td class='slabkit-text'>{v if k == 'merged into it' else html.escape(v)}"
                       f"</td></tr>" for k, v in items)
        self.details.value = (f"<div class='slabkit-table'><b>{html.escape(str(r['name']))}"
                              f"</b><table>{body}</table></div>")


