"""A widget's one background job at a time (a capture, a report, a growth measurement): run in
a daemon thread so the notebook stays live, and waited for by :meth:`Background.wait`."""
from __future__ import annotations

import threading
from typing import Any, Callable


class Background:
    """Mixed into a widget: :meth:`_in_background` starts the job, :attr:`busy` says whether
    one is running, :meth:`wait` waits for it."""

    _thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _in_background(self, target: Callable[..., Any], name: str, **kwargs: Any) -> None:
        self._thread = threading.Thread(target=target, kwargs=kwargs, name=name, daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the widget's background job to end; True when none is running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.busy
