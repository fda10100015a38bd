"""Every check of text a user types takes the whole text: a trailing newline, a NUL or a
megabyte is one clear :class:`InvalidInput` (a short, one-line message), raised at once.

``re.match`` with a pattern ending in ``$`` accepts ``"bash\\n"``: the newline then reached the
bpftrace program and the perf/ftrace filters, which matched nothing ("0 allocations
(complete)"). Each validator is also pinned at its length limits.
"""
from __future__ import annotations

import time

import pytest
from conftest import FIXTURES

from slabkit.backends.base import get_backend
from slabkit.backends.stap import build as stap_build
from slabkit.backends.stap import program as stap_program
from slabkit.errors import InvalidInput, UnknownCache
from slabkit.host import slabinfo
from slabkit.host.ssh import parse_destination
from slabkit.host.where import as_target
from slabkit.validate import check_cache_name, check_comm, check_pid, check_seconds

MEGABYTE = 1 << 20


def _stap_module(module):
    return stap_build.compile_argv("s.stp", "filp", None, None, release="6.1.0-57-amd64",
                                   module=module)


def _stap_function(name):
    return stap_program.render("filp", None, function_names=[name], param="s")


#: validator, a good value, and the three bad ones built from it
CHECKS = {
    "cache name": (check_cache_name, "dentry"),
    "comm": (check_comm, "bash"),
    "pid": (check_pid, "4242"),
    "seconds": (check_seconds, "10"),
    "ssh destination": (parse_destination, "root@lab-3:2222"),
    "kernel release": (stap_build.check_release, "6.1.0-57-amd64"),
    "stap module": (_stap_module, "slabkit_0123abcd"),
    "stap function": (_stap_function, "kmem_cache_alloc_noprof"),
    "backend": (get_backend, "bpf"),
    "cache lookup": (lambda name: slabinfo.resolve_cache(name, FIXTURES / "slabinfo"), "dentry"),
}
BAD = {
    "trailing newline": lambda good: good + "\n",
    "NUL": lambda good: good[:2] + "\0" + good[2:],
    "1 MB": lambda good: (good * (MEGABYTE // len(good) + 1))[:MEGABYTE],
}


@pytest.mark.parametrize("what", sorted(CHECKS))
def test_the_good_value_passes(what):
    check, good = CHECKS[what]
    check(good)


@pytest.mark.parametrize("how", sorted(BAD))
@pytest.mark.parametrize("what", sorted(CHECKS))
def test_a_bad_value_is_one_clear_error_at_once(what, how):
    check, good = CHECKS[what]
    value = BAD[how](good)
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        check(value)
    assert time.monotonic() - started < 1.0
    assert not isinstance(err.value, UnknownCache)        # refused before any lookup
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message[:500]


def test_a_root_folder_that_is_not_one_is_a_short_error():
    for text in ("/no/such/root\n", "/tmp\0x", "/" + "x" * MEGABYTE):
        with pytest.raises(InvalidInput) as err:
            as_target(text)
        assert len(str(err.value)) < 400


# --- limits -----------------------------------------------------------------------------------

def test_comm_is_at_most_15_characters():
    """TASK_COMM_LEN is 16 with its NUL: a 16-character filter could never match."""
    assert check_comm("a" * 15) == "a" * 15
    assert check_comm("nginx: worker p") == "nginx: worker p"      # 15, with space and colon
    for comm in ("a" * 16, "nginx: worker pr", ""):
        with pytest.raises(InvalidInput, match="15 characters at most"):
            check_comm(comm)


def test_cache_name_is_at_most_64_characters():
    assert check_cache_name("c" * 64) == "c" * 64
    with pytest.raises(InvalidInput, match="length"):
        check_cache_name("c" * 65)


def test_pid_limits_and_forms():
    assert check_pid("1") == 1 and check_pid(4194304) == 4194304 and check_pid(7.0) == 7
    for pid in ("0", 0, "4194305", "-1", " 42", "+42", "42 ", "0x10", "4_2", "٤٢", 4.5, True):
        with pytest.raises(InvalidInput):
            check_pid(pid)


def test_seconds_forms():
    assert check_seconds("2.5") == 2.5 and check_seconds(".5") == 0.5 and check_seconds(3) == 3
    for seconds in ("10 ", " 10", "1e3", "inf", "nan", "-1", "0", "١٠", float("inf"), 86401):
        with pytest.raises(InvalidInput):
            check_seconds(seconds)
