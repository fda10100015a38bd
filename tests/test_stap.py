"""SystemTap backend: the classic slab.stp output (real, recorded), slabkit's own format (real,
recorded on Debian's 6.1 kernel by tests/kernels/test_guest_stap.py; plus a synthetic sample,
labelled so, for what that run cannot show: comms with spaces, module frames, losses), the
rendered script, its command lines, and the settings of "compile here, run there"."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import FIXTURES, SAMPLES, tables

from slabkit.backends import stap
from slabkit.errors import InvalidInput, ParseError, ProbeFailed
from slabkit.host.facts import KernelFacts
from slabkit.host.target import LocalTarget
from slabkit.model import schema

CLASSIC = FIXTURES / "stap" / "classic-size32.txt"
REAL = FIXTURES / "stap" / "real-6.1-filp.txt"
REAL_STDERR = FIXTURES / "stap" / "real-6.1-filp.stderr.txt"
OWN = FIXTURES / "stap" / "synthetic-slabkit-dentry.txt"
OWN_STDERR = FIXTURES / "stap" / "synthetic-slabkit-dentry.stderr.txt"
FUNCS = ["kmem_cache_alloc", "kmem_cache_alloc_lru"]


# --- classic slab.stp output ----------------------------------------------------------------

@pytest.fixture(scope="module")
def classic():
    return tables(stap.parse_classic(CLASSIC.read_text()))


def test_sample_copy_is_the_fixture():
    assert (SAMPLES / "stap-classic" / "raw.txt").read_bytes() == CLASSIC.read_bytes()


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
    allocs, frames = tables(stap.parse_classic(CLASSIC_SMALL, object_size=192))
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


# --- slabkit's own format, real: staprun on Debian 6.1 (6.1.0-57-amd64) --------------------
# slabkit.capture("filp", backend="stap") over SSH while `slabwork -n open 1000 /etc/hostname`
# ran in the guest; the module was built on the host in the stap root (tests/kernels/stap_root.py).

@pytest.fixture(scope="module")
def real():
    return tables(stap.parse_text(REAL.read_text(), object_size=256, path=str(REAL)))


def test_real_counts_are_exact_for_the_workload(real):
    allocs, _ = real
    schema.validate(allocs, "allocs")
    assert len(allocs) == 26 and int(allocs["count"].sum()) == 1083  # = the done line
    work = allocs[allocs.comm == "slabwork"]
    assert work[["pid", "tid", "stack_id", "count", "bytes"]].values.tolist() == [
        [753, 753, 0, 1000, 256000]]
    # the exec that became slabwork opened its binary while still named "sh" (same pid)
    assert allocs[(allocs.pid == 753) & (allocs.comm == "sh")]["count"].tolist() == [1]
    assert allocs.groupby("comm")["count"].sum().to_dict() == {
        "cat": 2, "sh": 51, "slabwork": 1000, "sshd": 30}
    assert allocs[["host", "cgroup"]].isna().all().all()
    assert (allocs["count"].diff().dropna() <= 0).all()  # printed most allocations first


def test_real_frames_resolve_to_the_open_path(real):
    allocs, frames = real
    schema.validate(frames, "frames")
    assert frames.stack_id.nunique() == allocs.stack_id.nunique() == 5
    assert set(frames.module) == {"vmlinux"}  # "[kernel]" in stap's output
    assert frames.function.notna().all() and frames.offset.notna().all()
    s0 = frames[frames.stack_id == 0].sort_values("depth")
    # stap's unwinder repeats the last frame on this kernel; kept as printed
    assert s0.function.tolist() == [
        "kmem_cache_alloc", "__alloc_file", "alloc_empty_file", "path_openat", "do_filp_open",
        "do_sys_openat2", "__x64_sys_openat", "do_syscall_64", "entry_SYSCALL_64_after_hwframe",
        "entry_SYSCALL_64_after_hwframe"]
    assert s0.offset.tolist()[:3] == [0x0, 0x23, 0x3D]
    assert s0.address.tolist()[0] == 0xFFFFFFFF8272BB10
    # exec's open of the binary and pipe2 are other stacks of the same cache
    fns = frames.groupby("stack_id")["function"].apply(set)
    assert any("bprm_execve" in f for f in fns) and any("create_pipe_files" in f for f in fns)


def test_real_meta_and_stderr():
    meta = stap.parse_meta(REAL.read_text(), REAL_STDERR.read_text())
    assert meta["cache"] == "filp" and meta["pid_filter"] is None
    assert (meta["entries"], meta["allocs"], meta["how"]) == (26, 1083, "end")
    assert meta["armed"] is True and meta["complete"] is True and meta["truncated"] is False
    assert meta["duration_s"] == pytest.approx(2.111)
    assert (meta["errors"], meta["skipped"], meta["transport_failures"]) == (0, 0, 0)
    assert meta["error_lines"] == [] and meta["overflow"] is False


# --- slabkit's own format, synthetic (cases the real run does not show) ----------------------

@pytest.fixture(scope="module")
def own():
    return tables(stap.parse_text(OWN.read_text(), object_size=192))


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
    allocs, _ = tables(stap.parse_text(OWN.read_text()))
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
    allocs, _ = tables(stap.parse_text(text))
    assert allocs.comm.tolist() == ["ab\ncd", "x"]
    assert allocs.stack_id.tolist() == [0, 0]
    meta = stap.parse_meta(text)
    assert meta["truncated"] is True and meta["complete"] is False and meta["how"] is None


def test_own_error_end_is_not_complete():
    text = OWN.read_text().replace("done how=end", "done how=error")
    assert stap.parse_meta(text)["complete"] is False


def test_own_rejects_foreign_lines():
    with pytest.raises(ParseError) as e:
        stap.parse_text("slabkit-stap begin format=1 pid_filter=0 ms=0 cache=x\nhello world\n")
    assert e.value.lineno == 2
    with pytest.raises(ParseError, match="not closed"):
        stap.parse_text("slabkit-stap stack count=1 pid=1 tid=1 comm=1:x\n"
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
        "stap", "-DMAXSKIPPED=1000000", "-DMAXACTION_INTERRUPTIBLE=4000000", "/c/slabkit.stp",
        "dentry", "0", "10000"]
    assert stap.argv(Path("/c/s.stp"), "kmalloc-64", None, pid=4321, last_pass=1) == [
        "stap", "-DMAXSKIPPED=1000000", "-DMAXACTION_INTERRUPTIBLE=4000000", "-p1", "/c/s.stp",
        "kmalloc-64", "4321", "0"]
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


# --- compile here, run there ------------------------------------------------------------------

FACTS_61 = {"release": "6.1.0-57-amd64", "kprobes": True, "modules": True,
            "functions": {"kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node"}}
PLAN = SimpleNamespace(cache="filp", pid=None, comm=None, kind="dedicated",
                       functions=["kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node"])


class _Target(LocalTarget):
    """This machine, with chosen programs missing and staprun replaced by a fake."""

    def __init__(self, programs=("staprun",), fake_staprun=None):
        super().__init__("/")
        self.programs = set(programs)
        self.fake_staprun = fake_staprun
        self.started: list[list[str]] = []

    def which(self, program):
        return f"/usr/bin/{program}" if program in self.programs else None

    def start(self, argv, *, stdout, stderr, env=None, teardown=None):
        self.started.append(list(argv))
        assert argv[0] == "staprun" and self.fake_staprun
        return super().start([sys.executable, str(self.fake_staprun), *argv[1:]],
                             stdout=stdout, stderr=stderr, env=env, teardown=teardown)


@pytest.mark.parametrize("release", ["6.1.0-57-amd64", "6.12.117+deb12-amd64",
                                     "5.14.0-427.13.1.el9_4.x86_64", "6.8.0-1012-aws", "4.19.0~rc1"])
def test_check_release_accepts_uname_r(release):
    assert stap.check_release(release) == release


@pytest.mark.parametrize("release", ["", "-r", "--help", "/lib/modules/x", "../6.1", "6.1 x",
                                     "6.1;id", "$(id)", "6.1\n", "x" * 200, None, 61])
def test_check_release_refuses_anything_else(release):
    with pytest.raises(InvalidInput):
        stap.check_release(release)


def test_compile_argv():
    assert stap.compile_argv("slabkit.stp", "filp", None, 42, release="6.1.0-57-amd64",
                             module="slabkit_0123abcd", stap=["/opt/st/bin/stap", "-v"]) == [
        "/opt/st/bin/stap", "-v", "-r", "6.1.0-57-amd64", "-m", "slabkit_0123abcd",
        "-DMAXSKIPPED=1000000", "-DMAXACTION_INTERRUPTIBLE=4000000", "-p4", "slabkit.stp", "filp",
        "42", "0"]
    with pytest.raises(InvalidInput):
        stap.compile_argv("s.stp", "filp", None, None, release="6.1; id", module="slabkit_x")
    with pytest.raises(InvalidInput):
        stap.compile_argv("s.stp", "filp", None, None, release="6.1.0", module="bad-name")
    with pytest.raises(InvalidInput):
        stap.compile_argv("s.stp", "fi lp", None, None, release="6.1.0", module="slabkit_x")
    assert stap.module_name().startswith("slabkit_") and len(stap.module_name()) == 20


def test_compile_settings_from_env(tmp_path):
    plain = stap.CompileSettings.from_env({})
    assert plain == stap.CompileSettings(stap=("stap",), root=None, configured=False)
    s = stap.CompileSettings.from_env({"SLABKIT_STAP_COMPILE": "'/opt/my stap/stap' --poison-cache",
                                       "SLABKIT_STAP_ROOT": str(tmp_path)})
    assert s.stap == ("/opt/my stap/stap", "--poison-cache") and s.root == str(tmp_path)
    assert s.configured
    with pytest.raises(InvalidInput, match="SLABKIT_STAP_COMPILE"):
        stap.CompileSettings.from_env({"SLABKIT_STAP_COMPILE": "stap 'unclosed"})
    assert "not an existing absolute directory" in stap.CompileSettings(
        root="relative/dir", configured=True).problem()
    assert "not installed here" in stap.CompileSettings(
        stap=("no-such-stap-here",), configured=True).problem()


@pytest.mark.skipif(os.geteuid() != 0, reason="a stap root is used chrooted: root only")
def test_compile_settings_root_needs_stap_inside(tmp_path):
    s = stap.CompileSettings(root=str(tmp_path), configured=True)
    assert "not installed in SLABKIT_STAP_ROOT" in s.problem()
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "stap").write_text("")
    assert s.problem() is None


def test_unavailable_refuses_this_kind_of_kernel_whatever_is_configured(tmp_path):
    facts = KernelFacts(release="6.18.0", kprobes=False, modules=False, tracers={"stap": "4.8"})
    why = stap.StapBackend(stap.CompileSettings(stap=(sys.executable,), configured=True)
                           ).unavailable(_Target(), facts)
    assert "kprobes and loadable modules" in why and "6.18.0" in why


def test_unavailable_with_and_without_a_compile_setting():
    configured = stap.StapBackend(stap.CompileSettings(stap=(sys.executable,), configured=True))
    unset = stap.StapBackend(stap.CompileSettings())
    no_stap = KernelFacts(**FACTS_61, tracers={"stap": None})
    with_stap = KernelFacts(**FACTS_61, tracers={"stap": "4.8"})
    assert configured.unavailable(_Target(), no_stap) is None
    assert "systemtap-runtime" in configured.unavailable(_Target(programs=()), no_stap)
    assert unset.unavailable(_Target(programs=("stap", "staprun")), with_stap) is None
    why = unset.unavailable(_Target(), no_stap)  # staprun there, no build tree for 6.1 here
    assert "SLABKIT_STAP_ROOT" in why and "6.1.0-57-amd64" in why
    bad = KernelFacts(**{**FACTS_61, "release": "6.1;id"}, tracers={"stap": None})
    assert "uname -r" in configured.unavailable(_Target(), bad)


def test_render_compile_mode_and_stap_mode():
    configured = stap.StapBackend(stap.CompileSettings(stap=("stap",), root="/srv/r",
                                                       configured=True))
    prog = configured.render(PLAN, None, KernelFacts(**FACTS_61, tracers={"stap": None}))
    assert prog.argv == ["staprun", f"/tmp/{prog.module}.ko"]
    assert prog.build_argv[:5] == ["stap", "-r", "6.1.0-57-amd64", "-m", prog.module]
    assert prog.build_argv[-4:] == ["slabkit.stp", "filp", "0", "0"]
    assert prog.build_root == "/srv/r" and prog.release == "6.1.0-57-amd64"
    assert 'kernel.function("kmem_cache_alloc_node")' in prog.text
    there = stap.StapBackend(stap.CompileSettings()).render(
        PLAN, None, KernelFacts(**FACTS_61, tracers={"stap": "4.8"}))
    assert there.argv[0] == "stap" and not there.build_argv


FAKE_STAP = r'''
import os, sys
args = sys.argv[1:]
module = args[args.index("-m") + 1]
script = open(args[-4]).read()
assert "slabkit-stap begin" in script, "the script is in the working directory"
if os.environ.get("FAKE_STAP_FAIL"):
    sys.stderr.write("semantic error: no match\n")
    sys.exit(1)
with open(module + ".ko", "wb") as f:
    f.write(b"\x7fELF fake module " + " ".join(args).encode())
print(module + ".ko")
'''

FAKE_STAPRUN = r'''
import signal, sys
assert open(sys.argv[1], "rb").read().startswith(b"\x7fELF fake module"), sys.argv
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
lines = open(sys.argv[2] if len(sys.argv) > 2 else %r).read().splitlines(True)
sys.stdout.write("".join(lines[:2]))   # begin, armed
sys.stdout.flush()
signal.sigwait({signal.SIGINT})        # stopped: print the counts, as stap's end probe does
sys.stdout.write("".join(lines[2:]))
'''


def test_build_module_here_and_its_failure(tmp_path, monkeypatch):
    fake = tmp_path / "fake_stap.py"
    fake.write_text(FAKE_STAP)
    text = stap.render("filp", None, function_names=FUNCS, param="s")
    cmd = stap.compile_argv("slabkit.stp", "filp", None, None, release="6.1.0-57-amd64",
                            module="slabkit_feed", stap=[sys.executable, str(fake)])
    data, done = stap.build_module(text, cmd, "slabkit_feed")
    assert data.startswith(b"\x7fELF fake module -r 6.1.0-57-amd64 -m slabkit_feed")
    assert done.stdout.strip() == "slabkit_feed.ko"
    monkeypatch.setenv("FAKE_STAP_FAIL", "1")
    with pytest.raises(ProbeFailed, match="could not build") as e:
        stap.build_module(text, cmd, "slabkit_feed")
    assert "semantic error: no match" in e.value.stderr
    assert not list(Path(tempfile.gettempdir()).glob("slabkit-stap-*/slabkit.stp"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_build_module_in_a_root(tmp_path):
    """The command runs chrooted, in a fresh directory under the root's /tmp (static busybox
    stands in for the root's userland)."""
    busybox = Path("/bin/busybox")
    if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:4096]:
        pytest.skip("needs a static /bin/busybox (busybox-static)")
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "stap").write_text(
        "#!/bin/busybox sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = -m ] && m=$2; shift; done\n'
        '/bin/busybox test -f slabkit.stp || exit 3\n'
        '/bin/busybox pwd > "$m.ko"\n')
    (root / "usr" / "bin" / "stap").chmod(0o755)
    cmd = stap.compile_argv("slabkit.stp", "filp", None, None, release="6.1.0-57-amd64",
                            module="slabkit_beef")
    data, _ = stap.build_module("probe begin {}", cmd, "slabkit_beef", root=str(root))
    assert data.decode().startswith("/tmp/slabkit-stap-")  # its cwd, seen from inside
    assert list((root / "tmp").iterdir()) == []            # and removed afterwards


def test_run_builds_copies_stapruns_and_cleans_up(tmp_path, monkeypatch):
    """The whole "compile here, run there" path of StapBackend.run/parse, with a fake stap
    (writes a .ko) and a fake staprun (replays the real 6.1 output, its counts on SIGINT)."""
    from slabkit.backends.control import RunControl
    fake_stap = tmp_path / "fake_stap.py"
    fake_stap.write_text(FAKE_STAP)
    fake_staprun = tmp_path / "fake_staprun.py"
    fake_staprun.write_text(FAKE_STAPRUN % str(REAL))
    backend = stap.StapBackend(stap.CompileSettings(stap=(sys.executable, str(fake_stap)),
                                                    configured=True))
    target = _Target(fake_staprun=fake_staprun)
    facts = KernelFacts(**FACTS_61, tracers={"stap": None})
    assert backend.unavailable(target, facts) is None
    prog = backend.render(PLAN, None, facts)
    folder = tmp_path / "capture"
    folder.mkdir()
    result = backend.run(target, prog, folder, RunControl(0.5, progress=False))
    assert target.started == [prog.argv]
    assert result.end_reason == "duration" and result.returncode == 0 and result.losses == {}
    assert not os.path.exists(prog.argv[1])  # the module file is removed from the target
    assert set(result.raw_files) >= {"stap.out", "stap.build.log", "stap.build.json"}
    assert (folder / "stap.out").read_text() == REAL.read_text()
    info = json.loads((folder / "stap.build.json").read_text())
    assert info["module"] == prog.module and info["release"] == "6.1.0-57-amd64"
    parsed = backend.parse(folder, PLAN, {"slab_size": 256})
    assert int(parsed.allocs["count"].sum()) == 1083
    assert "built here for 6.1.0-57-amd64" in parsed.notes[0]


def test_parse_reports_a_listing_cut_by_an_error(tmp_path):
    """What the end probe left when MAXACTION stopped it half way (seen on 6.1 before the
    limit was raised): the blocks printed are kept, the capture says it is incomplete."""
    lines = REAL.read_text().splitlines(True)
    cut = "".join(lines[:30])  # inside the third block, no done line
    (tmp_path / "stap.out").write_text(cut)
    (tmp_path / "stap.stderr").write_text(
        "ERROR: MAXACTION exceeded near identifier 'tokenize' at /usr/share/systemtap/tapset/"
        "linux/context-symbols.stp:267:24\nWARNING: Number of errors: 1, skipped probes: 0\n")
    parsed = stap.StapBackend(stap.CompileSettings()).parse(tmp_path, PLAN, {})
    assert parsed.losses == {"report_truncated": 1}
    assert "MAXACTION exceeded" in parsed.notes[0]
    assert parsed.allocs["count"].tolist()[:2] == [1000, 12]
    meta = stap.parse_meta(cut)
    assert meta["truncated"] and not meta["complete"] and meta["how"] is None
