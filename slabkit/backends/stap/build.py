"""Compile the script into a kernel module here, for a target that can only load it (staprun).
"""
from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slabkit.backends.stap.program import SCRIPT_FILE, argv
from slabkit.errors import InvalidInput, ProbeFailed
from slabkit.host.procs import die_with_parent

# --------------------------------------------------------------------------------------------
# compiling here for another kernel ("compile here, run there")

#: the stap command that compiles, split like a shell would (default ``stap``)
ENV_COMPILE = "SLABKIT_STAP_COMPILE"
#: a directory holding a Linux userland with stap, the target kernel's headers and debuginfo;
#: the compile command runs chrooted into it
ENV_ROOT = "SLABKIT_STAP_ROOT"
#: seconds a compile may take (a cold stap cache on a busy machine: minutes)
COMPILE_TIMEOUT_S = 1800
# `uname -r` strings: 6.1.0-57-amd64, 6.12.117+deb12-amd64, 5.14.0-427.el9.x86_64, 6.8.0-1012-aws
RELEASE_RE = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,127}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,54}$")  # MODULE_NAME_LEN is 56 with its NUL
_ROOT_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def check_release(release: object) -> str:
    """Return a kernel release string (``uname -r``) if it is safe on a command line."""
    if not isinstance(release, str) or not RELEASE_RE.fullmatch(release):
        raise InvalidInput(f"kernel release {release!r} is not a `uname -r` string (a digit, "
                           "then letters, digits and . _ + ~ -, 128 characters at most)")
    return release


def module_name() -> str:
    """A fresh kernel module name for one capture: ``slabkit_`` and 12 hex digits."""
    import uuid
    return f"slabkit_{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class CompileSettings:
    """How slabkit compiles a stap module here for the target's kernel.

    ``stap``: the command (``SLABKIT_STAP_COMPILE``, e.g. ``"stap"`` or ``"/opt/stap/bin/stap
    --poison-cache"``); ``root``: a chroot to run it in (``SLABKIT_STAP_ROOT``), or None to run
    it on this machine as is. ``configured``: the user set either.
    """

    stap: tuple[str, ...] = ("stap",)
    root: str | None = None
    configured: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CompileSettings:
        env = os.environ if env is None else env
        text = env.get(ENV_COMPILE, "").strip()
        root = env.get(ENV_ROOT, "").strip() or None
        try:
            stap = tuple(shlex.split(text)) if text else ("stap",)
        except ValueError as e:
            raise InvalidInput(f"{ENV_COMPILE}={text!r} cannot be split like a shell "
                               f"would: {e}") from None
        return cls(stap=stap, root=root, configured=bool(text or root))

    def problem(self) -> str | None:
        """Why compiling here cannot work, or None (checked before anything runs)."""
        if self.root is not None:
            if not os.path.isabs(self.root) or not os.path.isdir(self.root):
                return f"{ENV_ROOT}={self.root!r} is not an existing absolute directory"
            if os.geteuid() != 0:
                return f"compiling in {ENV_ROOT} needs root here (it runs chrooted)"
            exe = self.stap[0]
            found = (os.path.exists(os.path.join(self.root, exe.lstrip("/"))) if exe.startswith("/")
                     else any(os.path.exists(os.path.join(self.root, d.lstrip("/"), exe))
                              for d in _ROOT_PATH))
            if not found:
                return (f"{exe!r} is not installed in {ENV_ROOT}={self.root} (install systemtap "
                        "there, with the target kernel's headers and debuginfo)")
            return None
        if not shutil.which(self.stap[0]):
            return (f"{self.stap[0]!r} ({ENV_COMPILE}) is not installed here; install "
                    f"systemtap or point {ENV_ROOT} at a root that has it")
        return None


def compile_argv(script: str, cache: str, seconds: float | None, pid: int | None, *,
                 release: str, module: str, stap: Sequence[str] = ("stap",)) -> list[str]:
    """The command that builds ``script`` into ``<module>.ko`` for kernel ``release``, without
    loading it: :func:`argv` with ``-r RELEASE -p4 -m MODULE``. Cache, pid and duration are
    compiled into the module (stap substitutes ``@1 $2 $3`` when it builds).

    >>> compile_argv("slabkit.stp", "filp", None, None, release="6.1.0-57-amd64",
    ...              module="slabkit_0123abcd")       # doctest: +NORMALIZE_WHITESPACE
    ['stap', '-r', '6.1.0-57-amd64', '-m', 'slabkit_0123abcd', '-DMAXSKIPPED=1000000',
     '-DMAXACTION_INTERRUPTIBLE=4000000', '-p4', 'slabkit.stp', 'filp', '0', '0']
    """
    check_release(release)
    if not isinstance(module, str) or not _MODULE_RE.fullmatch(module):
        raise InvalidInput(f"module name {module!r} is not usable (letters, digits, _)")
    stap = list(stap)
    if not stap or not all(isinstance(a, str) and a and "\0" not in a for a in stap):
        raise InvalidInput(f"the stap command {stap!r} is empty or not a list of strings")
    base = argv(script, cache, seconds, pid, last_pass=4)
    return [*stap, "-r", release, "-m", module, *base[1:]]


def _in_root(root: str, workdir: str):
    """preexec_fn: chroot into ``root``, go to ``workdir`` there, die with the parent."""
    def enter() -> None:
        die_with_parent()
        os.chroot(root)
        os.chdir(workdir)
    return enter


def build_module(script_text: str, cmd: list[str], module: str, *, root: str | None = None,
                 timeout_s: float = COMPILE_TIMEOUT_S) -> tuple[bytes, subprocess.CompletedProcess]:
    """Run a :func:`compile_argv` command here and return the module's bytes and the run.

    The script is written as ``slabkit.stp`` into a fresh working directory (under
    ``root``/tmp when ``root`` is given, the command then running chrooted into ``root``), the
    command runs there and must leave ``<module>.ko`` in it (``stap -p4 -m`` does), or print
    the module's path as the last line of its output. The directory is removed afterwards.
    Raises :class:`~slabkit.errors.ProbeFailed` with stap's messages when the build fails.
    """
    import signal
    import tempfile

    if root is not None:
        base = os.path.join(root, "tmp")
        os.makedirs(base, mode=0o1777, exist_ok=True)
        work = tempfile.mkdtemp(prefix="slabkit-stap-", dir=base)
        inner = "/tmp/" + os.path.basename(work)
        popen_kw: dict[str, Any] = {
            "preexec_fn": _in_root(root, inner),
            "env": {"PATH": ":".join(_ROOT_PATH), "HOME": "/root", "LC_ALL": "C",
                    "TMPDIR": "/tmp"}}
    else:
        work = tempfile.mkdtemp(prefix="slabkit-stap-")
        popen_kw = {"cwd": work, "preexec_fn": die_with_parent,
                    "env": dict(os.environ, LC_ALL="C")}
    try:
        with open(os.path.join(work, SCRIPT_FILE), "w") as f:
            f.write(script_text)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=True, **popen_kw)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except BaseException:  # timeout or Ctrl-C: stap's make and gcc children too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        where = f" in {root}" if root else ""
        if done.returncode != 0:
            raise ProbeFailed(f"stap could not build the module{where} ({' '.join(cmd[:6])} ...)",
                              returncode=done.returncode, stderr=err)
        ko = os.path.join(work, module + ".ko")
        if not os.path.exists(ko):
            printed = (out.strip().splitlines() or [""])[-1].strip()
            if printed.endswith(".ko") and os.path.isabs(printed):
                ko = os.path.join(root, printed.lstrip("/")) if root else printed
        if not os.path.exists(ko):
            raise ProbeFailed(f"stap{where} reported success but left no {module}.ko",
                              stderr=err + out)
        with open(ko, "rb") as f:
            return f.read(), done
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"stap did not build the module within {timeout_s:.0f} s") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


