"""The capture contract, the same for every backend that runs here: a full-duration capture is
complete; one stopped early (stop event, Ctrl-C, SIGINT, SIGTERM) keeps what it has and is
marked interrupted; an error inside stops the tracer; a SIGKILLed one never loads as complete
and leaves nothing running or enabled a second later. Nothing is ever left behind (the ``live``
fixture checks tracer processes and tracefs instances after each test)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import procs
import pytest
from conftest import LIVE_BACKENDS, TRACEFS, require_backend
from live_capture import capture_around, pid_rows

import slabkit
from bench.workload import Workload
from slabkit.backends.control import RunControl
from slabkit.capturing import run as capturing
from slabkit.errors import CaptureNotFound

REPO = Path(__file__).resolve().parent.parent
#: backend -> the raw output files its capture folder keeps
RAW = {"bpf": ["slabcount.tsv"], "bpftrace": ["bpftrace.jsonl"],
       "perf": ["perf.data", "perf.script.txt"], "ftrace": ["ftrace.txt"]}


@pytest.fixture(params=LIVE_BACKENDS)
def backend(request, live):
    require_backend(request.param)
    return request.param


@pytest.fixture
def below_me():
    """A function giving the processes a test started below this one and left running
    (tracers and their supervisors; a fixture's long-lived QEMU guest is not the test's)."""
    before = procs.descendants(os.getpid())
    return lambda: procs.started_below(os.getpid(), before)


def my_instances() -> list[str]:
    mine = f"slabkit-{os.getpid()}-"
    return sorted(p.name for p in (TRACEFS / "instances").iterdir() if p.name.startswith(mine))


def test_a_full_duration_capture_is_complete_with_the_slab_series(backend, tmp_path):
    cap = slabkit.capture("filp", 2, backend=backend, base=tmp_path, progress=False)
    assert cap.meta["status"] == "complete" and cap.meta["end_reason"] == "duration"
    assert 1.9 <= cap.meta["duration_s"] <= 4.0
    assert len(cap.slabinfo) >= 3 and set(cap.slabinfo["name"]) == {"filp"}
    assert all((Path(cap.path) / f).is_file() for f in RAW[backend])


def test_stopped_before_any_work_keeps_a_valid_capture(backend, tmp_path):
    cap = capture_around("filp", lambda: None, backend=backend, base=tmp_path, settle_s=0)
    assert cap.meta["status"] == "interrupted"
    assert all((Path(cap.path) / f).is_file() for f in RAW[backend])
    slabkit.load(cap.path).validate()


def test_a_capture_stopped_from_another_thread_keeps_its_counts(backend, tmp_path):
    stop = threading.Event()
    with Workload("open", 3000, "/etc/hostname") as w:
        w.go()                                   # before the capture: not counted
        t = threading.Timer(1.5, stop.set)
        t.start()
        cap = slabkit.capture("filp", 60, backend=backend, base=tmp_path, progress=False,
                              stop_event=stop)
    assert cap.meta["status"] == "interrupted" and cap.meta["end_reason"] == "stopped"
    assert pid_rows(cap, w.pid).empty
    assert cap.duration_s < 30


class _Boom(RunControl):
    def run_for(self, is_running):
        raise RuntimeError("boom while capturing")


class _CtrlC(RunControl):
    """Ctrl-C during the capture: RunControl turns it into end reason 'interrupted'."""

    def __init__(self, *a, **kw):
        super().__init__(*a, every_second=self._raise, **kw)

    @staticmethod
    def _raise(elapsed):
        raise KeyboardInterrupt


def test_an_error_mid_capture_stops_the_tracer(backend, tmp_path, below_me):
    before = my_instances()
    prep = capturing.prepare("filp", backend=backend)
    with pytest.raises(RuntimeError, match="boom"):
        prep.backend.run(prep.target, prep.program, tmp_path, _Boom(60, progress=False))
    assert not below_me() and my_instances() == before


def test_ctrl_c_mid_capture_keeps_the_data_and_stops_the_tracer(backend, tmp_path,
                                                                 below_me):
    before = my_instances()
    prep = capturing.prepare("filp", backend=backend)
    res = prep.backend.run(prep.target, prep.program, tmp_path, _CtrlC(60, progress=False))
    assert res.end_reason == "interrupted"
    assert all((tmp_path / f).is_file() for f in RAW[backend])
    if backend == "perf":
        assert res.losses == {}
    assert not below_me() and my_instances() == before


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "slabkit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, **kw)


def _wait_attached(out: Path, timeout_s: float = 120) -> None:
    """Until the CLI's capture folder says the probe is live (a slabinfo sample was taken)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = out / "meta.running.json"
        if running.is_file() and any(out.glob("*")) and _probe_live(out):
            return
        time.sleep(0.1)
    pytest.fail(f"the CLI capture in {out} did not attach within {timeout_s} s")


def _probe_live(out: Path) -> bool:
    for name in ("slabcount.tsv", "bpftrace.jsonl"):
        f = out / name
        if f.is_file() and b"slabkit-attached" in f.read_bytes()[:4096]:
            return True
    log = out / "perf.record.log"
    if log.is_file() and b"Events enabled" in log.read_bytes():
        return True
    return (out / "ftrace.txt").is_file()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig, started", [(signal.SIGINT, "as usual"),
                                          (signal.SIGTERM, "as usual"),
                                          # a script's background job: SIGINT ignored
                                          (signal.SIGINT, "sigint ignored")])
def test_cli_capture_stopped_by_a_signal_keeps_data_and_leaves_nothing(backend, tmp_path, sig,
                                                                       started):
    out = tmp_path / "cap"
    proc = _cli("capture", "filp", "-d", "60", "-o", str(out), "--quiet", "--backend",
                backend, start_new_session=True,
                preexec_fn=_ignore_sigint if started == "sigint ignored" else None)
    try:
        _wait_attached(out)
        time.sleep(0.5)
        os.kill(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["end_reason"] == "interrupted"
    assert meta["backend"] == backend
    assert "Top processes" in stdout or "no allocations were seen" in stdout
    assert not [p for p in procs.descendants(proc.pid) if p.state != "Z"]


CHILD = textwrap.dedent("""
    import sys, slabkit
    def progress(done, total):
        print("attached", flush=True)
    slabkit.capture("filp", 120, backend=sys.argv[1], out=sys.argv[2], progress=progress)
""")


def test_sigkill_leaves_nothing_running_a_second_later_and_never_loads_as_complete(backend,
                                                                                    tmp_path):
    out = tmp_path / "cap"
    child = subprocess.Popen([sys.executable, "-c", CHILD, backend, str(out)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "attached", child.stderr.read()[-2000:]
        below = procs.descendants(child.pid)
        assert below, "the capture started no process"
        mine = [p.name for p in (TRACEFS / "instances").iterdir()
                if p.name.startswith(f"slabkit-{child.pid}-")]
        assert (backend == "ftrace") == bool(mine)
        os.kill(child.pid, signal.SIGKILL)
        killed = time.monotonic()
        child.wait(5)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    while time.monotonic() < killed + 1.0:
        alive = [p for p in below if procs.running(p)]
        left = [n for n in mine if (TRACEFS / "instances" / n).exists()]
        if not alive and not left:
            break
        time.sleep(0.02)
    assert not alive, f"still running 1 s after SIGKILL: {alive}"
    assert not left, f"tracefs instances left 1 s after SIGKILL: {left}"
    with pytest.raises(CaptureNotFound, match="did not finish saving"):
        slabkit.load(out)
