"""perf backend: the rendered command (pure), the parser on recorded ``perf script`` output,
and real captures on the live kernel checked against workloads of known size.

Parser expectations are derived from the raw fixture text in the test (header lines, LOST
lines, frame lines), never typed in. ``tests/fixtures/perf/record.py`` re-records them.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, require_tool
from live_capture import assert_count, capture_around, pid_rows
from sshd import sshd_server  # noqa: F401  (fixture)

import slabkit
import slabkit.capturing.run as capturing
from bench.workload import Workload
from slabkit.backends import Options
from slabkit.backends.perf import PerfBackend, mmap_pages, parse_output, render_argv
from slabkit.errors import ProbeFailed
from slabkit.host.facts import KernelFacts
from slabkit.plan import Plan

N = 2000
SYSCALL_PATH = {"do_sys_openat2", "__x64_sys_openat", "path_openat", "do_filp_open"}
FIX = FIXTURES / "perf"
# "comm pid/tid kmem:EVENT: [trace]" (comm may hold spaces; pid is padded)
HEADER = re.compile(r"^(?P<comm>.*?) +(?P<pid>\d+)/(?P<tid>\d+) +kmem:(?P<event>\w+):(?P<trace>.*)$",
                    re.M)


def plan_filp(**kw) -> Plan:
    return Plan(cache="filp", requested="filp", kind="dedicated", strategy="tracepoint-name",
                exact=True, reason="", alloc_events=["kmem:kmem_cache_alloc"],
                match_name="filp", match_bytes_alloc=192, **kw)


def plan_kmalloc64(**kw) -> Plan:
    return Plan(cache="kmalloc-64", requested="kmalloc-64", kind="kmalloc",
                strategy="kmalloc-size-class", exact=True, reason="",
                alloc_events=["kmem:kmalloc"], match_bytes_alloc=64, gfp_type="normal",
                gfp_forbid=0x400011, **kw)


def facts(perf: str | None = "6.1.192") -> KernelFacts:
    return KernelFacts(release="6.18.44", tracefs="/sys/kernel/tracing",
                       tracers={"perf": perf}, page_size=4096)


def blocks(text: str) -> list[str]:
    return [b for b in text.split("\n\n") if b.strip()]


def by_pid(allocs) -> dict[int, int]:
    return {int(k): int(v) for k, v in allocs.groupby("pid")["count"].sum().items()}


def functions_of(frames, stack_ids) -> set[str]:
    f = frames[frames["stack_id"].isin([int(s) for s in stack_ids if s >= 0])]
    return set(f["function"].dropna())


# --------------------------------------------------------------------------------------------
# render (pure)

def test_render_filters_in_the_kernel_and_samples_1_in_n_with_no_period():
    argv = render_argv(plan_filp(pid=42, comm="slab work"), Options(sample_every=10,
                                                                    buffer_kb=1000), "6.1.192")
    i = argv.index("--filter")
    assert argv[i - 2:i] == ["-e", "kmem:kmem_cache_alloc"]
    assert argv[i + 1] == ('bytes_alloc == 192 && name == "filp" && common_pid == 42 '
                           '&& comm == "slab work"')
    assert argv[argv.index("-c") + 1] == "10" and "--no-period" in argv
    assert argv[argv.index("-m") + 1] == "256"          # 1000 KB -> 250 pages -> 2^8
    assert argv[-2:] == ["-o", "{folder}/perf.data"]
    assert {"-a", "-g", "--kernel-callchains", "-B"} <= set(argv)
    assert argv[argv.index("-D") + 1] == "1"            # "Events enabled" is the attach signal


def test_render_without_sampling_and_for_an_old_perf():
    argv = render_argv(plan_filp(), Options(), "5.4.0")
    assert "-c" not in argv and "--no-period" not in argv
    assert "-D" not in argv                              # no "Events enabled" before 5.9
    assert "--kernel-callchains" in argv                 # 5.3+


def test_render_program_text_shows_record_and_script():
    prog = PerfBackend().render(plan_kmalloc64(), Options(), facts())
    assert prog.text.startswith("perf record -e kmem:kmalloc --filter ")
    assert "'bytes_alloc == 64 && !(gfp_flags & 0x400011)'" in prog.text
    assert "perf script -i '{folder}/perf.data' -F trace:comm,pid,tid,event,trace," in prog.text
    assert prog.env == {"LC_ALL": "C"}
    # dedicated caches need no trace field (identical blocks per thread and stack)
    assert ",trace," not in " ".join(PerfBackend().render(plan_filp(), Options(),
                                                          facts()).script_argv)


def test_mmap_pages_is_a_power_of_two():
    assert [mmap_pages(kb) for kb in (1, 4, 8192, 8000, 3)] == [1, 1, 2048, 2048, 1]


def test_unavailable_and_unsupported_say_why():
    be = PerfBackend()
    assert "apt-get install linux-perf" in be.unavailable(None, facts(None))
    assert be.unavailable(None, facts()) is None
    kprobe = Plan(cache="filp", requested="filp", kind="dedicated", strategy="kprobe-cachep",
                  exact=True, reason="", functions=["kmem_cache_alloc"], match_name="filp")
    assert "kprobe" in be.unsupported(kprobe, facts()) and "bpftrace" in be.unsupported(
        kprobe, facts())
    assert be.unsupported(plan_filp(mode="outstanding"), facts())
    assert be.unsupported(plan_filp(), facts()) is None


# --------------------------------------------------------------------------------------------
# the parser, on recorded output

def test_parse_filp_counts_every_header_line_by_process():
    text = (FIX / "filp-open.script.txt").read_text()
    expected: dict[int, int] = {}
    for m in HEADER.finditer(text):
        expected[int(m["pid"])] = expected.get(int(m["pid"]), 0) + 1
    parsed = parse_output(FIX / "filp-open.script.txt", plan_filp(), {})
    assert by_pid(parsed.allocs) == expected and sum(expected.values()) >= 150
    assert (parsed.allocs["bytes"] == parsed.allocs["count"] * 192).all()
    assert parsed.allocs["cgroup"].isna().all()
    assert parsed.losses == {"lost_samples": 0} and not parsed.estimated
    # every stack starts at the allocator and reaches the open syscall path
    first = parsed.frames[parsed.frames["depth"] == 0]
    firsts = {re.match(r"\t[0-9a-f]+ ([^+]+)\+", b.split("\n")[1]).group(1)
              for b in blocks(text)}
    assert set(first["function"]) == firsts
    assert SYSCALL_PATH & functions_of(parsed.frames, parsed.allocs["stack_id"])
    assert set(parsed.frames["module"]) == {"vmlinux"}
    assert (parsed.frames["address"] >= 0xffff000000000000).all()
    # one frames row per frame line of each distinct stack
    distinct = {b.split("\n", 1)[1] for b in blocks(text)}
    assert len(parsed.frames) == sum(s.count("\n") + 1 for s in distinct)


def test_parse_kmalloc_sums_bytes_req_from_the_trace_fields():
    text = (FIX / "kmalloc64-eventfd.script.txt").read_text()
    heads = list(HEADER.finditer(text))
    req = sum(int(re.search(r"bytes_req=(\d+)", m["trace"]).group(1)) for m in heads)
    parsed = parse_output(FIX / "kmalloc64-eventfd.script.txt", plan_kmalloc64(), {})
    assert int(parsed.allocs["count"].sum()) == len(heads) >= 120
    assert int(parsed.allocs["bytes_req"].sum()) == req
    assert (parsed.allocs["bytes"] == parsed.allocs["count"] * 64).all()
    assert "do_eventfd" in functions_of(parsed.frames, parsed.allocs["stack_id"])


def test_parse_drops_the_user_space_frames_after_the_kernel_ones():
    text = (FIX / "filp-user-callchain.script.txt").read_text()
    assert "/slabwork)" in text or "libc" in text, "fixture should hold user frames"
    kernel_lines = {len(re.findall(r"^\tffff[0-9a-f]{12} ", b, re.M)) for b in blocks(text)}
    parsed = parse_output(FIX / "filp-user-callchain.script.txt", plan_filp(), {})
    depths = parsed.frames.groupby("stack_id")["depth"].max() + 1
    assert set(depths) <= kernel_lines
    assert set(parsed.frames["module"]) == {"vmlinux"}
    assert int(parsed.allocs["count"].sum()) == len(HEADER.findall(text))


def test_parse_reports_lost_samples_from_perf_record_lost_lines():
    text = (FIX / "filp-lost.script.txt").read_text()
    lost = sum(int(n) for n in re.findall(r"PERF_RECORD_LOST lost (\d+)", text))
    assert lost > 0
    parsed = parse_output(FIX / "filp-lost.script.txt", plan_filp(), {})
    assert parsed.losses == {"lost_samples": lost}
    assert int(parsed.allocs["count"].sum()) == len(HEADER.findall(text))


def test_parse_scales_sampled_counts_back():
    plain = parse_output(FIX / "filp-open.script.txt", plan_filp(), {})
    sampled = parse_output(FIX / "filp-open.script.txt", plan_filp(),
                           {"options": {"sample_every": 10}})
    assert int(sampled.allocs["count"].sum()) == 10 * int(plain.allocs["count"].sum())
    assert sampled.estimated and any("1 event in 10" in n for n in sampled.notes)


def test_parse_is_fast_on_many_events(tmp_path):
    """The text of many events parses in seconds: identical blocks are counted at C speed."""
    body = "\n\n".join(blocks((FIX / "filp-open.script.txt").read_text())) + "\n\n"
    per = len(blocks(body))
    copies = 200_000 // per + 1
    big = tmp_path / "perf.script.txt"
    big.write_text(body * copies)
    t = time.perf_counter()
    parsed = parse_output(big, plan_filp(), {})
    took = time.perf_counter() - t
    assert int(parsed.allocs["count"].sum()) == per * copies
    assert took < 5.0, f"{per * copies} events took {took:.1f} s"


# --------------------------------------------------------------------------------------------
# live captures

@pytest.fixture
def perf(live):
    require_tool("perf")


def test_filp_count_is_exact_and_stacks_show_the_open_path(perf, tmp_path):
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="perf", base=tmp_path)
    rows = pid_rows(cap, w.pid)
    assert_count(cap, w.pid, N)
    assert set(rows["comm"]) == {"slabwork"}
    assert int(rows["bytes"].sum()) == N * cap.meta["slab_size"]
    assert SYSCALL_PATH & functions_of(cap.frames, rows["stack_id"])
    assert cap.meta["status"] == "interrupted" and cap.meta["backend"] == "perf"
    assert set(cap.meta["losses"]) == {"lost_samples"}
    for raw in ("perf.data", "perf.script.txt", "perf.record.log"):
        assert (Path(cap.path) / raw).is_file()
    assert "Events enabled" in cap.meta["tracer_stderr"]
    # saved tables load back, and re-parsing the raw text gives the same counts
    again = slabkit.load(cap.path)
    assert int(pid_rows(again, w.pid)["count"].sum()) == int(rows["count"].sum())
    re_parsed = slabkit.load(cap.path, reparse=True)
    assert int(pid_rows(re_parsed, w.pid)["count"].sum()) == int(rows["count"].sum())


def test_kmalloc_size_class_count_is_exact_for_eventfd(perf, tmp_path):
    with Workload("eventfd", N) as w:
        cap = capture_around("kmalloc-64", w.go, backend="perf", base=tmp_path)
    rows = pid_rows(cap, w.pid)
    assert_count(cap, w.pid, N)
    assert cap.meta["plan"]["strategy"] == "kmalloc-size-class"
    assert 0 < int(rows["bytes_req"].sum()) <= N * 64
    assert "do_eventfd" in functions_of(cap.frames, rows["stack_id"])


def test_pid_and_comm_filters_are_applied_in_the_kernel(perf, tmp_path):
    with Workload("open", N, "/etc/hostname") as w, Workload("open", N, "/etc/hostname") as o:
        def both():
            w.go()
            o.go()
        cap = capture_around("filp", both, backend="perf", base=tmp_path / "pid", pid=w.pid)
        assert set(cap.allocs["pid"]) == {w.pid} and int(cap.allocs["count"].sum()) == N
    with Workload("open", N, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="perf", base=tmp_path / "comm",
                             comm="slabwork")
    assert set(cap.allocs["comm"]) == {"slabwork"}
    assert_count(cap, w.pid, N)


def test_sampling_scales_counts_back_and_marks_them_estimated(perf, tmp_path):
    with Workload("open", N * 5, "/etc/hostname") as w:
        cap = capture_around("filp", w.go, backend="perf", base=tmp_path, options=Options(sample_every=10))
    got = int(pid_rows(cap, w.pid)["count"].sum())
    assert got % 10 == 0 and abs(got - N * 5) <= N * 5 // 10, got
    assert cap.meta["estimated_stacks"] is True
    assert "--no-period" in cap.meta["argv"]


def test_a_bad_filter_fails_with_perfs_message(perf, tmp_path):
    prep = capturing.prepare("filp", backend="perf")
    i = prep.program.argv.index("--filter")
    prep.program.argv[i + 1] = "no_such_field == 1"
    with pytest.raises(ProbeFailed, match="failed to set filter"):
        capturing.run_prepared(prep, 10, base=tmp_path, progress=False)


@pytest.mark.ssh
def test_a_capture_over_ssh_counts_exactly_and_leaves_nothing_on_the_target(perf, sshd_server,  # noqa: F811
                                                                           tmp_path):
    from slabkit.host.ssh import SSHTarget
    before = set(Path("/tmp").glob("slabkit-perf.*"))
    with SSHTarget(sshd_server.destination, ssh_options=sshd_server.client_options) as t:
        with Workload("open", N, "/etc/hostname") as w:
            cap = capture_around("filp", w.go, backend="perf", target=t, base=tmp_path)
    assert_count(cap, w.pid, N)
    assert (Path(cap.path) / "perf.script.txt").is_file()
    assert not (Path(cap.path) / "perf.data").exists()   # it was written on the target
    assert set(Path("/tmp").glob("slabkit-perf.*")) == before
