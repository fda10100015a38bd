"""The ``bpf`` backend (slabkit's raw-tracepoint counter): built, loaded and checked against
workloads of known size on the live kernel, and its parser on recorded output."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import procs
import pytest
from conftest import FIXTURES, require_bpf, skip_or_fail
from live_capture import (
    assert_losses_match_the_raw_output,
    capture_around,
    kernel_struct_size,
    pid_rows,
)

import slabkit
from bench.workload import Workload
from slabkit.backends import Options, get_backend
from slabkit.backends._tables import spread_counts
from slabkit.backends.bpf import parse_output, probe_kernel, read_output, render_argv
from slabkit.errors import InvalidInput, ParseError
from slabkit.host.facts import KernelFacts
from slabkit.host.target import LocalTarget
from slabkit.plan import Plan

N = 3000
OPEN_PATH = {"do_sys_openat2", "__x64_sys_openat", "path_openat", "do_filp_open"}
RECORDED = FIXTURES / "bpf" / "filp-6.18.tsv"


@pytest.fixture
def bpf(live):
    return require_bpf()


def functions_of(cap, stack_ids):
    f = cap.frames[cap.frames["stack_id"].isin(list(stack_ids))]
    return set(f["function"].dropna())


# --- live ---------------------------------------------------------------------------------

def test_auto_chooses_bpf_and_counts_filp_exactly(bpf, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, base=tmp_path)
    assert cap.meta["backend"] == "bpf"
    rows = pid_rows(cap, w.pid)
    assert int(rows["count"].sum()) == N
    assert set(rows["comm"]) == {"slabwork"}
    assert int(rows["bytes"].sum()) == N * cap.meta["slab_size"]
    assert cap.meta["lost_total"] == 0 and cap.meta["estimated_stacks"] is True
    # every thread has a stack, and the stacks start at the allocator, not in BPF machinery
    assert (rows["stack_id"] >= 0).all()
    assert OPEN_PATH & functions_of(cap, rows["stack_id"])
    first = cap.frames[cap.frames["depth"] == 0]["function"].dropna()
    assert not first.str.contains(r"^(?:bpf_|__bpf_trace|__traceiter)").any()
    assert first.str.startswith("kmem_cache_alloc").all()
    again = slabkit.load(cap.path)
    assert int(pid_rows(again, w.pid)["count"].sum()) == N


def test_full_stack_mode_counts_every_stack(bpf, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, base=tmp_path, backend="bpf",
                             options=Options(stack_sample=1))
    rows = pid_rows(cap, w.pid)
    assert int(rows["count"].sum()) == N
    assert cap.meta["estimated_stacks"] is False
    top = rows.sort_values("count").iloc[-1]
    assert int(top["count"]) >= N - 5          # one open path; a few first-call variants
    assert OPEN_PATH & functions_of(cap, [top["stack_id"]])


def test_dentry_from_lookups_of_missing_names(bpf, tmp_path):
    with Workload("stat", N, str(tmp_path)) as w:
        cap = capture_around("dentry", w.go, base=tmp_path / "caps", backend="bpf")
    assert int(pid_rows(cap, w.pid)["count"].sum()) == N


@pytest.mark.parametrize("stack_sample", [32, 1])   # default sampling; full stacks
def test_kmalloc_is_exact_with_requested_bytes(bpf, tmp_path, stack_sample):
    with Workload("eventfd", N) as w:
        cap = capture_around("kmalloc-64", w.go, base=tmp_path, backend="bpf",
                             options=Options(stack_sample=stack_sample))
    rows = pid_rows(cap, w.pid)
    facts = probe_kernel(LocalTarget(), str(bpf))
    by_slab = facts["slab_lookup"] == 1
    assert cap.meta["plan"]["strategy"] == ("kmalloc-slab" if by_slab else "kmalloc-size-class")
    assert cap.meta["exact"] is True or not by_slab
    assert int(rows["count"].sum()) == N
    req = int(rows["bytes_req"].sum())
    assert N * 33 <= req <= N * 64               # eventfd_ctx is requested at 33..64 bytes
    assert req == N * kernel_struct_size("eventfd_ctx")   # kmalloc(sizeof(*ctx)), from BTF
    assert "do_eventfd" in functions_of(cap, rows["stack_id"])
    assert set(rows["call_site"]) == {"do_eventfd"}
    # full stacks come from the regular tracepoint where BTF describes its record
    record = facts["kmalloc_record"] == 1
    assert ("--record-event" in cap.meta["argv"]) == (record and stack_sample == 1)
    f = cap.frames
    first = f[(f["depth"] == 0) & f["stack_id"].isin(list(rows["stack_id"]))]["function"]
    assert set(first) == {"__kmalloc_cache_noprof"}       # the tracing frames are cut


MSG_SIZE = 16    # + the 48-byte struct msg_msg header: 64 bytes, msgsnd's bucket msg_msg-64


def test_a_bucket_and_the_plain_cache_of_its_size_get_exactly_their_own(bpf, tmp_path):
    """msgsnd allocates from the msg_msg-64 slab bucket, eventfd from kmalloc-64: the same
    size class and GFP type, so kmem:kmalloc cannot tell them apart. Read from each object's
    own slab, each cache gets exactly its own count, and the plan says exact."""
    if probe_kernel(LocalTarget(), str(bpf))["slab_lookup"] != 1:
        skip_or_fail("slabcount cannot read an object's slab on this kernel (see --probe)")
    caches = set(slabkit.caches()["name"])
    if "msg_msg-64" not in caches:
        skip_or_fail("no msg_msg-64 slab bucket here (CONFIG_SLAB_BUCKETS off)")
    for cache in ("msg_msg-64", "kmalloc-64"):
        with Workload("msg", N, str(MSG_SIZE)) as m, Workload("eventfd", 2 * N) as e:
            def both():
                m.go()
                e.go()
            cap = capture_around(cache, both, base=tmp_path / cache, backend="bpf")
        assert cap.meta["plan"]["strategy"] == "kmalloc-slab" and cap.meta["exact"] is True
        assert "own slab" in cap.meta["plan"]["reason"]
        mine, other = (m, e) if cache == "msg_msg-64" else (e, m)
        assert int(pid_rows(cap, mine.pid)["count"].sum()) == (N if mine is m else 2 * N)
        assert pid_rows(cap, other.pid).empty, cache
        assert set(pid_rows(cap, mine.pid)["call_site"]) == (
            {"load_msg"} if mine is m else {"do_eventfd"})


@pytest.mark.parametrize("stack_sample", [32, 1])   # default sampling; full stacks
def test_counts_per_call_site_are_exact(bpf, tmp_path, stack_sample):
    """memfd_create and epoll_create1 both allocate 256 bytes from the same kmalloc cache, N
    and 2N times: each call site gets exactly its count, by the call_site column and by the
    pivot's callsite (each exact count is spread over stacks of its own call site)."""
    with Workload("callsites", N) as w:
        cache = kmalloc_cache_of(256)
        cap = capture_around(cache, w.go, base=tmp_path, backend="bpf",
                             options=Options(stack_sample=stack_sample))
    rows = pid_rows(cap, w.pid)
    by_site = rows.groupby("call_site")["count"].sum().to_dict()
    assert by_site == {"__do_sys_memfd_create": N, "do_epoll_create": 2 * N}, by_site
    assert cap.meta["count_exactness"] == {
        "process": "exact", "call_site": "exact",
        "stack": "exact" if stack_sample == 1 else "spread"}
    mine = (rows, cap.frames)
    sites = slabkit.by_frame(mine, "callsite")["count"]
    assert sites["__do_sys_memfd_create"] == N and sites["do_epoll_create"] == 2 * N
    assert slabkit.by_frame(cap, "callsite").attrs["exactness"] == "exact"
    assert slabkit.by_process(cap).attrs["exactness"] == "exact"
    if stack_sample > 1:
        # the keys alternate on a CPU (memfd, epoll, epoll, ...): stacks keep being sampled
        # for each, so the samples' weights add up to about each exact count (each sample
        # weighs the mean gap it was drawn with), not to a first sample alone
        sampled = read_output(Path(cap.path) / "slabcount.tsv").sampled
        mine_s = sampled[sampled["pid"] == w.pid]
        weights = mine_s.groupby("call_site")["samples"].sum()
        assert len(weights) == 2, weights
        for site_weight, exact in zip(sorted(weights), sorted(by_site.values())):
            assert exact / 2 <= site_weight <= exact * 2, (weights.to_dict(), by_site)


def kmalloc_cache_of(size: int) -> str:
    """The plain kmalloc cache of ``size`` bytes here (``kmalloc-256``), or skip."""
    name = f"kmalloc-{size}" if size < 1024 else f"kmalloc-{size // 1024}k"
    if name not in set(slabkit.caches()["name"]):
        skip_or_fail(f"no {name} cache here (merged into another?)")
    return name


@pytest.mark.parametrize("by", ["pid", "comm"])
def test_pid_and_comm_filters(bpf, tmp_path, by):
    """Two slabwork processes plus everything else on the machine: only the filtered ones."""
    with Workload("open", N, "/etc/hostname") as w, Workload("open", N, "/etc/hostname") as o:
        def both():
            w.go()
            o.go()
        filt = {"pid": w.pid} if by == "pid" else {"comm": "slabwork"}
        cap = capture_around("filp", both, base=tmp_path, backend="bpf", **filt)
    if by == "pid":
        assert set(cap.allocs["pid"]) == {w.pid}
        assert int(cap.allocs["count"].sum()) == N
    else:
        assert set(cap.allocs["comm"]) == {"slabwork"}
        assert int(pid_rows(cap, w.pid)["count"].sum()) == N
        assert int(pid_rows(cap, o.pid)["count"].sum()) == N


@pytest.mark.parametrize("stack_sample", [32, 1])   # default sampling; full stacks
def test_a_full_counts_map_is_reported_not_hidden(bpf, tmp_path, stack_sample):
    """map_keys=16 with more than 16 processes allocating: the events that found no slot are
    counted as lost and the capture says so (full-stack mode counts in its (key, stack) map,
    so there that map filling up is the loss)."""
    def spawn_many():
        for _ in range(40):
            subprocess.run(["/bin/true"], check=True)
    cap = capture_around("filp", spawn_many, base=tmp_path, backend="bpf",
                         options=Options(map_keys=16, stack_sample=stack_sample))
    assert cap.meta["losses"].get("count_map_full", 0) > 0
    assert cap.meta["lost_total"] >= cap.meta["losses"]["count_map_full"]
    assert_losses_match_the_raw_output(cap)         # by value: the raw output's stat lines
    assert any(f"{cap.meta['losses']['count_map_full']} events were not counted" in n
               for n in cap.meta["notes"])
    # the map holds 16 keys; each CPU's last key counts in its own slot besides (a key the
    # map had no room for is counted there while it stays its CPU's last key)
    cpus = os.cpu_count() or 1
    assert len(cap.allocs.groupby(["pid", "tid", "comm"])) <= 16 + cpus
    raw = (Path(cap.path) / "slabcount.tsv").read_text().splitlines()
    if stack_sample > 1:
        # the full map's 16 keys, plus a line per CPU for its pending count
        assert 16 <= sum(line.startswith("count\t") for line in raw) <= 16 + cpus
    else:
        # full stacks: the map that was full holds 16 (key, stack) pairs
        assert sum(line.startswith("sample\t") for line in raw) == 16
    assert cap.meta["total_allocs"] == int(cap.allocs["count"].sum())


def test_the_program_is_gone_when_the_capture_ends(bpf, tmp_path):
    """While running, slabcount holds a raw_tracepoint program; after, that program no longer
    exists (the links die with the process; nothing is pinned)."""
    seen: dict = {}

    def look():
        seen["pid"] = procs.descendants_named(os.getpid(), "slabcount")
        seen["progs"] = [i for p in seen["pid"] for i in _prog_ids_held_by(p)]
        seen["types"] = {_prog_type(i) for i in seen["progs"]}
    capture_around("filp", look, base=tmp_path, backend="bpf")
    assert len(seen["pid"]) == 1 and seen["progs"], seen
    assert seen["types"] == {"raw_tracepoint"}
    assert not Path(f"/proc/{seen['pid'][0]}").exists()
    deadline = time.time() + 5           # program memory is freed after an RCU grace period
    while time.time() < deadline and any(_prog_type(i) for i in seen["progs"]):
        time.sleep(0.1)
    assert not any(_prog_type(i) for i in seen["progs"])


def _prog_ids_held_by(pid: int) -> list[int]:
    """BPF program ids behind a process's file descriptors (from /proc/PID/fdinfo)."""
    ids = []
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        for line in info.read_text().splitlines():
            if line.startswith("prog_id:"):
                ids.append(int(line.split()[1]))
    return ids


def _prog_type(prog_id: int) -> str | None:
    """The program's type, or None once it no longer exists."""
    if not shutil.which("bpftool"):
        skip_or_fail("bpftool is not installed (make system installs it)")
    res = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                         capture_output=True, text=True)
    return json.loads(res.stdout).get("type") if res.returncode == 0 else None


# --- pure: argv, reasons, parser on recorded output -----------------------------------------

def _plan(**kw) -> Plan:
    base = dict(cache="filp", requested="filp", kind="dedicated", strategy="tracepoint-name",
                exact=True, reason="", alloc_events=["kmem:kmem_cache_alloc"],
                match_name="filp")
    return Plan(**{**base, **kw})


def test_argv_carries_only_validated_values():
    argv = render_argv("/x/slabcount", _plan(pid=42, comm="nginx"), Options(stack_sample=8))
    assert argv == ["/x/slabcount", "--cache", "filp", "--pid", "42", "--comm", "nginx",
                    "--stack-every", "8", "--count-keys", "65536", "--sample-keys", "65536"]
    km = render_argv("s", _plan(strategy="kmalloc-size-class", match_name=None,
                                match_bytes_alloc=64, gfp_forbid=0x400000,
                                alloc_events=["kmem:kmalloc"]), Options(stack_sample=1))
    assert km[1:7] == ["--kmalloc-size", "64", "--gfp-forbid", "0x400000", "--stack-every", "1"]
    kmalloc = _plan(strategy="kmalloc-size-class", match_name=None, match_bytes_alloc=64,
                    alloc_events=["kmem:kmalloc"])
    assert "--record-event" in render_argv("s", kmalloc, Options(stack_sample=1),
                                           kmalloc_record=True)
    assert "--record-event" not in render_argv("s", kmalloc, Options(stack_sample=32),
                                               kmalloc_record=True)
    assert "--record-event" not in render_argv("s", _plan(), Options(), kmalloc_record=True)
    slab = _plan(strategy="kmalloc-slab", match_name="msg_msg-64", match_bytes_alloc=64,
                 alloc_events=["kmem:kmalloc"])
    argv = render_argv("s", slab, Options(stack_sample=1), kmalloc_record=True)
    assert argv[1:6] == ["--kmalloc-size", "64", "--cache", "msg_msg-64", "--record-event"]
    assert "--record-event" not in render_argv("s", slab, Options(stack_sample=32),
                                               kmalloc_record=True)
    with pytest.raises(InvalidInput):
        render_argv("s", _plan(match_name="filp; rm -rf /"), Options())
    with pytest.raises(InvalidInput):
        render_argv("s", _plan(comm="a\nb"), Options())


def test_reasons_when_the_kernel_lacks_what_the_program_needs(tmp_path):
    backend = get_backend("bpf")
    assert "no BTF" in backend.unavailable(LocalTarget(tmp_path), KernelFacts())
    old = KernelFacts(bpf={"binary": "x", "cache_arg": -1, "size_arg": 3, "gfp_arg": 4,
                           "req_arg": 2, "kmalloc_node": -1, "task_btf": 0})
    fns = ["kmem_cache_alloc", "kmem_cache_alloc_node"]
    dedicated = _plan(strategy="kprobe-cachep", functions=fns)
    # no cache pointer on the raw tracepoint, no kprobes: refused, saying both
    why = backend.unsupported(dedicated, old)
    assert "Linux 6.0+" in why and "no kprobes" in why
    assert backend.unsupported(_plan(strategy="kmalloc-size-class",
                                     alloc_events=["kmem:kmalloc"]), old) is None
    node = _plan(strategy="kmalloc-size-class", alloc_events=["kmem:kmalloc",
                                                              "kmem:kmalloc_node"])
    assert "kmalloc_node" in backend.unsupported(node, old)
    assert "kmem:kfree" in backend.unsupported(
        _plan(strategy="kmalloc-size-class", alloc_events=["kmem:kfree"]), old)
    # 5.10's facts: kprobes on the allocation functions, kmalloc_node laid out as kmalloc
    k510 = KernelFacts(kprobes=True, bpf={**old.bpf, "kmalloc_node": 1, "kmalloc_record": 0,
                                          "kprobe_regs": 1, "ptr_arg": 1})
    assert backend.unsupported(dedicated, k510) is None
    # the kprobe program reads x86-64 registers: elsewhere refused (auto falls back)
    arm = KernelFacts(kprobes=True, bpf={**k510.bpf, "kprobe_regs": 0})
    assert "x86-64" in backend.unsupported(dedicated, arm)
    # 6.0's kmalloc: gfp_flags beyond the fifth argument, which slabcount does not read
    wide = KernelFacts(bpf={**k510.bpf, "cache_arg": 2, "gfp_arg": 5})
    assert "fifth argument" in backend.unsupported(node, wide)
    # 6.0's kmem_cache_alloc_node without the cache where kmem_cache_alloc has it
    half = KernelFacts(bpf={**k510.bpf, "cache_arg": 2, "cache_node": -1})
    assert "kmem_cache_alloc_node" in backend.unsupported(dedicated, half)
    assert backend.unsupported(node, k510) is None
    prog = backend.render(dedicated, Options(), k510)
    assert prog.argv[1:5] == ["--cache", "filp", "--functions",
                              "kmem_cache_alloc,kmem_cache_alloc_node"]
    assert "kprobes on kmem_cache_alloc, kmem_cache_alloc_node" in prog.text
    node_prog = backend.render(_plan(strategy="kmalloc-size-class", match_name=None,
                                     match_bytes_alloc=1024,
                                     alloc_events=["kmem:kmalloc", "kmem:kmalloc_node"]),
                               Options(stack_sample=1), k510)
    assert "--record-event" not in node_prog.argv      # would leave kmalloc_node out
    assert "kmalloc_node" in node_prog.text
    # a kernel whose raw tracepoint passes the cache: the raw tracepoint, never kprobes
    new = KernelFacts(kprobes=True, bpf={**k510.bpf, "cache_arg": 2})
    assert "--functions" not in backend.render(dedicated, Options(), new).argv
    with pytest.raises(InvalidInput):
        render_argv("s", _plan(strategy="kprobe-cachep", functions=["kmem_cache_alloc;x"]),
                    Options(), kprobes=True)


def test_the_older_helpers_count_the_same_keys(bpf, tmp_path):
    """Kernels before 5.11 have no bpf_get_current_task_btf: slabcount reads the key through
    the older helpers there (--no-task-btf forces that way here). Both ways, attached at the
    same time to the same kmalloc events, give the same exact keys and counts."""
    with Workload("eventfd", N) as w:
        outs, procs_ = [], []
        try:
            for extra in ([], ["--no-task-btf"]):
                out = tmp_path / f"slabcount{len(outs)}.tsv"
                with open(out, "wb") as o:
                    procs_.append(subprocess.Popen(
                        [str(bpf), "--kmalloc-size", "64", "--pid", str(w.pid), *extra],
                        stdout=o))
                outs.append(out)
            deadline = time.time() + 30
            while (not all(b"slabkit-attached" in o.read_bytes() for o in outs)
                   and time.time() < deadline):
                time.sleep(0.05)
            w.go()
        finally:
            for p in procs_:
                p.send_signal(2)
            for p in procs_:
                p.wait(30)
    btf, older = (read_output(o) for o in outs)
    key = ["pid", "tid", "cgroup_id", "comm", "call_site"]
    a = btf.exact.groupby(key)["count"].sum()
    b = older.exact.groupby(key)["count"].sum()
    assert int(a.sum()) == N and a.to_dict() == b.to_dict()
    assert set(btf.exact["comm"]) == {"slabwork"} and (btf.exact["cgroup_id"] > 0).all()


@pytest.mark.parametrize("name", ["filp-6.18", "filp-6.18-v2", "filp-6.18-v1"])
def test_recorded_output_parses_to_the_known_workload(name):
    """Recorded here (tests/fixtures/bpf/record.py): ``slabcount --cache filp`` around
    ``slabwork open 2000`` (pid and the command in the .json beside it). v2: before call
    sites (format 2); v1: samples without bytes_req too."""
    exact, sampled, stacks, stats = read_output(FIXTURES / "bpf" / f"{name}.tsv")
    meta = json.loads((FIXTURES / "bpf" / f"{name}.json").read_text())
    mine = exact[exact["pid"] == meta["pid"]]
    # the forked python opened the binary before exec (comm still python3), then slabwork ran
    assert int(mine.loc[mine["comm"] == "slabwork", "count"].sum()) == meta["n"]
    assert set(mine["comm"]) <= {"slabwork", "python", "python3"}
    if "matched" in stats:                       # formats 1 and 2 counted matches
        assert stats["matched"] == int(exact["count"].sum())
    assert exact["call_site"].notna().all() == (name == "filp-6.18")
    assert set(sampled["stack"]) <= set(stacks)
    assert all(len(a) > 3 for a in stacks.values())
    # weights: 1 for each key's first stack, plus 32 (or 256 once hot) for each later sample
    assert (sampled["samples"] % 32).isin([0, 1]).all() and (sampled["samples"] > 0).all()
    # requested bytes: v1 did not write them (missing, never 0); a filp event has none (0)
    assert sampled["bytes_req"].isna().all() if name.endswith("-v1") \
        else (sampled["bytes_req"] == 0).all()


#: the recorded fixtures' stacks, named by the address at depth 4 (hashes whose frames are the
#: same merge into one stack): open() of a path, the 10-frame path and the 8-frame other path
OPEN, TEN, OTHER = 0xffffffff816b749e, 0xffffffff816c610d, 0xffffffff816ca5fd
#: per (comm, pid): (stack, count), worked out by hand from the .tsv: every key's samples fall
#: on one stack (after the merge), so each key's exact count goes to it whole
PER_STACK = {
    "filp-6.18-v2": {("bash", 10121): (OTHER, 4), ("bash", 10113): (OTHER, 2),
                     ("python", 10121): (OPEN, 118), ("slabwork", 10122): (OPEN, 2000),
                     ("cat", 10123): (OPEN, 31), ("bash", 10123): (TEN, 2),
                     ("python", 10122): (TEN, 1)},
    "filp-6.18-v1": {("bash", 28920): (OTHER, 4), ("bash", 28872): (OTHER, 2),
                     ("python", 28920): (OPEN, 118), ("slabwork", 28921): (OPEN, 2000),
                     ("cat", 28922): (OPEN, 31), ("bash", 28922): (TEN, 2),
                     ("python", 28921): (TEN, 1)},
}


@pytest.mark.parametrize("name", sorted(PER_STACK))
def test_recorded_output_per_stack(name):
    parsed = parse_output(FIXTURES / "bpf" / f"{name}.tsv", _plan(),
                          {"options": {"stack_sample": 32}, "slab_size": 192})
    frames = parsed.frames
    label = {int(sid): int(a) for sid, a in
             frames.loc[frames["depth"] == 4, ["stack_id", "address"]].itertuples(index=False)}
    assert sorted(label.values()) == sorted((OPEN, TEN, OTHER))
    assert frames.groupby("stack_id").size().to_dict() == {
        sid: 10 if a == TEN else 8 for sid, a in label.items()}
    got = {(r.comm, int(r.pid)): (label[r.stack_id], int(r.count))
           for r in parsed.allocs.itertuples()}
    assert got == PER_STACK[name]
    assert parsed.allocs["bytes"].tolist() == (parsed.allocs["count"] * 192).tolist()
    assert parsed.estimated and not parsed.losses


def test_spread_counts_follows_the_sample_weights():
    """Each key's exact count is spread over its stacks in proportion to their (weighted)
    samples, by largest remainders; worked out by hand."""
    keys = ["pid", "tid", "comm"]
    exact = pd.DataFrame({"pid": [1, 2, 5, 5, 7], "tid": [1, 2, 5, 5, 7],
                          "comm": ["a", "b", "python", "slabwork", "x"],
                          "count": [1000, 100, 10, 90, 5]})
    sampled = pd.DataFrame({"pid": [1, 1, 2, 2, 2, 5, 5], "tid": [1, 1, 2, 2, 2, 5, 5],
                            "comm": ["a", "a", "b", "b", "b", "slabwork", "slabwork"],
                            "stack_id": [0, 1, 0, 1, 2, 0, 1],
                            "samples": [1, 999, 1, 32, 65, 1, 4]})
    out = spread_counts(exact, sampled, keys)
    got = {(r.comm, r.stack_id): r.count for r in out.itertuples()}
    assert got == {
        ("a", 0): 1, ("a", 1): 999,                   # 1000 x 1/1000, x 999/1000
        # 100 x (1, 32, 65)/98 = 1.02, 32.65, 66.33: 1 + 32 + 66 = 99, the largest
        # remainder (.65) takes the one left
        ("b", 0): 1, ("b", 1): 33, ("b", 2): 66,
        ("slabwork", 0): 18, ("slabwork", 1): 72,     # 90 x 1/5, x 4/5
        # no stack of its own (comm changed at exec): its thread's stacks, 10 x 1/5, x 4/5
        ("python", 0): 2, ("python", 1): 8,
        ("x", -1): 5,                                 # no stack at all: kept, stack -1
    }
    assert out.groupby("comm")["count"].sum().to_dict() == dict(zip(exact["comm"],
                                                                     exact["count"]))


def test_recorded_call_sites_parse_exact_with_their_names():
    """``slabcount --kmalloc-size 256 --cache kmalloc-256`` around ``slabwork callsites 500``
    (tests/fixtures/bpf/record.py): 500 from memfd_create, 1000 from epoll_create1, named
    through the kallsyms saved beside it; per call site exact, stacks spread."""
    from slabkit.backends.bpf import parse_output
    name = "kmalloc-256-callsites-6.18"
    rec = json.loads((FIXTURES / "bpf" / f"{name}.json").read_text())
    plan = _plan(cache="kmalloc-256", strategy="kmalloc-slab", match_name="kmalloc-256",
                 match_bytes_alloc=256, kind="kmalloc", alloc_events=["kmem:kmalloc"])
    meta = {"options": {"stack_sample": 32}, "kallsyms_path": f"{name}.kallsyms.txt.gz"}
    parsed = parse_output(FIXTURES / "bpf" / f"{name}.tsv", plan, meta)
    mine = parsed.allocs[parsed.allocs["pid"] == rec["pid"]]
    assert mine.groupby("call_site")["count"].sum().to_dict() == rec["expect"]
    assert int(mine["bytes"].sum()) == 1500 * 256
    assert int(mine["bytes_req"].sum()) == int(
        read_output(FIXTURES / "bpf" / f"{name}.tsv")[0].query(f"pid == {rec['pid']}")
        ["bytes_req"].sum())
    assert meta["count_exactness"] == {"process": "exact", "call_site": "exact",
                                       "stack": "spread"}
    assert parsed.estimated
    from slabkit.model.tables import Capture
    cap = Capture(allocs=parsed.allocs.assign(host="recorded"), frames=parsed.frames, meta=meta)
    assert slabkit.by_frame(cap, "callsite").attrs["exactness"] == "exact"
    assert slabkit.by_frame(cap, "inclusive").attrs["exactness"] == "spread"
    assert slabkit.top_stacks(cap).attrs["exactness"] == "spread"
    # a (process, call site) whose count went to stacks of two callsite labels: spread
    two = cap.allocs.copy()
    memfd = two.index[two["call_site"] == "__do_sys_memfd_create"][0]
    other = int(two.loc[two["call_site"] == "do_epoll_create", "stack_id"].iloc[0])
    extra = two.loc[[memfd]].assign(stack_id=other, count=1)
    mixed = Capture(allocs=pd.concat([two, extra], ignore_index=True), frames=cap.frames,
                    meta=meta)
    assert slabkit.by_frame(mixed, "callsite").attrs["exactness"] == "spread"
    # every stack of a call site passes through its function, right after the allocator
    f = parsed.frames
    for site, rows in mine.groupby("call_site"):
        for sid in rows["stack_id"]:
            funcs = list(f[f["stack_id"] == sid].sort_values("depth")["function"])
            assert funcs[0] == "__kmalloc_cache_noprof" and funcs[1] == site, funcs


def test_outputs_before_call_sites_have_no_call_site_column():
    from slabkit.backends.bpf import parse_output
    meta = {"options": {"stack_sample": 32}}
    parsed = parse_output(FIXTURES / "bpf" / "filp-6.18-v2.tsv", _plan(), meta)
    assert "call_site" not in parsed.allocs.columns
    assert meta["count_exactness"]["call_site"] == "absent"


@pytest.mark.parametrize("cut", ["no-end", "bad-line"])
def test_broken_output_is_a_clear_error(tmp_path, cut):
    text = RECORDED.read_text()
    bad = tmp_path / "slabcount.tsv"
    if cut == "no-end":
        bad.write_text(text[: text.rindex("end\n")])
        match = "no final 'end'"
    else:
        bad.write_text(text.replace("count\t", "count\tx", 1))
        match = "not a slabcount output line"
    with pytest.raises(ParseError, match=match):
        read_output(bad)


def test_both_stack_paths_give_the_same_stacks(bpf, tmp_path):
    """Stacks go to the kernel's stack map (ids with the top bit) and, where its bucket holds
    another stack, are copied and hashed instead. A one-bucket stack map sends all but one
    stack down the second path: both must give whole, exact, allocator-first stacks."""
    from bench.common import run_loop
    from slabkit.model.stacks import Kallsyms
    out = tmp_path / "slabcount.tsv"
    with open(out, "wb") as o:
        proc = subprocess.Popen([str(bpf), "--cache", "filp", "--stack-every", "1",
                                 "--kstack-keys", "1", "--comm", "slabwork"], stdout=o)
        try:
            deadline = time.time() + 30
            while b"slabkit-attached" not in out.read_bytes() and time.time() < deadline:
                time.sleep(0.05)
            mix = run_loop("mixloop", 1)    # opens, eventfds, pipes, sockets...: many stacks
        finally:
            proc.send_signal(2)
            proc.wait(30)
    exact, sampled, stacks, stats = read_output(out)
    assert exact.empty                                   # full stacks: samples are the counts
    from bench.accuracy import FILPS_PER_CALL
    made = sum(n * FILPS_PER_CALL.get(k, 1) for k, n in mix.extra.items())
    mine = sampled[sampled["pid"] == mix.pid]
    assert int(mine["samples"].sum()) == made and stats["count_map_full"] == 0
    kinds = {"kernel map" if h >> 63 else "hashed" for h in sampled["stack"]}
    assert kinds == {"kernel map", "hashed"}, kinds
    ks = Kallsyms.from_path()
    for h, addrs in stacks.items():
        func, _, _ = ks.resolve(list(addrs))
        assert str(func[0]).startswith("kmem_cache_alloc"), (hex(h), list(func)[:3])
