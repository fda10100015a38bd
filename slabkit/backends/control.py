"""The clock of a running capture: how long, progress, stop requests, per-second side jobs.

A backend calls :meth:`RunControl.wait_attached` until its probe is live, then
:meth:`RunControl.run_for` which returns why the capture ended: the duration passed, a stop
was requested (``stop()`` from another thread, e.g. a widget's Stop button), the user pressed
Ctrl-C (KeyboardInterrupt is caught here so the backend can stop its tracer and keep what it
captured), or the tracer exited by itself.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable

from slabkit.errors import ProbeFailed


class RunControl:
    def __init__(self, seconds: float, *, progress: bool | Callable[[float, float], None] = True,
                 stop_event: threading.Event | None = None,
                 every_second: Callable[[float], None] | None = None,
                 description: str = "capturing"):
        self.seconds = seconds
        self.stop_event = stop_event or threading.Event()
        self.every_second = every_second
        self.description = description
        self._progress = progress
        self.attached_s: float | None = None
        self.ended_s: float | None = None
        self.messages: list[str] = []
        self.interrupted = False

    def stop(self) -> None:
        """Ask the running capture to end now and keep what it has."""
        self.stop_event.set()

    def note(self, message: str) -> None:
        self.messages.append(message)

    def wait_attached(self, is_attached: Callable[[], bool], is_running: Callable[[], bool],
                      *, timeout_s: float = 120.0, what: str = "tracer",
                      stderr: Callable[[], str] | None = None,
                      returncode: Callable[[], int | None] | None = None,
                      raw_path: str | None = None) -> None:
        """Wait until the probe is live. Raises ProbeFailed if the tracer dies first or does
        not attach in time, with what it wrote on stderr (``stderr()``: the file so far), its
        exit status (``returncode()``) and what to do."""
        deadline = time.monotonic() + timeout_s

        def failed(message: str) -> ProbeFailed:
            return ProbeFailed(message, returncode=returncode() if returncode else None,
                               stderr=stderr() if stderr else "", raw_path=raw_path)
        try:
            while not is_attached():
                if not is_running():
                    raise failed(f"{what} exited before its probe was attached")
                if time.monotonic() > deadline:
                    raise failed(f"{what} did not attach its probe within {timeout_s:.0f} s")
                if self.stop_event.is_set():
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.interrupted = True   # Ctrl-C while attaching: stop, keep what there is
        self.attached_s = time.monotonic()

    def run_for(self, is_running: Callable[[], bool]) -> str:
        """Block for the duration; returns duration | stopped | interrupted | tracer-exited."""
        start = self.attached_s if self.attached_s is not None else time.monotonic()
        self.attached_s = start
        if self.interrupted:
            self.ended_s = time.monotonic()
            return "interrupted"
        bar = self._make_bar()
        next_tick = start
        reason = "duration"
        try:
            while True:
                now = time.monotonic()
                elapsed = now - start
                if now >= next_tick and self.every_second is not None:
                    self.every_second(elapsed)
                    next_tick += 1.0
                if bar is not None:
                    bar(min(elapsed, self.seconds), self.seconds)
                if elapsed >= self.seconds:
                    break
                if self.stop_event.is_set():
                    reason = "stopped"
                    break
                if not is_running():
                    reason = "tracer-exited"
                    break
                time.sleep(min(0.1, max(0.0, self.seconds - elapsed)))
        except KeyboardInterrupt:
            reason = "interrupted"
        finally:
            self.ended_s = time.monotonic()
            if bar is not None:
                bar(min(self.ended_s - start, self.seconds), self.seconds, close=True)
        return reason

    @property
    def duration_s(self) -> float:
        if self.attached_s is None or self.ended_s is None:
            return 0.0
        return self.ended_s - self.attached_s

    def _make_bar(self):
        return progress_bar(self._progress, self.seconds, self.description)


def progress_bar(progress: bool | Callable[[float, float], None] | None, seconds: float,
                 description: str):
    """The progress display of a capture: ``update(done, total, close=False)``, or None.

    ``progress``: False/None (none), a callable ``progress(done, total)`` (widgets), or True (a
    tqdm bar: a terminal or a notebook)."""
    if progress is False or progress is None:
        return None
    if callable(progress):
        cb = progress

        def update(done, total, close=False):
            cb(done, total)
        return update
    from tqdm.auto import tqdm
    bar = tqdm(total=round(seconds, 1), desc=description, unit="s",
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s",
               leave=True)

    def update(done, total, close=False):
        bar.n = round(done, 1)
        bar.refresh()
        if close:
            bar.close()
    return update


class TermAsInterrupt:
    """While active (main thread only), SIGTERM and SIGHUP raise KeyboardInterrupt, so a
    capture being killed politely stops its tracer and keeps what it captured.

    SIGINT too where the process started with it ignored: a shell starts a script's
    background jobs that way, and Python then never turns SIGINT into KeyboardInterrupt, so
    ``kill -INT`` (what a capture is told to stop with) would go unheard for the whole
    duration. A handler of the caller's own is left alone."""

    def __enter__(self) -> TermAsInterrupt:
        self._old: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._raise)
            if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL):
                self._old[signal.SIGINT] = signal.signal(signal.SIGINT, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc: object) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
