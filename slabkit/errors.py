"""The errors slabkit raises: one base class, a few kinds, each message says what to do.

The library never prints or exits; the CLI turns a :class:`SlabkitError` into one line on
stderr and exit code 2.
"""
from __future__ import annotations

import re
import signal
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
    """A tracer started but failed: what happened, what to do (``hint``), its exit code, its
    stderr (``stderr``, the whole of it; ``tail``, its last lines) and where its output is kept.

    ``str()`` is one line (what happened and what to do) followed by the stderr tail, indented:
    what the CLI prints and the widgets show."""

    TAIL_LINES = 8

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "",
                 raw_path: str | None = None, hint: str | None = None):
        self.message = message
        self.returncode = returncode
        self.stderr = stderr
        self.raw_path = raw_path
        self.hint = hint if hint is not None else advice(f"{message}\n{stderr}")
        super().__init__(message)

    @property
    def tail(self) -> list[str]:
        """The last lines of the tracer's stderr (blank lines dropped)."""
        lines = [ln.rstrip() for ln in (self.stderr or "").splitlines() if ln.strip()]
        return lines[-self.TAIL_LINES:]

    @property
    def summary(self) -> str:
        """What happened and what to do, in one line."""
        text = self.message
        if self.returncode is not None:
            text += f" (exit code {self.returncode}{_signal_text(self.returncode)})"
        return f"{text}: {self.hint}" if self.hint else text

    def __str__(self) -> str:
        if not hasattr(self, "message"):      # made without __init__ (unpickled): its args
            return super().__str__()
        lines = [self.summary]
        if self.tail:
            lines.append("  the tracer said (last lines of its stderr):")
            lines += [f"    {ln}" for ln in self.tail]
        if self.raw_path:
            lines.append(f"  its output is kept in {self.raw_path}")
        return "\n".join(lines)


def _signal_text(returncode: int) -> str:
    """``": killed by SIGSEGV"`` for an exit status that says a signal ended the process
    (a shell's 128+N, or Python's -N)."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    try:
        return f": killed by {signal.Signals(number).name}" if number else ""
    except ValueError:
        return ""


#: known tracer and kernel messages -> what to do, first match wins (:func:`advice`)
_ADVICE: tuple[tuple[str, str], ...] = (
    (r"'linux/types\.h' file not found|BTF: failed to find BTF data|[Cc]ould not find kernel "
     r"headers",
     "bpftrace found neither the kernel's BTF nor its headers. With bpftrace before 0.18 on a "
     "kernel before 5.11, point it at the BTF file: BPFTRACE_BTF=/sys/kernel/btf/vmlinux "
     "(slabkit does when the kernel's BTF shows it is needed); else install the kernel's "
     "headers (linux-headers-$(uname -r))"),
    (r"(?i)operation not permitted|permission denied|\bEPERM\b|\bEACCES\b",
     "the kernel refused the probe: run as root (sudo) and check /sys/kernel/security/lockdown, "
     "kernel.perf_event_paranoid and kernel.unprivileged_bpf_disabled"),
    (r"(?i)not traceable|could not resolve symbol|cannot attach kprobe|failed to attach|"
     r"error attaching probe|no such (?:function|symbol)",
     "the kernel would not let the tracer attach to a function: check that it is listed in "
     "/sys/kernel/tracing/available_filter_functions and that kprobes work on this kernel"),
    (r"(?i)couldn't insert module|invalid module format|vermagic|module verification failed",
     "the kernel refused the SystemTap module: build it for this exact kernel release (and "
     "sign it where the kernel requires signed modules)"),
    (r"(?i)\bfilter\b",
     "the kernel refused the event filter: compare it with the event's fields in "
     "/sys/kernel/tracing/events/kmem/<event>/format (the capture's meta.json has the program)"),
    (r"(?i)unknown (?:struct|identifier|field|type)|has no field|no member named",
     "the tracer does not know a type or field the program uses on this kernel"),
    (r"(?i)cannot allocate memory|RLIMIT_MEMLOCK|out of memory|\bENOMEM\b",
     "the kernel could not allocate the probe's maps or buffers: lower map_keys or buffer_kb, "
     "or raise the locked-memory limit (ulimit -l)"),
    (r"(?i)command not found|: not found$",
     "the tracer is not installed where the capture runs"),
    (r"did not attach its probe within",
     "it was still starting (compiling, or reading symbols on a slow machine): try again, and "
     "read what it printed so far below"),
)


def advice(text: str) -> str:
    """What to do about a tracer failure whose message and stderr are ``text``."""
    for pattern, what in _ADVICE:
        if re.search(pattern, text, re.MULTILINE):
            return what
    return ("read the tracer's last messages below; run the program shown by `slabkit capture "
            "CACHE --print-program` by hand, as root, to see all of it")


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

    @classmethod
    def forged(cls, why: str, *, path: str | None = None, lineno: int | None = None,
               line: str | None = None) -> ParseError:
        """A raw output that goes on where its tracer stopped, or holds more than the tracer
        wrote: ``why``, and that its counts are not trusted (every parser words it so)."""
        return cls(f"{why}: the file was appended to or forged; its counts are not trusted",
                   path=path, lineno=lineno, line=line)


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
