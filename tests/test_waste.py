"""kmalloc waste (slot bytes - requested bytes): on recorded ftrace and perf output of
``slabwork eventfd`` (checked against the events' own call_site, bytes_req and bytes_alloc
fields), missing (never 0) where no bytes_req was given, the plot, and live captures of
kmalloc-64 whose requested size is known exactly: sizeof(struct eventfd_ctx), read from the
kernel's BTF."""
from __future__ import annotations

import re
import subprocess
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from conftest import FIXTURES, require_bpf, require_tool

import slabkit
from slabkit.backends.ftrace.parse import parse_output as parse_ftrace
from slabkit.backends.perf import parse_output as parse_perf
from slabkit.model.tables import Capture
from slabkit.plan import Plan

FTRACE_EVENT = re.compile(r"^\s*(?P<comm>.*)-\d+ +\( *\d+\) \[\d+\] \S+ +[\d.]+: kmalloc: "
                          r"call_site=(?P<site>[\w.]+)\+\S+ .*bytes_req=(?P<req>\d+) "
                          r"bytes_alloc=(?P<alloc>\d+)", re.M)
PERF_EVENT = re.compile(r"^(?P<comm>.*?) +\d+/\d+ +kmem:kmalloc: call_site=(?P<site>[\w.]+)\+\S+"
                        r" .*bytes_req=(?P<req>\d+) bytes_alloc=(?P<alloc>\d+)", re.M)


def plan_kmalloc64() -> Plan:
    return Plan(cache="kmalloc-64", requested="kmalloc-64", kind="kmalloc",
                strategy="kmalloc-size-class", exact=True, reason="",
                alloc_events=["kmem:kmalloc"], match_bytes_alloc=64, gfp_type="normal",
                gfp_forbid=0x400011)


def recorded(tracer: str, tmp_path) -> tuple[Capture, dict]:
    """The recorded capture, and what its event lines say: per call site and per comm,
    [count, bytes_alloc, bytes_req]."""
    if tracer == "ftrace":
        path = tmp_path / "ftrace.txt"
        path.write_bytes((FIXTURES / "ftrace" / "kmalloc64-eventfd.txt").read_bytes())
        parsed, events = parse_ftrace(path, plan_kmalloc64(), {}), FTRACE_EVENT
    else:
        path = FIXTURES / "perf" / "kmalloc64-eventfd.script.txt"
        parsed, events = parse_perf(path, plan_kmalloc64(), {}), PERF_EVENT
    said: dict = {by: defaultdict(lambda: [0, 0, 0]) for by in ("callsite", "comm")}
    for m in events.finditer(path.read_text()):
        for by, key in (("callsite", m["site"]), ("comm", m["comm"].strip())):
            said[by][key][0] += 1
            said[by][key][1] += int(m["alloc"])
            said[by][key][2] += int(m["req"])
    cap = Capture(parsed.allocs.assign(host="vm"), parsed.frames,
                  {"cache": "kmalloc-64", "duration_s": 1.0})
    return cap, said


# --------------------------------------------------------------------------------------------
# recorded output

@pytest.mark.parametrize("tracer", ["ftrace", "perf"])
def test_waste_matches_the_events_own_fields(tracer, tmp_path):
    cap, said = recorded(tracer, tmp_path)
    for by in ("callsite", "comm"):
        df = slabkit.kmalloc_waste(cap, by=by)
        assert df.index.name == by and list(df.columns) == [
            "count", "bytes", "bytes_req", "waste_bytes", "fragmentation", "share",
            "memory_share"]
        got = {k: [int(r["count"]), int(r["bytes"]), int(r["bytes_req"])]
               for k, r in df.iterrows()}
        assert got == dict(said[by]) and sum(v[0] for v in got.values()) >= 100
        for k, (count, alloc, req) in said[by].items():
            assert df.loc[k, "waste_bytes"] == alloc - req
            assert df.loc[k, "fragmentation"] == pytest.approx((alloc - req) / alloc)
        assert df["share"].sum() == pytest.approx(1.0)
        assert df["memory_share"].isna().all()        # no slabinfo series in the fixture
    total = slabkit.kmalloc_waste_total(cap)
    count, alloc, req = (sum(v[i] for v in said["comm"].values()) for i in range(3))
    assert (total["count"], total["bytes"], total["bytes_req"], total["waste_bytes"]) == (
        count, alloc, req, alloc - req)
    assert total["fragmentation"] == pytest.approx((alloc - req) / alloc)
    assert pd.isna(total["cache_memory_bytes"]) and pd.isna(total["memory_share"])


def test_share_of_the_cache_memory_is_of_its_last_slabinfo_sample(tmp_path):
    cap, _ = recorded("ftrace", tmp_path)
    cap.slabinfo = pd.DataFrame({"time_s": [0.0, 0.5, 1.0] * 2,
                                 "name": ["kmalloc-64"] * 3 + ["kmalloc-32"] * 3,
                                 "active_objs": [1] * 6, "num_objs": [1] * 6,
                                 "memory_bytes": [8192, 12288, 16384, 1, 2, 3]})
    total = slabkit.kmalloc_waste_total(cap)
    assert total["cache_memory_bytes"] == 16384
    assert total["memory_share"] == pytest.approx(total["waste_bytes"] / 16384)
    df = slabkit.kmalloc_waste(cap, by="comm")
    assert df["memory_share"].to_numpy() == pytest.approx(
        df["waste_bytes"].to_numpy(dtype=float) / 16384)


def test_missing_bytes_req_is_missing_waste_never_zero(tmp_path):
    # filp (a dedicated cache) and the classic stap output: no bytes_req at all
    for name in ("bpftrace-filp", "stap-classic"):
        cap = slabkit.load(slabkit.sample_path(name))
        for by in ("callsite", "comm", ["comm", "pid"], "module"):
            df = slabkit.kmalloc_waste(cap, by=by)
            assert len(df) and df["waste_bytes"].isna().all() and df["share"].isna().all()
            assert int(df["count"].sum()) == int(cap.allocs["count"].sum())
        assert pd.isna(slabkit.kmalloc_waste_total(cap)["waste_bytes"])
    # two hosts' captures merged, one from a backend that could not give bytes_req: that
    # host's waste is missing, the other's known, the total missing
    known, _ = recorded("ftrace", tmp_path)
    unknown, _ = recorded("perf", tmp_path)
    known.allocs = known.allocs.assign(host="a")
    unknown.allocs = unknown.allocs.assign(host="b", bytes_req=pd.NA)
    both = slabkit.merge([known, unknown])
    df = slabkit.kmalloc_waste(both, by="host")
    assert df.loc["a", "waste_bytes"] == slabkit.kmalloc_waste_total(known)["waste_bytes"] > 0
    assert pd.isna(df.loc["b", "waste_bytes"]) and pd.isna(df.loc["b", "bytes_req"])
    assert df.index.tolist() == ["a", "b"]             # missing last
    assert pd.isna(slabkit.kmalloc_waste(both, by="comm").loc["slabwork", "waste_bytes"])
    assert pd.isna(slabkit.kmalloc_waste_total(both)["waste_bytes"])


def test_bad_key_names_the_choices(tmp_path):
    cap, _ = recorded("ftrace", tmp_path)
    with pytest.raises(slabkit.InvalidInput, match="'callsite', 'module', 'host'"):
        slabkit.kmalloc_waste(cap, by="stack")


# --------------------------------------------------------------------------------------------
# the plot

@pytest.fixture
def ax():
    fig, ax = plt.subplots(figsize=(10, 5))
    yield ax
    plt.close(fig)


def test_plot_waste_by_callsite_and_process(tmp_path, ax):
    cap, said = recorded("ftrace", tmp_path)
    (site, (count, alloc, req)), = said["callsite"].items()
    out = slabkit.plot_kmalloc_waste(cap, ax=ax)
    assert out is ax
    assert [b.get_width() for b in ax.patches] == [alloc - req]
    assert [t.get_text() for t in ax.get_yticklabels()] == [site]
    assert f"{(alloc - req) / alloc:.1%}" in [t.get_text() for t in ax.texts]
    assert f"{(alloc - req) / 1024:.1f} KiB wasted" in ax.get_title()
    assert "'kmalloc-64' by call site" in ax.get_title() and "bytes allocated" in ax.get_title()
    ax.clear()
    slabkit.plot_kmalloc_waste(cap, by="comm", ax=ax)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["slabwork"]


def test_plot_says_waste_is_unknown_without_bytes_req(ax):
    cap = slabkit.load(slabkit.sample_path("perf-filp"))
    slabkit.plot_kmalloc_waste(cap, ax=ax)
    assert not ax.patches
    assert any("waste unknown" in t.get_text() for t in ax.texts)


# --------------------------------------------------------------------------------------------
# live: kmalloc-64 from eventfd(), whose requested size is sizeof(struct eventfd_ctx)

def eventfd_ctx_size() -> int:
    """sizeof(struct eventfd_ctx) from the running kernel's BTF (do_eventfd kmallocs one)."""
    bpftool = require_tool("bpftool")
    text = subprocess.run([bpftool, "btf", "dump", "file", "/sys/kernel/btf/vmlinux",
                           "format", "raw"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"STRUCT 'eventfd_ctx' size=(\d+) ", text).group(1))


@pytest.mark.live
@pytest.mark.parametrize("backend", ["bpf", "bpftrace", "perf", "ftrace"])
def test_live_eventfd_waste_is_known_exactly(live, backend, tmp_path, ax):
    from live_capture import capture_around

    from bench.workload import Workload
    if backend == "bpf":
        require_bpf()
    elif backend in ("bpftrace", "perf"):
        require_tool(backend)
    size, n = eventfd_ctx_size(), 2000
    assert 32 < size <= 64                               # so it is served from kmalloc-64
    with Workload("eventfd", n) as w:
        cap = capture_around("kmalloc-64", w.go, base=tmp_path, backend=backend, pid=w.pid)
    assert cap.meta["lost_total"] == 0, cap.meta["losses"]
    waste = n * (64 - size)
    total = slabkit.kmalloc_waste_total(cap)
    assert (total["count"], total["bytes"], total["bytes_req"], total["waste_bytes"]) == (
        n, n * 64, n * size, waste)
    assert total["fragmentation"] == pytest.approx((64 - size) / 64)
    series = cap.slabinfo[cap.slabinfo["name"] == "kmalloc-64"].sort_values("time_s")
    assert total["cache_memory_bytes"] == int(series["memory_bytes"].iloc[-1]) > 0
    assert total["memory_share"] == pytest.approx(waste / total["cache_memory_bytes"])
    by_comm = slabkit.kmalloc_waste(cap, by="comm")
    assert by_comm["waste_bytes"].to_dict() == {"slabwork": waste}
    by_site = slabkit.kmalloc_waste(cap, by="callsite")
    assert by_site["waste_bytes"].to_dict() == {"do_eventfd": waste}
    slabkit.plot_kmalloc_waste(cap, ax=ax)
    assert [b.get_width() for b in ax.patches] == [waste]
