"""The capture runner: a form that runs :func:`slabkit.capture` in the background.
"""
from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import traitlets

import slabkit
from slabkit.errors import SlabkitError
from slabkit.ui.summary import Summary, summarize
from slabkit.ui.widgets.html import error_html, frame_html, style
from slabkit.ui.widgets.picker import CachePicker

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
            style(), W.HTML("<b>Capture</b>"),
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
            self.backends_note.value = error_html(e)

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
            self.summary.value = error_html(e)
            self._set_status("failed", "failed")
        else:
            self.result = cap
            status = str(cap.meta.get("status") or "complete")
            if status == "complete":
                self.progress.value = 1.0
            self.progress.bar_style = "success" if status == "complete" else "warning"
            summary = summarize(cap, top=5, stacks=3)
            self.messages.value += tracer_html(summary, shown=prep.plan.notes)
            self.summary.value = summary_html(summary)
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


def tracer_html(summary: Summary, shown: Sequence[str] = ()) -> str:
    """The tracer's side of a :class:`~slabkit.ui.summary.Summary` as HTML: losses, notes
    (less those in ``shown``, already on screen) and the tracer's stderr."""
    parts = []
    if summary.lost_total:
        parts.append(f'<div class="slabkit-error">the tracer reported {summary.lost_total} '
                     f"lost events: {html.escape(str(summary.losses))}</div>")
    for note in summary.notes:
        if note in shown:
            continue
        parts.append(f'<div class="slabkit-note">note: {html.escape(note)}</div>')
    if summary.tracer_messages:
        parts.append(f"<details><summary>tracer messages</summary><pre>"
                     f"{html.escape(summary.tracer_messages[-3000:])}</pre></details>")
    return "".join(parts)


def summary_html(summary: Summary) -> str:
    """A :class:`~slabkit.ui.summary.Summary` as HTML: the headline, whether counts are
    exact, and the top processes, call sites and stacks as tables."""
    head = (f"<b>{html.escape(summary.cache)}</b>: {summary.total_allocs:,} allocations "
            f"in {summary.duration_s or 0.0:.1f} s via {html.escape(str(summary.backend))} "
            f"({html.escape(str(summary.status))}); saved in "
            f"<code>{html.escape(str(summary.path))}</code>")
    counts = summary.counts_line()
    if counts is not None:
        head += f'<div class="slabkit-note">{html.escape(counts)}</div>'
    if summary.top_processes.empty:
        return head + '<div class="slabkit-note">no allocations were seen</div>'
    parts = [head, "<b>top processes</b>", frame_html(summary.top_processes)]
    if summary.top_callsites is not None:
        parts += ["<b>top call sites</b>", frame_html(summary.top_callsites)]
    if summary.top_stacks is not None and len(summary.top_stacks):
        stacks = summary.top_stacks[["count", "share", "callsite", "stack"]]
        parts += ["<b>top stacks</b> (innermost first)",
                  frame_html(stacks, text_columns=("callsite",), stack_columns=("stack",))]
    return '<div class="slabkit-table">' + "".join(f"<div>{p}</div>" for p in parts) + "</div>"
