"""slabkit's capture helper, tested with real users, real sudo and the installed helper.

A member of group slabkit captures exactly (CLI and Python, here and over SSH) and the capture
folder is theirs; an outsider is refused with what to do and nothing runs as root; hostile
requests sent straight to the helper are each refused with a clear error and a canary file
proves no injected command ran; a client SIGKILLed mid-capture leaves no tracer 2 s later;
the per-user limit holds; uninstall removes every trace. Every user a test creates is removed
again, also when the test fails (tests/users.py).
"""
from __future__ import annotations

import grp
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import procs
from bench.workload import Workload
from conftest import require_bpf, require_tool, skip_or_fail
from live_capture import assert_count
from users import as_user, home, popen_as_user, python, throwaway_user

import slabkit
from slabkit.host.helper import HELPER

N = 2000
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def installed():
    """The helper installed from this checkout (the README's set-up; updated if stale)."""
    if os.geteuid() != 0:
        skip_or_fail("needs root: to install the helper and to create throwaway users")
    for tool in ("sudo", "visudo", "useradd", "runuser"):
        require_tool(tool)
    from slabkit.helper import install
    install.install()
    return install


@pytest.fixture(scope="module")
def member(installed):
    with throwaway_user(("slabkit",)) as name:
        check = as_user(name, [python(), "-c", "import slabkit, pandas"])
        if check.returncode != 0:
            skip_or_fail(f"user {name} cannot run {python()} (is the checkout readable by "
                         f"other users?): {check.stderr[-500:]}")
        yield name


@pytest.fixture(scope="module")
def outsider(installed):
    with throwaway_user() as name:
        yield name


CAPTURE = textwrap.dedent("""
    import sys, threading, slabkit
    stop = threading.Event()
    said = []
    def progress(done, total):
        if not said:
            said.append(1)
            print("attached", flush=True)
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    cap = slabkit.capture(sys.argv[1], 120, backend=sys.argv[2], out=sys.argv[3],
                          progress=progress, stop_event=stop)
    print("saved", cap.path, flush=True)
""")


def capture_as(user: str, backend: str, out: Path, work) -> subprocess.Popen:
    """A Python capture of filp as ``user``, with ``work()`` run once it is attached."""
    proc = popen_as_user(user, [python(), "-c", CAPTURE, "filp", backend, str(out)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    line = proc.stdout.readline()
    if line.strip() != "attached":
        proc.kill()
        pytest.fail(f"the capture as {user} did not attach: {line!r} {proc.stderr.read()[-3000:]}")
    work()
    time.sleep(0.2)
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    out_line = proc.stdout.readline()
    err = proc.stderr.read()
    assert proc.wait(60) == 0, err[-3000:]
    assert out_line.startswith("saved "), (out_line, err[-3000:])
    return proc


@pytest.mark.parametrize("backend", ["auto", "bpftrace", "perf", "ftrace"])
def test_a_member_captures_exactly_from_python_and_the_folder_is_theirs(member, backend):
    if backend == "auto":
        require_bpf()
    elif backend != "ftrace":
        require_tool(backend)
    out = home(member) / f"cap-{backend}"
    before = procs.descendants(os.getpid())
    with Workload("open", N, "/etc/hostname") as w:
        capture_as(member, backend, out, w.go)
    cap = slabkit.load(out)
    assert_count(cap, w.pid, N)
    assert cap.meta["via"] == "helper" and cap.meta["status"] == "interrupted"
    assert cap.meta["backend"] == ("bpf" if backend == "auto" else backend)
    uid = int(subprocess.run(["id", "-u", member], capture_output=True, text=True).stdout)
    assert {p.stat().st_uid for p in [out, *out.iterdir()]} == {uid}
    assert not procs.started_below(os.getpid(), before)


def _attached_helper_run(since: set[str], timeout_s: float = 60) -> None:
    """Wait until a new helper capture's slabcount says it is attached."""
    work = Path("/run/slabkit/helper/work")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for d in work.iterdir() if work.is_dir() else []:
            f = d / "slabcount.tsv"
            if d.name not in since and f.is_file() and b"slabkit-attached" in f.read_bytes()[:64]:
                return
        time.sleep(0.05)
    pytest.fail("no helper capture attached")


def test_a_member_captures_exactly_from_the_cli(member):
    require_bpf()
    out = home(member) / "cli-cap"
    work = Path("/run/slabkit/helper/work")
    before = {d.name for d in work.iterdir()} if work.is_dir() else set()
    with Workload("open", N, "/etc/hostname") as w:
        proc = popen_as_user(member, [python(), "-m", "slabkit", "capture", "filp", "-d", "60",
                                      "--pid", str(w.pid), "-o", str(out), "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        try:
            _attached_helper_run(before)
            w.go()
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr[-2000:]
    assert "Top processes" in stdout
    cap = slabkit.load(out)
    assert set(cap.allocs["pid"]) == {w.pid}
    assert int(cap.allocs["count"].sum()) == N


def test_a_member_can_list_caches_and_see_the_program(member):
    res = as_user(member, [python(), "-m", "slabkit", "caches", "--top", "3", "--json"])
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 3
    res = as_user(member, [python(), "-m", "slabkit", "capture", "cred", "--print-program"])
    assert res.returncode == 0, res.stderr
    assert "strategy tracepoint-name" in res.stdout and "'cred' is merged into" in res.stdout


def test_an_outsider_is_refused_with_what_to_do_and_nothing_runs_as_root(outsider):
    slots = Path("/run/slabkit/helper/slots")
    before = set(os.listdir(slots)) if slots.is_dir() else set()
    res = as_user(outsider, [python(), "-m", "slabkit", "capture", "filp", "-d", "1"])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert f"usermod -aG slabkit {outsider}" in res.stderr
    direct = as_user(outsider, ["sudo", "-n", HELPER, "check"])
    assert direct.returncode != 0 and "password is required" in direct.stderr
    assert (set(os.listdir(slots)) if slots.is_dir() else set()) == before


# --- hostile requests straight to the helper ---------------------------------------------------

def _hostile_cases(canary: Path) -> list[tuple[list[str], str]]:
    c = str(canary)
    return [
        (["capture", "--cache", "filp", "--seconds", "1", "--program",
          f'tracepoint:kmem:kmem_cache_alloc {{ system("touch {c}"); }}'],
         "takes no argument '--program'"),
        (["capture", "--cache", f"filp; touch {c}", "--seconds", "1"], "not a slab cache name"),
        (["capture", "--cache", f"$(touch {c})", "--seconds", "1"], "not a slab cache name"),
        (["prepare", "--cache", "filp", "--comm", f"`touch {c}`"], "comm filter"),
        (["prepare", "--cache", "filp", "--comm", "bash\n"], "comm filter"),
        (["prepare", "--cache", "../../etc/passwd"], "not a slab cache name"),
        (["capture", "--cache", "filp", "--seconds", "1", "--out", "/etc/shadow"],
         "takes no argument '--out'"),
        (["prepare", "--cache", "filp", "--argv", f"touch {c}"], "takes no argument '--argv'"),
        (["capture", "--cache", "filp", "--seconds", "-1"], "number of seconds"),
        (["capture", "--cache", "filp", "--seconds", "nan"], "number of seconds"),
        (["capture", "--cache", "filp", "--seconds", "inf"], "number of seconds"),
        (["capture", "--cache", "filp", "--seconds", "1e9"], "number of seconds"),
        (["capture", "--cache", "filp", "--seconds", "999999999"], "longer than"),
        (["prepare", "--cache", "filp", "--backend", "system"], "backend must be one of"),
        (["prepare", "--cache", "filp", "--backend", "stap"], "not available through"),
        (["prepare", "--cache", "filp", "extra"], "takes no argument 'extra'"),
        (["prepare", "--cache", "filp", "--cache", "dentry"], "given twice"),
        (["prepare", "--cache", "x" * 100_000], "longer than 256 bytes"),
        (["prepare", "--cache", "filp", "--pid", "4194303"], "no process 4194303"),
        (["prepare", "--cache", "filp", "--pid", "-1"], "whole number"),
        (["prepare", "--cache", "filp", "--map-keys", "99999999999"], "above the limit"),
        (["prepare", "--cache", "filp", "--stack-sample", "0"], "stack_sample must be"),
        (["shell", "-c", f"touch {c}"], "unknown verb"),
        (["capture", "--cache", "filp"], "--seconds is required"),
    ]


def _helper_as(user: str, args: list[str], env: dict | None = None
               ) -> subprocess.CompletedProcess:
    return as_user(user, ["sudo", "-n", HELPER, *args], env=env, timeout=60)


def _error_of(res: subprocess.CompletedProcess) -> str:
    """The helper's one error message, from its JSON answer or its error frame."""
    out = res.stdout
    if out.startswith("{"):
        data = json.loads(out)
        assert data["ok"] is False
        return data["message"]
    head, _, rest = out.partition("\n")
    assert head.startswith("error "), out[:200]
    data = json.loads(rest[: int(head.split()[1])])
    return data["message"]


def test_hostile_requests_are_refused_and_run_nothing(member, tmp_path):
    canary = Path(f"/tmp/slabkit-canary-{secrets.token_hex(4)}")
    try:
        for args, said in _hostile_cases(canary):
            res = _helper_as(member, args)
            assert res.returncode == 2, (args[:4], res.stdout[:300], res.stderr[:300])
            assert said in _error_of(res), (args[:4], _error_of(res))
            assert "Traceback" not in res.stdout + res.stderr
        # environment through sudo: refused (no SETENV) or reset (PYTHONPATH, LD_PRELOAD)
        evil = home(member) / "evil"
        (evil / "slabkit").mkdir(parents=True)
        for name in ("slabkit/__init__.py", "sitecustomize.py", "usercustomize.py"):
            (evil / name).write_text(f"open({str(canary)!r}, 'w').write('pwned')\n")
        subprocess.run(["chown", "-R", member, str(evil)], check=True)
        res = as_user(member, ["sudo", "-n", f"PYTHONPATH={evil}", HELPER, "check"])
        assert res.returncode != 0
        res = _helper_as(member, ["check"], env={"PYTHONPATH": str(evil),
                                                 "PYTHONSTARTUP": str(evil / "sitecustomize.py"),
                                                 "LD_PRELOAD": str(evil / "nothere.so"),
                                                 "PYTHONHOME": str(evil)})
        assert res.returncode == 0 and json.loads(res.stdout)["ok"] is True
        # a pid of another user's process is accepted (the documented policy: a member sees
        # every process in a system-wide capture anyway); a pid that runs nowhere is not
        res = _helper_as(member, ["prepare", "--cache", "filp", "--pid", "1"])
        assert json.loads(res.stdout)["prepared"]["plan"]["pid"] == 1
    finally:
        leaked = canary.exists()
        canary.unlink(missing_ok=True)
    assert not leaked, "an injected command ran"


def test_sigkill_of_the_client_leaves_no_tracer_two_seconds_later(member, tmp_path):
    require_bpf()
    out = home(member) / "killed"
    proc = popen_as_user(member, [python(), "-c", CAPTURE, "filp", "auto", str(out)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert proc.stdout.readline().strip() == "attached", proc.stderr.read()[-2000:]
        below = [p for p in procs.descendants(proc.pid) if p.state != "Z"]
        assert any(p.comm == "slabcount" for p in below), below
        client = next(p for p in procs.descendants(proc.pid) if p.comm.startswith("python"))
        os.kill(client.pid, signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() < killed + 2.0 and any(procs.running(p) for p in below):
            time.sleep(0.02)
        alive = [p for p in below if procs.running(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert not alive, f"still running 2 s after the client's SIGKILL: {alive}"


def test_a_member_cannot_exceed_the_captures_per_user(member, installed):
    limit = __import__("slabkit.helper.server", fromlist=["Limits"]).Limits.load()
    running = []
    try:
        for i in range(limit.max_captures_per_user):
            p = popen_as_user(member, [python(), "-c", CAPTURE, "filp", "auto",
                                       str(home(member) / f"slot-{i}")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
            running.append(p)
            assert p.stdout.readline().strip() == "attached", p.stderr.read()[-2000:]
        res = _helper_as(member, ["capture", "--cache", "filp", "--seconds", "1"])
        assert res.returncode == 2 and "the limit" in _error_of(res)
    finally:
        for p in running:
            if p.poll() is None:
                p.stdin.write("stop\n")
                p.stdin.flush()
        for p in running:
            p.communicate(timeout=60)


@pytest.mark.ssh
def test_a_member_over_ssh_captures_through_the_helper_there(member, tmp_path):
    require_bpf()
    from sshd import missing_tools
    if missing_tools():
        skip_or_fail(f"needs {missing_tools()}")
    workdir = Path(tempfile.mkdtemp(prefix="slabkit-sshd-"))   # sshd reads the keys as the user
    os.chmod(workdir, 0o755)
    try:
        _capture_over_ssh(member, workdir, tmp_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _capture_over_ssh(member: str, workdir: Path, tmp_path: Path) -> None:
    from live_capture import capture_around
    from sshd import SSHServer

    from slabkit.host.ssh import SSHTarget
    with SSHServer(workdir) as server:
        dest = f"{member}@127.0.0.1:{server.port}"
        with SSHTarget(dest, ssh_options=server.client_options) as target:
            assert not target.is_root()
            with Workload("open", N, "/etc/hostname") as w:
                cap = capture_around("filp", w.go, target=target, base=tmp_path / "caps")
    assert cap.meta["via"] == "helper" and cap.meta["target"] == dest
    assert_count(cap, w.pid, N)


def test_uninstall_removes_every_trace_and_install_brings_it_back(installed):
    """Last in this module: the group goes (and with it every membership)."""
    done = installed.uninstall()
    try:
        for path in (installed.SUDOERS, installed.ENTRY, installed.CODE, installed.STATE):
            assert not path.exists(), path
        with pytest.raises(KeyError):
            grp.getgrnam(installed.GROUP)
        assert any("removed group" in line for line in done)
    finally:
        installed.install()
    assert installed.ENTRY.exists() and installed.SUDOERS.exists()
    check = subprocess.run(["visudo", "-cf", str(installed.SUDOERS)], capture_output=True)
    assert check.returncode == 0
    st = installed.SUDOERS.stat()
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o440")
    assert installed.root_owned_chain(installed.ENTRY) is None


def test_errors_cross_from_the_helper_whole():
    """What the helper reports arrives as the same error: a ParseError with its path, line
    number and line; a ProbeFailed with its message, hint, stderr and exit status."""
    from slabkit.errors import ParseError, ProbeFailed
    from slabkit.host.helper import error_from_json, error_to_json
    parse = ParseError("not a slabcount output line", path="/x/slabcount.tsv", lineno=3,
                       line="zz")
    back = error_from_json(json.loads(json.dumps(error_to_json(parse))))
    assert isinstance(back, ParseError) and str(back) == str(parse)
    probe = ProbeFailed("bpftrace exited before its probe was attached", returncode=1,
                        stderr="ERROR: 'linux/types.h' file not found", hint="set BPFTRACE_BTF")
    back = error_from_json(json.loads(json.dumps(error_to_json(probe))))
    assert isinstance(back, ProbeFailed)
    assert (back.message, back.hint, back.returncode) == (probe.message, probe.hint, 1)
    assert "linux/types.h" in back.stderr
