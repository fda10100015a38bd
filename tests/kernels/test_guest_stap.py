"""SystemTap, the classic tool, for real on Debian's 6.1 kernel: slabkit's own stap script,
compiled here for the guest's kernel and loaded there with ``staprun``, through slabkit's stap
backend over SSH, its output parsed into the same tables, with exact counts for the workload.

How: tests/kernels/stap_root.py builds (once, cached) a debootstrap'd bookworm root with
``systemtap``, ``linux-headers-<release>``, the patched runtime and the kernel's debug vmlinux and
System.map, and boots the 6.1 guest with ``staprun``/``stapio`` appended to its initramfs. The
capture is ``slabkit.capture("filp", backend="stap", host=guest.target())`` with
``SLABKIT_STAP_ROOT`` pointing at the root (and ``SLABKIT_STAP_COMPILE="stap -DSTP_NO_OVERLOAD"``):
the backend builds ``slabkit_<id>.ko`` with ``stap -r <release> -p4`` chrooted into it, copies it
to the guest, runs ``staprun`` and stops it with SIGINT after ``slabwork -n open 1000
/etc/hostname`` ran.

Doubly opt-in: like every kernel test (tests/kernels named, ``-m kernels`` or
``SLABKIT_KERNELS=1``), and because the first run downloads ~1 GB (the -dbg package is 859 MB)
and builds a 1.2 GB root, only when this file is named on the command line or
``SLABKIT_STAP=1``::

    .venv/bin/pytest tests/kernels/test_guest_stap.py

``SLABKIT_STAP_RECORD=1`` also copies the run's raw stap output to
tests/fixtures/stap/real-6.1-filp.txt (the parser fixture of tests/test_stap.py).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from live_capture import capture_around

from slabkit.backends import stap as stap_backend

from . import harness, stap_root
from .conftest import skip_or_fail

pytestmark = [pytest.mark.kernels, pytest.mark.timeout(2400)]

N = 1000
HERE = Path(__file__).resolve()
FIXTURE = HERE.parents[1] / "fixtures" / "stap" / "real-6.1-filp.txt"
#: 6.1's kmem_cache_alloc* functions (tests/fixtures/kernels/6.1.0-57-amd64/kallsyms-filtered.txt)
ALLOC_FUNCTIONS = {"kmem_cache_alloc", "kmem_cache_alloc_lru", "kmem_cache_alloc_node"}
#: functions one of which an open(2) filp allocation's stack passes through
OPEN_PATH = {"path_openat", "do_filp_open", "do_sys_openat2", "__x64_sys_openat", "alloc_empty_file"}


def _named(config) -> bool:
    return any(Path(a.split("::")[0]).resolve() == HERE for a in config.args)


@pytest.fixture(scope="module")
def stap_guest(request):
    if not (os.environ.get("SLABKIT_STAP") == "1" or _named(request.config)):
        pytest.skip("the SystemTap guest test downloads ~1 GB: name tests/kernels/test_guest_stap.py "
                    "or set SLABKIT_STAP=1")
    if os.geteuid() != 0:
        skip_or_fail("the stap compile root needs root here (debootstrap, chroot)")
    t = time.monotonic()
    try:
        g, root = stap_root.stap_guest("6.1")
    except harness.HarnessError as e:
        skip_or_fail(f"cannot prepare the 6.1 guest with SystemTap: {e}")
    g.timings["prepare_s"] = time.monotonic() - t
    with g:
        yield g, root
    assert g.proc is None, "qemu was not reaped"


def test_filp_counts_slabwork_opens_exactly_through_staprun(stap_guest, tmp_path, monkeypatch):
    guest, root = stap_guest
    for k, v in stap_root.slabkit_env(root).items():
        monkeypatch.setenv(k, v)
    # stap's overload guard ends a session whose probes take over half of a CPU's cycles in a
    # second; under TCG on a loaded 2-core host the emulated kprobe traps alone may (one early
    # run's report was incomplete after 25 stacks, most likely this), so the test builds
    # without it, through the SLABKIT_STAP_COMPILE setting (run inside the root).
    monkeypatch.setenv("SLABKIT_STAP_COMPILE", "stap -DSTP_NO_OVERLOAD")
    target = guest.target()
    seen: dict = {}

    def work() -> None:
        r = target.run(["/usr/bin/slabwork", "-n", "open", str(N), "/etc/hostname"], timeout=300)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert lines[0].startswith("pid ") and lines[-1] == f"done {N}", r.stdout
        seen["pid"] = int(lines[0].split()[1])

    t = time.monotonic()
    # the module is built when the capture starts (cold: ~50 s), so allow the attach its time
    cap = capture_around("filp", work, backend="stap", target=target, base=tmp_path, seconds=1200,
                         settle_s=1.0, attach_timeout_s=900)
    wall = time.monotonic() - t

    meta = cap.meta
    assert meta["backend"] == "stap" and meta["kernel_release"] == guest.release
    assert meta["host"] == target.name
    plan = meta["plan"]
    assert plan["strategy"] == "kprobe-cachep" and plan["match_name"] == "filp"
    assert set(plan["functions"]) == ALLOC_FUNCTIONS
    for fn in plan["functions"]:
        assert f'kernel.function("{fn}")' in meta["program"]
    assert meta["argv"][0] == "staprun" and meta["argv"][1].endswith(".ko")
    assert any("built here in the root" in n for n in meta["notes"]), meta["notes"]
    assert meta["losses"] == {}, meta["losses"]

    folder = Path(cap.path)
    raw = (folder / "stap.out").read_text()
    stderr = (folder / "stap.stderr").read_text()
    info = stap_backend.parse_meta(raw, stderr)
    assert info["armed"] and info["complete"] and info["cache"] == "filp", (info, stderr, raw[-3000:])
    build = json.loads((folder / "stap.build.json").read_text())
    assert build["release"] == guest.release and build["root"] == str(root)
    assert build["argv"][:6] == ["stap", "-DSTP_NO_OVERLOAD", "-r", guest.release, "-m",
                                 build["module"]]

    a = cap.allocs[cap.allocs["comm"] == "slabwork"]
    assert set(a["pid"]) == {seen["pid"]}, sorted(set(a["pid"]))
    assert int(a["count"].sum()) == N, cap.allocs.groupby("comm")["count"].sum().to_dict()

    ids = {int(s) for s in a["stack_id"] if s >= 0}
    assert ids, "no stack for slabwork"
    fr = cap.frames[cap.frames["stack_id"].isin(ids)].sort_values(["stack_id", "depth"])
    for sid, g in fr.groupby("stack_id"):
        funcs = list(g["function"])
        assert funcs[0] in ALLOC_FUNCTIONS, funcs          # innermost: the probed function
        assert OPEN_PATH & set(funcs), funcs
        assert set(g["module"].dropna()) == {"vmlinux"}, g[["function", "module"]]

    result = {"release": guest.release, "capture_wall_s": round(wall, 1),
              "build_s": build["build_seconds"], "module_bytes": build["module_bytes"],
              "timings": {k: round(v, 1) for k, v in guest.timings.items()},
              "root": stap_root.root_info(guest.release)}
    (tmp_path / "stap-guest-result.json").write_text(json.dumps(result, indent=2))
    print("stap guest result:", json.dumps(result, indent=2))
    if os.environ.get("SLABKIT_STAP_RECORD") == "1":
        shutil.copyfile(folder / "stap.out", FIXTURE)
        shutil.copyfile(folder / "stap.stderr", FIXTURE.with_suffix(".stderr.txt"))
