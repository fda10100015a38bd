"""pprof export, read back by the real reader (``go tool pprof -raw`` and ``-top``, Debian's
golang-go): every sample capture, a merged one, a hand-made one (modules, unresolved addresses,
recursion, an allocator-only stack, allocations without a stack) and a live capture. pprof's
totals must equal slabkit's per process (comm and pid labels), per call site and per function;
the generated protobuf module must be what protoc makes of the vendored profile.proto."""
from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from conftest import SAMPLES, require_tool

import slabkit
from slabkit.analysis import export
from slabkit.model import schema
from slabkit.model.tables import Capture
from slabkit.model.vocabulary import is_allocator
from slabkit.ui.cli import main

PPROF_DIR = Path(export.__file__).resolve().parent / "pprof"
ALL_SAMPLES = [slabkit.sample_path(n) for n in slabkit.sample_names()]


# --------------------------------------------------------------------------------------------
# reading what go tool pprof says

def pprof(*args: str) -> str:
    go = require_tool("go")
    done = subprocess.run([go, "tool", "pprof", *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Raw:
    """``go tool pprof -raw``: the header, samples (values, location ids, labels), locations
    (id -> (function, mapping id)) and mappings (id -> file)."""

    header: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    types: list[str] = field(default_factory=list)
    samples: list[tuple[list[int], list[int], dict[str, str]]] = field(default_factory=list)
    locations: dict[int, tuple[str, int | None, int]] = field(default_factory=dict)
    mappings: dict[int, str] = field(default_factory=dict)

    def value(self, sample_type: str) -> int:
        return self.types.index(sample_type)

    def functions(self, locs: list[int]) -> list[str]:
        return [self.locations[i][0] for i in locs]


_LOCATION = re.compile(r"^\s*(\d+): 0x([0-9a-f]+)(?: M=(\d+))? (.+) :\d+ s=\d+$")
_SAMPLE = re.compile(r"^\s*([\d ]+):((?: \d+)*) ?$")
_LABEL = re.compile(r"(\w+):\[([^\]]*)\]")


def read_raw(path: Path) -> Raw:
    raw, section = Raw(), "header"
    for line in pprof("-raw", str(path)).splitlines():
        if line in ("Samples:", "Locations", "Mappings"):
            section = line.rstrip(":").lower()
            continue
        if section == "header":
            key, _, value = line.partition(": ")
            raw.header[key].append(value)
        elif section == "samples" and not raw.types:
            raw.types = [t.split("/")[0] for t in line.split()]
        elif section == "samples" and _LABEL.search(line) and raw.samples:
            raw.samples[-1][2].update(_LABEL.findall(line))
        elif section == "samples":
            m = _SAMPLE.match(line)
            assert m, line
            raw.samples.append(([int(v) for v in m.group(1).split()],
                                [int(v) for v in m.group(2).split()], {}))
        elif section == "locations":
            m = _LOCATION.match(line)
            assert m, line
            raw.locations[int(m.group(1))] = (m.group(4), int(m.group(3)) if m.group(3)
                                              else None, int(m.group(2), 16))
        elif section == "mappings" and len(line.split()) > 2:   # (pprof adds an empty one
            ident, rest = line.split(": ", 1)                       # to a profile with none)
            raw.mappings[int(ident)] = rest.split()[1]
    return raw


def read_top(path: Path, sample_type: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """``-top`` over every node: its header, and the flat (innermost) and cumulative values
    per function."""
    text = pprof("-top", "-nodefraction=0", "-edgefraction=0", "-nodecount=1000000",
                 f"-sample_index={sample_type}", str(path))
    head, _, table = text.partition("      flat  flat%   sum%        cum   cum%\n")
    flat, cum = {}, {}
    for line in table.splitlines():
        parts = line.split(None, 5)
        cum[parts[5]] = int(parts[3])
        if int(parts[0]):
            flat[parts[5]] = int(parts[0])
    return head, flat, cum


def callsite(functions: list[str]) -> str:
    """As slabkit defines it: the first frame, going outwards, that is not the allocator."""
    if functions == ["[no stack]"]:
        return "[no stack]"
    return next((f for f in functions if not is_allocator(f)), "[allocator only]")


def sums(raw: Raw, key, sample_type: str) -> dict:
    i, out = raw.value(sample_type), defaultdict(int)
    for values, locs, labels in raw.samples:
        if values[i]:
            out[key(locs, labels)] += values[i]
    return dict(out)


def _plain(x):
    return None if pd.isna(x) else x


def check_against_slabkit(cap: Capture, path: Path) -> Raw:
    """pprof's view of ``path`` equals slabkit's pivots of ``cap``; returns what pprof read."""
    raw = read_raw(path)
    has_bytes = not cap.allocs["bytes"].isna().any()
    assert raw.types == ["alloc_objects"] + ["alloc_space"] * has_bytes + (
        ["inuse_objects", "inuse_space"] if cap.outstanding is not None else [])
    total = int(cap.allocs["count"].sum())

    # per process: by comm, and by (comm, pid)
    comm = sums(raw, lambda locs, lab: lab.get("comm"), "alloc_objects")
    assert comm == {_plain(k): int(v) for k, v in slabkit.by_process(cap)["count"].items()}
    pid = sums(raw, lambda locs, lab: (lab.get("comm"), int(lab["pid"]) if "pid" in lab
                                       else None), "alloc_objects")
    mine = slabkit.by_process(cap, by=("comm", "pid"))["count"]
    assert pid == {(_plain(c), _plain(p)): int(v) for (c, p), v in mine.items()}
    if has_bytes:
        space = sums(raw, lambda locs, lab: lab.get("comm"), "alloc_space")
        mine = slabkit.by_process(cap, value="bytes")["bytes"]
        assert space == {_plain(k): int(v) for k, v in mine.items()}
    # per call site, from the frames pprof read
    sites = sums(raw, lambda locs, lab: callsite(raw.functions(locs)), "alloc_objects")
    assert sites == {k: int(v) for k, v in slabkit.by_frame(cap, "callsite")["count"].items()}
    # per function, pprof's own totals: innermost frame (flat), and every function on the
    # stack (cum: a recursive function counted once)
    head, flat, cum = read_top(path, "alloc_objects")
    assert f"Showing nodes accounting for {total}, 100% of {total} total" in head
    innermost = slabkit.by_frame(cap, "callsite", keep_allocator=True)["count"]
    assert flat == {k: int(v) for k, v in innermost.items() if v}
    inclusive = slabkit.by_frame(cap, "inclusive", keep_allocator=True)["count"]
    assert cum == {k: int(v) for k, v in inclusive.items()}
    # objects still allocated at the end
    if cap.outstanding is not None:
        live = sums(raw, lambda locs, lab: (lab.get("comm"), int(lab["pid"])), "inuse_objects")
        mine = cap.outstanding.groupby(["comm", "pid"])["count"].sum()
        assert live == {k: int(v) for k, v in mine.items() if v}
        head, _, _ = read_top(path, "inuse_objects")
        n = int(cap.outstanding["count"].sum())
        assert f"of {n} total" in head
    # labels on every sample
    hosts = {str(h) for h in cap.allocs["host"].dropna()}
    for _, _, labels in raw.samples:
        assert labels["cache"] == cap.cache and labels.get("host") in hosts | {None}
        assert set(labels) <= set(export.PPROF_LABELS)
    return raw


# --------------------------------------------------------------------------------------------
# the sample captures, a merged capture

@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda p: p.relative_to(SAMPLES).as_posix())
def test_every_sample_reads_back_in_pprof(sample, tmp_path):
    cap = slabkit.load(sample)
    path = slabkit.to_pprof(cap, tmp_path / "out.pb.gz")
    assert path == tmp_path / "out.pb.gz" and gzip.decompress(path.read_bytes())
    raw = check_against_slabkit(cap, path)
    comments = raw.header["Comment"]
    assert f"cache {cap.cache}" in comments[0] and cap.meta["backend"] in comments[0]
    if "start" in cap.meta:        # the capture's time and duration
        start = datetime.fromisoformat(cap.meta["start"]).astimezone(timezone.utc)
        assert raw.header["Time"] == [start.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")]
        head, _, _ = read_top(path, "alloc_objects")
        shown = re.search(r"Duration: ([\d.]+)(ms|s)\b", head)
        seconds = float(shown.group(1)) / (1000 if shown.group(2) == "ms" else 1)
        assert seconds == pytest.approx(cap.duration_s, rel=0.01)
    # every frame is a location in the mapping of its module, at its address where known
    frames = cap.frames
    assert len(raw.locations) >= frames[["function", "module"]].drop_duplicates().shape[0]
    modules = set(frames["module"].dropna())
    assert set(raw.mappings.values()) == modules
    addressed = frames.dropna(subset=["address", "function"])
    by_address = {a: (f, raw.mappings.get(m)) for f, m, a in raw.locations.values()}
    for row in addressed.itertuples():
        assert by_address[int(row.address)] == (row.function, row.module)


def test_stap_classic_has_no_bytes_so_no_space_type(tmp_path):
    """The classic stap output has no slot size: bytes are missing, so alloc_space is left
    out (never written as 0) and a comment says why."""
    cap = slabkit.load(slabkit.sample_path("stap-classic"))
    assert cap.allocs["bytes"].isna().all()
    raw = read_raw(slabkit.to_pprof(cap, tmp_path / "c.pb.gz"))
    assert raw.types == ["alloc_objects"]
    assert any("alloc_space left out" in c for c in raw.header["Comment"])
    ext3 = [m for m, name in raw.mappings.items() if name == "ext3"]
    assert [f for f, m, _ in raw.locations.values() if m in ext3] == ["ext3_readdir"]


def test_merged_captures(tmp_path):
    cap = slabkit.load([slabkit.sample_path("bpftrace-filp"), slabkit.sample_path("perf-filp")])
    raw = check_against_slabkit(cap, slabkit.to_pprof(cap, tmp_path / "m.pb.gz"))
    first = min(datetime.fromisoformat(m["start"]) for m in cap.meta["captures"])
    assert raw.header["Time"] == [first.astimezone(timezone.utc)
                                  .strftime("%Y-%m-%d %H:%M:%S +0000 UTC")]


# --------------------------------------------------------------------------------------------
# a hand-made capture: what the samples lack

def _hand() -> Capture:
    stacks = {   # (function or None, module, address or None), innermost first
        1: [("kmem_cache_alloc_noprof", "vmlinux", 0xffffffff81638677),
            ("d_alloc", "vmlinux", 0xffffffff81700010),
            ("ovl_lookup", "overlay", 0xffffffffc0a10020),
            (None, "overlay", 0xffffffffc0a1b2c3),
            ("do_sys", "vmlinux", 0xffffffff81000130)],
        2: [("kmem_cache_alloc_noprof", "vmlinux", None), ("d_alloc", "vmlinux", None),
            ("d_alloc", "vmlinux", None), ("do_sys", "vmlinux", None)],
        3: [("___slab_alloc", "vmlinux", None), ("kmem_cache_alloc_noprof", "vmlinux", None)],
        4: [(None, None, None), ("do_sys", "vmlinux", None)],
    }
    rows = [(s, d, f, m, a) for s, frames in stacks.items() for d, (f, m, a) in enumerate(frames)]
    frames = schema.table("frames", {"stack_id": [r[0] for r in rows],
                                     "depth": [r[1] for r in rows],
                                     "function": [r[2] for r in rows],
                                     "offset": [16] * len(rows),
                                     "module": [r[3] for r in rows],
                                     "address": [r[4] for r in rows]})
    #       comm   pid   tid   cgroup   stack count
    data = [("a b", 1, 11, "/user.slice", 1, 5), ("b", 2, 2, None, 1, 3),
            ("a b", 1, 12, None, 2, 7), ("c", 3, None, None, 3, 1),
            ("d", None, None, None, -1, 6), ("e", 5, 5, None, 4, 2)]
    allocs = schema.table("allocs", {
        "host": ["h1"] * 3 + ["h2"] * 3, "comm": [r[0] for r in data],
        "pid": [r[1] for r in data], "tid": [r[2] for r in data],
        "cgroup": [r[3] for r in data], "stack_id": [r[4] for r in data],
        "count": [r[5] for r in data], "bytes": [r[5] * 192 for r in data]})
    return Capture(allocs, frames, {"cache": "dentry", "duration_s": 2.5,
                                    "start": "2026-12-01T10:00:00+00:00", "backend": "bpf"})


def test_hand_made_capture(tmp_path):
    cap = _hand()
    raw = check_against_slabkit(cap, slabkit.to_pprof(cap, tmp_path / "h.pb.gz"))
    assert sorted(raw.mappings.values()) == ["overlay", "vmlinux"]
    assert raw.mappings[1] == "vmlinux"                       # the main binary first
    names = {f: (raw.mappings.get(m), a) for f, m, a in raw.locations.values()}
    assert names["0xffffffffc0a1b2c3 [overlay]"] == ("overlay", 0xffffffffc0a1b2c3)
    assert names["ovl_lookup"] == ("overlay", 0xffffffffc0a10020)
    assert names["[unknown]"] == (None, 0) and names["[no stack]"] == (None, 0)
    # labels: strings, a missing value left out
    labels = [lab for _, _, lab in raw.samples]
    assert {"comm": "a b", "pid": "1", "tid": "11", "cgroup": "/user.slice", "host": "h1",
            "cache": "dentry"} in labels
    assert {"comm": "d", "host": "h2", "cache": "dentry"} in labels
    assert raw.header["Time"] == ["2026-12-01 10:00:00 +0000 UTC"]


def test_empty_capture(tmp_path):
    cap = Capture(schema.empty("allocs"), schema.empty("frames"), {"cache": "filp"})
    raw = read_raw(slabkit.to_pprof(cap, tmp_path / "e.pb.gz"))
    assert raw.samples == [] and raw.types == ["alloc_objects", "alloc_space"]


# --------------------------------------------------------------------------------------------
# the command line

def test_cli_export_writes_pprof_and_folded(tmp_path, capsys):
    sample = slabkit.sample_path("perf-filp")
    out, folded = tmp_path / "p.pb.gz", tmp_path / "p.folded"
    assert main(["export", str(sample), "--pprof", str(out), "--folded", str(folded)]) == 0
    assert capsys.readouterr().out == f"pprof: {out}\nfolded: {folded}\n"
    cap = slabkit.load(sample)
    assert folded.read_text() == slabkit.to_folded(cap)
    check_against_slabkit(cap, out)
    assert main(["export", str(sample)]) == 2
    assert "--pprof OUT.pb.gz and/or --folded" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--pprof", str(out)]) == 2


# --------------------------------------------------------------------------------------------
# the generated module is protoc's output for the vendored profile.proto

def test_generated_module_matches_the_vendored_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (slabkit[test]) regenerates it")
    rel = "slabkit/analysis/pprof/profile.proto"
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes((PPROF_DIR / "profile.proto").read_bytes())
    done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                           "--pyi_out=.", rel], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    for name in ("profile_pb2.py", "profile_pb2.pyi"):
        assert (tmp_path / rel).with_name(name).read_text() == (PPROF_DIR / name).read_text()
    assert "Apache License" in (PPROF_DIR / "LICENSE").read_text()
    assert "package perftools.profiles;" in (PPROF_DIR / "profile.proto").read_text()


# --------------------------------------------------------------------------------------------
# live: a capture of a workload of known count

@pytest.mark.live
def test_live_capture_reads_back_in_pprof(live, tmp_path):
    from live_capture import capture_around, pid_rows

    from bench.workload import Workload
    n = 3000
    with Workload("open", n, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, base=tmp_path)
        pid = w.pid
    assert int(pid_rows(cap, pid)["count"].sum()) == n or cap.meta["lost_total"]
    path = slabkit.to_pprof(cap, tmp_path / "live.pb.gz")
    raw = check_against_slabkit(cap, path)
    if cap.meta.get("estimated_stacks"):            # the default: stacks sampled 1 in 32
        assert "per stack estimated (stacks sampled 1 in 32)" in raw.header["Comment"][1]
    mine = sums(raw, lambda locs, lab: int(lab["pid"]) if "pid" in lab else None,
                "alloc_objects")
    assert mine[pid] == int(pid_rows(cap, pid)["count"].sum())
    opened = sums(raw, lambda locs, lab: (int(lab.get("pid", -1)),
                                          callsite(raw.functions(locs))), "alloc_objects")
    assert opened[(pid, "alloc_empty_file")] == mine[pid]
