"""Nothing outlives a SIGKILL: every tracer runs under slabkit's supervisor, which ends it (and
removes an ftrace capture's tracefs instance) within a second of the capturing process's death,
with no `slabkit cleanup` needed."""
from __future__ import annotations

import signal
import subprocess
import textwrap
import time
from pathlib import Path

import procs

from slabkit.host.procs import StopPolicy
from slabkit.host.target import LocalTarget

REPO = Path(__file__).resolve().parent.parent
CHILD = textwrap.dedent("""
    import sys, slabkit
    def progress(done, total):
        print("attached", flush=True)
    slabkit.capture("filp", 120, backend=sys.argv[1], base=sys.argv[2], progress=progress)
""")


def test_a_dropped_handle_ends_its_program(tmp_path):
    """The control pipe closes with its handle: the supervisor ends the program (no leak)."""
    argv = ["sleep", "300.7318"]
    proc = LocalTarget().start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = proc.pid
    time.sleep(0.3)
    below = procs.descendants(pid)
    assert any(p.comm == "sleep" for p in below)
    del proc
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and any(procs.running(p) for p in below):
        time.sleep(0.02)
    assert not [p for p in below if procs.running(p)]


def test_stop_sends_int_then_term_and_reports_the_status(tmp_path):
    out_path = tmp_path / "out"
    script = 'trap "" INT; echo ready; while :; do sleep 0.1; done'
    with open(out_path, "wb") as out:
        proc = LocalTarget().start(["sh", "-c", script], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while b"ready" not in out_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    assert proc.stop(policy=StopPolicy(first_s=0.5)) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 3
