"""Boot each stock Debian kernel once and check the harness and an exact bpftrace count.

One boot per kernel per session (module-scoped, parametrised fixture). Opt-in: see conftest.py.
"""
from __future__ import annotations

import os

import pytest

from . import harness

pytestmark = [pytest.mark.kernels, pytest.mark.timeout(1200)]

N = 1000


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("SLABKIT_REQUIRE_KERNELS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module", params=sorted(harness.SERIES))
def guest(request):
    if os.geteuid() != 0:
        _skip_or_fail("booting kernels needs root here (apt-get install/download of kernel packages)")
    g = harness.Guest(request.param)
    try:
        g.prepare()
    except harness.HarnessError as e:
        _skip_or_fail(f"cannot prepare kernel {request.param}: {e}")
    with g:
        yield g
    assert g.proc is None, "qemu was not reaped"


def test_guest_release(guest):
    r = guest.ssh("uname -r", check=True)
    assert r.stdout.strip() == guest.kernel.release
    assert guest.kernel.release.startswith(guest.series + (".0-" if guest.series == "6.1" else "."))


def test_filp_count_is_exact(guest):
    # 6.10+ renamed the allocation functions *_noprof; take whichever this kernel can trace.
    names = harness.guest_symbols(guest, ["kmem_cache_alloc", "kmem_cache_alloc_noprof"])
    fn = "kmem_cache_alloc_noprof" if "kmem_cache_alloc_noprof" in names else "kmem_cache_alloc"
    assert fn in names, f"neither kmem_cache_alloc nor kmem_cache_alloc_noprof is traceable: {names}"
    prog = f'kprobe:{fn} /str(((struct kmem_cache *)arg0)->name) == "filp"/ {{ @[pid, comm] = count(); }}'
    r = harness.run_bpftrace(guest, prog, f"/usr/bin/slabwork -n open {N} /etc/hostname")
    assert r.returncode == 0, r.stderr
    assert r.workload_pid, r.stdout
    # The exec itself allocates one filp under comm "bpftrace" (same pid); slabwork's own opens are N.
    assert r.count_for(pid=r.workload_pid, comm="slabwork") == N, r.stdout
    assert r.count_for(pid=r.workload_pid) in (N, N + 1), r.stdout
