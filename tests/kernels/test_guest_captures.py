"""slabkit's real capture path against Debian's stock 5.10, 6.1 and 6.12 kernels, over SSH.

Each kernel boots once for this module (the ``guest`` fixture of conftest.py). Every capture is
``slabkit.capture(cache, host=guest.target(), backend=...)``, with slabkit's own BPF counter,
bpftrace, perf and ftrace where the plan allows: an :class:`slabkit.host.ssh.SSHTarget` on the
guest's OpenSSH server, so the cache table, kernel facts, plan, bpftrace program, run control,
kallsyms and cgroup mapping all go through the code real remote captures use. It is started
with tests/live_capture.capture_around, which runs the workload (bench/slabwork.c, ``-n``: no
stdin handshake) over SSH only once the probe is attached, then stops the capture.

No kernel here has the ``name`` field on kmem:kmem_cache_alloc (6.18+), so a dedicated cache is
planned as ``kprobe-cachep`` over the kernel's own allocation function names (bpftrace only:
perf and ftrace cannot read the cache's name); kmalloc caches as ``kmalloc-size-class`` on
kmem:kmalloc (and kmem:kmalloc_node on 5.10): bpftrace, perf and ftrace, and for slabkit's BPF
counter as ``kmalloc-slab`` (each object's own slab, found through the kernel's
page_offset_base/vmemmap_base). On 5.10 the raw tracepoint passes no cache pointer, so the
``bpf`` backend counts a dedicated cache by kprobes on the plan's allocation functions and
kmalloc on both kmalloc and kmalloc_node, by size class; bpftrace 0.17 needs ``BPFTRACE_BTF``
(asserted: slabkit sets it, and without it bpftrace fails with a message that names the
cause). Bulk allocations (``kmem_cache_alloc_bulk``: no tracepoint) are counted by bpftrace's
return probe: io_uring requests of ``slabwork iouring``. The facts behind the expected plans
are recorded in tests/fixtures/kernels/<release>/ (probe-checks.md: the bpftrace counts these
tests rely on).

Opt-in (see conftest.py); about 1.5-2 minutes per kernel under TCG on 2 shared cores (boot
10-35 s, each capture 20-50 s: slabkit reading ~600 sysfs files one ``cat`` each, 8-22 s;
bpftrace compiling and attaching, 5-8 s; reading /proc/kallsyms twice, 3-7 s; stopping
bpftrace, which symbolises the stacks it prints, 2-4 s).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from live_capture import capture_around

import slabkit
from slabkit.capturing import run as capturing
from slabkit.errors import ProbeFailed, UnknownCache

pytestmark = [pytest.mark.kernels, pytest.mark.timeout(1200)]

N = 1000
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bpftrace"
#: SLABKIT_KERNELS_RECORD=1 copies real tracer output of these runs into tests/fixtures/bpftrace/
RECORD = os.environ.get("SLABKIT_KERNELS_RECORD") == "1"

#: the kmem_cache_alloc* functions each series has (kallsyms-filtered.txt of its recorded facts);
#: 5.18 added *_lru; 6.10+ renamed them *_noprof (memory allocation profiling)
ALLOC_FUNCTIONS = {
    "5.10": {"kmem_cache_alloc", "kmem_cache_alloc_node"},
    "6.1": {"kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node"},
    "6.12": {"kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof", "kmem_cache_alloc_node_noprof"},
}
BULK_FUNCTION = {"5.10": "kmem_cache_alloc_bulk", "6.1": "kmem_cache_alloc_bulk",
                 "6.12": "kmem_cache_alloc_bulk_noprof"}
#: the kmalloc cache pipe()'s 16 pipe_buffers (640 bytes, GFP_KERNEL_ACCOUNT) come from, and
#: its kmalloc type: 5.10 has no kmalloc-cg caches (5.14+), so accounted kmallocs share kmalloc-1k
PIPE_BUFFERS_CACHE = {"5.10": ("kmalloc-1k", "normal"), "6.1": ("kmalloc-cg-1k", "cg"),
                      "6.12": ("kmalloc-cg-1k", "cg")}
#: the kernel's io_uring request cache io_kiocb is merged into filp on 5.10 and 6.1
IO_KIOCB_CACHE = {"5.10": "filp", "6.1": "filp", "6.12": "io_kiocb"}
#: io_uring's request cache refill: one kmem_cache_alloc_bulk of IO_REQ_ALLOC_BATCH requests
#: (the 5.15 io_uring, which Debian's 5.10 carries too); probe-checks.md measured N calls and 8N
#: objects for N rings with a plain kretprobe on every kernel here
IO_REQ_ALLOC_BATCH = 8
#: functions one of which an open(2) filp allocation's stack passes through
OPEN_PATH = {"path_openat", "do_filp_open", "do_sys_openat2", "__x64_sys_openat", "alloc_empty_file"}


@pytest.fixture(scope="module")
def target(guest):
    t = guest.target()
    t.connect()
    yield t
    t.close()


def slabwork(target, *args: str):
    """A ``work()`` for capture_around that runs ``slabwork -n ARGS`` in the guest, and a dict
    that gets its pid and output."""
    seen: dict = {}

    def work() -> None:
        r = target.run(["/usr/bin/slabwork", "-n", *args], timeout=300)
        assert r.returncode == 0, f"slabwork {args} failed ({r.returncode}): {r.stderr}"
        lines = r.stdout.strip().splitlines()
        assert lines[0].startswith("pid ") and lines[-1] == f"done {args[1]}", r.stdout
        seen["pid"] = int(lines[0].split()[1])
        seen["stdout"] = r.stdout

    return work, seen


def _capture(target, cache: str, work, tmp_path, backend: str = "auto"):
    # The stop event ends the capture (status "interrupted"); 600 s is only an upper bound.
    return capture_around(cache, work, target=target, base=tmp_path, seconds=600, backend=backend)


#: both in-kernel counters: slabkit's own raw-tracepoint program (built here, copied to the
#: guest; its argument layout read from the guest kernel's BTF; refused on 5.10) and bpftrace
#: (kprobes there)
BACKENDS = ["bpf", "bpftrace"]


def _slabwork_rows(cap, pid: int):
    a = cap.allocs[cap.allocs["comm"] == "slabwork"]
    assert set(a["pid"]) <= {pid}, f"slabwork rows from other pids: {sorted(set(a['pid']))}"
    return a


def _stack_functions(cap, rows) -> dict[int, list]:
    """stack_id -> its functions, innermost first, for the stacks of ``rows``."""
    ids = {int(s) for s in rows["stack_id"] if s >= 0}
    fr = cap.frames[cap.frames["stack_id"].isin(ids)].sort_values(["stack_id", "depth"])
    return {int(sid): list(g["function"]) for sid, g in fr.groupby("stack_id")}


def _check_meta(cap, guest, target, strategy: str, backend: str) -> dict:
    meta = cap.meta
    assert meta["kernel_release"] == guest.release
    assert meta["host"] == target.name and meta["target"] == target.name
    assert set(cap.allocs["host"]) == {target.name}
    assert meta["backend"] == backend and meta["tracer_version"]
    plan = meta["plan"]
    assert plan["strategy"] == strategy
    assert plan["reason"], "the plan records why it was chosen"
    # what is saved with the capture says the same (meta.json, reloaded and re-parsed here)
    again = slabkit.load(cap.path, reparse=True)
    assert again.meta["plan"] == plan
    assert int(again.allocs["count"].sum()) == int(cap.allocs["count"].sum())
    return plan


def _check_btf_workaround(cap, guest) -> None:
    """bpftrace 0.17 on 5.10 is pointed at the kernel's BTF file, and the capture says so."""
    workaround = "BPFTRACE_BTF=/sys/kernel/btf/vmlinux"
    if guest.series == "5.10":
        assert cap.meta["env"]["BPFTRACE_BTF"] == "/sys/kernel/btf/vmlinux"
        assert "Linux before 5.11" in cap.meta["tracer_workarounds"][workaround]
        assert any(workaround in n for n in cap.meta["notes"])
        assert cap.meta["tracer_version"] == "0.17.0"
    else:   # 5.11+ gives its BTF an object id: bpftrace finds it by itself
        assert "BPFTRACE_BTF" not in cap.meta["env"] and not cap.meta["tracer_workarounds"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_filp_counts_slabwork_opens_exactly(guest, target, tmp_path, backend):
    if backend == "bpf":    # the default on every kernel here
        assert slabkit.prepare("filp", target=target).backend.name == "bpf"
    work, seen = slabwork(target, "open", str(N), "/etc/hostname")
    cap = _capture(target, "filp", work, tmp_path, backend)

    plan = _check_meta(cap, guest, target, "kprobe-cachep", backend)
    assert "no name field" in plan["reason"]
    assert set(plan["functions"]) == ALLOC_FUNCTIONS[guest.series]
    assert plan["match_name"] == "filp" and plan["exact"] is True
    assert plan["bulk_functions"] == [BULK_FUNCTION[guest.series]]
    if guest.series in ("5.10", "6.1"):   # the plan says which caches share filp
        assert "io_kiocb" in plan["aliases"]
        assert any("io_kiocb" in n and "counted together" in n for n in cap.meta["notes"])
    if backend == "bpftrace":
        for fn in plan["functions"]:
            assert f"kprobe:{fn}" in cap.meta["program"]
        assert f"kretprobe:{BULK_FUNCTION[guest.series]}" in cap.meta["program"]
        _check_btf_workaround(cap, guest)
    elif guest.series == "5.10":   # no cache pointer on the raw tracepoint: kprobes
        assert "kprobes on " + ", ".join(plan["functions"]) in cap.meta["program"]
        assert "--cache filp --functions " + ",".join(plan["functions"]) in cap.meta["program"]
    else:   # the raw tracepoint passes the cache pointer on 6.1 and 6.12: no kprobes needed
        assert "raw tracepoint kmem_cache_alloc" in cap.meta["program"]
        assert "--cache filp" in cap.meta["program"]

    rows = _slabwork_rows(cap, seen["pid"])
    assert int(rows["count"].sum()) == N, cap.allocs.groupby("comm")["count"].sum().to_dict()
    if backend == "bpf":                    # exact per call site too
        # 5.10 and 6.1 allocate the file in __alloc_file, which alloc_empty_file calls
        site = "alloc_empty_file" if guest.series == "6.12" else "__alloc_file"
        assert set(rows["call_site"]) == {site}, set(rows["call_site"])
    # the guest mounts cgroup2 and has GNU find: bpftrace's cgroup id maps to a path
    assert set(rows["cgroup"]) == {"/"}

    # stacks resolve through the guest's kallsyms saved with the capture
    stacks = _stack_functions(cap, rows)
    assert stacks, "no sampled stack for slabwork"
    for funcs in stacks.values():
        assert all(isinstance(f, str) for f in funcs), funcs
        assert funcs[0] in plan["functions"], funcs      # innermost: the probed function
        assert OPEN_PATH & set(funcs), funcs


@pytest.mark.parametrize("backend", [*BACKENDS, "perf", "ftrace"])
def test_kmalloc_1k_counts_slabwork_pipes_exactly(guest, target, tmp_path, backend):
    # pipe(): alloc_pipe_info() kcalloc()s 16 pipe_buffers (640 bytes, GFP_KERNEL_ACCOUNT) from
    # kmalloc-cg-1k (kmalloc-1k on 5.10); probe-checks.md found that size class exact for
    # slabwork on every kernel here.
    cache, gfp_type = PIPE_BUFFERS_CACHE[guest.series]
    work, seen = slabwork(target, "pipe", str(N))
    cap = _capture(target, cache, work, tmp_path, backend)

    # slabkit's BPF counter reads each object's own slab: no kernel here has the
    # bpf_get_kmem_cache kfunc (6.13+), 6.1 and 6.12 list page_offset_base and vmemmap_base
    # (CONFIG_KALLSYMS_ALL) for the kernel's virt_to_page, checked on live events first; 5.10's
    # raw kmem_cache_alloc tracepoint has no cache pointer to check it against: size class
    by_slab = backend == "bpf" and guest.series != "5.10"
    if backend == "bpf" and not by_slab:
        assert "raw tracepoints kmalloc, kmalloc_node" in cap.meta["program"]
    plan = _check_meta(cap, guest, target, "kmalloc-slab" if by_slab else "kmalloc-size-class",
                       backend)
    # 5.10 still has the separate _node event (kmalloc_node(), e.g. from kvmalloc)
    events = ["kmem:kmalloc", "kmem:kmalloc_node"] if guest.series == "5.10" else ["kmem:kmalloc"]
    assert plan["alloc_events"] == events and plan["functions"] == []
    assert plan["bulk_functions"] == []   # kmalloc has no bulk form
    assert plan["match_bytes_alloc"] == 1024 and plan["gfp_type"] == gfp_type
    if by_slab:
        assert plan["exact"] is True and "vmemmap_base" in plan["reason"], plan["reason"]
        assert plan["match_name"] == cache
    elif guest.series == "6.12":  # slab buckets (CONFIG_SLAB_BUCKETS) of the same size: estimate
        assert plan["exact"] is False and "memdup_user-1k" in plan["reason"], plan["reason"]
    else:
        assert plan["exact"] is True, plan["reason"]
    if guest.series == "5.10":
        assert any("no kmalloc-cg caches" in n for n in cap.meta["notes"])
    if backend == "bpftrace":
        _check_btf_workaround(cap, guest)
    if backend in ("perf", "ftrace"):
        assert cap.meta["lost_total"] == 0, cap.meta["losses"]

    rows = _slabwork_rows(cap, seen["pid"])
    assert int(rows["count"].sum()) == N, cap.allocs.groupby("comm")["count"].sum().to_dict()
    if backend == "bpf":                    # exact per call site too
        assert set(rows["call_site"]) == {"alloc_pipe_info"}, set(rows["call_site"])
    assert int(rows["bytes_req"].sum()) == N * 640
    assert int(rows["bytes"].sum()) == N * 1024

    stacks = _stack_functions(cap, rows)
    assert stacks, "no sampled stack for slabwork"
    for funcs in stacks.values():
        assert all(isinstance(f, str) for f in funcs), funcs
        assert "alloc_pipe_info" in funcs, funcs


# --- bulk allocations: kmem_cache_alloc_bulk fires no tracepoint ---------------------------


def test_bulk_allocations_are_counted_at_their_return(guest, target, tmp_path):
    # `slabwork iouring R`: R fresh io_uring rings with one NOP each. Each ring's first request
    # comes from its empty request cache, which io_uring refills with one kmem_cache_alloc_bulk
    # of IO_REQ_ALLOC_BATCH (8) io_kiocb objects: R bulk calls, 8R objects (the same figures as
    # a plain kretprobe in probe-checks.md), none of them through the allocation tracepoints.
    rings = 200
    cache = IO_KIOCB_CACHE[guest.series]
    work, seen = slabwork(target, "iouring", str(rings))
    cap = _capture(target, "io_kiocb", work, tmp_path, "bpftrace")

    plan = _check_meta(cap, guest, target, "kprobe-cachep", "bpftrace")
    assert plan["cache"] == cache and plan["requested"] == "io_kiocb"
    bulk_fn = BULK_FUNCTION[guest.series]
    assert plan["bulk_functions"] == [bulk_fn]
    assert f"kretprobe:{bulk_fn}" in cap.meta["program"]

    rows = _slabwork_rows(cap, seen["pid"])
    stacks = _stack_functions(cap, rows)
    from_bulk = rows[rows["stack_id"].map(lambda s: stacks.get(int(s), [None])[0] == bulk_fn)]
    assert int(from_bulk["count"].sum()) == IO_REQ_ALLOC_BATCH * rings, rows
    for sid in from_bulk["stack_id"]:   # the caller: io_uring's submission path
        assert any("io_submit_sqes" in f or "io_alloc_req" in f for f in stacks[int(sid)]), \
            stacks[int(sid)]
    m = [re.search(r"(\d+) objects came from (\d+) bulk allocations", n) for n in cap.meta["notes"]]
    counted = [(int(x.group(1)), int(x.group(2))) for x in m if x]
    assert counted and counted[0][1] >= rings and counted[0][0] >= IO_REQ_ALLOC_BATCH * rings
    others = rows.drop(from_bulk.index)
    if cache == "io_kiocb":   # dedicated: every object came in bulk, the tracepoints saw none
        assert others.empty, others
    else:                     # merged into filp: plus one file per ring (the ring's fd)
        assert int(others["count"].sum()) == rings, others
    if RECORD:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name in ("bpftrace.jsonl", "meta.json", "kallsyms.txt.gz"):
            shutil.copy(Path(cap.path) / name, FIXTURES / f"bulk-{guest.series}-{name}")


# --- a tracer that fails says why -----------------------------------------------------------


def test_bpftrace_without_the_btf_workaround_fails_and_says_why(guest, target, tmp_path):
    # the real case: bpftrace 0.17 on 5.10 without BPFTRACE_BTF cannot find the kernel's types
    prep = slabkit.prepare("filp", backend="bpftrace", target=target)
    if guest.series != "5.10":   # 5.11+: bpftrace finds the kernel's BTF by itself
        assert "BPFTRACE_BTF" not in prep.program.env and not prep.program.workarounds
        return
    del prep.program.env["BPFTRACE_BTF"]
    prep.program.workarounds.clear()
    with pytest.raises(ProbeFailed) as e:
        capturing.run_prepared(prep, 600, base=tmp_path, progress=False)
    err = e.value
    assert err.message == "bpftrace exited before its probe was attached"
    assert err.returncode not in (0, None)
    assert any("'linux/types.h' file not found" in line for line in err.tail), err.stderr
    assert "BPFTRACE_BTF=/sys/kernel/btf/vmlinux" in err.hint
    text = str(err).splitlines()
    assert text[0].startswith("bpftrace exited before its probe was attached (exit code")
    assert any("'linux/types.h' file not found" in line for line in text[1:])
    assert (Path(err.raw_path) / "bpftrace.stderr").read_text().strip()
    if RECORD:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(err.raw_path) / "bpftrace.stderr",
                    FIXTURES / "bpftrace-0.17-linux-5.10-no-btf.stderr")


def test_a_slab_bucket_and_the_plain_cache_of_its_size_each_get_their_own(guest, target,
                                                                          tmp_path):
    """6.12's msgsnd allocates from the msg_msg-64 slab bucket, eventfd from kmalloc-64: one
    size class, and kmem:kmalloc does not say which. slabkit's BPF counter reads each
    object's own slab (virt_to_page through the guest kernel's vmemmap_base): exact."""
    if guest.series in ("5.10", "6.1"):    # no slab buckets (CONFIG_SLAB_BUCKETS is 6.11+)
        with pytest.raises(UnknownCache):
            slabkit.prepare("msg_msg-64", backend="bpf", target=target)
        return
    for cache in ("msg_msg-64", "kmalloc-64"):
        msg, msg_seen = slabwork(target, "msg", str(N), "16")
        efd, efd_seen = slabwork(target, "eventfd", str(2 * N))

        def both():
            msg()
            efd()
        cap = _capture(target, cache, both, tmp_path / cache, "bpf")
        plan = _check_meta(cap, guest, target, "kmalloc-slab", "bpf")
        assert plan["exact"] is True, plan["reason"]
        got = {w: int(cap.allocs.loc[cap.allocs["pid"] == seen["pid"], "count"].sum())
               for w, seen in (("msg", msg_seen), ("eventfd", efd_seen))}
        assert got == ({"msg": N, "eventfd": 0} if cache == "msg_msg-64"
                       else {"msg": 0, "eventfd": 2 * N}), (cache, got)


# --- the same guest through its dropbear server (guest port 2222) ----------------------------
# slabkit says an SSH target needs nothing but an sshd and a POSIX sh; dropbear is the sshd of
# small systems. It caps a command line at 9000 bytes (so read_many batches stay under 8000) and
# does not make the command a process group leader (so the supervisor runs setsid first).


def test_cache_table_reads_over_dropbear(guest):
    # the cache table reads ~600 sysfs files in one read_many() call
    table = slabkit.caches(guest.target("dropbear"))
    assert "filp" in set(table["name"])


def test_filp_capture_over_dropbear(guest, tmp_path):
    if guest.series != "6.12":
        pytest.skip("one kernel is enough for what differs between SSH servers")
    t = guest.target("dropbear")
    work, seen = slabwork(t, "open", str(N), "/etc/hostname")
    cap = _capture(t, "filp", work, tmp_path)
    rows = _slabwork_rows(cap, seen["pid"])
    assert int(rows["count"].sum()) == N, cap.meta.get("returncode")
