"""`make lab`, the README's command, as the README's user: a normal user in group slabkit runs
JupyterLab as themselves (never root, never --allow-root), and a notebook kernel there captures
live through slabkit's capture helper. `sudo make lab` starts it as SUDO_USER; root alone is
refused. (tests/test_browser.py drives the notebooks themselves in Chromium.)"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import procs
import pytest
import requests
from conftest import skip_or_fail
from users import REPO, home, popen_as_user, throwaway_user

NOTEBOOKS = {"01-pick-and-capture.ipynb", "02-explore-a-capture.ipynb",
             "03-compare-captures.ipynb"}
#: what a notebook kernel runs: who it is, and a 1 s live capture
KERNEL_CODE = """
import os, slabkit
cap = slabkit.capture("filp", 1, progress=False)
print("RESULT", os.geteuid(), cap.meta["via"], cap.meta["backend"], os.stat(cap.path).st_uid)
"""


@pytest.fixture(scope="module")
def analyst():
    if os.geteuid() != 0:
        skip_or_fail("creates a user: run as root (sudo make test)")
    from slabkit.helper import install
    install.install()
    with throwaway_user(("slabkit",)) as name:
        yield name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(owner: str) -> tuple[dict, str, str]:
    """A Jupyter config folder (port, token, no browser) the server reads through
    JUPYTER_CONFIG_DIR, which `make lab` and its runuser pass on: (env, url, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    folder = Path(tempfile.mkdtemp(prefix="slabkit-makelab-"))
    (folder / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"ip": "127.0.0.1", "port": port, "port_retries": 0,
                      "open_browser": False},
        "IdentityProvider": {"token": token},
        "LabApp": {"news_url": None}}))
    os.chmod(folder, 0o755)
    subprocess.run(["chown", "-R", f"{owner}:", str(folder)], check=True)
    return {"JUPYTER_CONFIG_DIR": str(folder)}, f"http://127.0.0.1:{port}", token


def _wait_up(url: str, token: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"make lab exited {proc.returncode}: {(out + err)[-3000:]}")
        try:
            if requests.get(f"{url}/api/status", params={"token": token}, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    pytest.fail("JupyterLab did not answer within 120 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _server_uids(proc: subprocess.Popen) -> set[int]:
    """Owners of the jupyter processes below `make` (not make's shell or runuser)."""
    uids = set()
    for p in procs.descendants(proc.pid):
        if p.comm in ("make", "sh", "bash", "runuser", "env"):
            continue
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"jupyter" in cmdline:
            uids.add(int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1]))
    return uids


def _run_in_a_kernel(url: str, token: str, user: str) -> list[str]:
    """Start a kernel through the server, run KERNEL_CODE in it, return its RESULT line."""
    from jupyter_client import BlockingKernelClient
    kernel = requests.post(f"{url}/api/kernels", params={"token": token}, json={},
                           timeout=60).json()
    runtime = home(user) / ".local" / "share" / "jupyter" / "runtime"
    conn = runtime / f"kernel-{kernel['id']}.json"
    deadline = time.monotonic() + 60
    while not conn.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    client = BlockingKernelClient(connection_file=str(conn))
    client.load_connection_file()
    client.start_channels()
    out: list[str] = []
    try:
        client.wait_for_ready(timeout=120)
        reply = client.execute_interactive(
            KERNEL_CODE, timeout=180,
            output_hook=lambda m: out.append(m["content"].get("text")
                                             or "\n".join(m["content"].get("traceback", []))))
        assert reply["content"]["status"] == "ok", "".join(out)[-3000:]
    finally:
        client.stop_channels()
        requests.delete(f"{url}/api/kernels/{kernel['id']}", params={"token": token},
                        timeout=30)
    line = next((x for x in "".join(out).splitlines() if x.startswith("RESULT")), None)
    assert line, "".join(out)[-3000:]
    return line.split()[1:]


def test_make_lab_as_the_analyst_runs_as_them_and_captures_through_the_helper(analyst):
    env, url, token = _config(analyst)
    proc = popen_as_user(analyst, ["make", "-C", str(REPO), "lab"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _wait_up(url, token, proc)
        uid = pwd.getpwnam(analyst).pw_uid
        assert _server_uids(proc) == {uid}
        listing = requests.get(f"{url}/api/contents", params={"token": token}, timeout=30).json()
        assert NOTEBOOKS <= {c["name"] for c in listing["content"]}
        euid, via, backend, owner = _run_in_a_kernel(url, token, analyst)
        assert (int(euid), via, int(owner)) == (uid, "helper", uid)
        assert backend == "bpf"
    finally:
        _stop(proc)


def test_sudo_make_lab_starts_it_as_the_invoking_user(analyst):
    # what `sudo make lab` hands make: root, SUDO_USER, and root's HOME
    env, url, token = _config(analyst)
    proc = subprocess.Popen(["make", "-C", str(REPO), "lab"],
                            env={"PATH": os.environ["PATH"], "HOME": "/root", "USER": "root",
                                 "SUDO_USER": analyst, "LANG": "C.UTF-8", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_up(url, token, proc)
        uid = pwd.getpwnam(analyst).pw_uid
        assert _server_uids(proc) == {uid}
        # its Jupyter files go to the user's home, not root's
        euid, via, _, owner = _run_in_a_kernel(url, token, analyst)
        assert (int(euid), via, int(owner)) == (uid, "helper", uid)
    finally:
        _stop(proc)


def test_make_lab_as_root_alone_is_refused_in_one_line():
    if os.geteuid() != 0:
        skip_or_fail("needs root (sudo make test)")
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    res = subprocess.run(["make", "-s", "-C", str(REPO), "lab"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode != 0
    assert "JupyterLab runs as you, not as root" in res.stderr
    assert "--allow-root" not in res.stderr + res.stdout
