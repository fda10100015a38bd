"""Every failure a user can meet is one line on stderr saying what to do, exit 2, and a
slabkit exception in Python (issue 18, items 4, 5 and 8): bad ``-o`` folders, a full disk at
the end of a run, damaged tables and capture records (``meta.json`` is checked against its
written schema), ``show --reparse`` without what it needs, ``slabkit cleanup`` as a normal
user, and every command an error message hints at exists.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import SAMPLES, cli, one_line_error, require_bpf, require_tool

import slabkit
from slabkit.errors import CaptureNotFound, InvalidInput, ParseError, SlabkitError
from slabkit.model import schema

REPO = Path(__file__).resolve().parent.parent


def sample_copy(tmp_path, name="bpftrace-filp"):
    folder = tmp_path / name
    shutil.copytree(SAMPLES / name, folder)
    return folder


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs (made by the test, unmounted even when it fails): (path, mount options)."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "slabkit-test", str(point)],
                       check=True)
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


# --- capture -o: folders that cannot take a capture ---------------------------------------------

@pytest.fixture
def capturing(live):
    require_bpf()


@pytest.mark.parametrize("where, words", [
    ("file", ["exists and is not a folder"]),
    ("/dev/null", ["exists and is not a folder"]),
    ("/proc/slabkit-test", ["cannot create the capture folder", "pick a folder you can write"]),
    ("/proc/self/slabkit-test", ["cannot create the capture folder", "pick a folder"]),
    ("read-only", ["Read-only file system", "pick a folder you can write"]),
])
def test_capture_into_a_folder_that_cannot_be_one_is_one_line(capturing, tmp_path, tmpfs,
                                                                where, words):
    if where == "file":
        out = tmp_path / "a-file"
        out.write_text("mine")
    elif where == "read-only":
        out = tmpfs("size=64k,ro") / "cap"
    else:
        out = Path(where)
    one_line_error(cli("capture", "filp", "-d", "1", "--quiet", "-o", str(out)), *words)
    with pytest.raises(SlabkitError):
        slabkit.capture("filp", 1, out=out, progress=False)
    if where == "file":
        assert out.read_text() == "mine"


def test_a_full_disk_at_the_end_of_a_run_keeps_what_it_has_and_says_so(capturing, tmpfs):
    """A 48 KiB tmpfs holds the raw output of a capture filtered on one workload process but
    not the kernel's symbols written after it: the run keeps the raw output, marks the capture
    unfinished and says the disk is full; once there is space, ``show --reparse`` rebuilds it
    with the workload's exact count."""
    import time

    from bench.workload import Workload
    disk = tmpfs("size=48k")
    out = disk / "cap"
    n = 1000
    with Workload("open", n, "/etc/hostname") as w:
        proc = subprocess.Popen([sys.executable, "-m", "slabkit", "capture", "filp", "-d", "3",
                                 "--quiet", "--pid", str(w.pid), "-o", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 120
        raw = out / "slabcount.tsv"
        while not (raw.is_file() and b"slabkit-attached" in raw.read_bytes()[:4096]):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        w.go()
        stdout, stderr = proc.communicate(timeout=300)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    one_line_error(res, "is full", f"slabkit show --reparse {out}")
    running = json.loads((out / "meta.running.json").read_text())
    assert running["status"] == "failed" and running["error"].startswith("disk full")
    assert raw.read_text().endswith("end\n")          # the tracer's output is whole
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    from slabkit.errors import DiskFull
    with pytest.raises(DiskFull, match="is full"):
        slabkit.capture("filp", 1, pid=os.getpid(), out=disk / "again", progress=False)
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    res = cli("show", "--reparse", str(out))
    assert res.returncode == 0, res.stderr
    cap = slabkit.load(out)
    assert int(cap.allocs.loc[cap.allocs["pid"] == w.pid, "count"].sum()) == n
    assert cap.meta["status"] == "interrupted"


# --- damaged tables and records -----------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_parquet_table_is_one_line_naming_the_rebuild(tmp_path, damage):
    folder = sample_copy(tmp_path)
    table = folder / "allocs.parquet"
    table.write_bytes(b"" if damage == "empty" else table.read_bytes()[:3000])
    one_line_error(cli("show", str(folder)), "allocs.parquet", "not a readable parquet table",
                   f"slabkit show --reparse {folder}")
    with pytest.raises(ParseError, match="not a readable parquet table"):
        slabkit.load(folder)
    assert cli("show", "--reparse", str(folder)).returncode == 0     # and the rebuild works
    assert slabkit.load(folder).meta["total_allocs"] == 35340


@pytest.mark.parametrize("meta, words", [
    ({}, "lacks 'format'"),
    ([], "must be a JSON object, not array"),
    ("null", "must be a JSON object, not null"),
    ({"cache": 3}, "'cache' must be string, not integer"),
    ({"duration_s": "ten"}, "'duration_s' must be number, not string"),
    ({"total_allocs": True}, "'total_allocs' must be integer, not boolean"),
    ({"status": "bogus"}, "status must be one of complete, interrupted"),
    ({"losses": {"overrun": "many"}}, "losses['overrun'] must be a whole number"),
    ({"plan": None}, "'plan' must be object, not null"),
])
def test_a_damaged_meta_json_is_refused_by_its_schema(tmp_path, meta, words):
    """``{}`` used to load and print "None: 0 allocations in 0.0 s via None"."""
    folder = sample_copy(tmp_path)
    good = json.loads((folder / "meta.json").read_text())
    text = meta if isinstance(meta, str) else json.dumps(
        meta if not isinstance(meta, dict) or not meta else dict(good, **meta))
    (folder / "meta.json").write_text(text)
    one_line_error(cli("show", str(folder)), "meta.json", words)
    with pytest.raises(ParseError, match=re.escape(words)):
        slabkit.load(folder)
    with pytest.raises(ParseError):
        slabkit.load(folder, reparse=True)


def test_every_sample_meets_the_meta_schema_and_it_is_documented():
    for name in slabkit.sample_names():
        meta_path = SAMPLES / name / "meta.json"
        if meta_path.exists():
            schema.validate_meta(json.loads(meta_path.read_text()), source=str(meta_path))
    doc = schema.describe("meta")
    required = set(doc.loc[doc["required"], "key"])
    assert {"cache", "backend", "status", "duration_s", "total_allocs", "plan"} <= required
    readme = (REPO / "README.md").read_text()
    assert "validate_meta" in readme and 'describe("meta")' in readme


def test_reparse_with_invalid_json_or_missing_raw_output_is_one_line(tmp_path):
    folder = sample_copy(tmp_path)
    (folder / "bpftrace.jsonl").unlink()
    one_line_error(cli("show", "--reparse", str(folder)), "bpftrace.jsonl", "is missing")
    with pytest.raises(CaptureNotFound, match="is missing"):
        slabkit.load(folder, reparse=True)
    (folder / "meta.json").write_text('{"cache": "filp",')
    one_line_error(cli("show", "--reparse", str(folder)), "not valid JSON")
    one_line_error(cli("show", str(folder)), "not valid JSON")
    with pytest.raises(ParseError, match="not valid JSON"):
        slabkit.load(folder, reparse=True)
    (folder / "meta.json").unlink()
    one_line_error(cli("show", "--reparse", str(folder)), "no meta.json or meta.running.json")


def test_a_capture_that_did_not_finish_names_the_real_rebuild_command(tmp_path):
    folder = sample_copy(tmp_path)
    (folder / "meta.json").rename(folder / "meta.running.json")
    err = one_line_error(cli("show", str(folder)), f"`slabkit show --reparse {folder}`")
    assert "load --reparse" not in err
    assert cli("show", "--reparse", str(folder)).returncode == 0


def test_cleanup_as_a_normal_user_is_one_line(live):
    from users import as_user, throwaway_user
    for tool in ("useradd", "runuser"):
        require_tool(tool)
    with throwaway_user() as name:
        res = as_user(name, [sys.executable, "-m", "slabkit", "cleanup"],
                      env={"PYTHONPATH": str(REPO)})
    one_line_error(res, "slabkit cleanup", "sudo")


# --- every command a message hints at exists ---------------------------------------------------

def _hinted_commands() -> list[tuple[str, str]]:
    """Every `` `slabkit ...` `` in slabkit's messages and docs (f-string fields replaced by
    a word), with the file it is in."""
    found = []
    for path in sorted((REPO / "slabkit").rglob("*.py")):
        for m in re.finditer(r"`(slabkit [^`]+)`", path.read_text()):
            text = re.sub(r"\{[^{}]*\}", "X", m.group(1))
            found.append((str(path.relative_to(REPO)), text))
    return found


def test_every_command_a_message_hints_at_is_a_real_command():
    """Its subcommand exists and takes every option it names (``slabkit load --reparse``
    named a subcommand that does not exist)."""
    import argparse

    from slabkit.ui.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    hints = _hinted_commands()
    assert any("show --reparse" in h for _, h in hints)
    bad = []
    for where, text in hints:
        argv = shlex.split(text.split("|")[0])[1:]
        command = sub.choices.get(argv[0]) if argv else None
        if command is None:
            bad.append(f"{where}: `{text}`: no command {argv[:1]}")
            continue
        options = [a.split("=")[0] for a in argv[1:] if a.startswith("-")]
        unknown = [o for o in options if o not in command._option_string_actions]
        if unknown and argv[0] != "helper":          # helper passes its words on
            bad.append(f"{where}: `{text}`: {argv[0]} has no {unknown}")
    assert not bad, bad


def test_a_pid_that_does_not_exist_is_refused_before_anything_runs(capturing, tmp_path):
    missing = 4194303
    out = tmp_path / f"cap-{uuid.uuid4().hex[:6]}"
    one_line_error(cli("capture", "filp", "-d", "1", "--pid", str(missing), "-o", str(out)),
                   f"no process {missing}")
    assert not out.exists()
    with pytest.raises(InvalidInput, match=f"no process {missing}"):
        slabkit.capture("filp", 1, pid=missing, out=out, progress=False)
