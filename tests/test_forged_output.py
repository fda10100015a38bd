"""Forged or damaged raw output is caught, never counted (issue 18, item 3).

Each format's end, as the parsers now read it (README "Captures on disk"):

- bpf (``slabcount``): its final ``end`` line; anything after it is refused.
- bpftrace: no end marker, a shape: ``attached_probes`` once, then each map once at exit,
  last; a second run, a map printed twice or anything after the maps is refused.
- ftrace: no end marker; the kernel's ``read events`` count (saved in ftrace.stats.txt) is the
  number of entries trace_pipe passed: more entries in the file are refused, lines that are
  not entries are counted and noted.
- perf: no end marker and no count to check against; lines that are neither events nor
  frames are counted and noted; an appended file is caught by the checksum on ``--reparse``.
- stap: its ``done`` line, which gives the totals listed; anything after it, a second
  ``begin``, or totals that differ are refused.

And every capture records the sha256 of each raw file: ``show --reparse`` refuses a file that
changed since (the saved tables stay), for every backend.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, SAMPLES, cli, one_line_error, require_bpf, require_tool

import slabkit
from slabkit.backends.bpf import read_output
from slabkit.backends.bpftrace import read_maps
from slabkit.backends.ftrace.parse import parse_output as ftrace_parse
from slabkit.backends.perf import parse_output as perf_parse
from slabkit.backends.stap import parse_text
from slabkit.errors import ParseError
from slabkit.plan import Plan

BPF = FIXTURES / "bpf" / "filp-6.18.tsv"
STAP = FIXTURES / "stap" / "real-6.1-filp.txt"
FORGED = "the file was appended to or forged"


def sample_copy(tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(SAMPLES / name, folder)
    return folder


def plan_of(folder):
    meta = json.loads((folder / "meta.json").read_text())
    return Plan.from_json(meta["plan"]), meta


# --- bpf: the 'end' line ---------------------------------------------------------------------

@pytest.mark.parametrize("tail", [
    "count\t1\t1\t0\t6576696c\t1000000\t0\n",         # 'evil', a million allocations
    "stack\t1\tffffffff81000000\n",
    None,                                             # the whole file again
])
def test_bpf_output_after_its_end_is_refused(tmp_path, tail):
    text = BPF.read_text()
    forged = tmp_path / "slabcount.tsv"
    forged.write_text(text + (text if tail is None else tail))
    with pytest.raises(ParseError, match=FORGED):
        read_output(forged)
    # blank lines after the end are harmless
    forged.write_text(text + "\n\n")
    assert read_output(forged)[0]["count"].sum() == read_output(BPF)[0]["count"].sum()


# --- bpftrace: its shape ---------------------------------------------------------------------

@pytest.mark.parametrize("tail, why", [
    (None, "after its maps"),                                               # appended twice
    ('{"type": "map", "data": {"@c": {"1,1,1,evil": 1000000}}}\n', "map @c printed twice"),
    ('{"type": "printf", "data": "x"}\n', "after its maps"),
])
def test_bpftrace_output_after_its_maps_is_refused(tmp_path, tail, why):
    raw = SAMPLES / "bpftrace-filp" / "bpftrace.jsonl"
    text = raw.read_text()
    forged = tmp_path / "bpftrace.jsonl"
    forged.write_text(text + (text if tail is None else tail))
    with pytest.raises(ParseError, match=f"{why}.*{FORGED}"):
        read_maps(forged)


def test_a_second_bpftrace_run_before_the_maps_is_refused(tmp_path):
    lines = (SAMPLES / "bpftrace-filp" / "bpftrace.jsonl").read_text().splitlines(True)
    forged = tmp_path / "bpftrace.jsonl"
    forged.write_text(lines[0] + "".join(lines))
    with pytest.raises(ParseError, match="second bpftrace run"):
        read_maps(forged)


# --- ftrace: the kernel's count --------------------------------------------------------------

def test_ftrace_output_appended_twice_is_refused_by_the_kernels_count(tmp_path):
    folder = sample_copy(tmp_path, "ftrace-filp")
    plan, meta = plan_of(folder)
    raw = folder / "ftrace.txt"
    text = raw.read_text()
    assert ftrace_parse(raw, plan, meta).allocs["count"].sum() == meta["total_allocs"]
    raw.write_text(text + text)
    with pytest.raises(ParseError, match=f"3728 through trace_pipe.*{FORGED}"):
        ftrace_parse(raw, plan, meta)


def test_ftrace_lines_that_are_not_entries_are_counted_and_noted(tmp_path):
    folder = sample_copy(tmp_path, "ftrace-filp")
    plan, meta = plan_of(folder)
    raw = folder / "ftrace.txt"
    lines = raw.read_text().splitlines(True)
    raw.write_text("".join(lines[:10]) + "garbage\nmore garbage here\n" + "".join(lines[10:]))
    parsed = ftrace_parse(raw, plan, meta)
    assert parsed.allocs["count"].sum() == meta["total_allocs"]
    assert any(n.startswith("WARNING: 2 lines of the ftrace output were not trace entries")
               for n in parsed.notes), parsed.notes


def test_ftrace_output_cut_short_is_noted(tmp_path):
    folder = sample_copy(tmp_path, "ftrace-filp")
    plan, meta = plan_of(folder)
    raw = folder / "ftrace.txt"
    text = raw.read_text()
    raw.write_text(text[: text.index("<stack trace>", len(text) // 2)].rsplit("\n", 1)[0] + "\n")
    parsed = ftrace_parse(raw, plan, meta)
    assert any("entries the kernel passed through trace_pipe are not in the file" in n
               for n in parsed.notes), parsed.notes


# --- perf: garbage counted -------------------------------------------------------------------

def test_perf_lines_that_are_neither_events_nor_frames_are_counted_and_noted(tmp_path):
    folder = sample_copy(tmp_path, "perf-filp")
    plan, meta = plan_of(folder)
    raw = folder / "perf.script.txt"
    clean = perf_parse(raw, plan, meta)
    assert not any("WARNING" in n for n in clean.notes)
    blocks = raw.read_text().split("\n\n")
    blocks[3] += "\n\tnot a frame at all"             # inside a block, after its frames
    blocks[5] = "evil 1/1 something else:\n" + blocks[5]
    blocks.insert(7, "\tffffffff81000000 orphan+0x0 ([kernel.kallsyms])")  # a frame of no event
    raw.write_text("\n\n".join(blocks))
    parsed = perf_parse(raw, plan, meta)
    assert parsed.allocs["count"].sum() == clean.allocs["count"].sum()
    assert any(n.startswith("WARNING: 3 lines of the perf script output were neither")
               for n in parsed.notes), parsed.notes


# --- stap: the 'done' line -------------------------------------------------------------------

@pytest.mark.parametrize("edit, why", [
    ("append-block", "after its final 'done' line"),
    ("twice", "after its final 'done' line"),
    ("count", "its 'done' line says 26 and 1083"),
])
def test_stap_output_after_done_or_with_other_totals_is_refused(edit, why):
    text = STAP.read_text()
    block = text[text.index("slabkit-stap stack"):text.index("slabkit-stap end-stack") + 23]
    if edit == "append-block":
        forged = text + block.replace("count=", "count=1000") + "\n"
    elif edit == "twice":
        forged = text + text
    else:
        forged = text.replace("slabkit-stap stack count=", "slabkit-stap stack count=9", 1)
    with pytest.raises(ParseError, match=why):
        parse_text(forged)
    assert parse_text(text).allocs["count"].sum() == 1083


# --- checksums: recorded at capture time, checked on --reparse --------------------------------

MAIN_RAW = {"bpf": "slabcount.tsv", "bpftrace": "bpftrace.jsonl", "perf": "perf.script.txt",
            "ftrace": "ftrace.txt"}


@pytest.fixture(params=list(MAIN_RAW))
def captured(request, live, tmp_path_factory):
    backend = request.param
    if backend == "bpf":
        require_bpf()
    elif backend in ("bpftrace", "perf"):
        require_tool(backend)
    out = tmp_path_factory.mktemp(backend) / "cap"
    cap = slabkit.capture("filp", 1, backend=backend, out=out, progress=False)
    return backend, cap


def test_a_capture_records_the_sha256_of_each_raw_file_and_reparse_checks_it(captured):
    backend, cap = captured
    folder = Path(cap.path)
    recorded = cap.meta["raw_sha256"]
    assert MAIN_RAW[backend] in recorded and "kallsyms.txt.gz" in recorded
    for name, digest in recorded.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    # unchanged: the rebuild gives the same counts
    res = cli("show", "--reparse", str(folder))
    assert res.returncode == 0, res.stderr
    assert slabkit.load(folder).meta["total_allocs"] == cap.meta["total_allocs"]
    # the whole raw file appended to itself: refused, in one line; the saved tables stay
    raw = folder / MAIN_RAW[backend]
    raw.write_bytes(raw.read_bytes() * 2)
    res = cli("show", "--reparse", str(folder))
    one_line_error(res, MAIN_RAW[backend], "changed since the capture", "saved ones are kept")
    assert slabkit.load(folder).meta["total_allocs"] == cap.meta["total_allocs"]
    with pytest.raises(ParseError, match="changed since the capture"):
        slabkit.load(folder, reparse=True)
    # formats with an end of their own refuse the doubled file even without the checksums
    if backend != "perf":
        meta = json.loads((folder / "meta.json").read_text())
        del meta["raw_sha256"]
        (folder / "meta.json").write_text(json.dumps(meta))
        one_line_error(cli("show", "--reparse", str(folder)), FORGED)
