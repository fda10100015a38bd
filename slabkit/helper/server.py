"""slabkit's capture helper: the only code slabkit runs as root on a user's behalf.

Installed root-owned by ``slabkit helper install`` (``sudo make system``) and run through sudo
by members of the ``slabkit`` group, with sudo's environment reset and Python in isolated mode
(``/usr/bin/python3 -I``: no user site, no ``PYTHON*`` variables), from a root-owned copy of
slabkit that imports nothing but the standard library. It trusts nothing it is sent: every
argument is one of a few typed fields, checked here again; the cache is resolved against the
kernel's own list; the probe program is rendered here, from slabkit's own templates. It never
takes program text, a command, a path or an environment from its caller.

Verbs (``slabkit-helper VERB [--field value]...``)::

    check                    protocol version, limits, the caller
    caches | slabinfo        the slab cache table / the text of /proc/slabinfo
    activity --seconds S     allocations per cache over a short window
    prepare  REQUEST         what a capture would run (``--print-program``, the widgets)
    capture  REQUEST --seconds S     run it, stream the raw output (frames: slabkit.host.helper)
    cleanup                  end what killed helper captures left (instances, work folders)

    REQUEST: --cache NAME [--backend B] [--mode allocs|outstanding] [--pid P] [--comm NAME]
             [--stack-sample N] [--sample-every N] [--map-keys N] [--buffer-kb N]

Limits (``/etc/slabkit/helper.conf``, ``key = value``, root-owned or ignored with an error):
``max_seconds`` (3600), ``max_captures_per_user`` (2), ``max_map_keys`` (1048576),
``max_buffer_kb`` (65536), ``backends`` (``bpf bpftrace perf ftrace``: SystemTap, which builds
and loads a kernel module, is left to root). Policy on ``--pid``: any running process may be
named -- a member already sees every process in a system-wide capture, so a filter shows
nothing more -- but a pid that runs nowhere is refused.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from slabkit._version import __version__
from slabkit.backends.base import Options
from slabkit.capturing import engine
from slabkit.errors import InvalidInput, PermissionNeeded, SlabkitError
from slabkit.host import helper as protocol
from slabkit.host.procs import is_alive, proc_start_time
from slabkit.host.target import LocalTarget
from slabkit.validate import check_seconds

CONFIG = Path("/etc/slabkit/helper.conf")
STATE = Path("/run/slabkit/helper")
VERBS = ("check", "caches", "slabinfo", "activity", "prepare", "capture", "cleanup")
#: fields a request may carry: flag -> (attribute, type)
REQUEST_FIELDS = {
    "--cache": ("cache", str), "--backend": ("backend", str), "--mode": ("mode", str),
    "--pid": ("pid", int), "--comm": ("comm", str), "--stack-sample": ("stack_sample", int),
    "--sample-every": ("sample_every", int), "--map-keys": ("map_keys", int),
    "--buffer-kb": ("buffer_kb", int),
}
MAX_ARG_BYTES = 256
MAX_ARGS = 32


@dataclass(frozen=True)
class Limits:
    """What a group member cannot exceed (see the module doc)."""

    max_seconds: float = 3600.0
    max_captures_per_user: int = 2
    max_map_keys: int = 1 << 20
    max_buffer_kb: int = 65536
    backends: tuple[str, ...] = ("bpf", "bpftrace", "perf", "ftrace")

    @classmethod
    def load(cls, path: Path = CONFIG) -> Limits:
        """The limits of ``path`` (defaults where it is missing). A file others could have
        written is refused: it would let them lift the limits."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return cls()
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionNeeded(f"{path} is not owned by root or is writable by others: "
                                   "an admin fixes it (chown root:root; chmod 644)")
        values: dict[str, Any] = {}
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, sep, value = (x.strip() for x in line.partition("="))
            if not sep or key not in cls.__dataclass_fields__:
                raise SlabkitError(f"{path}:{lineno}: expected one of "
                                   f"{', '.join(cls.__dataclass_fields__)} = VALUE")
            if key == "backends":
                values[key] = tuple(value.split())
            elif key == "max_seconds":
                values[key] = check_seconds(value, what=key, maximum=7 * 86400)
            else:
                if not value.isdigit() or int(value) < 1:
                    raise SlabkitError(f"{path}:{lineno}: {key} must be a whole number >= 1")
                values[key] = int(value)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def caller() -> tuple[int, str]:
    """(uid, name) of the user who asked: sudo sets ``SUDO_UID``/``SUDO_USER`` itself (the
    caller cannot, with sudo's environment reset); run by root directly, root."""
    uid = os.environ.get("SUDO_UID", "")
    if uid.isdigit():
        return int(uid), os.environ.get("SUDO_USER", uid)[:64]
    return os.getuid(), "root"


# --- arguments ---------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> tuple[str, dict[str, str]]:
    """(verb, {flag: value}) from the command line; strict: known verbs and flags only, each
    flag once with one value, bounded sizes."""
    if not argv:
        raise InvalidInput(f"a verb is needed: one of {', '.join(VERBS)}")
    if len(argv) > MAX_ARGS:
        raise InvalidInput(f"too many arguments ({len(argv)})")
    for a in argv:
        if len(a.encode(errors="replace")) > MAX_ARG_BYTES or "\0" in a:
            raise InvalidInput(f"an argument is longer than {MAX_ARG_BYTES} bytes or holds NUL")
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        raise InvalidInput(f"unknown verb {verb[:40]!r}: one of {', '.join(VERBS)}")
    allowed = {"capture": [*REQUEST_FIELDS, "--seconds"], "prepare": list(REQUEST_FIELDS),
               "activity": ["--seconds"]}.get(verb, [])
    fields: dict[str, str] = {}
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag not in allowed:
            raise InvalidInput(f"{verb} takes no argument {flag[:40]!r}"
                               + (f" (it takes {', '.join(allowed)})" if allowed else ""))
        if flag in fields:
            raise InvalidInput(f"{flag} is given twice")
        if i + 1 >= len(rest):
            raise InvalidInput(f"{flag} needs a value")
        fields[flag] = rest[i + 1]
        i += 2
    return verb, fields


def request_of(fields: dict[str, str], limits: Limits) -> engine.Request:
    """The capture request of ``fields``, checked against the limits."""
    if "--cache" not in fields:
        raise InvalidInput("--cache is required")
    values: dict[str, Any] = {}
    for flag, (name, kind) in REQUEST_FIELDS.items():
        if flag not in fields:
            continue
        text = fields[flag]
        if kind is int:
            if not text.isascii() or not text.isdigit() or len(text) > 12:
                raise InvalidInput(f"{flag} must be a whole number, not {text[:40]!r}")
            values[name] = int(text)
        else:
            values[name] = text
    opts = {k: values.pop(k) for k in ("stack_sample", "sample_every", "map_keys", "buffer_kb")
            if k in values}
    options = Options(**opts)
    if options.map_keys is not None and options.map_keys > limits.max_map_keys:
        raise InvalidInput(f"--map-keys {options.map_keys} is above the limit of "
                           f"{limits.max_map_keys}")
    if options.buffer_kb > limits.max_buffer_kb:
        raise InvalidInput(f"--buffer-kb {options.buffer_kb} is above the limit of "
                           f"{limits.max_buffer_kb}")
    request = engine.Request(options=options, **values)
    if request.backend not in ("auto", *limits.backends):
        raise InvalidInput(f"backend {request.backend!r} is not available through the capture "
                           f"helper (it offers auto, {', '.join(limits.backends)}); as root, "
                           "slabkit can use it directly")
    return request


def seconds_of(fields: dict[str, str], limits: Limits) -> float:
    if "--seconds" not in fields:
        raise InvalidInput("--seconds is required")
    return check_seconds(fields["--seconds"], maximum=limits.max_seconds)


# --- what a capture may use --------------------------------------------------------------------

def _state_dir(*parts: str) -> Path:
    path = STATE.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(STATE, 0o700)
    return path


def take_slot(uid: int, limits: Limits) -> IO:
    """One of the caller's ``max_captures_per_user`` capture slots (a lock held by this process
    until it ends, however it ends); refused when all are taken."""
    folder = _state_dir("slots")
    for n in range(limits.max_captures_per_user):
        f = open(folder / f"{uid}.{n}", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            f.close()
    raise InvalidInput(f"you already run {limits.max_captures_per_user} captures at once, the "
                       "limit: wait for one to end (or stop it)")


def work_folder() -> Path:
    """A private folder for one capture's raw output, named after this process."""
    base = _state_dir("work")
    sweep_work_folders(base)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{proc_start_time(os.getpid())}-",
                                 dir=base))


def sweep_work_folders(base: Path) -> list[str]:
    """Remove work folders of helpers that are gone (a killed capture)."""
    removed = []
    for d in base.iterdir() if base.is_dir() else []:
        pid, _, rest = d.name.partition("-")
        start = rest.partition("-")[0]
        if pid.isdigit() and not is_alive(int(pid), start):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


# --- verbs -------------------------------------------------------------------------------------

def answer(data: dict[str, Any]) -> int:
    sys.stdout.write(json.dumps({"ok": True, **data}, default=str) + "\n")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if os.geteuid() != 0:
            raise PermissionNeeded("slabkit's capture helper runs as root, through sudo")
        verb, fields = parse_args(argv)
        if verb == "capture":
            return capture(fields)
        return answer(simple(verb, fields, Limits.load()))
    except SlabkitError as e:
        sys.stdout.write(json.dumps(protocol.error_to_json(e), default=str) + "\n")
        sys.stdout.flush()
        return 2
    except Exception as e:  # a bug: say so in one line, never a traceback to the caller
        sys.stdout.write(json.dumps({"ok": False, "error": "SlabkitError",
                                     "message": f"the capture helper failed: "
                                                f"{type(e).__name__}: {e}"}) + "\n")
        return 3


def simple(verb: str, fields: dict[str, str], limits: Limits) -> dict[str, Any]:
    from slabkit.host import slabinfo
    target = LocalTarget()
    uid, user = caller()
    if verb == "check":
        return {"protocol": protocol.PROTOCOL, "version": __version__, "limits": limits.to_json(),
                "uid": uid, "user": user}
    if verb == "caches":
        return {"records": slabinfo.cache_records(target)}
    if verb == "slabinfo":
        return {"text": target.read_text(slabinfo.SLABINFO)}
    if verb == "activity":
        from slabkit.host.activity import activity_records
        seconds = check_seconds(fields.get("--seconds", "2"), maximum=60)
        return {"records": activity_records(seconds, target)}
    if verb == "prepare":
        return {"prepared": engine.prepare(request_of(fields, limits), target).describe()}
    if verb == "cleanup":
        from slabkit.host.cleanup import cleanup_leftovers
        done = cleanup_leftovers()
        done += [f"removed work folder {n}" for n in sweep_work_folders(STATE / "work")]
        return {"done": done}
    raise InvalidInput(f"unknown verb {verb!r}")


def capture(fields: dict[str, str]) -> int:
    """Run a capture and stream it (frames: :mod:`slabkit.host.helper`); a refusal or failure
    is an ``error`` frame."""
    out = sys.stdout.buffer
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # the user's side gone: end, no traceback
    try:
        limits = Limits.load()
        request = request_of(fields, limits)
        seconds = seconds_of(fields, limits)
        slot = take_slot(caller()[0], limits)
        prep = engine.prepare(request, LocalTarget())
    except SlabkitError as e:
        protocol.write_json_frame(out, "error", protocol.error_to_json(e))
        protocol.write_frame(out, "end")
        return 2
    try:
        return _stream(prep, seconds, out)
    finally:
        slot.close()


def _stream(prep: engine.Prepared, seconds: float, out: IO[bytes]) -> int:
    stop = threading.Event()
    finished = threading.Event()

    def watch_stdin() -> None:
        """``stop`` ends the capture early; end of file means the user's side is gone: end
        now (the tracers' supervisors see this process go and tear everything down)."""
        pending = b""
        while True:
            try:
                data = os.read(0, 4096)   # raw: no buffered lock held at interpreter exit
            except OSError:
                data = b""
            if not data:
                break
            pending += data
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                if line.strip() == b"stop":
                    stop.set()
            pending = pending[-64:]
        if not finished.is_set():
            os._exit(4)

    threading.Thread(target=watch_stdin, daemon=True, name="control").start()
    protocol.write_json_frame(out, "hello", prep.describe())
    work = work_folder()
    state = {"attached": False, "last": -1.0}

    def progress(done: float, total: float) -> None:
        if not state["attached"]:
            state["attached"] = True
            protocol.write_json_frame(out, "attached", {"done": done})
        if done - state["last"] >= 0.2 or done >= total:
            state["last"] = done
            protocol.write_json_frame(out, "progress", {"done": done, "total": total})

    try:
        try:
            outcome = engine.run(prep, seconds, work, progress=progress, stop_event=stop,
                                 on_sample=lambda row: protocol.write_json_frame(out, "sample",
                                                                                 row))
        except SlabkitError as e:
            protocol.write_json_frame(out, "error", protocol.error_to_json(e))
            protocol.write_frame(out, "end")
            return 2
        for name in outcome.files:
            path = work / name
            if path.is_file() and not path.is_symlink():
                protocol.write_file_frame(out, str(path), name)
        protocol.write_json_frame(out, "result", outcome.to_json())
        protocol.write_frame(out, "end")
        finished.set()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":   # pragma: no cover - the installed entry point calls main()
    sys.exit(main())
