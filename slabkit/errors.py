"""The errors slabkit raises: one base class, a few kinds, each message says what to do.

The library never prints or exits; the CLI turns a :class:`SlabkitError` into one line on
stderr and exit code 2.
"""
from __future__ import annotations

from collections.abc import Iterable


class SlabkitError(Exception):
    """Base class of every error slabkit raises on purpose."""


class InvalidInput(SlabkitError, ValueError):
    """Something a user typed (a name, a filter, a duration, a path) is not acceptable."""


class UnknownCache(InvalidInput, LookupError):
    """A cache name that is neither a slabinfo name nor an alias of a merged cache."""

    def __init__(self, name: str, close: Iterable[str] = ()):
        self.name = name
        self.close_matches = list(close)
        hint = (
            f"; did you mean {', '.join(repr(c) for c in self.close_matches)}?"
            if self.close_matches
            else "; run `slabkit caches` to list them"
        )
        super().__init__(f"no slab cache named {name!r} on this kernel{hint}")


class PermissionNeeded(SlabkitError, PermissionError):
    """The caller lacks a privilege (usually root) that the step needs."""


class TracerUnavailable(SlabkitError):
    """The chosen tracer is not installed, or the kernel lacks what it needs."""


class ProbeFailed(SlabkitError):
    """A tracer started but failed; carries its exit code, stderr tail and raw output path."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "",
                 raw_path: str | None = None):
        self.returncode = returncode
        self.stderr = stderr
        self.raw_path = raw_path
        tail = "\n".join(stderr.strip().splitlines()[-8:])
        parts = [message]
        if returncode is not None:
            parts.append(f"(exit code {returncode})")
        if tail:
            parts.append(f"; tracer said:\n{tail}")
        if raw_path:
            parts.append(f"\nraw output kept in {raw_path}")
        super().__init__(" ".join(parts))


class ParseError(SlabkitError, ValueError):
    """Tracer output or a kernel file that does not read as expected: file, line number, line."""

    def __init__(self, message: str, *, path: str | None = None, lineno: int | None = None,
                 line: str | None = None):
        self.message = message
        self.path = path
        self.lineno = lineno
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if lineno is not None:
                where += f":{lineno}"
            where += ": "
        elif lineno is not None:
            where = f"line {lineno}: "
        text = f"{where}{message}"
        if line is not None:
            text += f": {line[:200]!r}"
        super().__init__(text)


class DiskFull(SlabkitError):
    """The disk holding a capture folder is full: what could be written is kept, and the
    message says where and what to run once space is freed. Deliberately not an OSError, so
    code that tolerates a missing file cannot hide it."""


class TargetUnreachable(SlabkitError):
    """The SSH connection to a target could not be made, or broke (ssh exit status 255).

    ``host`` is the destination as given, ``stderr`` what ssh said. Deliberately not an
    OSError, so code that tolerates a missing file cannot hide a lost connection.
    """

    def __init__(self, message: str, *, host: str = "", stderr: str = ""):
        self.host = host
        self.stderr = stderr
        super().__init__(message)


class CaptureNotFound(SlabkitError, FileNotFoundError):
    """A path that holds no complete capture."""


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with the full length
    said, so a megabyte of typed text makes one readable line."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 20 else text[:limit] + "..."


def expected_one_of(what: str, value: object, choices: Iterable[str]) -> str:
    """Format the one 'expected one of ...' message every option check uses."""
    opts = ", ".join(repr(c) for c in choices)
    return f"{what} must be one of {opts}, not {shown(value)}"
