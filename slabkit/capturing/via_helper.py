"""Run a capture through slabkit's capture helper and receive its output into the folder.

The user's side of :mod:`slabkit.helper.server`'s ``capture``: start it (``sudo -n``, here or
over SSH), read its frames (what was decided, attached, progress, slabinfo samples, the raw
files, the result) into the capture folder, show progress, and turn a stop request (a widget's
Stop, Ctrl-C, SIGTERM) into a ``stop`` line, so the helper ends early and still sends what it
captured. Closing the control channel (this process dying) makes the helper tear down at once.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from slabkit.backends.control import progress_bar
from slabkit.capturing.engine import Outcome, Prepared
from slabkit.capturing.folder import CaptureFolder
from slabkit.errors import ProbeFailed
from slabkit.host.helper import error_from_json, read_frames


def run(prep: Prepared, seconds: float, folder: CaptureFolder, *,
        progress: bool | Callable[[float, float], None] = True,
        stop_event: threading.Event | None = None,
        on_hello: Callable[[dict], None] | None = None) -> Outcome:
    """Capture ``prep.request`` for ``seconds`` through ``prep.via`` (a Helper); raw files land
    in ``folder``. ``on_hello(description)`` is called with what the helper decided."""
    helper = prep.via
    args = [*prep.request.to_args(), "--seconds", f"{seconds:g}"]
    proc = helper.start_capture(args)
    events: queue.Queue = queue.Queue()

    def reader() -> None:
        try:
            for kind, data in read_frames(proc.stdout, folder.create):
                events.put((kind, data))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            events.put(("failed", e))
        else:
            events.put(("closed", None))

    thread = threading.Thread(target=reader, daemon=True, name="slabkit-helper-reader")
    thread.start()
    bar = progress_bar(progress, seconds, f"{prep.plan.cache} ({prep.backend.name}, helper)")
    series: list[dict] = []
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping and proc.stdin and not proc.stdin.closed:
            stopping = True
            try:
                proc.stdin.write(b"stop\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                pass

    done = 0.0
    try:
        while True:
            try:
                try:
                    kind, data = events.get(timeout=0.1)
                except queue.Empty:
                    if stop_event is not None and stop_event.is_set():
                        stop()
                    continue
            except KeyboardInterrupt:   # Ctrl-C (or SIGTERM, as the CLI maps it): end early
                stop()
                continue
            if kind == "hello" and on_hello is not None:
                on_hello(data)
            elif kind in ("attached", "progress") and bar is not None:
                done = float((data or {}).get("done", 0.0))
                bar(min(done, seconds), seconds)
            elif kind == "sample":
                series.append(data)
            elif kind == "result":
                result = data
            elif kind == "error":
                error = error_from_json(data)
            elif kind == "failed":
                error = data
                break
            elif kind in ("end", "closed"):
                break
            if stop_event is not None and stop_event.is_set():
                stop()
    finally:
        if bar is not None:
            bar(min(done, seconds), seconds, close=True)
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait()
        thread.join(5)
    if error is not None:
        if isinstance(error, ProbeFailed) and not error.raw_path:
            error.raw_path = str(folder.path)
        raise error
    if result is None:
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise ProbeFailed("the capture helper ended without a result", returncode=proc.returncode,
                          stderr=err)
    return Outcome.from_json(result, series)
