"""slabkit's capture helper, seen from the user's side: how to reach it, and what it says.

Capturing needs root. A user in the ``slabkit`` group may instead ask slabkit's capture helper
(installed root-owned by ``sudo make system``; :mod:`slabkit.helper`) to do the privileged part
for them: ``sudo -n /usr/local/libexec/slabkit-helper VERB --field value ...``, on this
machine or, through the same SSH connection slabkit uses for everything else, on an SSH host
where slabkit logs in as a user. The helper takes typed fields only (a cache name, a backend
from a fixed list, a duration, filters, sampling), validates them itself, renders and runs the
probe, and streams the raw output back; this side parses it and writes the capture folder as
the user.

Wire format (``PROTOCOL``): a simple verb answers one JSON document on stdout, ``{"ok": true,
...}`` or ``{"ok": false, "error": KIND, "message": ...}``. ``capture`` answers a stream of
frames, each ``KIND SIZE[ NAME]\\n`` then SIZE bytes: ``hello`` (what was decided, JSON),
``attached``, ``progress`` and ``sample`` (JSON), ``file`` (a raw output file, NAME), ``result``
(JSON), ``error`` (JSON) and ``end``. Its stdin is the control channel: a line ``stop`` ends the
capture early and keeps what it has; end of file means the user's side is gone, and the helper
tears everything down at once.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import IO, Any, Iterator

from slabkit.errors import (
    CaptureNotFound, InvalidInput, ParseError, PermissionNeeded, ProbeFailed, SlabkitError,
    TracerUnavailable, UnknownCache,
)
from slabkit.host.target import Target

HELPER = "/usr/local/libexec/slabkit-helper"
GROUP = "slabkit"
PROTOCOL = 1
#: frame kinds of a capture stream
FRAMES = ("hello", "attached", "progress", "sample", "file", "result", "error", "end")
#: the largest JSON frame accepted (a file frame may be any size)
MAX_JSON = 64 << 20
_HEADER = re.compile(rb"([a-z]{1,16}) (\d{1,15})(?: ([A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?\n")
_ERRORS: dict[str, type[SlabkitError]] = {
    c.__name__: c for c in (SlabkitError, InvalidInput, UnknownCache, PermissionNeeded,
                            TracerUnavailable, ProbeFailed, ParseError, CaptureNotFound)}


def error_to_json(e: SlabkitError) -> dict[str, Any]:
    """An error as the helper reports it (see :func:`error_from_json`). A ProbeFailed travels
    as its bare message (the client rebuilds it with its hint and stderr); any other error as
    its whole text (a ParseError's path, line number and line included)."""
    return {"ok": False, "error": type(e).__name__ if type(e).__name__ in _ERRORS
            else "SlabkitError",
            "message": e.message if isinstance(e, ProbeFailed) else str(e),
            "stderr": getattr(e, "stderr", None), "returncode": getattr(e, "returncode", None),
            "hint": getattr(e, "hint", None),
            "close_matches": getattr(e, "close_matches", None)}


def error_from_json(data: dict[str, Any], where: str = "") -> SlabkitError:
    """The SlabkitError the helper reported, with its message as the helper wrote it."""
    cls = _ERRORS.get(str(data.get("error")), SlabkitError)
    message = str(data.get("message") or "the capture helper failed")[:4000]
    message += f" (on {where})" if where else ""
    if cls is ProbeFailed:   # what happened, what to do, the tracer's stderr and exit status
        return ProbeFailed(message, returncode=data.get("returncode"),
                           stderr=str(data.get("stderr") or ""), hint=data.get("hint"))
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    if cls is UnknownCache:
        err.name, err.close_matches = "", list(data.get("close_matches") or [])
    return err


def write_frame(out: IO[bytes], kind: str, payload: bytes = b"", name: str | None = None) -> None:
    """One frame of a capture stream."""
    head = f"{kind} {len(payload)}" + (f" {name}" if name else "") + "\n"
    out.write(head.encode() + payload)
    out.flush()


def write_json_frame(out: IO[bytes], kind: str, data: Any) -> None:
    write_frame(out, kind, json.dumps(data, default=str).encode())


def write_file_frame(out: IO[bytes], path: str, name: str) -> None:
    """A file frame, streamed from ``path`` in chunks."""
    size = os.path.getsize(path)
    out.write(f"file {size} {name}\n".encode())
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{path} shrank while being sent")
            out.write(chunk)
            left -= len(chunk)
    out.flush()


def read_frames(stream: IO[bytes], open_file) -> Iterator[tuple[str, Any]]:
    """The frames of a capture stream: ``(kind, JSON data)``, or ``("file", name)`` once the
    file's bytes went to ``open_file(name)`` (a writable binary file, closed here)."""
    while True:
        head = stream.readline(256)
        if not head:
            raise ProbeFailed("the capture helper ended without finishing its report")
        m = _HEADER.fullmatch(head)
        if not m or m.group(1).decode() not in FRAMES:
            raise ProbeFailed(f"the capture helper sent something unexpected: {head[:80]!r}")
        kind, size, name = m.group(1).decode(), int(m.group(2)), m.group(3)
        if kind == "file":
            if name is None:
                raise ProbeFailed("the capture helper sent a file without a name")
            with open_file(name.decode()) as f:
                left = size
                while left:
                    chunk = stream.read(min(left, 1 << 20))
                    if not chunk:
                        raise ProbeFailed("the capture helper's output stopped inside a file")
                    f.write(chunk)
                    left -= len(chunk)
            yield "file", name.decode()
            continue
        if size > MAX_JSON:
            raise ProbeFailed(f"the capture helper sent a {kind} frame of {size} bytes")
        payload = stream.read(size)
        if len(payload) != size:
            raise ProbeFailed("the capture helper's output stopped inside a frame")
        yield kind, json.loads(payload) if payload else None
        if kind == "end":
            return


class Helper:
    """slabkit's capture helper on a target (this machine, or an SSH host)."""

    def __init__(self, target: Target):
        self.target = target
        self._why: str | None = None
        self._checked = False

    def _where(self) -> str:
        return "" if self.target.runs_here else f" on {self.target.name}"

    def command(self, verb: str, *args: str) -> list[str]:
        """The local command line that runs the helper with ``verb`` and ``args``."""
        return self.target.command(["sudo", "-n", HELPER, verb, *args])

    # --- can this user use it? ----------------------------------------------------------------
    def unavailable(self) -> str | None:
        """Why this user cannot capture through the helper, as one line saying what to do; or
        None when the helper is there, speaks this slabkit's protocol and lets us in."""
        if not self._checked:
            self._why = self._check()
            self._checked = True
        return self._why

    def _check(self) -> str | None:
        where = self._where()
        try:
            installed = self.target.exists(HELPER)
        except OSError:
            installed = False
        if not installed:
            return (f"capturing needs root, and slabkit's capture helper is not installed{where}:"
                    " an admin runs `sudo make system` in a slabkit checkout once, then "
                    f"`sudo usermod -aG {GROUP} USER` for each user who may capture")
        try:
            data = self._call("check", timeout=60)
        except PermissionNeeded as e:
            return str(e)
        except SlabkitError as e:
            return f"slabkit's capture helper{where} does not answer: {e}"
        if data.get("protocol") != PROTOCOL:
            return (f"slabkit's capture helper{where} speaks protocol {data.get('protocol')}, this "
                    f"slabkit {PROTOCOL}: update it with `sudo make system` in this checkout")
        return None

    def _not_allowed(self, said: str) -> PermissionNeeded:
        user = _user()
        hint = f"an admin adds you with `sudo usermod -aG {GROUP} {user}`, then log in again"
        if self.target.runs_here and _in_group_db_only(user):
            hint = (f"you were added to the {GROUP} group after this session started: log out "
                    "and in again (or start a new login shell) so it takes effect")
        return PermissionNeeded(f"capturing needs root or slabkit's capture helper, which "
                                f"{user} may not use{self._where()} ({said}): {hint}")

    # --- simple verbs ----------------------------------------------------------------------------
    def _call(self, verb: str, *args: str, timeout: float = 120) -> dict[str, Any]:
        try:
            done = subprocess.run(self.command(verb, *args), capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=timeout,
                                  start_new_session=True)
        except FileNotFoundError:
            raise PermissionNeeded("capturing needs root or slabkit's capture helper, and sudo "
                                   "is not installed (apt-get install sudo)") from None
        except subprocess.TimeoutExpired:
            raise SlabkitError(f"slabkit's capture helper{self._where()} did not answer "
                               f"{verb} within {timeout:g} s") from None
        try:
            data = json.loads(done.stdout) if done.stdout.strip() else None
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("ok"):
            return data
        if isinstance(data, dict) and data.get("ok") is False:
            raise error_from_json(data, "")
        said = done.stderr.decode(errors="replace").strip().splitlines()
        said = said[-1] if said else f"exit status {done.returncode}"
        if "sudo" in said and ("password" in said or "not allowed" in said or "sudoers" in said
                               or "may not run" in said):
            raise self._not_allowed(said.removeprefix("sudo: "))
        raise SlabkitError(f"slabkit's capture helper{self._where()} failed ({said})")

    def check(self) -> dict[str, Any]:
        return self._call("check")

    def cache_records(self) -> list[dict]:
        """The slab cache table, as the helper reads it (see ``slabinfo.cache_records``)."""
        return list(self._call("caches")["records"])

    def slabinfo_text(self) -> str:
        """``/proc/slabinfo``, as the helper reads it."""
        return str(self._call("slabinfo")["text"])

    def prepare(self, args: list[str]) -> dict[str, Any]:
        """What a capture of these request arguments would run (``prepare`` verb)."""
        return dict(self._call("prepare", *args)["prepared"])

    def activity(self, seconds: float) -> list[dict]:
        return list(self._call("activity", "--seconds", f"{seconds:g}",
                               timeout=seconds + 120)["records"])

    def cleanup(self) -> list[str]:
        return [str(x) for x in self._call("cleanup")["done"]]

    # --- a capture -------------------------------------------------------------------------------
    def start_capture(self, args: list[str]) -> subprocess.Popen:
        """Start a ``capture``: stdin is the control channel, stdout the frame stream."""
        return subprocess.Popen(self.command("capture", *args), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)


def _user() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _in_group_db_only(user: str) -> bool:
    """Whether ``user`` is in the helper's group in the group database but this process's
    groups do not have it yet (added after login)."""
    import grp
    try:
        gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return False
    try:
        import pwd
        listed = gid in os.getgrouplist(user, pwd.getpwnam(user).pw_gid)
    except (KeyError, OSError):
        return False
    return listed and gid not in os.getgroups()
