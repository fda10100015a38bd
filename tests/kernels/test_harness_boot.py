"""Boot each stock Debian kernel once and check the harness and an exact bpftrace count.

One boot per kernel for this module (the module-scoped, parametrised ``guest`` fixture of
conftest.py). Opt-in: see conftest.py.
"""
from __future__ import annotations

import pytest

from . import harness

pytestmark = [pytest.mark.kernels, pytest.mark.timeout(1200)]

N = 1000


def test_guest_release(guest):
    r = guest.ssh("uname -r", check=True)
    assert r.stdout.strip() == guest.kernel.release
    assert guest.kernel.release.startswith(guest.series + (".0-" if guest.series == "6.1" else "."))


def test_guest_has_what_slabkits_ssh_target_runs(guest):
    # dash as /bin/sh (busybox ash would run its own find applet), GNU find -printf (cgroup map),
    # getconf PAGESIZE (slabinfo), id -u (root check), uname -n (host name); cgroup2 mounted
    r = guest.ssh("readlink /bin/sh; getconf PAGESIZE; find /sys/fs/cgroup -maxdepth 0 -printf '%i %y\\n'; "
                  "id -u; uname -n", check=True)
    assert r.stdout.split("\n")[:5] == ["/bin/dash", "4096", "1 d", "0", "slabkit-guest"], r.stdout


def _filp_program(guest) -> str:
    # 6.10+ renamed the allocation functions *_noprof; take whichever this kernel can trace.
    names = harness.guest_symbols(guest, ["kmem_cache_alloc", "kmem_cache_alloc_noprof"])
    fn = "kmem_cache_alloc_noprof" if "kmem_cache_alloc_noprof" in names else "kmem_cache_alloc"
    assert fn in names, f"neither kmem_cache_alloc nor kmem_cache_alloc_noprof is traceable: {names}"
    return f'kprobe:{fn} /str(((struct kmem_cache *)arg0)->name) == "filp"/ {{ @[pid, comm] = count(); }}'


def test_bpftrace_finds_the_kernels_btf_or_is_pointed_at_it(guest):
    # bpftrace 0.17 looks the kernel's BTF up by object id, which only 5.11+ gives it; on 5.10
    # it falls back to headers the guest lacks. slabkit's choice (harness.bpftrace_env) is
    # BPFTRACE_BTF exactly where that happens.
    from slabkit.host.facts import kernel_btf_has_id
    has_id = kernel_btf_has_id(guest.target())
    assert has_id is (guest.series != "5.10")
    plain = harness.run_bpftrace(guest, _filp_program(guest), "/usr/bin/slabwork -n open 10 /etc/hostname")
    env = harness.bpftrace_env(guest)
    if has_id:
        assert plain.returncode == 0 and env == {}, plain.stderr
    else:
        assert plain.returncode != 0 and "'linux/types.h' file not found" in plain.stderr, plain.stderr
        assert env == {"BPFTRACE_BTF": "/sys/kernel/btf/vmlinux"}


def test_filp_count_is_exact(guest):
    prog = _filp_program(guest)
    r = harness.run_bpftrace(guest, prog, f"/usr/bin/slabwork -n open {N} /etc/hostname",
                             env=harness.bpftrace_env(guest))
    assert r.returncode == 0, r.stderr
    assert r.workload_pid, r.stdout
    # The exec itself allocates one filp under comm "bpftrace" (same pid); slabwork's own opens are N.
    assert r.count_for(pid=r.workload_pid, comm="slabwork") == N, r.stdout
    assert r.count_for(pid=r.workload_pid) in (N, N + 1), r.stdout
