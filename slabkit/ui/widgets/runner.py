"""The capture runner: a form that runs :func:`slabkit.capture` in the background.
"""
from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as W
import traitlets

import slabkit
from slabkit.errors import SlabkitError
from slabkit.ui.summary import summarize, summary_html, tracer_html
from slabkit.ui.widgets.background import Background
from slabkit.ui.widgets.html import error_html, style
from slabkit.ui.widgets.picker import CachePicker

# --------------------------------------------------------------------------------------------
# capture runner


class CaptureRunner(Background, W.VBox):
    """Run :func:`slabkit.capture` from a form, in a background thread, with a progress bar.

    Controls: :attr:`cache` (linked to a :class:`CachePicker` given as ``picker``),
    :attr:`seconds`, :attr:`backend` (``auto`` and the backends that can run here;
    :attr:`backends_note` says why the others cannot), :attr:`mode`, :attr:`pid_filter`,
    :attr:`comm_filter`, :attr:`start_button`, :attr:`stop_button`. Stop ends the capture early and
    keeps what it captured (status ``interrupted``).

    Attributes:
        status: ``idle``, ``blocked`` (nothing can capture here: :attr:`blocked` says
            why), ``preparing``, ``running``, ``complete``, ``interrupted`` or ``failed`` (a
            trait: observe it to react when a capture ends).
        result: the :class:`~slabkit.Capture` of the last run, or None.
        error: the exception of the last failed run, or None.
        progress: a FloatProgress from 0 to 1, fed by the capture's progress callback.
        status_label, messages, summary: the status line, the plan/program/tracer messages,
            and the end-of-capture summary (top processes and call sites).

    Before anything is clicked it says what can run: it asks :func:`slabkit.prepare` (as a
    normal user, through slabkit's capture helper) for the chosen cache, lists only the
    backends that can run here, and when nothing can (not root and not in the ``slabkit``
    group, no tracer, an unknown cache) shows why and what to do, with Start disabled
    (:attr:`blocked`). Start stays disabled until that check has answered.

    ``base``: the folder under which captures are saved (default: where captures go,
    :func:`slabkit.capturing.store.default_base`). ``check_backends=False`` skips that check
    (Start is enabled at once; errors show after the click).
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
        #: why no capture can start now (shown in :attr:`backends_note`), or None
        self.blocked: str | None = None
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
        if check_backends:
            self._set_blocked("checking what can capture here...", checking=True)
            self._schedule_check(0.0)

    # -- backends -----------------------------------------------------------------------------

    def check_backends(self) -> Any:
        """Ask :func:`slabkit.prepare` which backend would capture :attr:`cache` and why the
        others would not; updates :attr:`backend`'s choices and :attr:`backends_note`.
        Returns the Prepared, or None (the reason is in the note)."""
        cache = self.cache.value.strip()
        if not cache:
            self._set_blocked("choose a cache to capture (above, or type its name)")
            return None
        try:
            prep = slabkit.prepare(cache, mode=self.mode.value)
        except SlabkitError as e:
            self.backend.options = ["auto"]
            self._set_blocked(str(e), error=e)
            return None
        self.prepared = prep
        self.blocked = None
        if not self.running:
            self.start_button.disabled = False
        usable = [prep.backend.name] + [n for n, why in prep.not_used.items()
                                        if why.endswith("is preferred")]
        names = [n for n in slabkit_backends() if n in usable]
        current = self.backend.value
        self.backend.options = ["auto", *names]
        self.backend.value = current if current in self.backend.options else "auto"
        lines = [f"<b>auto</b> = {html.escape(prep.backend.name)}"]
        lines += [f"{html.escape(n)}: {html.escape(why)}" for n, why in prep.not_used.items()
                  if not why.endswith("is preferred")]
        via = " (through slabkit's capture helper)" if getattr(prep, "via", None) else ""
        self.backends_note.value = (
            f'<div class="slabkit-ready">ready to capture {html.escape(prep.plan.cache)}{via}: '
            f'{"exact" if prep.plan.exact else "an estimate"}</div>'
            '<div class="slabkit-note">backends: ' + "; ".join(lines) + "</div>")
        if not self.running and self.status in ("idle", "blocked"):
            self._set_status("idle", "ready")
        return prep

    def _set_blocked(self, why: str, *, error: BaseException | None = None,
                     checking: bool = False) -> None:
        """Say why no capture can start (and what to do), and disable Start."""
        self.blocked = why
        if not self.running:
            self.start_button.disabled = True
        if checking:
            self.backends_note.value = f'<div class="slabkit-note">{html.escape(why)}</div>'
            self.status_label.value = "checking..."
            return
        kind = type(error).__name__ if error is not None else ""
        title = {"PermissionNeeded": "Cannot capture here: ",
                 "TracerUnavailable": "No tracer can capture this here: ",
                 "UnknownCache": "", "InvalidInput": ""}.get(kind, "")
        self.backends_note.value = (f'<div class="slabkit-blocked">{html.escape(title + why)}'
                                    "</div>")
        if not self.running:
            self._set_status("blocked", "cannot start: see above")

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
            self._set_blocked("checking what can capture here...", checking=True)
            self._schedule_check()

    # -- running ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.busy

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
        self._in_background(self._run, "slabkit-capture", **args)

    def stop(self) -> None:
        """End the running capture now; what it captured is kept (what Stop does)."""
        if self.running:
            self._stop_event.set()
            self.stop_button.disabled = True
            self.status_label.value = "stopping..."

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
        ended = ("failed", "failed")
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
        else:
            self.result = cap
            status = str(cap.meta.get("status") or "complete")
            if status == "complete":
                self.progress.value = 1.0
            self.progress.bar_style = "success" if status == "complete" else "warning"
            summary = summarize(cap, top=5, stacks=3)
            self.messages.value += tracer_html(summary,
                                              shown=prep.plan.notes_for(prep.backend.name))
            self.summary.value = summary_html(summary)
            ended = (status, f"{status} ({cap.duration_s:.1f} s)")
        finally:
            self.start_button.disabled = self.blocked is not None and self._check_backends
            self.stop_button.disabled = True
            # last: whoever observes the status (an explorer that follows this runner)
            # finds the runner ready for the next capture
            self._set_status(*ended)


def slabkit_backends() -> list[str]:
    """The backend names, in preference order (from the backend registry)."""
    from slabkit.backends import registry
    return list(registry())


def _plan_html(prep) -> str:
    plan = prep.plan
    lines = [(f"cache <b>{html.escape(plan.cache)}</b> ({html.escape(plan.kind)}), "
              f"{'exact' if plan.exact else 'estimate'}: {html.escape(plan.reason)}"),
             f"backend <b>{html.escape(prep.backend.name)}</b>"]
    lines += [f"note: {html.escape(n)}" for n in plan.notes_for(prep.backend.name)]
    program = prep.program.text or " ".join(prep.program.argv)
    return ('<div class="slabkit-note">' + "<br>".join(lines) + "</div>"
            f"<details><summary>program</summary><pre>{html.escape(program)}</pre></details>")
