"""Real captures with bpftrace on the live kernel, checked against workloads of known size."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool, skip_or_fail
from live_capture import (
    assert_losses_match_the_raw_output,
    capture_around,
    kernel_struct_size,
    pid_rows,
)

import slabkit
from bench.workload import Workload
from slabkit.backends import Options
from slabkit.errors import UnknownCache

N = 3000
SYSCALL_PATH = {"do_sys_openat2", "__x64_sys_openat", "path_openat", "do_filp_open"}


@pytest.fixture
def bpftrace(live):
    require_tool("bpftrace")


def functions_of(cap, stack_ids):
    f = cap.frames[cap.frames["stack_id"].isin(list(stack_ids))]
    return set(f["function"].dropna())


def test_filp_count_is_exact_and_stacks_show_the_open_path(bpftrace, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="bpftrace", base=tmp_path, options=Options(stack_sample=1))
    rows = pid_rows(cap, w.pid)
    assert int(rows["count"].sum()) == N
    assert set(rows["comm"]) == {"slabwork"}
    assert int(rows["bytes"].sum()) == N * cap.meta["slab_size"]
    assert SYSCALL_PATH & functions_of(cap, rows["stack_id"])
    assert cap.meta["status"] == "interrupted" and cap.meta["lost_total"] == 0
    assert cap.meta["plan"]["strategy"] == "tracepoint-name"
    # what was saved loads back the same
    again = slabkit.load(cap.path)
    assert int(pid_rows(again, w.pid)["count"].sum()) == N
    assert len(again.frames) == len(cap.frames)


def test_sampled_stacks_keep_exact_counts_per_process(bpftrace, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="bpftrace", base=tmp_path, options=Options(stack_sample=16))
    rows = pid_rows(cap, w.pid)
    assert int(rows["count"].sum()) == N
    assert cap.meta["estimated_stacks"] is True
    assert any("sampled 1 in 16" in n for n in cap.meta["notes"])
    assert SYSCALL_PATH & functions_of(cap, rows["stack_id"][rows["stack_id"] >= 0])


def test_dentry_from_lookups_of_missing_names(bpftrace, tmp_path):
    with Workload("stat", N, str(tmp_path)) as w:
        cap = capture_around("dentry", w.go, backend="bpftrace", base=tmp_path / "caps")
    assert int(pid_rows(cap, w.pid)["count"].sum()) == N


def test_kmalloc_size_class_count_is_exact_for_eventfd(bpftrace, tmp_path):
    with Workload("eventfd", N) as w:
        cap = capture_around("kmalloc-64", w.go, backend="bpftrace", base=tmp_path,
                             options=Options(stack_sample=1))
    rows = pid_rows(cap, w.pid)
    assert int(rows["count"].sum()) == N
    assert cap.meta["plan"]["strategy"] == "kmalloc-size-class"
    assert int(rows["bytes_req"].sum()) > 0 and int(rows["bytes_req"].sum()) <= N * 64
    # eventfd's kmalloc(sizeof(*ctx)): the struct's size from the kernel's BTF, each time
    assert int(rows["bytes_req"].sum()) == N * kernel_struct_size("eventfd_ctx")
    assert "do_eventfd" in functions_of(cap, rows["stack_id"])


#: caches a slabwork mode allocates exactly one object from per operation: mode, its path
DRIVEN = {"UNIX": ("socket", None), "filp": ("open", "/etc/hostname"), "dentry": ("stat", "")}


def merged_cache_slabwork_drives() -> tuple[str, str, str | None]:
    """(cache, slabwork mode, path) of a cache slabwork allocates from that is merged on the
    running kernel: its /sys/kernel/slab entry is a symlink to a shared ``:flags-size``
    folder (here UNIX shares one with UNIX-STREAM and signal_cache; filp is merged with
    io_kiocb on 5.10)."""
    for cache, (mode, path) in DRIVEN.items():
        if (Path("/sys/kernel/slab") / cache).is_symlink():
            return cache, mode, path
    skip_or_fail(f"none of the caches slabwork allocates from ({', '.join(DRIVEN)}) is merged "
                 "on this kernel")
    raise AssertionError("unreachable")


def test_a_merged_cache_is_captured_through_its_alias(bpftrace, tmp_path):
    cache, mode, path = merged_cache_slabwork_drives()
    resolved = slabkit.resolve_cache(cache)
    assert resolved.aliases, f"{cache} is merged but has no aliases"
    # ask for a name the kernel does not report allocations under
    alias = cache if resolved.name != cache else resolved.aliases[0]
    prep = slabkit.prepare(alias, backend="bpftrace")
    assert prep.plan.cache == resolved.name and prep.plan.requested == alias
    assert f'"{prep.plan.cache}"' in prep.program.text
    with Workload(mode, N, str(tmp_path) if path == "" else path) as w:
        cap = capture_around(alias, w.go, backend="bpftrace", base=tmp_path / "caps")
    assert cap.meta["cache"] == resolved.name and cap.meta["requested"] == alias
    assert any("merged into" in n for n in cap.meta["notes"])
    assert int(pid_rows(cap, w.pid)["count"].sum()) == N


def test_pid_filter_sees_only_that_process(bpftrace, tmp_path):
    with Workload("open", N, "/etc/hostname") as w, Workload("open", N, "/etc/hostname") as other:
        def both():
            w.go()
            other.go()
        cap = capture_around("filp", both, backend="bpftrace", base=tmp_path, pid=w.pid)
    assert set(cap.allocs["pid"]) == {w.pid}
    assert int(cap.allocs["count"].sum()) == N


def test_unknown_cache_lists_close_matches(live):
    with pytest.raises(UnknownCache, match="did you mean.*'filp'"):
        slabkit.prepare("flip")


def test_a_full_stack_map_is_not_reported_as_lost_events():
    """bpftrace says on which program line a map update failed: a full ``@c`` loses events,
    a full ``@first``/``@s``/``@w`` only loses stacks (the exact counts are intact)."""
    from slabkit.backends import Options
    from slabkit.backends.bpftrace import _split_helper_errors, render_program
    from slabkit.plan import Plan
    plan = Plan(cache="filp", requested="filp", kind="dedicated", strategy="tracepoint-name",
                exact=True, reason="", alloc_events=["kmem:kmem_cache_alloc"], match_name="filp")
    program = render_program(plan, Options(stack_sample=32))
    lines = program.splitlines()
    at_c = next(i for i, l in enumerate(lines, 1) if "@c[" in l)
    at_first = next(i for i, l in enumerate(lines, 1) if "@first[tid, comm] = 1" in l)
    errors = {"map_update_elem_failed": 5, f"map_update_elem_failed@{at_c}": 2,
              f"map_update_elem_failed@{at_first}": 3}
    losses, stacks = _split_helper_errors(errors, program, plan)
    assert losses == {"map_updates_failed": 2}
    assert stacks == {"stack_map_updates_failed": 3}
    # output without line numbers: every failure is a loss (the safe side)
    assert _split_helper_errors({"map_update_elem_failed": 5}, program, plan) == (
        {"map_updates_failed": 5}, {})


def test_full_maps_on_the_live_kernel_are_reported_by_kind(bpftrace, tmp_path):
    """map_keys=16 with 40 processes allocating: @c fills (events lost, WARNING) and the stack
    maps fill (stacks lost, said separately); nothing is silently dropped."""
    def spawn_many():
        for _ in range(40):
            subprocess.run(["/bin/true"], check=True)
    cap = capture_around("filp", spawn_many, backend="bpftrace", base=tmp_path, options=Options(map_keys=16))
    assert cap.meta["losses"].get("map_updates_failed", 0) > 0
    assert cap.meta["stack_losses"].get("stack_map_updates_failed", 0) > 0
    assert any("events were not counted" in n for n in cap.meta["notes"])
    assert any("stack map was full" in n for n in cap.meta["notes"])
    # by value: the helper errors bpftrace printed, split by the program line that failed
    assert_losses_match_the_raw_output(cap)
    at_c = next(i for i, line in enumerate(cap.meta["program"].splitlines(), 1) if "@c[" in line)
    errors = [json.loads(line) for line in (Path(cap.path) / "bpftrace.jsonl").read_text()
              .splitlines() if '"helper_error"' in line]
    on_c = sum(1 for e in errors if e.get("line") == at_c)
    assert cap.meta["losses"] == {"map_updates_failed": on_c}
    assert cap.meta["stack_losses"] == {"stack_map_updates_failed": len(errors) - on_c}
    assert any(f"({on_c} failed updates): events were not counted" in n
               for n in cap.meta["notes"])


def test_a_probe_that_cannot_attach_fails_with_bpftraces_message(bpftrace, tmp_path):
    # this kernel has no kprobes: bpftrace cannot attach one, and exits before BEGIN
    from slabkit.capturing import run as capturing
    from slabkit.errors import ProbeFailed
    prep = slabkit.prepare("filp", backend="bpftrace")
    prep.program.argv[-1] += "\nkprobe:vfs_read { @x = count(); }\n"
    with pytest.raises(ProbeFailed) as e:
        capturing.run_prepared(prep, 30, base=tmp_path, progress=False)
    err = e.value
    assert err.message == "bpftrace exited before its probe was attached"
    assert err.returncode not in (0, None)
    assert "ERROR: Error attaching probe: 'kprobe:vfs_read'" in err.tail
    assert err.stderr.strip().endswith(err.tail[-1])
    assert "available_filter_functions" in err.hint     # what to do
    lines = str(err).splitlines()
    assert lines[0].startswith("bpftrace exited before its probe was attached (exit code")
    assert lines[0].endswith(err.hint)
    assert "    ERROR: Error attaching probe: 'kprobe:vfs_read'" in lines
    assert err.raw_path == str(next(tmp_path.iterdir()))
    saved = (tmp_path / err.raw_path / "bpftrace.stderr").read_text()
    assert all(line in saved for line in err.tail)     # the whole stderr stays in the folder


FIXTURES = Path(__file__).parent / "fixtures" / "bpftrace"


@pytest.mark.parametrize("series, cache, by_first_frame", [
    ("5.10", "filp", {"kmem_cache_alloc_bulk": 1600, "kmem_cache_alloc": 200}),
    ("6.1", "filp", {"kmem_cache_alloc_bulk": 1600, "kmem_cache_alloc": 200}),
    ("6.12", "io_kiocb", {"kmem_cache_alloc_bulk_noprof": 1600}),
])
def test_bulk_allocations_parse_into_rows_with_their_entry_stacks(series, cache, by_first_frame):
    """Real output of guest captures of io_kiocb (merged into filp on 5.10 and 6.1) around
    `slabwork iouring 200` (tests/kernels/test_guest_captures.py, SLABKIT_KERNELS_RECORD=1):
    200 bulk calls of 8, each counted at its return under the stack taken at its entry, and,
    where io_kiocb shares filp, the 200 ring files the kprobes counted."""
    from slabkit.backends.bpftrace import parse_output
    from slabkit.plan import Plan
    meta = json.loads((FIXTURES / f"bulk-{series}-meta.json").read_text())
    meta["kallsyms_path"] = f"bulk-{series}-kallsyms.txt.gz"
    plan = Plan.from_json(meta["plan"])
    (bulk_fn,) = plan.bulk_functions
    assert plan.cache == cache and bulk_fn in by_first_frame
    parsed = parse_output(FIXTURES / f"bulk-{series}-bpftrace.jsonl", plan, meta)
    assert any(n.startswith(f"1600 objects came from 200 bulk allocations ({bulk_fn}")
               for n in parsed.notes), parsed.notes
    work = parsed.allocs[parsed.allocs["comm"] == "slabwork"]
    inner = parsed.frames[parsed.frames["depth"] == 0].set_index("stack_id")["function"]
    assert work.groupby(work["stack_id"].map(inner))["count"].sum().to_dict() == by_first_frame
    bulk_ids = set(inner[inner == bulk_fn].index)
    callers = set(parsed.frames[parsed.frames["stack_id"].isin(bulk_ids)]["function"])
    assert "__do_sys_io_uring_enter" in callers, callers   # io_uring_enter(2) submitting


def test_bpftrace_017_on_5_10_without_btf_gets_advice_that_names_the_fix():
    """The real stderr of bpftrace 0.17 on Debian 11's 5.10 without BPFTRACE_BTF."""
    from slabkit.errors import ProbeFailed
    stderr = (FIXTURES / "bpftrace-0.17-linux-5.10-no-btf.stderr").read_text()
    err = ProbeFailed("bpftrace exited before its probe was attached", returncode=1,
                      stderr=stderr)
    assert "BPFTRACE_BTF=/sys/kernel/btf/vmlinux" in err.hint
    assert err.tail == [stderr.strip()]
