"""A throwaway OpenSSH server on 127.0.0.1, for tests that need a real SSH target.

It listens on a free port with its own host key and accepts one throwaway client key; nothing
of the machine's own SSH set-up (``/etc/ssh``, ``~/.ssh``) is read or changed. The "remote"
machine is this one, so a test can check on the remote side by looking at local ``/proc``.

    from sshd import sshd_server          # a module-scoped pytest fixture

    def test_something(sshd_server):
        with SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options) as t:
            ...

Or without pytest: ``with SSHServer(workdir) as server: ...``. Needs ``/usr/sbin/sshd`` and
``ssh-keygen`` (Debian: openssh-server, openssh-client; ``make system`` installs them). As root
it logs in as root (``PermitRootLogin prohibit-password``); otherwise as the current user.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import procs
import pytest

SSHD = "/usr/sbin/sshd"  # sshd insists on being started by its absolute path
PRIVSEP_DIR = Path("/run/sshd")  # sshd (as root) refuses to start without it


def missing_tools() -> list[str]:
    """What this helper needs but the machine lacks (empty when it can run)."""
    missing = [] if os.access(SSHD, os.X_OK) else ["sshd (openssh-server)"]
    for tool in ("ssh", "ssh-keygen"):
        if not shutil.which(tool):
            missing.append(f"{tool} (openssh-client)")
    return missing


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (sshd's per-connection processes)."""
    return [p.pid for p in procs.children(pid)]


class SSHServer:
    """An ``sshd -D`` on 127.0.0.1 with throwaway keys under ``workdir``; stop() kills it by pid."""

    def __init__(self, workdir: os.PathLike | str):
        self.workdir = Path(workdir)
        self.port = 0
        self.user = getpass.getuser()
        self.client_key = self.workdir / "id_ed25519"
        self.log_path = self.workdir / "sshd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def client_options(self) -> list[str]:
        """ssh arguments that log in with the throwaway key and ignore every ssh config."""
        return ["-F", "none", "-i", str(self.client_key),
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=no"]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _keygen(self, path: Path) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "slabkit-test",
                        "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)

    def start(self, timeout_s: float = 15) -> SSHServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "host_ed25519"
        self._keygen(host_key)
        self._keygen(self.client_key)
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o644)   # sshd reads it as the user who logs in
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.port = _free_port()
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "MaxSessions 64",
            "MaxStartups 64",
            "LogLevel VERBOSE",
            "",
        ]))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with status {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer on port {self.port}:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the per-connection sshd processes, then the listener, each by its pid."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for pid in _children(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory):
    """A running :class:`SSHServer` for the test module; skipped (or failed where
    ``SLABKIT_REQUIRE_LIVE=1``) when OpenSSH is not installed."""
    missing = missing_tools()
    if missing:
        reason = f"needs {', '.join(missing)}; `make system` installs them"
        if os.environ.get("SLABKIT_REQUIRE_LIVE") == "1":
            pytest.fail(f"ssh test cannot run (SLABKIT_REQUIRE_LIVE=1): {reason}")
        pytest.skip(reason)
    server = SSHServer(tmp_path_factory.mktemp("sshd"))
    copy = _bpf_copy_on_this_machine()
    had_copy = copy.exists()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if not had_copy:   # the bpf backend copied slabcount to the 'remote' (this machine)
            shutil.rmtree(copy, ignore_errors=True)
            for d in (copy.parent,):
                with contextlib.suppress(OSError):
                    d.rmdir()


def _bpf_copy_on_this_machine() -> Path:
    from slabkit.backends.bpf import REMOTE_DIR
    from slabkit.slabcount.build import source_hash
    return Path(REMOTE_DIR) / source_hash()
