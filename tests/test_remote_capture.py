"""Captures on SSH targets: a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The "remote" host is this machine reached through sshd, so the same workload is visible to a
remote and a local capture, and the remote side's processes can be checked in local /proc.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import procs
import pytest
from conftest import require_tool
from live_capture import capture_around
from sshd import sshd_server  # noqa: F401  (fixture)

import slabkit
from bench.workload import Workload
from slabkit.host.ssh import SSHTarget

pytestmark = pytest.mark.ssh
N = 2000


@pytest.fixture
def remote(live, sshd_server):  # noqa: F811
    require_tool("bpftrace")
    with SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options) as t:
        yield t


def _count(cap, pid, host=None):
    a = cap.allocs[cap.allocs["pid"] == pid]
    if host is not None:
        a = a[a["host"] == host]
    return int(a["count"].sum())


def test_remote_capture_counts_exactly_like_a_local_one(remote, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, target=remote, base=tmp_path)
    assert _count(cap, w.pid) == N
    assert cap.meta["host"] == remote.name and set(cap.allocs["host"]) == {remote.name}
    assert cap.meta["target"] == remote.name
    # the stacks were resolved with the target's kallsyms, brought back with the capture
    assert (cap.path / "kallsyms.txt.gz").is_file()
    assert cap.frames["function"].notna().mean() > 0.9


def test_cache_table_reads_the_same_over_ssh(remote):
    here = slabkit.caches()
    there = slabkit.caches(remote)
    assert set(there["name"]) == set(here["name"])
    assert there.set_index("name")["objsize"].equals(here.set_index("name")["objsize"])


def test_two_targets_at_once_merge_with_a_host_column(remote, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, targets=[remote, None], base=tmp_path)
    hosts = set(cap.allocs["host"])
    assert remote.name in hosts and len(hosts) == 2
    for h in hosts:
        assert _count(cap, w.pid, h) == N, h
    assert cap.meta["failed_hosts"] == {}
    pivot = slabkit.by_process(cap, by=("host", "comm"))
    assert pivot.loc[(remote.name, "slabwork"), "count"] >= N


def test_an_unreachable_host_fails_clearly_and_the_other_result_is_kept(remote, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    dead = SSHTarget(f"root@127.0.0.1:{closed_port}", connect_timeout_s=3)
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, targets=[dead, remote], base=tmp_path)
    assert _count(cap, w.pid, remote.name) == N
    (failed_host, message), = cap.meta["failed_hosts"].items()
    assert str(closed_port) in failed_host
    assert "ssh" in message and "true" in message   # says how to check the connection


@pytest.mark.parametrize("backend, raw_name, tracer", [
    ("bpf", "slabcount.tsv", "slabcount"), ("bpftrace", "bpftrace.jsonl", "bpftrace")])
def test_interrupting_a_remote_capture_leaves_no_tracer_on_the_target(live, sshd_server,  # noqa: F811
                                                                      tmp_path, backend,
                                                                      raw_name, tracer):
    require_tool("bpftrace")
    env = dict(os.environ, SLABKIT_SSH_OPTIONS=shlex.join(sshd_server.client_options))
    out = tmp_path / "cap"
    proc = subprocess.Popen([sys.executable, "-m", "slabkit", "capture", "filp", "-d", "60",
                             "--host", sshd_server.destination, "-o", str(out), "--quiet",
                             "--backend", backend],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    raw = out / raw_name
    deadline = time.time() + 90
    while time.time() < deadline and not (raw.is_file() and b"slabkit-attached" in raw.read_bytes()):
        time.sleep(0.2)
    tracers = _remote_tracers(sshd_server.proc.pid, tracer)
    assert tracers, f"no {tracer} runs under the target's sshd"
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 0, stderr
    assert "Top processes" in stdout
    deadline = time.time() + 20
    while time.time() < deadline and _remote_tracers(sshd_server.proc.pid, tracer):
        time.sleep(0.2)
    assert not _remote_tracers(sshd_server.proc.pid, tracer)


def _remote_tracers(sshd_pid: int, comm: str) -> list[int]:
    """Tracer processes descending from the test's sshd (i.e. run on the 'remote')."""
    return procs.descendants_named(sshd_pid, comm)
