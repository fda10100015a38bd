"""Where commands run and kernel files are read: this machine (optionally under a fake root).

Every fact slabkit reads (``/proc/slabinfo``, ``/sys/kernel/slab``, tracefs formats, kallsyms)
goes through a :class:`Target`, so tests can point it at a fake tree and the SSH target
(``slabkit.host.ssh``) can read the same files on another machine. Paths given to a target are
always absolute paths *on the target* (``/proc/slabinfo``); a local target with ``root`` set
maps them under that folder.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import IO, Union

from slabkit.errors import PermissionNeeded
from slabkit.host.procs import SUPERVISE, Supervised, start_supervised, supervisor_args


class Target:
    """The interface every target offers. See :class:`LocalTarget` for the semantics."""

    name: str = "local"
    root: Path = Path("/")

    # --- files ---------------------------------------------------------------------------
    def read_text(self, path: str) -> str:
        raise NotImplementedError

    def read_many(self, paths: list[str]) -> dict[str, str | None]:
        """Read several small files at once (one round trip on remote targets); None if unreadable."""
        out: dict[str, str | None] = {}
        for p in paths:
            try:
                out[p] = self.read_text(p)
            except OSError:
                out[p] = None
        return out

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def readlinks(self, path: str) -> dict[str, str | None]:
        """Entries of a folder mapped to their symlink target (None for non-links)."""
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def write_text(self, path: str, text: str) -> None:
        raise NotImplementedError

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` as is (a kernel module, say): no encoding, no newline translation."""
        raise NotImplementedError

    def mkdir(self, path: str) -> None:
        raise NotImplementedError

    def rmdir(self, path: str) -> None:
        raise NotImplementedError

    # --- processes -----------------------------------------------------------------------
    def which(self, program: str) -> str | None:
        raise NotImplementedError

    def run(self, argv: list[str], *, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run a short command there and wait for it (output as text)."""
        raise NotImplementedError

    def start(self, argv: list[str], *, stdout: IO, stderr: IO, env: dict | None = None,
              teardown: str | None = None) -> Supervised:
        """Start a long-running program there (a tracer) under slabkit's supervisor
        (:mod:`slabkit.host.procs`): in a process group of its own, signalled in-band, stopped
        by :meth:`Supervised.stop` and ended within a second of this process's death.
        ``stdout``/``stderr`` receive its output; ``env`` adds environment variables;
        ``teardown`` names a tracefs instance folder to disable and remove when it ends."""
        raise NotImplementedError

    def command(self, argv: list[str]) -> list[str]:
        """The local command line that runs ``argv`` there directly, its stdin, stdout and
        stderr connected to the local process's (slabkit's capture helper talks this way)."""
        raise NotImplementedError

    @property
    def runs_here(self) -> bool:
        """Whether commands run on this machine (a local target, fake root or not)."""
        return False

    @property
    def is_this_machine(self) -> bool:
        """Whether both commands and files are this machine's (no fake root, no SSH)."""
        return False

    def page_size(self) -> int:
        """The target's memory page size in bytes."""
        done = self.run(["getconf", "PAGESIZE"], timeout=30)
        if done.returncode != 0 or not done.stdout.strip().isdigit():
            from slabkit.errors import SlabkitError
            raise SlabkitError(f"cannot learn the page size on {self.name}: `getconf PAGESIZE` "
                               f"said {(done.stderr or done.stdout).strip()[-200:]!r}")
        return int(done.stdout)

    def is_root(self) -> bool:
        raise NotImplementedError

    def hostname(self) -> str:
        raise NotImplementedError

    def kernel_release(self) -> str:
        return self.read_text("/proc/sys/kernel/osrelease").strip()


class LocalTarget(Target):
    """This machine. ``root`` re-bases every file path (fake trees in tests); commands still
    run on this machine."""

    def __init__(self, root: Union[str, os.PathLike] = "/"):
        self.root = Path(root)
        self.name = "local" if str(root) == "/" else f"local:{root}"

    def path(self, path: str) -> Path:
        """The real path of a target path (``/proc/slabinfo`` under ``root``)."""
        return self.root / str(path).lstrip("/")

    def read_text(self, path: str) -> str:
        return self.path(path).read_text(errors="replace")

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.path(path)))

    def readlinks(self, path: str) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        base = self.path(path)
        with os.scandir(base) as it:
            for entry in it:
                out[entry.name] = os.readlink(entry.path) if entry.is_symlink() else None
        return out

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path(path))

    def write_text(self, path: str, text: str) -> None:
        with open(self.path(path), "w") as f:
            f.write(text)

    def write_bytes(self, path: str, data: bytes) -> None:
        with open(self.path(path), "wb") as f:
            f.write(data)

    def mkdir(self, path: str) -> None:
        os.mkdir(self.path(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self.path(path))

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def run(self, argv: list[str], *, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input, errors="replace")

    def start(self, argv: list[str], *, stdout: IO, stderr: IO, env: dict | None = None,
              teardown: str | None = None) -> Supervised:
        command = ["/bin/sh", "-c", SUPERVISE, "slabkit",
                   *supervisor_args(argv, env, str(self.path(teardown)) if teardown else None)]
        return start_supervised(command, list(argv), stdout=stdout, stderr=stderr,
                                record=self.is_this_machine)

    def command(self, argv: list[str]) -> list[str]:
        supervisor_args(argv)  # checks argv
        return list(argv)

    @property
    def runs_here(self) -> bool:
        return True

    @property
    def is_this_machine(self) -> bool:
        return str(self.root) == "/"

    def page_size(self) -> int:
        return os.sysconf("SC_PAGE_SIZE")

    def is_root(self) -> bool:
        return os.geteuid() == 0

    def hostname(self) -> str:
        return socket.gethostname()


def require_root(target: Target, what: str) -> None:
    """Raise :class:`PermissionNeeded` unless the target runs us as root."""
    if not target.is_root():
        where = "" if target.name == "local" else f" on {target.name}"
        raise PermissionNeeded(f"{what} needs root{where}: run it with sudo (or as root)")
