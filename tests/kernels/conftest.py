"""Kernel-matrix tests: boot Debian's stock kernels under QEMU and test through SSH.

They are opt-in, because each kernel boot costs ~10-20 s of 2 emulated CPUs and the first run
downloads ~180 MB of kernel packages: they run when tests/kernels is named on the command line
(``make test-kernels``, ``.venv/bin/pytest tests/kernels -q``), with ``-m kernels``, or with
``SLABKIT_KERNELS=1``; a plain ``pytest`` over the whole tree skips them with that reason.
Where they run but cannot (not root, no apt, download failure) they skip with the reason, or
fail where ``SLABKIT_REQUIRE_KERNELS=1``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from . import harness

HERE = Path(__file__).resolve().parent

# The harness cache holds extracted kernel packages and guest root trees (some with their own
# test files, e.g. a Python's test suite): never collect them.
collect_ignore = ["cache"]


def pytest_configure(config):
    config.addinivalue_line("markers", "kernels: boots real kernels under QEMU (opt-in: make test-kernels)")


def _opted_in(config) -> bool:
    if os.environ.get("SLABKIT_KERNELS") == "1" or os.environ.get("SLABKIT_REQUIRE_KERNELS") == "1":
        return True
    if "kernels" in (config.getoption("markexpr", "") or ""):
        return True
    for arg in config.args:
        p = Path(arg.split("::")[0]).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    if _opted_in(config):
        return
    skip = pytest.mark.skip(reason="kernel-matrix tests are opt-in: make test-kernels (or pytest tests/kernels)")
    for item in items:
        if "kernels" in item.keywords:
            item.add_marker(skip)


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``, or fail where ``SLABKIT_REQUIRE_KERNELS=1`` (CI that must run them)."""
    if os.environ.get("SLABKIT_REQUIRE_KERNELS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session", params=sorted(harness.SERIES))
def guest(request):
    """One booted :class:`harness.Guest` per kernel series for the whole run (powered off after)."""
    if os.geteuid() != 0:
        skip_or_fail("booting kernels needs root here (apt-get install/download of kernel packages)")
    g = harness.Guest(request.param)
    try:
        g.prepare()
    except harness.HarnessError as e:
        skip_or_fail(f"cannot prepare kernel {request.param}: {e}")
    with g:
        yield g
    assert g.proc is None, "qemu was not reaped"
