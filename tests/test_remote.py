"""SSHTarget against a real, throwaway sshd on 127.0.0.1 (tests/sshd.py).

The "remote" machine is this one, so each remote answer is checked against LocalTarget and the
remote side's processes are looked for in this machine's /proc.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sshd import sshd_server  # noqa: F401  (a pytest fixture)

from slabkit.errors import InvalidInput
from slabkit.host.procs import StopPolicy
from slabkit.host.ssh import (
    SSHDestination,
    SSHTarget,
    TargetUnreachable,
    parse_destination,
)
from slabkit.host.target import LocalTarget
from slabkit.host.where import as_target

pytestmark = pytest.mark.ssh


# --- helpers ---------------------------------------------------------------------------------

def processes_with_argv(argv: list[str]) -> list[int]:
    """Pids on this machine whose command line is exactly ``argv``."""
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes() == want:
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids on this machine whose command line contains ``text`` (ours excluded)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def wait_for(predicate, timeout_s: float = 10, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step_s)


def unique_seconds() -> str:
    """A sleep duration no other process on the machine has in its argv."""
    return f"300.{random.randrange(10**8, 10**9)}"


@pytest.fixture(scope="module")
def remote(sshd_server):  # noqa: F811
    with SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options) as target:
        target.connect()
        yield target


@pytest.fixture
def tree(tmp_path):
    """A folder with awkward names, symlinks and file contents."""
    (tmp_path / "plain").write_text("one\ntwo\n")
    (tmp_path / "no-newline").write_text("no newline at the end")
    (tmp_path / "blank-lines").write_text("a\n\n\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "fake marker").write_text("\nslabkit-end-0123 0\nafter\n")
    (tmp_path / "quote's $(id) `x`").write_text("odd name\n")
    (tmp_path / "bad-utf8").write_bytes(b"ok \xff\xfe end\n")
    (tmp_path / ".hidden").write_text("h")
    (tmp_path / "..dots").write_text("d")
    (tmp_path / "new\nline").write_text("n")
    (tmp_path / "sub").mkdir()
    os.symlink("plain", tmp_path / "link")
    os.symlink("../nowhere", tmp_path / "dangling")
    os.symlink("sub", tmp_path / "dirlink")
    return tmp_path


# --- destinations ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("host", SSHDestination("host")),
    ("root@lab-3.example.org", SSHDestination("lab-3.example.org", "root")),
    ("user_1@10.0.0.7:2222", SSHDestination("10.0.0.7", "user_1", 2222)),
    ("lab:22", SSHDestination("lab", None, 22)),
    ("ssh://root@lab:2200", SSHDestination("lab", "root", 2200)),
    ("ssh://lab", SSHDestination("lab")),
    ("root@[::1]:22", SSHDestination("::1", "root", 22)),
    ("[fe80::1]", SSHDestination("fe80::1")),
])
def test_parse_destination_accepts(spec, expected):
    assert parse_destination(spec) == expected
    assert parse_destination(str(expected)) == expected


@pytest.mark.parametrize("spec", [
    "-oProxyCommand=x", "root@-oProxyCommand=x", "-l@host", "a b", "host:99999", "host:0",
    "host:", "host:22x", "a;b", "a$(id)", "root@", "@host", "a@b@c", "ssh://", "::1",
    "[::1", "[::1]x", "[nothost]", "", "h\nx", "user@host:1:2", "ssh://root@lab/path",
])
def test_parse_destination_refuses(spec):
    with pytest.raises(InvalidInput) as err:
        SSHTarget(spec)
    assert "user@host:port" in str(err.value)


def test_as_target_maps_user_at_host_without_connecting():
    target = as_target("root@lab-that-does-not-exist")
    assert isinstance(target, SSHTarget)
    assert target.name == "root@lab-that-does-not-exist"
    assert target._control is None  # nothing started yet


def test_ssh_options_from_argument_and_environment(monkeypatch):
    monkeypatch.setenv("SLABKIT_SSH_OPTIONS", "-i '/keys/my key' -o ConnectTimeout=3")
    target = SSHTarget("lab", ssh_options=["-J", "bastion"])
    assert target.ssh_options == ["-J", "bastion", "-i", "/keys/my key", "-o", "ConnectTimeout=3"]
    argv = target._options_argv("/tmp/x/cm")
    # the user's options come first, so ssh keeps their value over slabkit's defaults
    assert argv.index("ConnectTimeout=3") < argv.index("ConnectTimeout=10")
    with pytest.raises(InvalidInput):
        SSHTarget("lab", ssh_options="-i key")  # a string, not a list
    monkeypatch.setenv("SLABKIT_SSH_OPTIONS", "-i 'unclosed")
    with pytest.raises(InvalidInput):
        SSHTarget("lab")


# --- files -------------------------------------------------------------------------------------

def test_read_text_matches_local(remote):
    local = LocalTarget()
    assert remote.read_text("/proc/sys/kernel/osrelease") == local.read_text(
        "/proc/sys/kernel/osrelease")
    assert remote.kernel_release() == local.kernel_release()


def test_read_text_errors_map_to_oserrors(remote, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        remote.read_text(str(tmp_path / "missing"))
    assert remote.name in str(err.value)
    with pytest.raises(IsADirectoryError):
        remote.read_text(str(tmp_path))


def test_read_many_matches_local(remote, tree):
    paths = [str(p) for p in sorted(tree.iterdir())] + [
        "/proc/sys/kernel/osrelease", "/proc/self/nonexistent", str(tree / "missing")]
    got = remote.read_many(paths)
    assert got == LocalTarget().read_many(paths)
    assert list(got) == paths
    assert got[str(tree / "missing")] is None
    assert got[str(tree / "sub")] is None
    assert got[str(tree / "no-newline")] == "no newline at the end"
    assert got[str(tree / "blank-lines")] == "a\n\n\n"
    assert got[str(tree / "empty")] == ""
    assert remote.read_many([]) == {}


def test_listdir_and_readlinks_of_sys_kernel_slab_match_local(remote):
    slab = "/sys/kernel/slab"
    if not os.path.isdir(slab):
        pytest.skip(f"{slab} is missing on this kernel")
    local = LocalTarget()
    assert remote.listdir(slab) == local.listdir(slab)
    links = remote.readlinks(slab)
    assert links == local.readlinks(slab)
    assert any(v is not None for v in links.values()) or not links


def test_listdir_and_readlinks_of_awkward_folder(remote, tree):
    local = LocalTarget()
    assert remote.listdir(str(tree)) == local.listdir(str(tree))
    links = remote.readlinks(str(tree))
    assert links == local.readlinks(str(tree))
    assert links["link"] == "plain" and links["dangling"] == "../nowhere"
    assert links["new\nline"] is None and ".hidden" in links and "..dots" in links
    with pytest.raises(FileNotFoundError):
        remote.listdir(str(tree / "missing"))
    with pytest.raises(NotADirectoryError):
        remote.listdir(str(tree / "plain"))


def test_exists_write_mkdir_rmdir(remote, tmp_path):
    folder = str(tmp_path / "made by ssh")
    assert not remote.exists(folder)
    remote.mkdir(folder)
    assert os.path.isdir(folder) and remote.exists(folder)
    with pytest.raises(FileExistsError):
        remote.mkdir(folder)
    path = f"{folder}/it's.txt"
    remote.write_text(path, "written\nover ssh ü\n")
    assert Path(path).read_text() == "written\nover ssh ü\n"
    assert remote.read_text(path) == "written\nover ssh ü\n"
    os.symlink("nowhere", tmp_path / "dangling")
    assert remote.exists(str(tmp_path / "dangling"))  # like os.path.lexists
    with pytest.raises(OSError) as err:  # not empty
        remote.rmdir(folder)
    assert err.value.errno == 39  # ENOTEMPTY
    os.unlink(path)
    remote.rmdir(folder)
    assert not os.path.exists(folder)
    with pytest.raises(FileNotFoundError):
        remote.write_text(str(tmp_path / "no" / "such" / "dir"), "x")
    with pytest.raises(FileNotFoundError):
        remote.rmdir(folder)


def test_write_bytes_is_byte_exact(remote, tmp_path):
    data = bytes(range(256)) * 64 + b"\r\n\x00\xff" + os.urandom(200_000)  # a .ko is binary
    path = str(tmp_path / "module.ko")
    remote.write_bytes(path, data)
    assert Path(path).read_bytes() == data
    local = tmp_path / "local.ko"
    LocalTarget("/").write_bytes(str(local), data)
    assert local.read_bytes() == data
    remote.write_bytes(path, b"")
    assert Path(path).read_bytes() == b""
    with pytest.raises(FileNotFoundError):
        remote.write_bytes(str(tmp_path / "no" / "such.ko"), b"x")
    with pytest.raises(InvalidInput):
        remote.write_bytes(path, "text")  # type: ignore[arg-type]


# --- processes ---------------------------------------------------------------------------------

def test_is_root_hostname_which(remote):
    assert remote.is_root() is (os.geteuid() == 0)
    assert remote.hostname() == socket.gethostname()
    found = remote.which("sh")
    assert found and os.access(found, os.X_OK)
    assert remote.which("no-such-program-slabkit") is None
    assert remote.which("/bin/sh") == "/bin/sh"


def test_run_returns_status_and_output_with_arguments_intact(remote):
    odd = ["a b", "$(echo injected)", "'q'", '"dq"', ";ls", "*", "", "back\\slash", "ü"]
    done = remote.run(["printf", "%s|", *odd])
    assert done.returncode == 0
    assert done.stdout == "".join(f"{a}|" for a in odd)
    done = remote.run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (done.returncode, done.stdout, done.stderr) == (7, "out\n", "err\n")
    done = remote.run(["cat"], input="fed on stdin\n")
    assert (done.returncode, done.stdout) == (0, "fed on stdin\n")
    done = remote.run(["sh", "-c", "exit 255"])  # the command's own 255, not a lost connection
    assert done.returncode == 255
    done = remote.run(["no-such-program-slabkit"])
    assert done.returncode == 127


def test_run_timeout_stops_the_remote_program(remote):
    argv = ["sleep", unique_seconds()]
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        remote.run(argv, timeout=1.5)
    assert time.monotonic() - t0 < 10
    assert wait_for(lambda: not processes_with_argv(argv), 10), "remote sleep still runs"


def test_unreachable_host_fails_fast_with_a_hint(sshd_server):  # noqa: F811
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = SSHTarget(f"root@127.0.0.1:{port}", ssh_options=sshd_server.client_options,
                       connect_timeout_s=3)
    t0 = time.monotonic()
    with pytest.raises(TargetUnreachable) as err:
        target.read_text("/proc/sys/kernel/osrelease")
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message and f"ssh -p {port} root@127.0.0.1 true" in message
    with pytest.raises(TargetUnreachable):
        target.run(["true"])
    target.close()


def test_wrong_key_is_unreachable_not_a_hang(sshd_server, tmp_path):  # noqa: F811
    key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    opts = [o if o != str(sshd_server.client_key) else str(key)
            for o in sshd_server.client_options]
    with SSHTarget(sshd_server.destination, ssh_options=opts) as target, \
            pytest.raises(TargetUnreachable) as err:
        target.is_root()
    assert "Permission denied" in str(err.value)


def test_start_program_dies_when_local_ssh_is_killed(remote, tmp_path):
    argv = ["sleep", unique_seconds()]
    with open(tmp_path / "out", "wb") as out:
        proc = remote.start(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: processes_with_argv(argv), 10), "remote sleep did not start"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: not processes_with_argv(argv), 10), "remote sleep outlived ssh"
        # the supervisor is gone too, within its grace period
        assert wait_for(lambda: not processes_mentioning(argv[1]), 15)
    finally:
        proc.stop(policy=StopPolicy(first_s=1))


def test_start_program_dies_with_this_python(sshd_server, tmp_path):  # noqa: F811
    """SIGKILL the Python process that started a remote program: the program stops anyway."""
    argv = ["sleep", unique_seconds()]
    code = textwrap.dedent(f"""
        import subprocess, time
        from slabkit.host.ssh import SSHTarget
        t = SSHTarget({sshd_server.destination!r}, ssh_options={sshd_server.client_options!r},
                      persist_s=1)
        p = t.start({argv!r}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(t._control[0], flush=True)
        time.sleep(300)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        socket_path = child.stdout.readline().strip()
        assert socket_path, "the child did not start the program"
        assert wait_for(lambda: processes_with_argv(argv), 10), "remote sleep did not start"
    finally:
        child.kill()
        child.wait()
    assert wait_for(lambda: not processes_with_argv(argv), 10), "remote sleep outlived Python"
    # the orphaned control master goes away by itself once idle for persist_s
    assert wait_for(lambda: not processes_mentioning(socket_path), 15)
    shutil.rmtree(os.path.dirname(socket_path), ignore_errors=True)


def test_start_signal_int_reaches_the_program(remote, tmp_path):
    script = 'trap "echo got-int; exit 0" INT; echo ready; while :; do sleep 0.1; done'
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        proc = remote.start(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: b"ready" in out_path.read_bytes(), 10)
        assert getattr(proc, "stdin", None) is None  # the control pipe is private
        proc.signal(signal.SIGINT)  # names ("INT", "SIGINT") work too
        assert proc.wait(10) == 0
        assert out_path.read_text() == "ready\ngot-int\n"
        proc.signal("INT")  # after the end: nothing happens
    finally:
        proc.stop(policy=StopPolicy(first_s=1))


def test_start_env_and_exit_status(remote, tmp_path):
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = remote.start(["sh", "-c", 'echo "$SLABKIT_X"; echo to-err >&2; exit 3'],
                            stdout=out, stderr=err, env={"SLABKIT_X": "it's $(set) here"})
    assert proc.wait(10) == 3
    assert out_path.read_text() == "it's $(set) here\n"
    assert (tmp_path / "err").read_text() == "to-err\n"
    with pytest.raises(InvalidInput):
        remote.start(["true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env={"BAD NAME": "x"})


def test_stop_escalates_past_an_ignored_sigint(remote, tmp_path):
    marker = unique_seconds()
    script = f'trap "" INT; echo ready; while :; do sleep 0.1; done # {marker}'
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        proc = remote.start(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    assert wait_for(lambda: b"ready" in out_path.read_bytes(), 10)
    t0 = time.monotonic()
    status = proc.stop(policy=StopPolicy(first_s=1))
    assert status == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 8
    assert wait_for(lambda: not processes_mentioning(marker), 10)


def test_close_takes_the_shared_connection_down(sshd_server):  # noqa: F811
    target = SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options)
    with target:
        assert target.is_root() is (os.geteuid() == 0)
        socket_path = target._control[0]
        assert os.path.exists(socket_path)
        assert target._master_alive()
    assert not os.path.exists(os.path.dirname(socket_path))
    assert not processes_mentioning(socket_path)
    assert target.hostname() == socket.gethostname()  # reconnects after close()
    target.close()


def test_signal_on_local_target(tmp_path):
    local = LocalTarget()
    out_path = tmp_path / "out"
    script = 'trap "echo got-int; exit 0" INT; echo ready; while :; do sleep 0.1; done'
    with open(out_path, "wb") as out:
        proc = local.start(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    assert wait_for(lambda: b"ready" in out_path.read_bytes(), 10)
    proc.signal("SIGINT")
    assert proc.wait(10) == 0 and "got-int" in out_path.read_text()
    proc.signal(signal.SIGINT)  # already ended: nothing happens
    with pytest.raises(InvalidInput):
        proc.signal("STOP")


# --- the remote scripts under busybox (no GNU find, no coreutils) --------------------------------

class BusyboxShell(SSHTarget):
    """Runs the remote command line as sshd would, but with busybox's sh and applets only."""

    def __init__(self, applets: Path):
        super().__init__("busybox-emulation")
        self.applets = applets

    def _command_argv(self, remote_command: str) -> list[str]:
        return ["env", "-i", f"PATH={self.applets}", str(self.applets / "sh"), "-c",
                remote_command]

    def _master_alive(self) -> bool:
        return True


@pytest.fixture
def busybox(tmp_path):
    exe = shutil.which("busybox")
    if not exe:
        pytest.skip("busybox is not installed (optional portability check)")
    applets = tmp_path / "bin"
    applets.mkdir()
    for name in subprocess.run([exe, "--list"], check=True, capture_output=True,
                                 text=True).stdout.split():
        os.symlink(exe, applets / name)
    return BusyboxShell(applets)


def test_scripts_work_under_busybox(busybox, tree):
    local = LocalTarget()
    assert busybox.readlinks(str(tree)) == local.readlinks(str(tree))
    paths = [str(p) for p in sorted(tree.iterdir())] + [str(tree / "missing")]
    assert busybox.read_many(paths) == local.read_many(paths)
    assert busybox.which("sh") == str(busybox.applets / "sh")
    assert busybox.which("no-such-program") is None
    assert busybox.is_root() is (os.geteuid() == 0)
    busybox.write_text(str(tree / "w"), "x\n")
    assert busybox.read_text(str(tree / "w")) == "x\n"
    with pytest.raises(FileNotFoundError):
        busybox.write_text(str(tree / "no" / "w"), "x")
    with pytest.raises(FileNotFoundError):
        busybox.read_text(str(tree / "missing"))
    done = busybox.run(["sh", "-c", "echo hi; exit 4"])
    assert (done.returncode, done.stdout) == (4, "hi\n")


def test_busybox_supervisor_signals_and_stops(busybox, tmp_path):
    script = 'trap "echo got-int; exit 0" INT; echo ready; while :; do sleep 1; done'
    out_path = tmp_path / "out"
    with open(out_path, "wb") as out:
        proc = busybox.start(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    assert wait_for(lambda: b"ready" in out_path.read_bytes(), 10)
    proc.signal("INT")
    assert proc.wait(10) == 0 and "got-int" in out_path.read_text()

    argv = ["sleep", unique_seconds()]
    proc = busybox.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: processes_with_argv(argv), 10)
    proc.release()  # end of file on the control pipe: slabkit is gone, the supervisor ends it
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert not processes_with_argv(argv)


def test_missing_ssh_client_is_reported_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    target = SSHTarget("root@lab", ssh="no-such-ssh-client")
    with pytest.raises(TargetUnreachable, match="openssh-client"):
        target.read_text("/proc/version")
    assert list(tmp_path.iterdir()) == []
