"""ftrace backend: the rendered tracefs writes (pure), the parser on recorded ``trace_pipe``
text, instance clean-up, and real captures on the live kernel against workloads of known size.

Parser expectations are derived from the raw fixture text in the test (event lines, stack
entries, LOST lines), never typed in. ``tests/fixtures/ftrace/record.py`` re-records them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, TRACEFS
from live_capture import assert_count, capture_around, pid_rows
from sshd import sshd_server  # noqa: F401  (fixture)

import slabkit
import slabkit.capturing.run as capturing
from bench.workload import Workload
from bench.workload import binary as workload_binary
from slabkit.backends import Options
from slabkit.backends._common import tracefs_filter
from slabkit.backends.ftrace import FtraceBackend, FtraceProgram
from slabkit.backends.ftrace.parse import parse_output
from slabkit.errors import ProbeFailed
from slabkit.host import tracefs
from slabkit.host.cleanup import cleanup_leftovers
from slabkit.host.facts import KernelFacts
from slabkit.host.target import LocalTarget
from slabkit.host.tracefs import remove_instance
from slabkit.plan import Plan

N = 2000
SYSCALL_PATH = {"do_sys_openat2", "__x64_sys_openat", "path_openat", "do_filp_open"}
FIX = FIXTURES / "ftrace"
# "   comm-tid   (  tgid) [cpu] flags  time: " then the event name or <stack trace>
LINE = re.compile(r"^\s*(?P<comm>.*)-(?P<tid>\d+) +\( *(?P<tgid>[\d-]+)\) \[(?P<cpu>\d+)\] "
                  r"\S+ +[\d.]+: (?P<what>kmem_cache_alloc|kmalloc|<stack trace>)(?P<rest>.*)$",
                  re.M)
TASK_LINE = re.compile(r"^\s*.*-(?P<tid>\d+) +\( *[\d-]+\) \[\d+\] \S+ +[\d.]+: "
                       r"task_(?:newtask|rename): ")


def plan_filp(**kw) -> Plan:
    return Plan(cache="filp", requested="filp", kind="dedicated", strategy="tracepoint-name",
                exact=True, reason="", alloc_events=["kmem:kmem_cache_alloc"],
                match_name="filp", match_bytes_alloc=192, **kw)


def plan_kmalloc64(**kw) -> Plan:
    return Plan(cache="kmalloc-64", requested="kmalloc-64", kind="kmalloc",
                strategy="kmalloc-size-class", exact=True, reason="",
                alloc_events=["kmem:kmalloc"], match_bytes_alloc=64, gfp_type="normal",
                gfp_forbid=0x400011, **kw)


def lines(text: str):
    return list(LINE.finditer(text))


def expected_by_tid(text: str) -> dict[int, int]:
    """Allocations per thread, the simple way: every event line, plus every stack entry whose
    line before (skipping its frames) is not an event of the same thread (its event lost).
    A task event's stack (task_newtask, task_rename) is no allocation."""
    out: dict[int, int] = {}
    prev_event_tid = None
    for line in text.splitlines():
        if line.startswith(" =>"):
            continue
        m = LINE.match(line)
        if m is None:
            t = TASK_LINE.match(line)
            prev_event_tid = ("task", int(t["tid"])) if t else None
            continue
        tid = int(m["tid"])
        if m["what"] == "<stack trace>":
            if prev_event_tid not in (tid, ("task", tid)):
                out[tid] = out.get(tid, 0) + 1
            prev_event_tid = None
        else:
            out[tid] = out.get(tid, 0) + 1
            prev_event_tid = tid
    return out


def functions_of(frames, stack_ids) -> set[str]:
    f = frames[frames["stack_id"].isin([int(s) for s in stack_ids if s >= 0])]
    return set(f["function"].dropna())


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """The parser reads ftrace.tasks.txt next to the output: give each test its own folder
    (with the fixture's own ``NAME.tasks.txt`` where it has one)."""
    dst = tmp_path / "ftrace.txt"
    shutil.copy(FIX / name, dst)
    tasks = FIX / name.replace(".txt", ".tasks.txt")
    if tasks.is_file():
        shutil.copy(tasks, tmp_path / "ftrace.tasks.txt")
    return dst


# --------------------------------------------------------------------------------------------
# render (pure)

def test_render_describes_the_instance_writes():
    facts = KernelFacts(tracefs="/sys/kernel/tracing")
    prog = FtraceBackend().render(plan_filp(pid=7, comm="slabwork"), Options(buffer_kb=4096),
                                  facts)
    assert isinstance(prog, FtraceProgram)
    assert prog.events == ["kmem/kmem_cache_alloc"] and prog.buffer_kb == 4096
    assert prog.filter == ('bytes_alloc == 192 && name == "filp" && common_pid == 7 '
                           '&& comm == "slabwork"')
    assert prog.argv == ["cat", "/sys/kernel/tracing/instances/{instance}/trace_pipe"]
    text = prog.text
    for part in ("mkdir INSTANCE", "echo 4096 > INSTANCE/buffer_size_kb",
                 "echo 1 > INSTANCE/options/record-tgid", "echo 1 > INSTANCE/options/stacktrace",
                 f"echo '{prog.filter}' > INSTANCE/events/kmem/kmem_cache_alloc/filter",
                 "echo 1 > INSTANCE/events/kmem/kmem_cache_alloc/enable",
                 "echo 1 > INSTANCE/events/task/task_newtask/enable",
                 "echo 1 > INSTANCE/events/task/task_rename/enable",
                 "cat INSTANCE/trace_pipe", "rmdir INSTANCE"):
        assert part in text, part


def test_kernel_filter_adds_the_comm():
    assert tracefs_filter(plan_kmalloc64()) == "bytes_alloc == 64 && !(gfp_flags & 0x400011)"
    assert tracefs_filter(plan_kmalloc64(comm="a b")).endswith('&& comm == "a b"')


def test_unavailable_and_unsupported_say_why(tmp_path):
    be = FtraceBackend()
    assert "tracefs is not mounted" in be.unavailable(LocalTarget(tmp_path), KernelFacts())
    kprobe = Plan(cache="filp", requested="filp", kind="dedicated", strategy="kprobe-cachep",
                  exact=True, reason="", functions=["kmem_cache_alloc"], match_name="filp")
    assert "bpftrace" in be.unsupported(kprobe, KernelFacts())
    assert be.unsupported(plan_filp(mode="outstanding"), KernelFacts())
    assert be.unsupported(plan_filp(), KernelFacts()) is None


# --------------------------------------------------------------------------------------------
# the parser, on recorded output

def test_parse_filp_pairs_each_event_with_its_stack(tmp_path):
    text = (FIX / "filp-open.txt").read_text()
    found = lines(text)
    events = [m for m in found if m["what"] != "<stack trace>"]
    stacks = [m for m in found if m["what"] == "<stack trace>"]
    assert len(events) == len(stacks) >= 150
    parsed = parse_output(copy_fixture("filp-open.txt", tmp_path), plan_filp(), {})
    got = {int(k): int(v) for k, v in parsed.allocs.groupby("tid")["count"].sum().items()}
    assert got == expected_by_tid(text)
    tgids = {int(m["tgid"]) for m in events if m["tgid"].isdigit()}
    assert set(parsed.allocs["pid"].dropna()) == tgids
    assert (parsed.allocs["stack_id"] >= 0).all()        # no event without its stack
    assert (parsed.allocs["bytes"] == parsed.allocs["count"] * 192).all()
    assert SYSCALL_PATH & functions_of(parsed.frames, parsed.allocs["stack_id"])
    # frames keep offsets and addresses (options sym-offset, sym-addr); glue frame first
    first = parsed.frames[parsed.frames["depth"] == 0]
    assert set(first["function"]) == {"trace_event_raw_event_kmem_cache_alloc"}
    assert parsed.frames["offset"].notna().all() and parsed.frames["address"].notna().all()
    assert set(parsed.frames["module"]) == {"vmlinux"}
    # one frames row per frame line of each distinct stack
    entries = re.split(r"\n(?! =>)", text)
    distinct = {e.split("\n", 1)[1] for e in entries if "<stack trace>" in e.split("\n", 1)[0]}
    assert len(parsed.frames) == sum(s.count("\n") + 1 for s in distinct)
    assert parsed.losses == {} and not parsed.estimated


def test_parse_kmalloc_sums_bytes_req(tmp_path):
    text = (FIX / "kmalloc64-eventfd.txt").read_text()
    events = [m for m in lines(text) if m["what"] == "kmalloc"]
    req = sum(int(re.search(r"bytes_req=(\d+)", m["rest"]).group(1)) for m in events)
    parsed = parse_output(copy_fixture("kmalloc64-eventfd.txt", tmp_path), plan_kmalloc64(), {})
    assert int(parsed.allocs["count"].sum()) == len(events) >= 100
    assert int(parsed.allocs["bytes_req"].sum()) == req
    assert "do_eventfd" in functions_of(parsed.frames, parsed.allocs["stack_id"])


def test_parse_with_lost_events_counts_orphans_and_notes_the_loss(tmp_path):
    text = (FIX / "filp-lost.txt").read_text()
    lost = sum(int(n) for n in re.findall(r"\[LOST (\d+) EVENTS\]", text))
    assert lost > 0
    parsed = parse_output(copy_fixture("filp-lost.txt", tmp_path), plan_filp(), {})
    got = {int(k): int(v) for k, v in parsed.allocs.groupby("tid")["count"].sum().items()}
    assert got == expected_by_tid(text)
    assert any(f"for {lost} entries" in n for n in parsed.notes)


def test_unknown_comm_and_tgid_are_filled_from_the_same_thread(tmp_path):
    """ftrace prints ``<...>-TID (-------)`` for a task's events before the kernel saved its
    comm/tgid: here the first 20 entries of a real recording are rewritten so."""
    text = (FIX / "filp-open.txt").read_text()
    m = next(m for m in lines(text) if m["what"] != "<stack trace>")
    comm, tid, tgid = m["comm"].strip(), m["tid"], m["tgid"]
    known = f"{comm}-{tid}"
    out, n = [], 0
    for line in text.splitlines():
        if n < 20 and not line.startswith(" =>") and known in line:
            line = line.replace(known, "<...>-" + tid).replace(f"({tgid.rjust(7)})", "(-------)")
            n += 1
        out.append(line)
    raw = tmp_path / "ftrace.txt"
    raw.write_text("\n".join(out) + "\n")
    assert raw.read_text().count("(-------)") == 20
    parsed = parse_output(raw, plan_filp(), {})
    assert set(parsed.allocs["pid"]) == {int(tgid)} and set(parsed.allocs["comm"]) == {comm}
    assert any("20 events" in n or "events were printed" in n for n in parsed.notes)
    # a thread printed unknown on every line: filled from ftrace.tasks.txt when present
    only = tmp_path / "only"
    only.mkdir()
    (only / "ftrace.txt").write_text(
        re.sub(r"\S+-(\d+) +\( *\d+\)", r"<...>-\1 (-------)", text))
    bare = parse_output(only / "ftrace.txt", plan_filp(), {})
    assert bare.allocs["pid"].isna().all() and bare.allocs["comm"].isna().all()
    (only / "ftrace.tasks.txt").write_text(f"# tid tgid comm\n{tid}\t{tgid}\t{comm}\n")
    filled = parse_output(only / "ftrace.txt", plan_filp(), {})
    rows = filled.allocs[filled.allocs["tid"] == int(tid)]
    assert set(rows["pid"]) == {int(tgid)} and set(rows["comm"]) == {comm}


def lifecycle_expectations(text: str) -> dict:
    """From filp-lifecycle.txt's own lines: the rename and fork, and the events around them."""
    rename = re.search(r"task_rename: pid=(\d+) oldcomm=(\S+) newcomm=(\S+)", text)
    fork = re.search(r"task_newtask: pid=(\d+) comm=(\S+) clone_flags=([0-9a-f]+)", text)
    parent, child = int(rename[1]), int(fork[1])
    out = {"parent": parent, "child": child, "old": rename[2], "new": rename[3],
           "child_comm": fork[2], "thread": int(fork[3], 16) & 0x10000, "before": 0,
           "after": 0, "kid": 0, "printed_before": set()}
    renamed = False
    for line in text.splitlines():
        if "task_rename:" in line and f"pid={parent} " in line:
            renamed = True
        m = LINE.match(line)
        if m is None or m["what"] != "kmem_cache_alloc":
            continue
        if int(m["tid"]) == parent:
            out["after" if renamed else "before"] += 1
            if not renamed:
                out["printed_before"].add(m["comm"].strip())
        elif int(m["tid"]) == child:
            out["kid"] += 1
    return out


def test_task_events_give_each_event_its_comm_and_tgid_at_event_time(tmp_path):
    """A real recording of ``slabwork lifecycle 50``: events as ``slabwork``, a rename to
    ``slabwork-b``, more events, a fork whose child allocates. ftrace printed the comm of the
    events before the rename as the comm after it (looked up later); the task events put each
    event back under the comm it had, and give the child its own tgid."""
    text = (FIX / "filp-lifecycle.txt").read_text()
    x = lifecycle_expectations(text)
    assert x["before"] == x["after"] == x["kid"] == 50 and not x["thread"]
    assert x["new"] in x["printed_before"]          # what the fix is for: printed stale
    parsed = parse_output(copy_fixture("filp-lifecycle.txt", tmp_path), plan_filp(), {})
    a = parsed.allocs
    by_comm = a[a["tid"] == x["parent"]].groupby("comm")["count"].sum().to_dict()
    assert by_comm == {x["old"]: x["before"], x["new"]: x["after"]}
    assert set(a[a["tid"] == x["parent"]]["pid"]) == {x["parent"]}
    kid = a[a["tid"] == x["child"]]
    assert set(kid["pid"]) == {x["child"]} and set(kid["comm"]) == {x["child_comm"]}
    assert int(kid["count"].sum()) == x["kid"]
    assert any("printed a comm or tgid left by an earlier task" in n for n in parsed.notes)
    # every allocation is counted once, task events and their stacks are not allocations
    assert int(a["count"].sum()) == sum(expected_by_tid(text).values())
    assert not any("were not events" in n for n in parsed.notes)


def test_a_stale_printed_comm_gives_way_to_later_lines_and_the_end_lookup(tmp_path):
    """What CI met: a task's first lines print the comm an earlier task of the same pid left
    in saved_cmdlines (``bash``); the real recording's lines are rewritten so."""
    text = (FIX / "filp-open.txt").read_text()
    m = next(m for m in lines(text) if m["what"] != "<stack trace>")
    comm, tid = m["comm"].strip(), m["tid"]
    known = f"{comm}-{tid}"
    out, n = [], 0
    for line in text.splitlines():
        if n < 20 and not line.startswith(" =>") and known in line:
            line = line.replace(known, "bash".rjust(len(comm)) + "-" + tid)
            n += 1
        out.append(line)
    first = tmp_path / "first"
    first.mkdir()
    (first / "ftrace.txt").write_text("\n".join(out) + "\n")
    parsed = parse_output(first / "ftrace.txt", plan_filp(), {})
    rows = parsed.allocs[parsed.allocs["tid"] == int(tid)]
    assert set(rows["comm"]) == {comm}                      # the thread's last printed comm
    assert any("printed a comm or tgid left by an earlier task" in n for n in parsed.notes)
    # every line stale: the lookup at the capture's end (ftrace.tasks.txt) decides
    every = tmp_path / "every"
    every.mkdir()
    (every / "ftrace.txt").write_text(text.replace(known, "bash".rjust(len(comm)) + "-" + tid))
    stale = parse_output(every / "ftrace.txt", plan_filp(), {})
    assert set(stale.allocs[stale.allocs["tid"] == int(tid)]["comm"]) == {"bash"}
    (every / "ftrace.tasks.txt").write_text(f"# tid tgid comm\n{tid}\t{m['tgid']}\t{comm}\n")
    fixed = parse_output(every / "ftrace.txt", plan_filp(), {})
    assert set(fixed.allocs[fixed.allocs["tid"] == int(tid)]["comm"]) == {comm}


# --------------------------------------------------------------------------------------------
# live: instances, captures

def our_instances() -> list[str]:
    """This process's instances (other slabkit runs on the machine have their own)."""
    mine = f"{tracefs.INSTANCE_PREFIX}{os.getpid()}-"
    return sorted(p.name for p in (TRACEFS / "instances").iterdir() if p.name.startswith(mine))


def cat_children() -> list[int]:
    """trace_pipe readers still running below this test process (under their supervisors)."""
    import procs
    return [p.pid for p in procs.descendants(os.getpid()) if p.comm == "cat" and p.state != "Z"]


def test_remove_instance_clears_enabled_events_triggers_and_filters(live):
    name = tracefs.instance_name(990)
    base = TRACEFS / "instances" / name
    ev = base / "events/kmem/kmem_cache_alloc"
    base.mkdir()
    try:
        (ev / "filter").write_text('name == "filp"')
        (ev / "trigger").write_text('stacktrace if name == "filp"')
        (ev / "enable").write_text("1")
        reader = subprocess.Popen(["cat", str(base / "trace_pipe")], stdout=subprocess.DEVNULL)
        time.sleep(0.2)
        reader.terminate()  # a reader holds the instance busy until it is gone
        remove_instance(LocalTarget(), str(TRACEFS), name)
        reader.wait()
        assert not base.exists()
        remove_instance(LocalTarget(), str(TRACEFS), name)   # gone already: no error
    finally:
        if base.exists():
            os.rmdir(base)


def test_cleanup_removes_an_instance_whose_owner_is_gone(live):
    name = f"{tracefs.INSTANCE_PREFIX}999999-12345-0"
    base = TRACEFS / "instances" / name
    base.mkdir()
    (base / "events/kmem/kmem_cache_alloc/enable").write_text("1")
    done = cleanup_leftovers(str(TRACEFS))
    assert f"removed tracefs instance {name}" in done and not base.exists()


def test_filp_count_is_exact_and_stacks_show_the_open_path(live, tmp_path):
    before = our_instances()
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="ftrace", base=tmp_path)
    rows = pid_rows(cap, w.pid)
    assert_count(cap, w.pid, N)
    assert set(cap.meta["losses"]) == {"overrun", "dropped_events"}
    assert set(rows["comm"]) == {"slabwork"}
    assert int(rows["bytes"].sum()) == N * cap.meta["slab_size"]
    assert SYSCALL_PATH & functions_of(cap.frames, rows["stack_id"])
    assert cap.meta["status"] == "interrupted" and cap.meta["backend"] == "ftrace"
    for raw in ("ftrace.txt", "ftrace.stats.txt", "ftrace.tasks.txt"):
        assert (Path(cap.path) / raw).is_file()
    assert our_instances() == before and not cat_children()
    again = slabkit.load(cap.path, reparse=True)
    assert int(pid_rows(again, w.pid)["count"].sum()) == int(rows["count"].sum())


def test_counts_per_comm_are_exact_across_a_rename_and_a_fork(live, tmp_path):
    n = 500
    with Workload("lifecycle", n, "/etc/hostname") as w:
        report: list[str] = []
        cap = capture_around("filp", lambda: report.append(w.go()), backend="ftrace",
                             base=tmp_path)
    child = int(report[0].split()[-1])
    a = cap.allocs
    parent = a[a["tid"] == w.pid]
    assert parent.groupby("comm")["count"].sum().to_dict() == {"slabwork": n, "slabwork-b": n}
    assert set(parent["pid"]) == {w.pid}
    kid = a[a["tid"] == child]
    assert set(kid["pid"]) == {child} and set(kid["comm"]) == {"slabwork-b"}
    assert int(kid["count"].sum()) == n
    assert cap.meta["lost_total"] == 0


def saved_comm(pid: int) -> str | None:
    for line in (TRACEFS / "saved_cmdlines").read_text().splitlines():
        a, _, b = line.partition(" ")
        if a == str(pid):
            return b
    return None


def test_a_reused_pid_is_not_reported_under_its_previous_tasks_comm(live, tmp_path):
    """CI once saw ``bash`` on a slabwork's first events: the kernel's saved_cmdlines still
    held an earlier task of that pid. Made on purpose here: a task named ``stalecomm``
    allocates under a capture (so its comm is saved), exits, and slabwork gets its pid."""
    stale = tmp_path / "stalecomm"
    shutil.copy(workload_binary(), stale)
    p = subprocess.Popen([str(stale), "open", "100", "/etc/hostname"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    pid = int(p.stdout.readline().split()[1])
    capture_around("filp", lambda: (p.stdin.write("go\n"), p.stdin.flush(),
                                    p.stdout.readline()),
                   backend="ftrace", base=tmp_path / "first", pid=pid)
    p.stdin.close()
    p.wait()
    assert saved_comm(pid) == "stalecomm"
    for _ in range(10):     # another fork may take the pid first: try again
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        w = Workload("open", N, "/etc/hostname")
        if w.pid == pid:
            break
        w.finish()
    assert w.pid == pid, "could not start the workload on the stale pid"
    with w:
        cap = capture_around("filp", w.go, backend="ftrace", base=tmp_path / "second",
                             pid=w.pid)
    assert_count(cap, w.pid, N)
    assert set(pid_rows(cap, w.pid)["comm"]) == {"slabwork"}
    printed = (Path(cap.path) / "ftrace.txt").read_text().count(f"stalecomm-{pid} ")
    print(f"{printed} lines printed the stale comm")


def test_kmalloc_size_class_count_is_exact_for_eventfd(live, tmp_path):
    with Workload("eventfd", N) as w:
        cap = capture_around("kmalloc-64", w.go, backend="ftrace", base=tmp_path)
    rows = pid_rows(cap, w.pid)
    assert_count(cap, w.pid, N)
    assert 0 < int(rows["bytes_req"].sum()) <= N * 64
    assert "do_eventfd" in functions_of(cap.frames, rows["stack_id"])


def test_pid_and_comm_filters_are_applied_in_the_kernel(live, tmp_path):
    with Workload("open", N, "/etc/hostname") as w, Workload("open", N, "/etc/hostname") as o:
        def both():
            w.go()
            o.go()
        cap = capture_around("filp", both, backend="ftrace", base=tmp_path / "pid", pid=w.pid)
        assert set(cap.allocs["pid"]) == {w.pid} and int(cap.allocs["count"].sum()) == N
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="ftrace", base=tmp_path / "comm",
                             comm="slabwork")
    assert_count(cap, w.pid, N)


def test_a_bad_filter_fails_with_the_kernels_error_log_and_cleans_up(live, tmp_path):
    before = our_instances()
    prep = capturing.prepare("filp", backend="ftrace")
    prep.program.filter = "no_such_field == 1"
    with pytest.raises(ProbeFailed, match="filter"):
        capturing.run_prepared(prep, 10, base=tmp_path, progress=False)
    assert our_instances() == before and not cat_children()


@pytest.mark.ssh
def test_a_capture_over_ssh_counts_exactly_and_removes_its_instance(live, sshd_server,  # noqa: F811
                                                                    tmp_path):
    from slabkit.host.ssh import SSHTarget
    before = set(p.name for p in (TRACEFS / "instances").iterdir())
    with SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options) as t:
        with Workload("open", N, "/etc/hostname") as w:
            cap = capture_around("filp", w.go, backend="ftrace", target=t, base=tmp_path)
    assert_count(cap, w.pid, N)
    assert set(cap.meta["losses"]) == {"overrun", "dropped_events"}
    # the instance is named after this (local) process and is gone from the target
    assert not [n for n in set(p.name for p in (TRACEFS / "instances").iterdir()) - before
                if n.startswith(f"{tracefs.INSTANCE_PREFIX}{os.getpid()}-")]
