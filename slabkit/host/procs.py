"""Start, watch and stop tracer processes so that none is ever left behind.

Each tracer runs in its own process group with a parent-death signal (``slabkit.host.target``),
is registered in a state folder while it runs (so ``slabkit cleanup`` can end what a killed
run left), is stopped with SIGINT (bpftrace and perf print their results on SIGINT), then
SIGTERM and SIGKILL after grace periods, and is always reaped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from slabkit.host.target import LocalTarget, Target

STATE_DIR = Path(os.environ.get("SLABKIT_STATE_DIR", "/run/slabkit"))
INSTANCE_PREFIX = "slabkit-"


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def register(proc: subprocess.Popen, argv: list[str]) -> Path | None:
    """Record a running tracer (pid, start time, argv) so a later cleanup can end it."""
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"{proc.pid}.json"
        path.write_text(json.dumps({"pid": proc.pid, "start": _proc_start_time(proc.pid),
                                    "argv": argv, "owner": os.getpid(),
                                    "owner_start": _proc_start_time(os.getpid())}))
        return path
    except OSError:
        return None


def unregister(path: Path | None) -> None:
    if path is not None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the tracer's process group (it leads its own session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        proc.send_signal(sig)


def stop_process(proc: subprocess.Popen, *, first: int = signal.SIGINT,
                 grace_s: float = 10.0, target: Target | None = None) -> int:
    """Stop a tracer politely, then firmly; always reap it. Returns its exit status.

    On an SSH target the remote supervisor does the same on the far side
    (``slabkit.host.ssh.stop_process``)."""
    if target is not None and not isinstance(target, LocalTarget):
        from slabkit.host.ssh import stop_process as remote_stop
        return remote_stop(target, proc, signame=first, grace_s=grace_s)
    for sig, wait in ((first, grace_s), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        signal_group(proc, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:  # pragma: no cover - SIGKILL cannot be ignored
        proc.kill()
    return proc.wait()


@contextmanager
def tracer_process(target: Target, argv: list[str], *, stdout: IO, stderr: IO,
                   env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Run ``argv`` on ``target`` for the duration of the ``with`` block; stop it on any exit."""
    proc = target.popen(argv, stdout=stdout, stderr=stderr, env=env)
    record = register(proc, argv) if isinstance(target, LocalTarget) else None
    try:
        yield proc
    finally:
        try:
            stop_process(proc, target=target)
        finally:
            unregister(record)


class TermAsInterrupt:
    """While active (main thread only), SIGTERM and SIGHUP raise KeyboardInterrupt, so a
    capture being killed politely stops its tracer and keeps what it captured."""

    def __enter__(self):
        import threading
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def cleanup_leftovers(tracefs: str | None = "/sys/kernel/tracing") -> list[str]:
    """End tracers a killed slabkit run left behind and remove its tracefs instances.

    Only processes recorded in the state folder whose start time still matches are
    signalled (a recycled pid is left alone). Returns what was done, one line each.
    """
    done: list[str] = []
    if STATE_DIR.is_dir():
        for rec in sorted(STATE_DIR.glob("*.json")):
            try:
                info = json.loads(rec.read_text())
                pid = int(info["pid"])
            except (OSError, ValueError, KeyError):
                rec.unlink(missing_ok=True)
                continue
            if _owner_alive(int(info.get("owner") or 0), info.get("owner_start")):
                continue  # its capture is still running
            if info.get("start") and _proc_start_time(pid) == info["start"]:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(pid, sig)
                    except ProcessLookupError:
                        break
                    except PermissionError:
                        os.kill(pid, sig)
                    for _ in range(30):
                        if _proc_start_time(pid) != info["start"]:
                            break
                        time.sleep(0.1)
                    if _proc_start_time(pid) != info["start"]:
                        break
                done.append(f"stopped {' '.join(info.get('argv', [])[:2])} (pid {pid})")
            rec.unlink(missing_ok=True)
    if tracefs:
        from slabkit.host.tracefs import remove_instance
        inst = Path(tracefs) / "instances"
        if inst.is_dir():
            for d in sorted(inst.iterdir()):
                if d.name.startswith(INSTANCE_PREFIX) and not _instance_in_use(d.name):
                    remove_instance(LocalTarget(), tracefs, d.name)
                    done.append(f"removed tracefs instance {d.name}")
    return done


def instance_name(seq: int) -> str:
    """A tracefs instance name that says which live process owns it:
    ``slabkit-<pid>-<pid start time>-<seq>``."""
    return f"{INSTANCE_PREFIX}{os.getpid()}-{_proc_start_time(os.getpid())}-{seq}"


def _owner_alive(pid: int, start: str | None) -> bool:
    return pid != os.getpid() and start is not None and _proc_start_time(pid) == start


def _instance_in_use(name: str) -> bool:
    """An instance whose creating process still runs is in use (not ours to remove)."""
    parts = name.split("-")
    if len(parts) >= 3 and parts[1].isdigit():
        return _owner_alive(int(parts[1]), parts[2])
    return False
