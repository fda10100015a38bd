"""slabkit's real capture path against Debian's stock 6.1 and 6.12 kernels, over SSH.

Each kernel boots once for this module (the ``guest`` fixture of conftest.py). Every capture is
``slabkit.capture(cache, host=guest.target(), backend=...)``, with slabkit's own BPF counter and
with bpftrace: an :class:`slabkit.host.ssh.SSHTarget` on the
guest's OpenSSH server, so the cache table, kernel facts, plan, bpftrace program, run control,
kallsyms and cgroup mapping all go through the code real remote captures use. It is started
with tests/live_capture.capture_around, which runs the workload (bench/slabwork.c, ``-n``: no
stdin handshake) over SSH only once the probe is attached, then stops the capture.

Neither kernel has the ``name`` field on kmem:kmem_cache_alloc (6.18+), so a dedicated cache is
planned as ``kprobe-cachep`` over the kernel's own allocation function names; kmalloc caches as
``kmalloc-size-class`` on kmem:kmalloc, and for slabkit's BPF counter as ``kmalloc-slab``
(each object's own slab, found through the kernel's page_offset_base/vmemmap_base). The facts
behind the expected plans are recorded in tests/fixtures/kernels/<release>/ (probe-checks.md:
the bpftrace counts these tests rely on).

Opt-in (see conftest.py); about 1.5-2 minutes per kernel under TCG on 2 shared cores (boot
10-35 s, each capture 20-50 s: slabkit reading ~600 sysfs files one ``cat`` each, 8-22 s;
bpftrace compiling and attaching, 5-8 s; reading /proc/kallsyms twice, 3-7 s; stopping
bpftrace, which symbolises the stacks it prints, 2-4 s).
"""
from __future__ import annotations

import pytest
from live_capture import capture_around

import slabkit

pytestmark = [pytest.mark.kernels, pytest.mark.timeout(1200)]

N = 1000

#: the kmem_cache_alloc* functions each series has (kallsyms-filtered.txt of its recorded facts);
#: 6.10+ renamed them *_noprof (memory allocation profiling)
ALLOC_FUNCTIONS = {
    "6.1": {"kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node"},
    "6.12": {"kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof", "kmem_cache_alloc_node_noprof"},
}
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
#: guest; its argument layout read from the guest kernel's BTF) and bpftrace (kprobes there)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_filp_counts_slabwork_opens_exactly(guest, target, tmp_path, backend):
    work, seen = slabwork(target, "open", str(N), "/etc/hostname")
    cap = _capture(target, "filp", work, tmp_path, backend)

    plan = _check_meta(cap, guest, target, "kprobe-cachep", backend)
    assert "no name field" in plan["reason"]
    assert set(plan["functions"]) == ALLOC_FUNCTIONS[guest.series]
    assert plan["match_name"] == "filp" and plan["exact"] is True
    if backend == "bpftrace":
        for fn in plan["functions"]:
            assert f"kprobe:{fn}" in cap.meta["program"]
    else:   # the raw tracepoint passes the cache pointer on 6.1 and 6.12: no kprobes needed
        assert "raw tracepoint kmem_cache_alloc" in cap.meta["program"]
        assert "--cache filp" in cap.meta["program"]

    rows = _slabwork_rows(cap, seen["pid"])
    assert int(rows["count"].sum()) == N, cap.allocs.groupby("comm")["count"].sum().to_dict()
    if backend == "bpf":                    # exact per call site too
        assert set(rows["call_site"]) == {"alloc_empty_file"}, set(rows["call_site"])
    # the guest mounts cgroup2 and has GNU find: bpftrace's cgroup id maps to a path
    assert set(rows["cgroup"]) == {"/"}

    # stacks resolve through the guest's kallsyms saved with the capture
    stacks = _stack_functions(cap, rows)
    assert stacks, "no sampled stack for slabwork"
    for funcs in stacks.values():
        assert all(isinstance(f, str) for f in funcs), funcs
        assert funcs[0] in plan["functions"], funcs      # innermost: the probed function
        assert OPEN_PATH & set(funcs), funcs


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmalloc_cg_1k_counts_slabwork_pipes_exactly(guest, target, tmp_path, backend):
    # pipe(): alloc_pipe_info() kcalloc()s 16 pipe_buffers (640 bytes, GFP_KERNEL_ACCOUNT) from
    # kmalloc-cg-1k; probe-checks.md found that size class exact for slabwork on both kernels.
    work, seen = slabwork(target, "pipe", str(N))
    cap = _capture(target, "kmalloc-cg-1k", work, tmp_path, backend)

    # slabkit's BPF counter reads each object's own slab: neither kernel has the
    # bpf_get_kmem_cache kfunc (6.13+), both list page_offset_base and vmemmap_base
    # (CONFIG_KALLSYMS_ALL) for the kernel's virt_to_page, checked on live events first
    by_slab = backend == "bpf"
    plan = _check_meta(cap, guest, target, "kmalloc-slab" if by_slab else "kmalloc-size-class",
                       backend)
    assert plan["alloc_events"] == ["kmem:kmalloc"] and plan["functions"] == []
    assert plan["match_bytes_alloc"] == 1024 and plan["gfp_type"] == "cg"
    if by_slab:
        assert plan["exact"] is True and "vmemmap_base" in plan["reason"], plan["reason"]
        assert plan["match_name"] == "kmalloc-cg-1k"
    elif guest.series == "6.1":
        assert plan["exact"] is True, plan["reason"]
    else:  # 6.12 has slab buckets (CONFIG_SLAB_BUCKETS) of the same size, rightly an estimate
        assert plan["exact"] is False and "memdup_user-1k" in plan["reason"], plan["reason"]

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


def test_a_slab_bucket_and_the_plain_cache_of_its_size_each_get_their_own(guest, target,
                                                                          tmp_path):
    """6.12's msgsnd allocates from the msg_msg-64 slab bucket, eventfd from kmalloc-64: one
    size class, and kmem:kmalloc does not say which. slabkit's BPF counter reads each
    object's own slab (virt_to_page through the guest kernel's vmemmap_base): exact."""
    if guest.series == "6.1":
        pytest.skip("6.1 has no slab buckets")
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
