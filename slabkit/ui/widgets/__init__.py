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
from __future__ import annotations

import html
import io
import threading
import traceback
from typing import Any

import ipywidgets as W
import pandas as pd
import traitlets

import slabkit
from slabkit.errors import SlabkitError

__all__ = ["CachePicker", "CaptureRunner", "PivotExplorer"]

# Monospace option text for the cache list, so its columns line up. An HTML widget's <style>
# applies to the whole page, so every rule is scoped to the widgets' own CSS classes.
_CSS = """<style>
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
</style>"""


def _style() -> W.HTML:
    """The CSS, as a hidden HTML widget in each widget (a <style> applies even so)."""
    return W.HTML(_CSS, layout=W.Layout(display="none"))


# --------------------------------------------------------------------------------------------
# small helpers


def _human_bytes(n: Any) -> str:
    """``123456`` -> ``"121 KiB"``; NA -> ``"-"``."""
    if n is None or pd.isna(n):
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _int_text(n: Any) -> str:
    return "-" if n is None or pd.isna(n) else f"{int(n):,}"


def _error_html(error: BaseException) -> str:
    """A readable message for an error: the text of a SlabkitError; for anything else (a bug)
    its type and text, with the traceback folded away."""
    if isinstance(error, SlabkitError):
        return f'<div class="slabkit-error">{html.escape(str(error))}</div>'
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return (f'<div class="slabkit-error">unexpected error (please report it): '
            f"{html.escape(type(error).__name__)}: {html.escape(str(error))}</div>"
            f"<details><summary>details</summary><pre>{html.escape(tb)}</pre></details>")


def _frame_html(df: pd.DataFrame, *, text_columns: tuple[str, ...] = (),
                stack_columns: tuple[str, ...] = ()) -> str:
    """A pivot as a compact HTML table: counts with thousands separators, share as percent."""
    if df.empty:
        return '<div class="slabkit-note">no allocations recorded</div>'
    names = [n if n is not None else "" for n in df.index.names]
    head = "".join(f'<th class="slabkit-text">{html.escape(str(n))}</th>' for n in names)
    head += "".join(
        f'<th class="{"slabkit-text" if c in text_columns + stack_columns else ""}">'
        f"{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for key, row in df.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        cells = "".join(f'<td class="slabkit-text">{html.escape(_cell(k))}</td>' for k in keys)
        for c in df.columns:
            v = row[c]
            if c == "share":
                text = "-" if pd.isna(v) else f"{float(v):.1%}"
            elif c == "per_s":
                text = "-" if pd.isna(v) else f"{float(v):,.1f}"
            elif c in ("count", "bytes", "frames"):
                text = _int_text(v)
            else:
                text = _cell(v)
            cls = ("slabkit-stack" if c in stack_columns
                   else "slabkit-text" if c in text_columns else "")
            cells += f'<td class="{cls}">{html.escape(text)}</td>'
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None or (not isinstance(v, (list, tuple)) and pd.isna(v)):
        return "-"
    return str(v)


# --------------------------------------------------------------------------------------------
# cache picker


class CachePicker(W.VBox):
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

    ``root``: what :func:`slabkit.caches` reads ("/" this machine, a fake root folder, a saved
    slabinfo file); ``table``: use this table instead of reading one.
    """

    value = traitlets.Unicode(None, allow_none=True)

    def __init__(self, *, root: Any = "/", table: pd.DataFrame | None = None,
                 sort: str = "memory", growth_seconds: float = 2.0, rows: int = 12,
                 value: str | None = None, **kwargs):
        self.root = root
        self.growth_seconds = growth_seconds
        self.table: pd.DataFrame | None = None
        self.growth: pd.DataFrame | None = None
        self._thread: threading.Thread | None = None
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
        super().__init__([_style(), header,
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
            self.table = slabkit.caches(self.root)
            self.message.value = ""
        except SlabkitError as e:
            self.table = None
            self.message.value = _error_html(e)
        self._render()
        if self.sort.value == "growth":
            self.measure_growth()

    def measure_growth(self) -> None:
        """Sample ``/proc/slabinfo`` for :attr:`growth_seconds` in the background, then sort
        by growth. :meth:`wait` waits for it."""
        if self._thread is not None and self._thread.is_alive():
            return
        seconds = float(self.growth_seconds)
        self.message.value = (f'<div class="slabkit-note">measuring growth: sampling '
                              f"/proc/slabinfo for {seconds:g} s...</div>")

        def work():
            try:
                series = slabkit.sample(seconds, min(1.0, seconds), root=self.root)
                self.growth = slabkit.growth(series)
                self.message.value = ""
            except Exception as e:  # noqa: BLE001 - a thread: shown in the widget, not raised
                self.growth = None
                self.message.value = _error_html(e)
            self._render()

        self._thread = threading.Thread(target=work, name="slabkit-growth", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a growth measurement to finish; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

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
            grow = " " * 11 if pd.isna(d) else f"{'+' if d >= 0 else '-'}{_human_bytes(abs(d)):>9} "
        return (f"{name[:30]:<30} {grow}{_human_bytes(row['memory_bytes']):>9}  "
                f"{_int_text(size):>6} B{merged}")

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
            self.measure_growth()
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
                self.message.value = _error_html(slabkit.UnknownCache(change["new"]))
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
            ("object size", f"{_int_text(r['object_size'])} B (slot {_int_text(r['objsize'])} B)"),
            ("objects", (f"{_int_text(r['active_objs'])} in use of "
                         f"{_int_text(r['num_objs'])} ({util})")),
            ("memory", f"{_human_bytes(r['memory_bytes'])} in {_int_text(r['num_slabs'])} slabs"),
            ("merged into it", merged),
        ]
        if self.sort.value == "growth" and self.growth is not None:
            g = self.growth[self.growth["name"] == self.value]
            if len(g):
                g = g.iloc[0]
                items.append(("growth", (f"{int(g['delta_objs']):+,} objects, "
                                         f"{_human_bytes(g['delta_bytes'])} in "
                                         f"{float(g['seconds']):.1f} s")))
        body = "".join(f"<tr><th class='slabkit-text'>{html.escape(k)}</th>"
                       f"<td class='slabkit-text'>{v if k == 'merged into it' else html.escape(v)}"
                       f"</td></tr>" for k, v in items)
        self.details.value = (f"<div class='slabkit-table'><b>{html.escape(str(r['name']))}"
                              f"</b><table>{body}</table></div>")


# --------------------------------------------------------------------------------------------
# capture runner


class CaptureRunner(W.VBox):
    """Run :func:`slabkit.capture` from a form, in a background thread, with a progress bar.

    Controls: :attr:`cache` (linked to a :class:`CachePicker` given as ``picker``),
    :attr:`seconds`, :attr:`backend` (``auto`` and the backends that can run here;
    :attr:`backends_note` says why the others cannot), :attr:`mode`, :attr:`pid_filter`,
    :attr:`comm_filter`, :attr:`start_button`, :attr:`stop_button`. Stop ends the capture early and
    keeps what it captured (status ``interrupted``).

    Attributes:
        status: ``idle``, ``preparing``, ``running``, ``complete``, ``interrupted`` or
            ``failed`` (a trait: observe it to react when a capture ends).
        result: the :class:`~slabkit.Capture` of the last run, or None.
        error: the exception of the last failed run, or None.
        progress: a FloatProgress from 0 to 1, fed by the capture's progress callback.
        status_label, messages, summary: the status line, the plan/program/tracer messages,
            and the end-of-capture summary (top processes and call sites).

    ``base``: the folder under which captures are saved (default: ``slabkit.capture``'s,
    ``$SLABKIT_CAPTURE_DIR`` or ``./data/captures``). ``check_backends=False`` skips asking
    :func:`slabkit.prepare` which backends can run (it needs root).
    """

    status = traitlets.Unicode("idle")

    def __init__(self, cache: str | None = None, *, picker: CachePicker | None = None,
                 seconds: float = 10.0, backend: str = "auto", mode: str = "allocs",
                 pid: int | str | None = None, comm: str | None = None, base: Any = None,
                 check_backends: bool = True, **kwargs):
        self.base = base
        self.result = None
        self.error: BaseException | None = None
        self.prepared = None
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._check_timer: threading.Timer | None = None
        self._check_backends = check_backends

        names = list(slabkit_backends())
        self.cache = W.Text(value=cache or (picker.value if picker is not None else "") or "",
                            description="Cache", placeholder="e.g. filp",
                            layout=W.Layout(width="20em"))
        self.seconds = W.BoundedFloatText(value=seconds, min=0.1, max=86400, step=1,
                                          description="Seconds", layout=W.Layout(width="12em"))
        self.backend = W.Dropdown(options=["auto", *names],
                                  value=backend if backend in ["auto", *names] else "auto",
                                  description="Backend", layout=W.Layout(width="16em"))
        self.mode = W.Dropdown(options=[("who allocates", "allocs"),
                                        ("outstanding objects", "outstanding")],
                               value=mode, description="Mode", layout=W.Layout(width="18em"))
        self.pid_filter = W.Text(value="" if pid is None else str(pid), description="PID",
                          placeholder="any", layout=W.Layout(width="12em"))
        self.comm_filter = W.Text(value=comm or "", description="Comm", placeholder="any",
                           layout=W.Layout(width="16em"))
        self.start_button = W.Button(description="Start", icon="play", button_style="success",
                                     tooltip="start the capture")
        self.stop_button = W.Button(description="Stop", icon="stop", button_style="danger",
                                    disabled=True, tooltip="end now and keep what was captured")
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, description="Progress",
                                        bar_style="info", layout=W.Layout(width="30em"))
        self.status_label = W.HTML("idle")
        self.backends_note = W.HTML()
        self.messages = W.HTML()
        self.summary = W.HTML()
        for pane in (self.backends_note, self.messages, self.summary):
            pane.add_class("slabkit-block")
        if picker is not None:
            W.dlink((picker, "value"), (self.cache, "value"), transform=lambda v: v or "")

        super().__init__([
            _style(), W.HTML("<b>Capture</b>"),
            W.HBox([self.cache, self.seconds, self.backend]),
            W.HBox([self.mode, self.pid_filter, self.comm_filter]),
            self.backends_note,
            W.HBox([self.start_button, self.stop_button, self.progress, self.status_label]),
            self.messages, self.summary], **kwargs)
        self.add_class("slabkit-capture-runner")

        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.cache.observe(self._on_cache, "value")
        self.mode.observe(self._on_cache, "value")
        if check_backends and self.cache.value:
            self._schedule_check(0.0)

    # -- backends -----------------------------------------------------------------------------

    def check_backends(self) -> Any:
        """Ask :func:`slabkit.prepare` which backend would capture :attr:`cache` and why the
        others would not; updates :attr:`backend`'s choices and :attr:`backends_note`.
        Returns the Prepared, or None (the reason is in the note)."""
        cache = self.cache.value.strip()
        if not cache:
            self.backends_note.value = ""
            return None
        try:
            prep = slabkit.prepare(cache, mode=self.mode.value)
        except SlabkitError as e:
            self.backends_note.value = (f'<div class="slabkit-note">backends: cannot check '
                                        f"({html.escape(str(e))})</div>")
            return None
        self.prepared = prep
        usable = [prep.backend.name] + [n for n, why in prep.not_used.items()
                                        if why.endswith("is preferred")]
        names = [n for n in slabkit_backends() if n in usable]
        current = self.backend.value
        self.backend.options = ["auto", *names]
        self.backend.value = current if current in self.backend.options else "auto"
        lines = [f"<b>auto</b> = {html.escape(prep.backend.name)}"]
        lines += [f"{html.escape(n)}: {html.escape(why)}" for n, why in prep.not_used.items()
                  if not why.endswith("is preferred")]
        self.backends_note.value = ('<div class="slabkit-note">backends: '
                                    + "; ".join(lines) + "</div>")
        return prep

    def _schedule_check(self, delay: float = 0.6) -> None:
        if self._check_timer is not None:
            self._check_timer.cancel()
        self._check_timer = threading.Timer(delay, self._safe_check)
        self._check_timer.daemon = True
        self._check_timer.start()

    def _safe_check(self) -> None:
        try:
            self.check_backends()
        except Exception as e:  # noqa: BLE001 - a thread: shown in the widget, not raised
            self.backends_note.value = _error_html(e)

    def _on_cache(self, _change) -> None:
        if self._check_backends and not self.running:
            self._schedule_check()

    # -- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start a capture with the form's values (what the Start button does)."""
        if self.running:
            return
        self.result, self.error, self.prepared = None, None, None
        self._stop_event = threading.Event()
        self.progress.value = 0.0
        self.progress.bar_style = "info"
        self.summary.value = ""
        self.messages.value = ""
        self._set_status("preparing", "preparing: checking the cache and the tracers...")
        self.start_button.disabled = True
        self.stop_button.disabled = False
        args = {"cache": self.cache.value.strip(), "seconds": float(self.seconds.value),
                "backend": self.backend.value, "mode": self.mode.value,
                "pid": self.pid_filter.value.strip() or None,
                "comm": self.comm_filter.value.strip() or None}
        self._thread = threading.Thread(target=self._run, kwargs=args, name="slabkit-capture",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the running capture now; what it captured is kept (what Stop does)."""
        if self.running:
            self._stop_event.set()
            self.stop_button.disabled = True
            self.status_label.value = "stopping..."

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running capture to end; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _set_status(self, status: str, text: str) -> None:
        self.status_label.value = html.escape(text)
        self.status = status

    def _on_progress(self, done: float, total: float) -> None:
        if self.status == "preparing":
            self._set_status("running", "running")
        if total > 0:
            self.progress.value = max(0.0, min(1.0, done / total))
        if not self._stop_event.is_set():
            self.status_label.value = f"running: {done:.1f} of {total:g} s"

    def _run(self, cache: str, seconds: float, backend: str, mode: str, pid, comm) -> None:
        try:
            prep = slabkit.prepare(cache, backend=backend, mode=mode, pid=pid, comm=comm)
            self.prepared = prep
            self.messages.value = _plan_html(prep)
            cap = slabkit.capture(cache, seconds, backend=backend, mode=mode, pid=pid,
                                  comm=comm, base=self.base, progress=self._on_progress,
                                  stop_event=self._stop_event)
        except BaseException as e:  # noqa: BLE001 - shown in the widget; this is a thread
            self.error = e
            self.progress.bar_style = "danger"
            self.summary.value = _error_html(e)
            self._set_status("failed", "failed")
        else:
            self.result = cap
            status = str(cap.meta.get("status") or "complete")
            if status == "complete":
                self.progress.value = 1.0
            self.progress.bar_style = "success" if status == "complete" else "warning"
            self.messages.value += _tracer_html(cap, shown=prep.plan.notes)
            self.summary.value = _summary_html(cap)
            self._set_status(status, f"{status} ({cap.duration_s:.1f} s)")
        finally:
            self.start_button.disabled = False
            self.stop_button.disabled = True


def slabkit_backends() -> list[str]:
    """The backend names, in preference order (from the backend registry)."""
    from slabkit.backends import registry
    return list(registry())


def _plan_html(prep) -> str:
    plan = prep.plan
    lines = [(f"cache <b>{html.escape(plan.cache)}</b> ({html.escape(plan.kind)}), "
              f"{'exact' if plan.exact else 'estimate'}: {html.escape(plan.reason)}"),
             f"backend <b>{html.escape(prep.backend.name)}</b>"]
    lines += [f"note: {html.escape(n)}" for n in plan.notes]
    program = prep.program.text or " ".join(prep.program.argv)
    return ('<div class="slabkit-note">' + "<br>".join(lines) + "</div>"
            f"<details><summary>program</summary><pre>{html.escape(program)}</pre></details>")


def _tracer_html(cap, shown: list[str] = ()) -> str:
    """Losses, notes (less those in ``shown``, already on screen) and the tracer's stderr."""
    m = cap.meta
    parts = []
    lost = int(m.get("lost_total") or 0)
    if lost:
        parts.append(f'<div class="slabkit-error">the tracer reported {lost} lost events: '
                     f"{html.escape(str(m.get('losses')))}</div>")
    for note in m.get("notes") or []:
        if note in shown:
            continue
        parts.append(f'<div class="slabkit-note">note: {html.escape(str(note))}</div>')
    stderr = str(m.get("tracer_stderr") or "").strip()
    if stderr:
        parts.append(f"<details><summary>tracer messages</summary><pre>"
                     f"{html.escape(stderr[-3000:])}</pre></details>")
    return "".join(parts)


def _summary_html(cap, top: int = 5) -> str:
    m = cap.meta
    head = (f"<b>{html.escape(cap.cache)}</b>: {int(m.get('total_allocs') or 0):,} allocations "
            f"in {cap.duration_s:.1f} s via {html.escape(str(m.get('backend')))} "
            f"({html.escape(str(m.get('status')))}); saved in "
            f"<code>{html.escape(str(cap.path))}</code>")
    if not len(cap.allocs):
        return head + '<div class="slabkit-note">no allocations were seen</div>'
    procs = slabkit.by_process(cap).head(top)
    parts = [head, "<b>top processes</b>", _frame_html(procs)]
    if len(cap.frames):
        parts += ["<b>top call sites</b>", _frame_html(slabkit.by_frame(cap).head(top))]
    return '<div class="slabkit-table">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


# --------------------------------------------------------------------------------------------
# pivot explorer


class PivotExplorer(W.VBox):
    """A capture pivoted by process, module, call site or stack: a table and a bar chart of
    the same rows, updated together whenever a control changes.

    Controls: :attr:`group_by` (``process``, ``module``, ``callsite``, ``stack``),
    :attr:`measure` (``count`` or ``bytes``), :attr:`top_n`, :attr:`show_allocator` (call
    sites and stacks: count a stack under its innermost frame / show the allocator frames of
    a stack, instead of hiding them), and :attr:`source` (allocations, or the objects still
    allocated at the end for an outstanding-mode capture).

    Attributes:
        capture: the :class:`~slabkit.Capture` shown.
        frame: the pivot shown now (a DataFrame from :mod:`slabkit.analysis.pivots`, first N rows).
        figure, ax: the matplotlib Figure/Axes of the chart; chart: the Image widget (PNG).
        table: the HTML widget with the table.
    """

    GROUPS = (("process", "process"), ("module", "module"), ("call site", "callsite"),
              ("stack", "stack"))

    def __init__(self, cap, *, group_by: str = "process", measure: str = "count",
                 top_n: int = 10, show_allocator: bool = False, source: str = "allocs",
                 **kwargs):
        self.capture = cap
        self.frame: pd.DataFrame = pd.DataFrame()
        self.figure = None
        self.ax = None
        sources = [("allocations", "allocs")]
        if cap.outstanding is not None:
            sources.append(("outstanding at end", "outstanding"))
        self.group_by = W.ToggleButtons(options=self.GROUPS, value=group_by, description="By",
                                        style={"button_width": "6.5em"})
        self.measure = W.ToggleButtons(options=[("count", "count"), ("bytes", "bytes")],
                                       value=measure, description="Measure",
                                       style={"button_width": "5em"})
        self.top_n = W.BoundedIntText(value=top_n, min=1, max=200, description="Top N",
                                      layout=W.Layout(width="10em"))
        self.show_allocator = W.Checkbox(value=show_allocator, description="allocator frames",
                                         indent=False)
        self.source = W.ToggleButtons(options=sources, value=source, description="Data",
                                      style={"button_width": "10em"})
        self.source.layout.display = None if len(sources) > 1 else "none"
        self.message = W.HTML()
        self.table = W.HTML(layout=W.Layout(flex="0 1 auto", max_width="100%",
                                            margin="0 16px 0 0"))
        self.table.add_class("slabkit-table")
        for pane in (self.message, self.table):
            pane.add_class("slabkit-block")
        self.chart = W.Image(format="png", layout=W.Layout(flex="0 0 auto", max_width="100%"))
        super().__init__([
            _style(),
            W.HTML(f"<b>Explore</b> <span class='slabkit-note'>{html.escape(repr(cap))}"
                   "</span>"),
            W.HBox([self.group_by]), W.HBox([self.measure, self.top_n, self.show_allocator]),
            self.source, self.message,
            # side by side where the page is wide enough, else the chart below the table
            W.Box([self.table, self.chart], layout=W.Layout(
                display="flex", flex_flow="row wrap", align_items="flex-start"))], **kwargs)
        self.add_class("slabkit-pivot-explorer")
        for control in (self.group_by, self.measure, self.top_n, self.show_allocator,
                        self.source):
            control.observe(lambda _: self.update(), "value")
        self.update()

    def data(self):
        """What the pivots read: the capture, or (outstanding, frames) for outstanding."""
        cap = self.capture
        if self.source.value == "outstanding" and cap.outstanding is not None:
            return (cap.outstanding, cap.frames)
        return cap

    def pivot(self) -> pd.DataFrame:
        """The pivot for the current controls (all of it is computed; :attr:`frame` is its
        first N rows)."""
        data, value, n = self.data(), self.measure.value, int(self.top_n.value)
        keep = bool(self.show_allocator.value)
        group = self.group_by.value
        if group == "process":
            return slabkit.by_process(data, value=value)
        if group == "module":
            return slabkit.by_module(data, value=value)
        if group == "callsite":
            return slabkit.by_frame(data, "callsite", keep_allocator=keep, value=value)
        df = slabkit.top_stacks(data, n, value=value)
        if not keep:
            df = df.assign(stack=df["stack"].map(_hide_allocator_frames).astype("string"))
        return df

    def update(self) -> None:
        """Recompute the pivot and redraw the table and the chart."""
        self.show_allocator.disabled = self.group_by.value in ("process", "module")
        try:
            self.frame = self.pivot().head(int(self.top_n.value))
        except SlabkitError as e:
            self.frame = pd.DataFrame()
            self.message.value = _error_html(e)
            self.table.value, self.chart.value = "", b""
            return
        self.message.value = ""
        stack = self.group_by.value == "stack"
        shown = self.frame.drop(columns=[c for c in ("per_s",) if c in self.frame and
                                         self.frame[c].isna().all()])
        if "comms" in shown:   # "bash (1528), ssh (273), ..." can run to hundreds
            shown = shown.assign(comms=shown["comms"].map(_first_items))
        table = _frame_html(shown, text_columns=("callsite", "module", "comms"),
                            stack_columns=("stack",) if stack else ())
        png = self._draw()
        # both ready: send them one right after the other, so they change together
        self.table.value = table
        # which pivot the chart shows, as a CSS class a browser test can wait for (not a
        # tooltip: an Image view fails to render with one in ipywidgets 8.1, it has no
        # description)
        self.chart._dom_classes = ("slabkit-chart", f"slabkit-chart-by-{self.group_by.value}")
        self.chart.value = png

    def _labels(self) -> list[str]:
        df = self.frame
        if self.group_by.value == "stack":
            # the stack id and its frames from the call site outwards, as far as they fit
            labels = [f"#{i} " + " <- ".join(str(_hide_allocator_frames(st)).split(" <- ")[:3])
                      for i, st in zip(df.index, df["stack"])]
        else:
            labels = [" / ".join(map(str, k)) if isinstance(k, tuple) else str(k)
                      for k in df.index]
        return [lab if len(lab) <= 60 else lab[:58] + ".." for lab in labels]

    def _draw(self) -> bytes:
        """Draw the bar chart of :attr:`frame` on a new Figure; return it as PNG bytes."""
        import seaborn as sns
        from matplotlib.figure import Figure

        df = self.frame
        value = self.measure.value
        fig = Figure(figsize=(6.5, 0.32 * max(len(df), 1) + 1.3), layout="constrained")
        ax = fig.add_subplot()
        what = {"process": "process", "module": "module", "callsite": "call site",
                "stack": "stack"}[self.group_by.value]
        source = "objects outstanding" if self.source.value == "outstanding" else "allocations"
        ax.set_title(f"{self.capture.cache}: {source} by {what}", fontsize="medium")
        if df.empty or df[value].isna().all():
            ax.text(0.5, 0.5, "nothing to show", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_axis_off()
        else:
            data = pd.DataFrame({"label": self._labels(),
                                 value: df[value].astype("float64").fillna(0).to_numpy()})
            sns.barplot(data=data, x=value, y="label", orient="h", ax=ax,
                        color=sns.color_palette()[0])
            noun = "objects" if self.source.value == "outstanding" else "allocations"
            ax.set_xlabel(noun if value == "count" else f"bytes ({noun})")
            ax.set_ylabel("")
            ax.tick_params(axis="y", labelsize="small")
        self.figure, self.ax = fig, ax
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        return buf.getvalue()


def _first_items(text: Any, n: int = 4) -> Any:
    """``"a (3), b (2), c (1), ..."`` -> its first ``n`` items and how many more."""
    if not isinstance(text, str):
        return text
    items = text.split(", ")
    return text if len(items) <= n else ", ".join(items[:n]) + f", +{len(items) - n} more"


def _hide_allocator_frames(stack: Any) -> Any:
    """``"kmem_cache_alloc <- alloc_empty_file <- ..."`` -> ``"alloc_empty_file <- ..."``:
    the allocator frames at the inner end dropped (a stack of nothing else is kept whole)."""
    from slabkit.analysis.pivots import is_allocator
    if not isinstance(stack, str) or " <- " not in stack:
        return stack
    frames = stack.split(" <- ")
    i = 0
    while i < len(frames) and is_allocator(frames[i].split(" ", 1)[0]):
        i += 1
    return " <- ".join(frames[i:]) if i < len(frames) else stack
