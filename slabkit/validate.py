"""Validation of everything a user can type that may reach a probe program or a command line.

Values are checked against a strict character set here, and cache names additionally against the
kernel's own list (``slabkit.host.slabinfo.resolve_cache``), before any program text is rendered.
"""
from __future__ import annotations

import math
import re

from slabkit.errors import InvalidInput, shown

# Every pattern here is used with ``fullmatch``: ``re.match`` with a ``$`` accepts a trailing
# newline ("bash\n"), which would reach a program's filter and match nothing.

# Slab cache names the kernel creates: letters, digits and ``_ - . :`` (``:0000064`` merged
# directories, ``kmalloc-rnd-01-64``, ``ext4_inode_cache``, ``TCPv6``, ``request_sock_TCP``).
CACHE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,63}")
_CACHE_NAME_CHARS = re.compile(r"[A-Za-z0-9_.:\-]")
# A task comm is at most 15 bytes (TASK_COMM_LEN 16 with its NUL); we accept the characters a
# filter can match safely.
COMM_RE = re.compile(r"[A-Za-z0-9_.:\-+/ @]{1,15}")
# A kernel function a probe attaches to (``kmem_cache_alloc_node``, ``foo.cold``).
FUNCTION_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,126}")
# A pid or a number of seconds typed as text: ASCII digits, no sign, space or newline.
_PID_TEXT_RE = re.compile(r"[0-9]{1,7}")
_SECONDS_TEXT_RE = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})")


def check_cache_name(name: object) -> str:
    """Return ``name`` if it could be a slab cache name, else raise :class:`InvalidInput`."""
    if not isinstance(name, str) or not name:
        raise InvalidInput("a cache name is a non-empty string such as 'dentry' or 'kmalloc-64'")
    if not CACHE_NAME_RE.fullmatch(name):
        bad = sorted(set(_CACHE_NAME_CHARS.sub("", name[:4096])))
        what = f"characters {shown(''.join(bad), 40)}" if bad else "length (64 at most)"
        raise InvalidInput(
            f"{shown(name)} is not a slab cache name: it has {what}; cache names use letters, "
            "digits and _ - . : only (see `slabkit caches`)")
    return name


def check_comm(comm: object) -> str:
    """Return a process-name filter if it is safe and could match a comm (<= 15 chars)."""
    if not isinstance(comm, str) or not COMM_RE.fullmatch(comm):
        raise InvalidInput(
            f"comm filter {shown(comm)} is not a process name: use the name as /proc/PID/comm "
            "shows it (15 characters at most; letters, digits, space and _ . : - + / @)")
    return comm


def check_function_name(name: object) -> str:
    """Return ``name`` if it is a kernel function name a probe may attach to."""
    if not isinstance(name, str) or not FUNCTION_NAME_RE.fullmatch(name):
        raise InvalidInput(f"{shown(name)} is not a kernel function name (letters, digits, _ "
                           "and . only)")
    return name


def check_pid(pid: object) -> int:
    """Return a pid filter as an int, or raise for anything that is not a positive pid."""
    if isinstance(pid, bool):
        raise InvalidInput(f"pid filter must be a positive integer, not {pid!r}")
    if isinstance(pid, str) and not _PID_TEXT_RE.fullmatch(pid):
        raise InvalidInput(f"pid filter must be a positive integer (digits only), "
                           f"not {shown(pid)}")
    try:
        value = int(pid, 10) if isinstance(pid, str) else int(pid)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"pid filter must be a positive integer, not {shown(pid)}") from None
    if isinstance(pid, float) and pid != value:
        raise InvalidInput(f"pid filter must be a whole number, not {pid!r}")
    if not 0 < value <= 4194304:  # PID_MAX_LIMIT on 64-bit
        raise InvalidInput(f"pid filter {shown(pid)} is outside 1..4194304")
    return value


def check_seconds(seconds: object, *, what: str = "duration", maximum: float = 86400) -> float:
    """Return a duration in seconds if it is a finite positive number within ``maximum``."""
    if isinstance(seconds, bool):
        raise InvalidInput(f"{what} must be a number of seconds, not {seconds!r}")
    if isinstance(seconds, str) and not _SECONDS_TEXT_RE.fullmatch(seconds):
        raise InvalidInput(f"{what} must be a number of seconds such as 10 or 2.5, "
                           f"not {shown(seconds)}")
    try:
        value = float(seconds)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{what} must be a number of seconds, not {shown(seconds)}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{what} must be more than 0 seconds, not {shown(seconds)}")
    if value > maximum:
        raise InvalidInput(f"{what} of {value:g} s is longer than the {maximum:g} s allowed")
    return value
