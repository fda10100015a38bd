"""SystemTap backend: the script, its command lines, the output parsers, and the runner.

slabkit's own script is ``slabkit.stp`` beside this module (see its header for the argument
scheme and output format). It probes the kernel's allocation functions with
``kernel.function(...)`` (kprobes plus the kernel's debuginfo, for ``$s->name``), keeps the
calls whose ``kmem_cache->name`` equals the cache given as argument ``@1``, and aggregates in
the kernel by ``[pid(), tid(), execname(), backtrace()]``.

Arguments (always all three, so the script text never depends on what the user typed)::

    stap slabkit.stp CACHE PID MS
         @1 CACHE   slab cache name (checked against a strict character set first)
         $2 PID     only this process; 0 = every process
         $3 MS      stop after this many milliseconds; 0 = until SIGINT/SIGTERM

Compile here, run there: a target with ``staprun`` (Debian: ``systemtap-runtime``) but no
``stap``, headers or debuginfo gets a module built on this machine for its kernel release::

    SLABKIT_STAP_ROOT=/srv/stap-6.1 slabkit capture filp --host root@box --backend stap
    # here:  chroot /srv/stap-6.1 stap -r 6.1.0-57-amd64 -m slabkit_<id> -p4 slabkit.stp filp 0 0
    # there: staprun /tmp/slabkit_<id>.ko   (stopped with SIGINT; the .ko is removed after)

``SLABKIT_STAP_ROOT`` is a directory holding a Linux userland with stap, the target kernel's
headers and its debug vmlinux (tests/kernels/stap_root.py builds one for Debian's 6.1); the
build runs chrooted into it, so it needs root here. ``SLABKIT_STAP_COMPILE`` is the stap
command itself, split like a shell would (default ``stap``; inside the root when both are
set); it runs in an empty working directory holding ``slabkit.stp`` and must leave
``<module>.ko`` there, as ``stap -p4 -m`` does. Either one set turns this mode on; it is also
used without them when the target lacks stap and this machine has stap and
``/lib/modules/<release>/build``. See :class:`StapBackend` and :func:`compile_argv`.

:func:`parse_classic` also reads the output of the classic ``slab.stp`` script that slabkit
replaces (``shared/reference/slab.stp``).

Limits of this backend: stap's ``backtrace()`` keeps at most ``MAXBACKTRACE`` (20) frames, and
a table of ``max_stacks`` distinct (pid, tid, comm, stack) keys; when it fills, stap stops with
"Array overflow", runs ``probe error`` (which still prints the counts so far) and
:func:`parse_stderr` reports ``overflow``. ``probe begin`` runs before the kprobes are
registered, so the capture counts as attached only at the script's ``armed`` line (format 2).
"""
from slabkit.backends.stap.backend import StapBackend, StapProgram
from slabkit.backends.stap.build import (
    CompileSettings,
    build_module,
    check_release,
    compile_argv,
    module_name,
)
from slabkit.backends.stap.classic import parse_classic, parse_classic_meta
from slabkit.backends.stap.parse import (
    parse_meta,
    parse_output,
    parse_stderr,
    parse_text,
)
from slabkit.backends.stap.program import argv, render, script_template

__all__ = ["CompileSettings", "StapBackend", "StapProgram", "argv", "build_module",
           "check_release", "compile_argv", "module_name", "parse_classic",
           "parse_classic_meta", "parse_meta", "parse_output", "parse_stderr", "parse_text", "render",
           "script_template"]
