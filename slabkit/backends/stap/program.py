"""slabkit's SystemTap script (``slabkit.stp``) and the stap command lines that run it.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from slabkit.errors import InvalidInput, shown
from slabkit.validate import check_cache_name, check_pid, check_seconds

SCRIPT_NAME = "slabkit.stp"
#: files a stap capture writes in its folder
RAW = "stap.out"
STDERR_FILE = "stap.stderr"
SCRIPT_FILE = "slabkit.stp"
BUILD_LOG = "stap.build.log"
BUILD_INFO = "stap.build.json"
#: distinct (pid, tid, comm, stack) keys the script's table holds (stap preallocates them)
DEFAULT_MAX_STACKS = 20000
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,511}")  # fullmatch; KSYM_NAME_LEN is 512
#: stap stops a session after 100 skipped probes (MAXSKIPPED) by default; slabkit counts
#: skipped probes as losses (:func:`parse_stderr`) instead of throwing the capture away.
#: The overload guard (a probe using too much CPU) stays on. Every probe may run at most
#: MAXACTION_INTERRUPTIBLE statements (default 10000); the end probe's listing takes about 20
#: per stack (print_stack), so the default cut it after ~460 stacks (seen on 6.1 with 400
#: short-lived processes): raised to cover DEFAULT_MAX_STACKS stacks of 20 frames.
DEFINES = ("-DMAXSKIPPED=1000000", "-DMAXACTION_INTERRUPTIBLE=4000000")


def script_template() -> str:
    """The text of ``slabkit.stp`` with its ``@@...@@`` markers unfilled."""
    return resources.files(__package__).joinpath(SCRIPT_NAME).read_text()


def render(cache: str, seconds: float | None, *, function_names: Sequence[str], param: str,
           max_stacks: int = DEFAULT_MAX_STACKS) -> str:
    """slabkit's SystemTap script for one capture.

    ``function_names``: the kernel allocation functions to probe, as the plan found them on
    this kernel, e.g. ``["kmem_cache_alloc", "kmem_cache_alloc_lru"]`` (5.18-6.9) or
    ``["kmem_cache_alloc_noprof", "kmem_cache_alloc_lru_noprof"]`` (6.10+).
    ``param``: the name of their ``struct kmem_cache *`` parameter: ``"s"`` on 6.1,
    ``"cachep"`` on older kernels.

    ``cache`` and ``seconds`` are checked here but are NOT written into the script: they are
    passed as arguments by :func:`argv` (``@1`` and ``$3``), as is the pid filter (``$2``).
    Raises :class:`~slabkit.errors.InvalidInput` for a bad name, duration or size.
    """
    check_cache_name(cache)
    if seconds is not None:
        check_seconds(seconds)
    names = list(function_names)
    if not names:
        raise InvalidInput("no kernel allocation function to probe (function_names is empty)")
    for name in [*names, param]:
        if not isinstance(name, str) or not _IDENT.fullmatch(name):
            raise InvalidInput(f"{shown(name)} is not a kernel identifier (letters, digits, _)")
    if isinstance(max_stacks, bool) or not isinstance(max_stacks, int) \
            or not 1 <= max_stacks <= 1_000_000:
        raise InvalidInput(f"max_stacks must be an integer in 1..1000000, not {max_stacks!r}")
    points = ",\n      ".join(f'kernel.function("{n}")' for n in names)
    return (script_template()
            .replace("@@MAX_STACKS@@", str(max_stacks))
            .replace("@@PROBE_POINTS@@", points)
            .replace("@@PARAM@@", param))


def argv(script_path: str | Path, cache: str, seconds: float | None, pid: int | None = None,
         *, last_pass: int | None = None, stap: str = "stap") -> list[str]:
    """The command line that runs ``script_path`` (from :func:`render`) for ``cache``.

    ``seconds=None`` runs until the tracer is sent SIGINT; ``pid`` traces one process.
    ``last_pass`` (1-5) stops stap after that pass (``-p``): 1 parses the script, 4 builds the
    module without loading it.

    >>> argv("/tmp/c/slabkit.stp", "dentry", 10)     # doctest: +NORMALIZE_WHITESPACE
    ['stap', '-DMAXSKIPPED=1000000', '-DMAXACTION_INTERRUPTIBLE=4000000', '/tmp/c/slabkit.stp',
     'dentry', '0', '10000']
    """
    check_cache_name(cache)
    ms = 0 if seconds is None else max(1, round(check_seconds(seconds) * 1000))
    pid_arg = 0 if pid is None else check_pid(pid)
    cmd = [stap, *DEFINES]
    if last_pass is not None:
        if last_pass not in (1, 2, 3, 4, 5):
            raise InvalidInput(f"last_pass must be 1..5, not {last_pass!r}")
        cmd.append(f"-p{last_pass}")
    return [*cmd, str(script_path), cache, str(pid_arg), str(ms)]


