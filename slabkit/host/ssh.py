"""Another machine as a :class:`~slabkit.host.target.Target`, reached with the system OpenSSH client.

slabkit reads the same kernel files and starts the same tracers on an SSH host as on this
machine. Everything goes through the ``ssh`` program, so the user's ``~/.ssh/config``, keys,
agent, jump hosts and known_hosts apply unchanged; nothing is needed on the remote side but
``sshd``, a POSIX shell (dash, bash, busybox ash, ...) and coreutils or busybox. The remote
machine needs no Python.

>>> with SSHTarget("root@build-box") as box:            # doctest: +SKIP
...     box.kernel_release()
'6.1.0-18-amd64'

How it works, and why:

* **One connection.** Every command runs through an OpenSSH *ControlMaster* whose socket lives in
  a private temporary folder, so a read costs a few milliseconds rather than a handshake. The
  master stays up ``persist_s`` seconds after its last use (``ControlPersist``), and
  :meth:`SSHTarget.close` (or leaving the ``with`` block, garbage collection, or interpreter exit)
  takes it down with ``ssh -O exit``.
* **No shell injection.** ssh hands the remote side one command string, which the login shell
  parses. Every argument slabkit sends is quoted with :func:`shlex.quote` and passed as a
  positional parameter (``"$1"``) to a fixed ``sh -c`` script, never pasted into the script. The
  destination is validated so it can never be read as an ssh option.
* **One round trip for many files.** :meth:`SSHTarget.read_many` sends the paths on stdin to a
  small shell loop that prints each file followed by a random end marker and its ``cat`` status;
  :meth:`SSHTarget.readlinks` lists a folder with each symlink's target in one call.
* **Remote tracers die with us.** :meth:`SSHTarget.start` (and :meth:`SSHTarget.run`) run the
  program under slabkit's supervisor (:mod:`slabkit.host.procs`, the same one as on this
  machine), whose stdin is the ssh session's, a pipe only this process holds: signals travel
  in-band, and end of file -- this process let go, exited, crashed, or the local ``ssh`` was
  killed -- ends the program. The local ``ssh`` runs in its own session and gets SIGTERM when
  this process dies.

Options: extra ``ssh`` arguments come from ``ssh_options=[...]`` and then from the environment
variable ``SLABKIT_SSH_OPTIONS`` (split like a shell would, e.g. ``"-i ~/.ssh/lab -J bastion"``).
They are placed before slabkit's own ``-o`` options, and ssh keeps the first value it sees for each
option, so a user's value wins (``-o ConnectTimeout=30``). slabkit adds ``BatchMode=yes`` (never
prompt), ``ConnectTimeout``, ``ServerAlive*``, ``LogLevel=ERROR`` and the ``Control*`` options.

Differences from :class:`~slabkit.host.target.LocalTarget` worth knowing:

* A program ended by a signal reports exit status ``128 + signal`` (what the remote shell
  sees), not a negative number; one that needed SIGKILL reports 255, as ssh does.
* ssh's own exit status 255 also means "could not connect". :meth:`SSHTarget.run` tells the two
  apart by asking the control master whether the connection is up; with multiplexing disabled by
  the user's options, a remote command's own 255 is reported as :class:`TargetUnreachable`.
* Error messages are parsed in the C locale (slabkit's own commands run with ``LC_ALL=C``) and
  mapped to the matching :class:`OSError` subclass (``FileNotFoundError``, ``PermissionError``,
  ...).
* The login shell of the remote user must understand POSIX quoting (sh, bash, dash, zsh, ksh,
  busybox ash); csh and fish are not supported.
"""
from __future__ import annotations

import errno
import math
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from slabkit.errors import InvalidInput, TargetUnreachable
from slabkit.host.procs import (
    SUPERVISE,
    Supervised,
    die_with_parent,
    start_supervised,
    supervisor_args,
)
from slabkit.host.target import Target
from slabkit.validate import check_seconds

__all__ = ["SSHDestination", "SSHTarget", "TargetUnreachable", "parse_destination"]

ENV_OPTIONS = "SLABKIT_SSH_OPTIONS"



# --- destinations ------------------------------------------------------------------------------

_ACCEPTED = ("expected 'host', 'user@host', 'user@host:port' or 'ssh://user@host:port' (host and "
             "user: letters, digits and . _ - only, not starting with '-'; an IPv6 address in "
             "brackets, as in 'root@[::1]:22'; port 1..65535)")
_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,252}")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_IPV6_RE = re.compile(r"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")


@dataclass(frozen=True)
class SSHDestination:
    """A validated SSH destination. ``str()`` gives it back as ``user@host:port``."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{self.user}@{host}" if self.user else host
        return f"{text}:{self.port}" if self.port else text


def parse_destination(spec: object) -> SSHDestination:
    """Parse and strictly validate where to connect.

    Accepted: ``host``, ``user@host``, ``host:port``, ``user@host:port``, ``ssh://user@host:port``
    (each part optional as in the shorter forms) and IPv6 addresses in brackets. A host or user
    starting with ``-`` is refused, so nothing typed here can turn into an ssh option.

    >>> parse_destination("ssh://root@lab-3:2222")
    SSHDestination(host='lab-3', user='root', port=2222)
    """
    if not isinstance(spec, str) or not spec:
        raise InvalidInput(f"SSH destination {spec!r} is not usable: {_ACCEPTED}")

    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"SSH destination {spec[:100]!r} {why}: {_ACCEPTED}")

    rest = spec[len("ssh://"):] if spec.lower().startswith("ssh://") else spec
    if rest.endswith("/") and spec.lower().startswith("ssh://"):
        rest = rest[:-1]
    user: str | None = None
    if "@" in rest:
        user, _, rest = rest.partition("@")
        if not _USER_RE.fullmatch(user):
            raise bad(f"has an unusable user name {user[:64]!r}")
    port_text: str | None = None
    if rest.startswith("["):
        host, sep, after = rest[1:].partition("]")
        if not sep or not _IPV6_RE.fullmatch(host):
            raise bad("has an unusable bracketed IPv6 address")
        if after:
            if not after.startswith(":"):
                raise bad("has text after the IPv6 address")
            port_text = after[1:]
    else:
        host, sep, port_text_ = rest.partition(":")
        if sep:
            port_text = port_text_
        if not _HOST_RE.fullmatch(host):
            raise bad(f"has an unusable host name {host[:100]!r}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise bad(f"has an unusable port {port_text[:20]!r}")
        port = int(port_text)
    return SSHDestination(host=host, user=user, port=port)


# --- remote shell scripts ------------------------------------------------------------------------
# Each runs as ``sh -c SCRIPT slabkit ARG...``: arguments arrive as "$1" ..., never as script text.
# Only POSIX sh, coreutils or busybox are assumed on the remote side.

_PRELUDE = "LC_ALL=C; export LC_ALL\n"

_READ = _PRELUDE + 'exec cat -- "$1"'

# "$1" is an end marker, then paths. For each: the file's bytes, then "\n<mark> <cat status>\n".
_READ_MANY = _PRELUDE + r'''mark=$1
shift
for p in "$@"; do
  if cat -- "$p" 2>/dev/null; then s=0; else s=1; fi
  printf '\n%s %s\n' "$mark" "$s"
done'''

# Entries of "$1", NUL-separated pairs: <type><name> <link target or empty>, where type is l for
# a symlink. GNU find prints all in one process; busybox find has no -printf, so loop there.
# Exit 3/4/5: no such folder / not a folder / cannot enter or read it.
_READLINKS = _PRELUDE + r'''[ -e "$1" ] || [ -L "$1" ] || exit 3
[ -d "$1" ] || exit 4
cd -- "$1" 2>/dev/null || exit 5
[ -r . ] || exit 5
if find . -maxdepth 0 -printf '' >/dev/null 2>&1; then
  exec find . -mindepth 1 -maxdepth 1 -printf '%y%f\0%l\0'
fi
for f in * .[!.]* ..?*; do
  if [ -L "$f" ]; then
    printf 'l%s\0%s\0' "$f" "$(readlink -- "$f")"
  elif [ -e "$f" ]; then
    printf 'f%s\0\0' "$f"
  fi
done'''

_EXISTS = _PRELUDE + '[ -e "$1" ] || [ -L "$1" ]'
_WRITE = _PRELUDE + 'cat > "$1"'
_MKDIR = _PRELUDE + 'exec mkdir -- "$1"'
_RMDIR = _PRELUDE + 'exec rmdir -- "$1"'

# A path search like shutil.which, over the PATH the remote commands run with.
_WHICH = _PRELUDE + r'''case $1 in
  */*) if [ -f "$1" ] && [ -x "$1" ]; then printf '%s\n' "$1"; exit 0; fi; exit 1 ;;
esac
set -f
IFS=:
for d in $PATH; do
  [ -n "$d" ] || d=.
  if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then printf '%s\n' "$d/$1"; exit 0; fi
done
exit 1'''

_EXEC = 'exec "$@"'

# Bytes of one read_many command line. OpenSSH's sshd takes ~256 KiB, but dropbear refuses a
# command over 9000 bytes (MAX_CMD_LEN in its sysoptions.h) and drops the whole connection
# ("Exit (root): String too long"), so stay under that: a few more round trips, never a failure.
_COMMAND_BYTES = 8000


def _sh(script: str, *args: str, via: str = "") -> str:
    """The remote command line that runs ``script`` with ``args`` as "$1" ... in a POSIX sh
    (``via``: a command word placed before ``sh``, expanded by the login shell)."""
    return " ".join(["exec", *([via] if via else []), "sh", "-c", shlex.quote(script), "slabkit",
                     *(shlex.quote(a) for a in args)])


# OpenSSH's sshd makes the command a process group leader; dropbear leaves it in the group of its
# own per-connection process, where "kill -- -$me" finds no group and the program never gets
# the signal. There, become a group leader first: setsid (util-linux or busybox) without a fork,
# as the login shell is then no group leader. Run by the login shell, before _SUPERVISE.
_OWN_GROUP = ('S=; [ -r /proc/$$/stat ] && [ "$(cut -d " " -f 5 /proc/$$/stat)" != "$$" ] && '
              'S=$(command -v setsid); ')


def _remote_path(path: object) -> str:
    """An absolute target path; like LocalTarget, a relative one is taken from the root."""
    text = os.fspath(path)  # type: ignore[arg-type]
    if not isinstance(text, str) or not text or "\0" in text:
        raise InvalidInput(f"{path!r} is not a usable path on a target")
    return text if text.startswith("/") else "/" + text


# Remote error text -> errno. Checked in order; the C locale's strerror() texts, which glibc,
# musl and busybox share for these, plus dash's wording for a failed redirection.
_ERRNOS = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
           errno.ENOTEMPTY, errno.EBUSY, errno.EINVAL, errno.EROFS, errno.ENOSPC, errno.ENODEV,
           errno.ENXIO, errno.ENOMEM, errno.E2BIG, errno.EAGAIN, errno.EIO)
_EXTRA_TEXTS = {"Directory nonexistent": errno.ENOENT, "nonexistent directory": errno.ENOENT}


def _os_error(stderr: bytes, path: str, where: str) -> OSError:
    text = stderr.decode(errors="replace").strip()
    said = text.splitlines()[-1] if text else "failed"
    for code in _ERRNOS:
        if os.strerror(code) in text:
            break
    else:
        code = next((c for t, c in _EXTRA_TEXTS.items() if t in text), errno.EIO)
    return OSError(code, f"{said} (on {where})", path)  # OSError() picks the subclass by errno


# --- the target ----------------------------------------------------------------------------------

def _teardown(exit_argv: list[str], control_dir: str, socket_path: str) -> None:
    """Stop a control master and remove its folder (weakref.finalize: also runs at exit)."""
    if os.path.exists(socket_path):
        try:
            subprocess.run(exit_argv, check=False, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except (OSError, subprocess.SubprocessError):
            pass
    shutil.rmtree(control_dir, ignore_errors=True)


class SSHTarget(Target):
    """A machine reached with ``ssh``; every :class:`~slabkit.host.target.Target` method works on it.

    ``destination`` is ``host``, ``user@host``, ``user@host:port`` or ``ssh://user@host:port``
    (see :func:`parse_destination`). ``ssh_options`` are extra ``ssh`` arguments, for example
    ``["-i", "~/.ssh/lab", "-o", "StrictHostKeyChecking=accept-new"]``; ``$SLABKIT_SSH_OPTIONS``
    adds more. ``connect_timeout_s`` bounds connecting, ``timeout_s`` each of slabkit's own file
    operations, and ``persist_s`` how long an idle shared connection stays up. Creating the object connects to nothing; the first command does (or
    :meth:`connect`). Use it as a context manager, or call :meth:`close`.

    >>> with SSHTarget("root@lab-3", ssh_options=["-i", "/keys/lab"]) as lab:   # doctest: +SKIP
    ...     lab.read_many(["/proc/sys/kernel/osrelease", "/proc/slabinfo"])
    """

    root = Path("/")

    def __init__(self, destination: str | SSHDestination, *,
                 ssh_options: list[str] | tuple[str, ...] | None = None,
                 connect_timeout_s: float = 10, timeout_s: float = 60, persist_s: int = 60,
                 ssh: str = "ssh"):
        self.destination = (destination if isinstance(destination, SSHDestination)
                            else parse_destination(destination))
        self.name = str(self.destination)
        if isinstance(ssh_options, str) or not all(
                isinstance(o, str) for o in (ssh_options or ())):
            raise InvalidInput("ssh_options is a list of ssh arguments, e.g. ['-i', 'KEY'], "
                               f"not {ssh_options!r}")
        env_text = os.environ.get(ENV_OPTIONS, "")
        try:
            env_options = shlex.split(env_text)
        except ValueError as e:
            raise InvalidInput(f"${ENV_OPTIONS} {env_text!r} does not split into ssh "
                               f"arguments: {e}") from None
        self.ssh_options = [*(ssh_options or ()), *env_options]
        self.connect_timeout_s = check_seconds(connect_timeout_s, what="connect_timeout_s")
        self.timeout_s = check_seconds(timeout_s, what="timeout_s")
        self.persist_s = math.ceil(check_seconds(persist_s, what="persist_s"))
        self._ssh = ssh
        self._ssh_path: str | None = None
        self._control: tuple[str, weakref.finalize] | None = None

    def __repr__(self) -> str:
        return f"SSHTarget({self.name!r})"

    # --- connection --------------------------------------------------------------------------
    def _control_path(self) -> str:
        """The control socket's path, creating its private folder (and cleanup) on first use."""
        if self._control is not None and self._control[1].alive:
            return self._control[0]
        self._ssh_executable()  # fail before creating anything
        base = tempfile.gettempdir()
        if len(base) > 40 or re.search(r"[\s%]", base):  # sockaddr_un is 108 bytes; % is a token
            base = "/tmp"
        folder = tempfile.mkdtemp(prefix="slabkit-ssh-", dir=base)  # mode 0700
        sock = os.path.join(folder, "cm")
        exit_argv = self._options_argv(sock) + ["-O", "exit", "--", self.destination.host]
        self._control = (sock, weakref.finalize(self, _teardown, exit_argv, folder, sock))
        return sock

    def _ssh_executable(self) -> str:
        self._ssh_path = self._ssh_path or shutil.which(self._ssh)
        if not self._ssh_path:
            raise TargetUnreachable(
                f"cannot reach {self.name}: the OpenSSH client {self._ssh!r} is not installed "
                "here (Debian: apt-get install openssh-client)", host=self.name)
        return self._ssh_path

    def _options_argv(self, control_path: str) -> list[str]:
        d = self.destination
        argv = [self._ssh_executable(), *self.ssh_options,
                "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={max(1, math.ceil(self.connect_timeout_s))}",
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={control_path}",
                "-o", f"ControlPersist={self.persist_s}",
                "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4",
                "-o", "LogLevel=ERROR",
                "-T"]
        if d.port:
            argv += ["-p", str(d.port)]
        if d.user:
            argv += ["-l", d.user]
        return argv

    def _command_argv(self, remote_command: str) -> list[str]:
        """The local argv that runs ``remote_command`` (one string, parsed by the login shell)."""
        return self._options_argv(self._control_path()) + [
            "--", self.destination.host, remote_command]

    def _master_alive(self) -> bool:
        """Whether the shared connection is up (``ssh -O check``); starts nothing."""
        if self._control is None or not self._control[1].alive:
            return False
        argv = self._options_argv(self._control[0]) + ["-O", "check", "--", self.destination.host]
        try:
            return subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _check_hint(self) -> str:
        """The command a user can try by hand: ``ssh -p PORT user@host true``."""
        d = self.destination
        check = "ssh " + (f"-p {d.port} " if d.port else "") + (
            f"{d.user}@" if d.user else "") + d.host + " true"
        extra = " with the same ssh options" if self.ssh_options else ""
        return f"`{check}`{extra}"

    def _unreachable(self, stderr: bytes | str = b"", doing: str = "") -> TargetUnreachable:
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        said = lines[-1] if lines else "ssh exited with status 255"
        return TargetUnreachable(
            f"cannot reach {self.name} over SSH{doing}: {said}; check that {self._check_hint()} "
            "works without asking for a password (host name, port, key, known_hosts), then retry",
            host=self.name, stderr=text)

    def connect(self) -> SSHTarget:
        """Open the shared connection now (else the first command does); raise if unreachable."""
        self._call(_sh(_PRELUDE + "exit 0"), what="connecting")
        return self

    def close(self) -> None:
        """Take the shared connection down (``ssh -O exit``) and remove its socket folder.

        Remote programs still running through it are ended. The target can be used again
        afterwards; it then connects anew.
        """
        if self._control is not None:
            self._control[1]()  # runs _teardown once
            self._control = None

    def __enter__(self) -> SSHTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, remote_command: str, *, input: bytes | None = None, what: str = "",
              path: str = "") -> subprocess.CompletedProcess:
        """Run one of slabkit's own remote commands (never exits 255 itself) and return bytes."""
        argv = self._command_argv(remote_command)
        try:
            done = subprocess.run(argv, check=False, input=input, capture_output=True,
                                  timeout=self.timeout_s,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TargetUnreachable(
                f"{self.name} did not finish {what or 'a command'} {path} within "
                f"{self.timeout_s:g} s over SSH; check that {self._check_hint()} answers "
                "quickly, or raise timeout_s", host=self.name) from None
        if done.returncode == 255:
            raise self._unreachable(done.stderr, f" while {what} {path}".rstrip() if what else "")
        return done

    # --- files -------------------------------------------------------------------------------
    def read_text(self, path: str) -> str:
        p = _remote_path(path)
        done = self._call(_sh(_READ, p), what="reading", path=p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)
        return done.stdout.decode(errors="replace")

    def read_many(self, paths: list[str]) -> dict[str, str | None]:
        """Read several files in one round trip (a few for thousands of paths); None for each
        that cannot be read."""
        paths = list(paths)
        remote = [_remote_path(p) for p in paths]
        result: dict[str, str | None] = {}
        quoted = [len(shlex.quote(p)) + 1 for p in remote]
        base = len(_sh(_READ_MANY, f"slabkit-end-{uuid.uuid4().hex}"))
        start = 0
        while start < len(paths):  # keep each remote command line under every sshd's limit
            end, size = start, base
            while end < len(paths) and (end == start or size + quoted[end] <= _COMMAND_BYTES):
                size += quoted[end]
                end += 1
            result.update(zip(paths[start:end], self._read_batch(remote[start:end])))
            start = end
        return result

    def _read_batch(self, paths: list[str]) -> list[str | None]:
        mark = f"slabkit-end-{uuid.uuid4().hex}"
        done = self._call(_sh(_READ_MANY, mark, *paths), what="reading files")
        out, pos = done.stdout, 0
        sep = b"\n" + mark.encode() + b" "
        texts: list[str | None] = []
        for _ in paths:
            end = out.find(sep, pos)
            if end < 0 or len(out) < end + len(sep) + 2:
                raise self._unreachable(done.stderr or b"the output stopped early",
                                        " while reading files")
            status = out[end + len(sep): end + len(sep) + 1]
            texts.append(out[pos:end].decode(errors="replace") if status == b"0" else None)
            pos = end + len(sep) + 2  # status digit and newline
        return texts

    def readlinks(self, path: str) -> dict[str, str | None]:
        p = _remote_path(path)
        done = self._call(_sh(_READLINKS, p), what="listing", path=p)
        codes = {3: errno.ENOENT, 4: errno.ENOTDIR, 5: errno.EACCES}
        if done.returncode in codes:
            code = codes[done.returncode]
            raise OSError(code, f"{os.strerror(code)} (on {self.name})", p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)
        fields = done.stdout.split(b"\0")
        out: dict[str, str | None] = {}
        for kind_name, target in zip(fields[0::2], fields[1::2]):
            name = os.fsdecode(kind_name[1:])
            out[name] = os.fsdecode(target) if kind_name[:1] == b"l" else None
        return out

    def listdir(self, path: str) -> list[str]:
        return sorted(self.readlinks(path))

    def exists(self, path: str) -> bool:
        p = _remote_path(path)
        done = self._call(_sh(_EXISTS, p), what="checking", path=p)
        return done.returncode == 0

    def write_text(self, path: str, text: str) -> None:
        p = _remote_path(path)
        done = self._call(_sh(_WRITE, p), input=text.encode(), what="writing", path=p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` there byte for byte (ssh's stdin carries binary data unchanged)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"write_bytes needs bytes, not {type(data).__name__}")
        p = _remote_path(path)
        done = self._call(_sh(_WRITE, p), input=bytes(data), what="writing", path=p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)

    def mkdir(self, path: str) -> None:
        p = _remote_path(path)
        done = self._call(_sh(_MKDIR, p), what="creating", path=p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)

    def rmdir(self, path: str) -> None:
        p = _remote_path(path)
        done = self._call(_sh(_RMDIR, p), what="removing", path=p)
        if done.returncode != 0:
            raise _os_error(done.stderr, p, self.name)

    # --- processes ---------------------------------------------------------------------------
    def which(self, program: str) -> str | None:
        """The full path of ``program`` on the target's PATH (as commands run there), or None."""
        if not isinstance(program, str) or not program or "\0" in program or "\n" in program:
            raise InvalidInput(f"{program!r} is not a program name")
        done = self._call(_sh(_WHICH, program), what="looking for", path=program)
        found = done.stdout.decode(errors="replace").strip()
        return found if done.returncode == 0 and found else None

    def _supervised(self, argv: list[str], env: dict | None = None,
                    teardown: str | None = None) -> str:
        """The remote command line that runs ``argv`` under slabkit's supervisor."""
        args = supervisor_args(argv, env, _remote_path(teardown) if teardown else None)
        return _OWN_GROUP + _sh(SUPERVISE, *args, via="$S")

    def run(self, argv: list[str], *, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Run a program there and wait, as :meth:`LocalTarget.run` does here.

        Without ``input`` the program runs under the supervisor, so a ``timeout`` (which raises
        :class:`subprocess.TimeoutExpired`) also stops it on the target. With ``input`` it gets
        that text on stdin and runs directly. Raises :class:`TargetUnreachable` when ssh cannot
        connect.
        """
        supervisor_args(argv)  # checks argv
        argv = list(argv)
        if input is not None:
            local = self._command_argv(_sh(_EXEC, *argv))
            proc = subprocess.Popen(local, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            control = None
            data = input.encode()
        else:
            local = self._command_argv(self._supervised(argv))
            read_end, write_end = os.pipe()
            try:
                proc = subprocess.Popen(local, stdin=read_end, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
            except BaseException:
                os.close(write_end)
                raise
            finally:
                os.close(read_end)
            control = write_end
            data = None
        try:
            try:
                out, err = proc.communicate(data, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                raise subprocess.TimeoutExpired(argv, timeout, output=out.decode(errors="replace"),
                                                stderr=err.decode(errors="replace")) from None
        finally:
            if control is not None:
                os.close(control)  # end of file: the supervisor stops whatever is left
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode == 255 and not self._master_alive():
            raise self._unreachable(err, f" while running {argv[0]}")
        return subprocess.CompletedProcess(argv, proc.returncode,
                                           out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def command(self, argv: list[str]) -> list[str]:
        """The local ``ssh`` command line that runs ``argv`` there directly (quoted, as
        positional parameters of a fixed script), stdin and stdout passed through."""
        supervisor_args(argv)  # checks argv
        return self._command_argv(_sh(_EXEC, *argv))

    def start(self, argv: list[str], *, stdout: IO, stderr: IO, env: dict | None = None,
              teardown: str | None = None) -> Supervised:
        """Start a long-running program there (a tracer): see :meth:`Target.start`.

        The returned process is the local ``ssh``; its exit status is the program's (128 + N
        when signal N ended it; 255 when the connection failed)."""
        local = self._command_argv(self._supervised(argv, env, teardown))
        return start_supervised(local, list(argv), stdout=stdout, stderr=stderr,
                                preexec_fn=die_with_parent)

    def is_root(self) -> bool:
        done = self._call(_sh(_PRELUDE + "exec id -u"), what="asking for the user id")
        return done.returncode == 0 and done.stdout.strip() == b"0"

    def hostname(self) -> str:
        done = self._call(_sh(_PRELUDE + "exec uname -n"), what="asking for the host name")
        if done.returncode != 0:
            raise _os_error(done.stderr, "uname", self.name)
        return done.stdout.decode(errors="replace").strip()
