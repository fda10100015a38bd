"""Processes slabkit starts on a target: one supervisor, one stop policy, one registry.

Every tracer runs under the same small POSIX-shell supervisor (:data:`SUPERVISE`), on this
machine and on SSH targets alike (:meth:`slabkit.host.target.Target.start`), in a process group
of its own. The supervisor's stdin is a pipe only slabkit holds:

* a line such as ``INT`` on it signals the tracer's process group (:meth:`Supervised.signal`):
  signals travel in-band, so no pid is ever scraped from a tracer's output and a signal can
  never reach a recycled pid;
* end of file -- slabkit let go, exited, crashed or was SIGKILLed -- means nobody will read the
  tracer's output any more: the supervisor sends SIGTERM and, :data:`ORPHAN_KILL_S` later,
  SIGKILL. A tracefs instance handed to it as ``teardown`` is disabled and removed when the
  tracer ends, however it ends, so not even a SIGKILLed capture leaves tracing on.

:meth:`Supervised.stop` is the one stop loop (:data:`STOP`): SIGINT (tracers print their maps
and exit on it), then SIGTERM, then SIGKILL, each after a grace period, then the process is
reaped. Tracers started on this machine are also recorded under :data:`STATE_DIR`, so
:func:`slabkit.host.cleanup.cleanup_leftovers` can end one whose supervisor was killed too.
"""
from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from slabkit.errors import InvalidInput

STATE_DIR = Path(os.environ.get("SLABKIT_STATE_DIR", "/run/slabkit"))

#: Signals :meth:`Supervised.signal` accepts (STOP and CONT are left out: they would also stop
#: the supervisor).
SIGNALS = ("INT", "TERM", "HUP", "QUIT", "KILL", "USR1", "USR2")


@dataclass(frozen=True)
class StopPolicy:
    """How long a tracer gets after each signal of :meth:`Supervised.stop`."""

    first_s: float = 10.0   # after the first signal: bpftrace prints big maps, perf its header
    term_s: float = 3.0     # after SIGTERM
    kill_s: float = 2.0     # after SIGKILL (the kernel reaps it; only a remote reply can lag)


#: the one stop policy
STOP = StopPolicy()
#: seconds between SIGTERM and SIGKILL once slabkit is gone (end of file on the control pipe)
ORPHAN_KILL_S = 0.5

_PR_SET_PDEATHSIG = 1
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child between fork and exec: ask the kernel to send ``sig`` when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except Exception:  # pragma: no cover - best effort; the process group still helps
        pass


def proc_start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): tells a live pid from a reused one."""
    try:
        return stat_start_time(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return None


def stat_start_time(stat: str) -> str | None:
    """The start time in the text of a ``/proc/PID/stat`` (field 22, after the comm, which
    may hold spaces and parentheses), read here or on any target."""
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``start``."""
    return start is not None and proc_start_time(pid) == start


def signal_name(sig: object) -> str:
    """``"INT"``, ``"SIGINT"``, ``signal.SIGINT`` or ``2`` -> ``"INT"``, checked against SIGNALS."""
    if isinstance(sig, str):
        name = sig.upper().removeprefix("SIG")
    elif isinstance(sig, int) and not isinstance(sig, bool):
        try:
            name = signal.Signals(sig).name.removeprefix("SIG")
        except ValueError:
            name = str(sig)
    else:
        name = repr(sig)
    if name not in SIGNALS:
        raise InvalidInput(f"signal must be one of {', '.join(SIGNALS)}, not {sig!r}")
    return name


# The supervisor. Arguments: a tracefs instance folder to tear down when the program ends (or
# ""), environment assignments NAME=VALUE up to "--", then the program and its arguments. This
# shell (a process group leader: a new session here, sshd's command there) runs the program in
# the foreground and exits with its status, so a program a signal ends reports 128+N. A
# background watcher reads our stdin:
#   a line INT/TERM/... -> that signal to the process group (program, its children, this shell);
#   end of file         -> SIGTERM, then SIGKILL after ORPHAN_KILL_S: slabkit is gone.
# This shell traps the signals so it outlives the program, tears the instance down and reports
# the status; trapped signals are reset to the default in the program. The watcher is an
# asynchronous list, so SIGINT is ignored in it already; it ignores the others it sends, being
# in the group it signals. Its output goes to /dev/null so it never holds an ssh session open.
# The program's stdin is /dev/null. POSIX sh only (dash, bash, busybox ash).
SUPERVISE = r'''me=$$
teardown=$1
shift
while [ "$#" -gt 0 ] && [ "$1" != -- ]; do export "$1"; shift; done
shift
exec 3<&0
(
  trap '' HUP TERM QUIT USR1 USR2
  while IFS= read -r cmd; do
    case $cmd in
      INT|TERM|HUP|QUIT|KILL|USR1|USR2)
        kill -s "$cmd" -- "-$me" 2>/dev/null || kill -s "$cmd" "$me" 2>/dev/null ;;
    esac
  done
  kill -0 "$me" 2>/dev/null || exit 0
  kill -s TERM -- "-$me" 2>/dev/null || kill -s TERM "$me" 2>/dev/null
  n=0
  while [ "$n" -lt %(ticks)d ] && kill -0 "$me" 2>/dev/null; do
    sleep 0.1 2>/dev/null || sleep 1; n=$((n+1))
  done
  kill -0 "$me" 2>/dev/null || exit 0
  kill -s KILL -- "-$me" 2>/dev/null || kill -s KILL "$me" 2>/dev/null
) <&3 >/dev/null 2>&1 &
watcher=$!
trap : INT TERM HUP QUIT USR1 USR2
"$@" </dev/null 3<&-
status=$?
kill -s KILL "$watcher" 2>/dev/null
if [ -n "$teardown" ] && [ -d "$teardown" ]; then
  echo 0 > "$teardown/events/enable" 2>/dev/null
  echo 0 > "$teardown/tracing_on" 2>/dev/null
  n=0
  while [ -d "$teardown" ] && ! rmdir "$teardown" 2>/dev/null && [ "$n" -lt 30 ]; do
    sleep 0.1 2>/dev/null || sleep 1; n=$((n+1))
  done
fi
exit "$status"''' % {"ticks": max(1, round(ORPHAN_KILL_S * 10))}


def supervisor_args(argv: list[str], env: dict[str, str] | None = None,
                    teardown: str | None = None) -> list[str]:
    """The arguments that follow :data:`SUPERVISE` (``sh -c SUPERVISE slabkit ARGS...``).

    ``argv`` and ``env`` are checked: a list of strings without NUL bytes, and environment
    names a shell can export."""
    if isinstance(argv, (str, bytes)) or not isinstance(argv, (list, tuple)) or not argv:
        raise InvalidInput(f"a command is a non-empty list of arguments, not {argv!r}")
    if not all(isinstance(a, str) and "\0" not in a for a in argv):
        raise InvalidInput(f"command arguments must be strings without NUL bytes: {argv!r}")
    assignments = []
    for key, value in (env or {}).items():
        if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
            raise InvalidInput(f"environment variable name {key!r} is not usable "
                               "(letters, digits and _, not starting with a digit)")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidInput(f"environment variable {key} must be a string without NULs, "
                               f"not {value!r}")
        assignments.append(f"{key}={value}")
    if teardown is not None and (not teardown.startswith("/") or "\0" in teardown):
        raise InvalidInput(f"teardown must be an absolute path, not {teardown!r}")
    return [teardown or "", *assignments, "--", *argv]


class Supervised:
    """A program a target started under the supervisor (``Target.start``); Popen-like.

    ``pid`` and ``returncode`` are the local process's (the supervisor here, ``ssh`` for an SSH
    target), whose exit status is the program's (128 + N when signal N ended it). Use it as a
    context manager: leaving the block stops the program (:meth:`stop`)."""

    def __init__(self, popen: subprocess.Popen, control: int, *, argv: list[str],
                 on_end: Callable[[], None] | None = None):
        self._popen = popen
        self._control = open(control, "wb", buffering=0)  # noqa: SIM115 - lives with the process
        self.argv = list(argv)
        self._on_end = on_end

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self._popen.wait(timeout)

    def signal(self, sig: object = "INT") -> None:
        """Send ``sig`` to the program's process group; nothing once it has ended."""
        name = signal_name(sig)
        if self._control.closed or self.poll() is not None:
            return
        try:
            self._control.write(f"{name}\n".encode())
        except (BrokenPipeError, ValueError):   # the supervisor is gone, or we closed meanwhile
            pass

    def release(self) -> None:
        """Close the control pipe: the supervisor ends the program if it still runs."""
        if not self._control.closed:
            self._control.close()

    def stop(self, first: object = "INT", policy: StopPolicy = STOP) -> int:
        """Stop the program politely, then firmly (:data:`STOP`); reap it; return its status."""
        steps = ((first, policy.first_s), ("TERM", policy.term_s), ("KILL", policy.kill_s))
        try:
            for sig, wait_s in steps:
                if self.poll() is not None:
                    break
                self.signal(sig)
                try:
                    self._popen.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            self.release()
            if self.poll() is None:
                try:
                    self._popen.wait(timeout=5)
                except subprocess.TimeoutExpired:   # a hung ssh: the last resort
                    self._popen.kill()
                    self._popen.wait()
            if self._on_end is not None:
                self._on_end()
                self._on_end = None
        return self._popen.returncode

    def __enter__(self) -> Supervised:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # the pipe closes with us anyway; say so explicitly
        try:
            self.release()
        except Exception:
            pass


def start_supervised(command: list[str], argv: list[str], *, stdout: IO, stderr: IO,
                     record: bool = False, **popen_kw) -> Supervised:
    """Run ``command`` (which starts :data:`SUPERVISE` for ``argv``, here or through ssh) with
    a fresh control pipe on its stdin, in a new session. ``record``: note it under
    :data:`STATE_DIR` (tracers on this machine) until it ends."""
    read_end, write_end = os.pipe()
    try:
        popen = subprocess.Popen(command, stdin=read_end, stdout=stdout, stderr=stderr,
                                 start_new_session=True, **popen_kw)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    path = register(popen.pid, argv) if record else None
    return Supervised(popen, write_end, argv=argv,
                      on_end=(lambda: unregister(path)) if path is not None else None)


# --- the registry of tracers running on this machine ------------------------------------------

def register(pid: int, argv: list[str]) -> Path | None:
    """Record a running supervisor (pid, start time, argv, owner) for a later cleanup."""
    try:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = STATE_DIR / f"{pid}.json"
        path.write_text(json.dumps({"pid": pid, "start": proc_start_time(pid), "argv": argv,
                                    "owner": os.getpid(),
                                    "owner_start": proc_start_time(os.getpid())}))
        return path
    except OSError:
        return None


def unregister(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def end_recorded_leftovers(wait_s: float = 3.0) -> list[str]:
    """End recorded tracers whose owner (the slabkit process that started them) is gone.

    Only a process whose start time still matches its record is signalled (a recycled pid is
    left alone). Returns what was done, one line each."""
    import time
    done: list[str] = []
    if not STATE_DIR.is_dir():
        return done
    for rec in sorted(STATE_DIR.glob("*.json")):
        try:
            info = json.loads(rec.read_text())
            pid = int(info["pid"])
            owner = int(info.get("owner") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            rec.unlink(missing_ok=True)
            continue
        if owner != os.getpid() and is_alive(owner, info.get("owner_start")):
            continue  # its capture is still running
        if is_alive(pid, info.get("start")):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pid, sig)
                except ProcessLookupError:
                    break
                except PermissionError:
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait_s
                while is_alive(pid, info["start"]) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not is_alive(pid, info["start"]):
                    break
            argv = [str(a) for a in info.get("argv", [])[:2]]
            done.append(f"stopped {' '.join(argv)} (pid {pid})")
        rec.unlink(missing_ok=True)
    return done
