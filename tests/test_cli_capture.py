"""What a user can type at `slabkit capture` is validated, with one clear line and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "slabkit", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("args, message", [
    (["capture", "filp", "-d", "0"], "more than 0 seconds"),
    (["capture", "filp", "-d", "nan"], "more than 0 seconds"),
    (["capture", "filp", "-d", "1e9"], "longer than"),
    (["capture", "fi lp;x", "--print-program"], "not a slab cache name"),
    (["capture", "flip", "--print-program"], "did you mean"),
    (["capture", "filp", "--pid", "-3", "--print-program"], "pid filter"),
    (["capture", "filp", "--pid", "12ab", "--print-program"], "pid filter"),
    (["capture", "filp", "--comm", 'a"b', "--print-program"], "comm filter"),
    (["capture", "filp", "--comm", "much-too-long-process-name", "--print-program"], "comm filter"),
    (["capture", "filp", "--backend", "dtrace", "--print-program"], "backend must be one of"),
    (["capture", "filp", "--stack-sample", "0", "--print-program"], "stack_sample"),
    (["capture", "filp", "--host=-oProxyCommand=evil", "--print-program"], "host"),
    (["show", "/nonexistent/capture"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_code_2(live, args, message):
    res = run(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2


@pytest.mark.parametrize("backend, shown", [
    ("auto", "slabcount --cache filp --stack-every 32"),          # auto: the bpf backend
    ("bpftrace", 'str(args->name, 6) == "filp"'),
])
def test_print_program_runs_nothing_and_shows_plan_and_program(live, backend, shown):
    res = run("capture", "filp", "--print-program", "--backend", backend)
    assert res.returncode == 0, res.stderr
    assert "strategy tracepoint-name" in res.stdout
    assert shown in res.stdout


def test_stap_backend_says_clearly_why_it_cannot_run_here(live):
    res = run("capture", "filp", "--backend", "stap", "--print-program")
    assert res.returncode == 2
    assert "stap" in res.stderr and ("kprobes" in res.stderr or "modules" in res.stderr)


def test_cleanup_with_nothing_left_says_so(live):
    res = run("cleanup")
    assert res.returncode == 0
    assert res.stdout.strip() == "nothing left behind"


def test_a_tracer_that_fails_is_one_line_and_its_stderr_tail(live, tmp_path):
    # a user's environment reaches the tracer: bpftrace 0.17 crashes on a BTF file it cannot
    # read. The CLI prints what happened and what to do on one line, then bpftrace's last words.
    res = run("capture", "filp", "--backend", "bpftrace", "-d", "5", "--quiet",
              "-o", str(tmp_path / "cap"), env=dict(os.environ, BPFTRACE_BTF="/nonexistent"))
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.rstrip().splitlines()
    assert lines[0].startswith("slabkit: bpftrace exited before its probe was attached (exit code")
    assert "killed by SIGSEGV" in lines[0] and "--print-program" in lines[0]
    assert lines[1] == "  the tracer said (last lines of its stderr):"
    assert lines[2].strip() == "Segmentation fault"
    assert lines[-1] == f"  its output is kept in {tmp_path / 'cap'}"
    assert "Traceback" not in res.stderr
