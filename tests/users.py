"""Real throwaway users for tests of what a normal user can (and cannot) do.

``throwaway_user(groups=("slabkit",))`` creates a user with ``useradd`` (a home folder, a
shell, no password but not a locked account, so a key can log in over SSH), yields its name,
and on the way out -- also when the test fails -- ends its processes and removes it with
``userdel -r``. Commands run as the user through ``runuser``, so they get the user's groups
from the group database, as at a fresh login.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def throwaway_user(groups: tuple[str, ...] = ()) -> Iterator[str]:
    name = f"sktest{secrets.token_hex(3)}"
    cmd = ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*"]
    if groups:
        cmd += ["--groups", ",".join(groups)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    try:
        yield name
    finally:
        end_processes_of(name)
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def end_processes_of(name: str) -> None:
    """SIGKILL every process of user ``name`` (a test's leftovers), by pid."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    for _ in range(3):
        pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                and _uid_of(d) == uid]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _uid_of(proc: Path) -> int | None:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def home(name: str) -> Path:
    return Path(pwd.getpwnam(name).pw_dir)


def as_user(name: str, argv: list[str], *, env: dict | None = None, **kw
            ) -> subprocess.CompletedProcess:
    """Run ``argv`` as user ``name`` in their home folder, with a clean environment."""
    return subprocess.run(["runuser", "-u", name, "--", "env", "-i", *_env(name, env), *argv],
                          cwd=home(name), capture_output=True, text=True, **kw)


def popen_as_user(name: str, argv: list[str], *, env: dict | None = None, **kw
                  ) -> subprocess.Popen:
    return subprocess.Popen(["runuser", "-u", name, "--", "env", "-i", *_env(name, env), *argv],
                            cwd=home(name), **kw)


def _env(name: str, extra: dict | None) -> list[str]:
    base = {"HOME": str(home(name)), "USER": name, "LOGNAME": name, "LANG": "C.UTF-8",
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    base.update(extra or {})
    return [f"{k}={v}" for k, v in base.items()]


def python() -> str:
    """The checkout's virtualenv interpreter (made with a Python every user can run)."""
    return str(REPO / ".venv" / "bin" / "python")
