"""SystemTap backend: the classic slab.stp output (real, recorded), slabkit's own format
(synthetic sample, labelled so), the rendered script and its command line."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA, FIXTURES

from slabkit import schema
from slabkit.backends import stap
from slabkit.errors import InvalidInput, ParseError

CLASSIC = FIXTURES / "stap" / "classic-size32.txt"
OWN = FIXTURES / "stap" / "synthetic-slabkit-dentry.txt"
OWN_STDERR = FIXTURES / "stap" / "synthetic-slabkit-dentry.stderr.txt"
FUNCS = ["kmem_cache_alloc", "kmem_cache_alloc_lru"]


# --- classic slab.stp output ----------------------------------------------------------------

@pytest.fixture(scope="module")
def classic():
    return stap.parse_classic(CLASSIC.read_text())


def test_sample_copy_is_the_fixture():
    assert (DATA / "samples" / "stap-classic" / "raw.txt").read_bytes() == CLASSIC.read_bytes()


def test_classic_totals_per_process_equal_the_first_section(classic):
    allocs, _ = classic
    per_comm = allocs.groupby("comm")["count"].sum().to_dict()
    assert per_comm == {"crond": 2, "ps": 2, "upsd": 1, "snmpd": 3, "httpd": 1,
                        "xfce4-panel": 1, "xfce4-cpugraph-": 11, "topfew": 4}
    assert int(allocs["count"].sum()) == 25


def test_classic_rows_printed_stacks_and_the_rest(classic):
    allocs, frames = classic
    # crond and httpd: their printed stack covers their whole total
    assert allocs[allocs.comm == "crond"][["stack_id", "count"]].values.tolist() == [[0, 2]]
    assert allocs[allocs.comm == "httpd"][["stack_id", "count"]].values.tolist() == [[1, 1]]
    # the others were elided by [...]: one stack_id -1 row each
    rest = allocs[allocs.stack_id == -1]
    assert sorted(rest.comm) == sorted(["ps", "upsd", "snmpd", "xfce4-panel", "xfce4-cpugraph-",
                                        "topfew"])
    assert sorted(frames.stack_id.unique()) == [0, 1]


def test_classic_never_invents_pid_tid_cgroup(classic):
    allocs, _ = classic
    assert allocs[["pid", "tid", "cgroup", "host", "bytes"]].isna().all().all()
    schema.validate(allocs, "allocs")


def test_classic_frames(classic):
    _, frames = classic
    schema.validate(frames, "frames")
    crond = frames[frames.stack_id == 0]
    assert crond.function.tolist() == ["kmem_cache_alloc", "ext3_readdir", "vfs_readdir",
                                       "sys_getdents", "syscall_call"]
    assert crond.module.tolist() == ["vmlinux", "ext3", "vmlinux", "vmlinux", "vmlinux"]
    assert crond.offset.tolist() == [0x2, 0x9C, 0x66, 0x5F, 0x7]
    httpd = frames[frames.stack_id == 1]
    assert len(httpd) == 15
    nat = httpd[httpd.module == "iptable_nat"].function.tolist()
    assert nat == ["ip_nat_fn", "ip_nat_local_fn"]
    last = httpd.iloc[-1]  # "0x0000000c": an address with nothing known about it
    assert last.depth == 14 and last.address == 0xC
    assert pd.isna(last.function) and pd.isna(last.module) and pd.isna(last.offset)


def test_classic_meta():
    meta = stap.parse_classic_meta(CLASSIC.read_text())
    assert meta == {"cache": "size-32", "elided": True, "complete": False, "allocs": 25}


CLASSIC_SMALL = """\
Number of dentry slab allocations by process
my prog: x:\t3
bash:\t1
Backtrace of processes when allocating
Exec: my prog: x Name: dentry  Count: 3
0xc045d717 : kmem_cache_alloc+0x2/0x4f []
0xc0470000 : d_alloc+0x1/0x10 []
-------------------------------------------------------

Exec: bash Name: dentry  Count: 1
0xc045d717 : kmem_cache_alloc+0x2/0x4f []
0xc0470000 : d_alloc+0x1/0x10 []
-------------------------------------------------------

"""


def test_classic_comm_with_spaces_and_colon_and_shared_stack():
    allocs, frames = stap.parse_classic(CLASSIC_SMALL, object_size=192)
    assert allocs[["comm", "stack_id", "count", "bytes"]].values.tolist() == [
        ["my prog: x", 0, 3, 576], ["bash", 0, 1, 192]]
    assert frames.stack_id.unique().tolist() == [0]
    assert stap.parse_classic_meta(CLASSIC_SMALL)["complete"] is True


def test_classic_inconsistent_totals_are_an_error():
    bad = CLASSIC_SMALL.replace("bash:\t1", "bash:\t0")
    with pytest.raises(ParseError, match="bash"):
        stap.parse_classic(bad)
    with pytest.raises(ParseError, match="Number of"):
        stap.parse_classic("hello\n")
    with pytest.raises(ParseError, match="comm: count"):
        stap.parse_classic("Number of x slab allocations by process\nno colon here\n")


# --- slabkit's own format -------------------------------------------------------------------

@pytest.fixture(scope="module")
def own():
    return stap.parse(OWN.read_text(), object_size=192)


def test_own_allocs(own):
    allocs, _ = own
    schema.validate(allocs, "allocs")
    assert allocs[["pid", "tid", "comm", "stack_id", "count", "bytes"]].values.tolist() == [
        [1234, 1234, "find", 0, 40, 7680],
        [812, 815, "gmain bus", 0, 7, 1344],       # comm with a space, same stack as find
        [2001, 2003, "dockerd ", 1, 5, 960],       # trailing space kept (length-prefixed)
        [77, 77, "kworker/u8:2", 2, 2, 384],
    ]
    assert allocs[["host", "cgroup"]].isna().all().all()


def test_own_frames(own):
    _, frames = own
    schema.validate(frames, "frames")
    assert frames.groupby("stack_id").size().to_dict() == {0: 12, 1: 13, 2: 8}
    s1 = frames[frames.stack_id == 1]
    assert s1.function.tolist()[:4] == ["kmem_cache_alloc_lru", "__d_alloc", "d_alloc",
                                        "ovl_lookup"]
    assert s1.module.tolist()[3] == "overlay" and s1.module.tolist()[0] == "vmlinux"
    unresolved = frames[frames.function.isna()]
    assert unresolved.module.tolist() == ["nfs"]
    assert unresolved.address.tolist() == [0xFFFFFFFFC0A1B2C3]


def test_own_without_object_size_has_no_bytes():
    allocs, _ = stap.parse(OWN.read_text())
    assert allocs["bytes"].isna().all()


def test_own_meta_and_stderr():
    meta = stap.parse_meta(OWN.read_text(), OWN_STDERR.read_text())
    assert meta["cache"] == "dentry" and meta["pid_filter"] is None
    assert meta["duration_s"] == pytest.approx(5.002)
    assert (meta["entries"], meta["allocs"], meta["how"]) == (4, 54, "end")
    assert meta["complete"] is True and meta["truncated"] is False
    assert (meta["errors"], meta["skipped"]) == (0, 3)
    assert meta["skipped_reasons"] == {"global 'slabkit_counts' lock timeout": 1,
                                       "reentrancy": 2}
    assert meta["overflow"] is False


def test_parse_stderr_overflow_and_transport():
    err = ("ERROR: Array overflow, check size limit (20000) near identifier 'slabkit_counts' "
           "at /tmp/x/slabkit.stp:33:3\n"
           "WARNING: There were 12 transport failures. Try stap -s to increase the buffer size\n"
           "WARNING: Number of errors: 1, skipped probes: 0\n"
           "WARNING: Skipped due to missed kprobe on 'kmem_cache_alloc': 4\n")
    info = stap.parse_stderr(err)
    assert info["overflow"] is True and info["errors"] == 1
    assert info["overload"] is False
    assert info["transport_failures"] == 12
    assert info["skipped_reasons"] == {"missed kprobe on 'kmem_cache_alloc'": 4}
    assert len(info["error_lines"]) == 1
    assert stap.parse_stderr("")["skipped"] == 0
    assert stap.parse_stderr("ERROR: probe overhead exceeded threshold\n")["overload"] is True


def test_own_comm_with_newline_and_truncated_output():
    text = ("slabkit-stap stack count=3 pid=1 tid=1 comm=5:ab\ncd\n"
            " 0xffffffff8134e5a1 : kmem_cache_alloc+0x11/0x2d0 [kernel]\n"
            "slabkit-stap end-stack\n"
            "slabkit-stap stack count=2 pid=2 tid=2 comm=1:x\n"
            " 0xffffffff8134e5a1 : kmem_cache_alloc+0x11/0x2d0 [kernel]\n")
    allocs, _ = stap.parse(text)
    assert allocs.comm.tolist() == ["ab\ncd", "x"]
    assert allocs.stack_id.tolist() == [0, 0]
    meta = stap.parse_meta(text)
    assert meta["truncated"] is True and meta["complete"] is False and meta["how"] is None


def test_own_error_end_is_not_complete():
    text = OWN.read_text().replace("done how=end", "done how=error")
    assert stap.parse_meta(text)["complete"] is False


def test_own_rejects_foreign_lines():
    with pytest.raises(ParseError) as e:
        stap.parse("slabkit-stap begin format=1 pid_filter=0 ms=0 cache=x\nhello world\n")
    assert e.value.lineno == 2
    with pytest.raises(ParseError, match="not closed"):
        stap.parse("slabkit-stap stack count=1 pid=1 tid=1 comm=1:x\n"
                   "slabkit-stap stack count=1 pid=1 tid=1 comm=1:y\n")


# --- the script and its command line --------------------------------------------------------

def test_render_keeps_user_values_out_of_the_script():
    text = stap.render("kmalloc-rnd-01-64", 10, function_names=FUNCS, param="s")
    assert "kmalloc-rnd-01-64" not in text
    # the text does not depend on the cache or the duration at all: both travel as arguments
    assert text == stap.render("dentry", None, function_names=FUNCS, param="s")
    assert 'kernel.function("kmem_cache_alloc"),' in text
    assert 'kernel.function("kmem_cache_alloc_lru")' in text
    assert "kernel_string($s->name, \"\") != @1" in text
    assert "global slabkit_counts[20000]" in text
    assert "@@" not in text.split("\n", 5)[-1]  # every marker filled (the header names them)
    old = stap.render("dentry", None, function_names=["kmem_cache_alloc"], param="cachep",
                      max_stacks=500)
    assert "$cachep->name" in old and "[500]" in old


@pytest.mark.parametrize("kwargs", [
    {"function_names": [], "param": "s"},
    {"function_names": ['kmem_cache_alloc") { system("x'], "param": "s"},
    {"function_names": ["kmem_cache_alloc*"], "param": "s"},
    {"function_names": FUNCS, "param": "s->name"},
    {"function_names": FUNCS, "param": "s", "max_stacks": 0},
])
def test_render_rejects_bad_identifiers(kwargs):
    with pytest.raises(InvalidInput):
        stap.render("dentry", 1, **kwargs)


def test_render_rejects_bad_cache_and_duration():
    with pytest.raises(InvalidInput):
        stap.render('dentry"); exit(); ("', 1, function_names=FUNCS, param="s")
    with pytest.raises(InvalidInput):
        stap.render("dentry", -1, function_names=FUNCS, param="s")


def test_argv():
    assert stap.argv("/c/slabkit.stp", "dentry", 10) == [
        "stap", "-DMAXSKIPPED=1000000", "/c/slabkit.stp", "dentry", "0", "10000"]
    assert stap.argv(Path("/c/s.stp"), "kmalloc-64", None, pid=4321, last_pass=1) == [
        "stap", "-DMAXSKIPPED=1000000", "-p1", "/c/s.stp", "kmalloc-64", "4321", "0"]
    assert stap.argv("s.stp", "dentry", 0.0004)[-1] == "1"  # never 0 (= run forever)
    with pytest.raises(InvalidInput):
        stap.argv("s.stp", "dentry", 1, pid=-3)
    with pytest.raises(InvalidInput):
        stap.argv("s.stp", "den try", 1)
    with pytest.raises(InvalidInput):
        stap.argv("s.stp", "dentry", 1, last_pass=9)


def _fake_kernel_tree(root: Path) -> Path:
    """Just enough of a kernel build tree for stap's pass 1 (parsing) to start."""
    (root / "include" / "config").mkdir(parents=True)
    (root / "include" / "config" / "kernel.release").write_text("6.1.0-slabkit-test\n")
    (root / ".config").write_text("CONFIG_KPROBES=y\n")
    (root / "Module.symvers").write_text("")
    return root


@pytest.mark.parametrize("seconds, timer", [(10, True), (None, False)])
def test_stap_parses_the_rendered_script(tmp_path, seconds, timer):
    exe = shutil.which("stap")
    if not exe:
        pytest.skip("systemtap is not installed (apt-get install systemtap)")
    script = tmp_path / "slabkit.stp"
    script.write_text(stap.render("dentry", seconds, function_names=FUNCS, param="s"))
    cmd = stap.argv(script, "dentry", seconds, pid=42, last_pass=1)
    cmd[1:1] = ["-r", str(_fake_kernel_tree(tmp_path / "kbuild"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    tree = res.stdout  # stap -p1 prints the parse tree with the arguments substituted
    assert 'kernel_string($s->name, "")) != ("dentry")' in tree
    assert "((pid()) != (42))" in tree
    assert ("probe timer.ms(10000)" in tree) is timer
    assert "foreach ([p, t, c, bt] in slabkit_counts @count-)" in tree


def test_stap_rejects_a_broken_script(tmp_path):
    """The check above can fail: a syntax error is caught by the same pass."""
    exe = shutil.which("stap")
    if not exe:
        pytest.skip("systemtap is not installed (apt-get install systemtap)")
    script = tmp_path / "broken.stp"
    script.write_text(stap.render("dentry", 1, function_names=FUNCS, param="s")
                      .replace("probe end {", "probe end {{"))
    cmd = stap.argv(script, "dentry", 1, last_pass=1)
    cmd[1:1] = ["-r", str(_fake_kernel_tree(tmp_path / "kbuild"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
