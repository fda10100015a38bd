"""The stap backend: build or compile the module, load it on the target, read its output.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from slabkit.backends import Backend, Program
from slabkit.backends.stap.build import (
    ENV_COMPILE,
    ENV_ROOT,
    RELEASE_RE,
    CompileSettings,
    build_module,
    check_release,
    compile_argv,
    module_name,
)
from slabkit.backends.stap.parse import ARMED, parse_output, parse_stderr
from slabkit.backends.stap.program import (
    BUILD_INFO,
    BUILD_LOG,
    RAW,
    SCRIPT_FILE,
    STDERR_FILE,
    argv,
    render,
)
from slabkit.errors import InvalidInput, ProbeFailed

# --------------------------------------------------------------------------------------------
# the backend: run slabkit.stp through stap on the target, or build here and staprun there



@dataclass
class StapProgram(Program):
    """A stap :class:`~slabkit.backends.Program`; in "compile here" mode ``build_argv`` builds
    the module on this machine (in ``build_root``) and ``argv`` is the ``staprun`` that loads
    it on the target."""

    build_argv: list[str] = field(default_factory=list)
    build_root: str | None = None
    module: str | None = None
    release: str | None = None


class StapBackend(Backend):
    """SystemTap on kernels with kprobes and loadable modules (the classic tool's home).

    Two ways to run, chosen per target:

    * **stap on the target** (it has ``stap``, the kernel's headers and debuginfo): the script
      is written there and run with the cache, pid filter and duration as arguments.
    * **compile here, run there**: the module is built on this machine for the target's kernel
      (``stap -r RELEASE -p4 -m slabkit_<id>``, see :func:`compile_argv`), copied to the target
      and loaded with ``staprun``, which is all the target needs (Debian:
      ``systemtap-runtime``). Used when ``SLABKIT_STAP_COMPILE`` (the stap command, split like a
      shell would) or ``SLABKIT_STAP_ROOT`` (a chroot with stap, the target kernel's headers
      and debuginfo; needs root here) is set, or when the target has ``staprun`` but no
      ``stap`` and this machine has ``stap`` and ``/lib/modules/RELEASE/build``.

    Either way stap is stopped with SIGINT, which runs the script's ``end`` probe that prints
    the aggregated stacks, and the same output is parsed.
    """

    name = "stap"
    streaming = False
    modes = ("allocs",)
    package = "systemtap"

    def __init__(self, settings: CompileSettings | None = None):
        self._settings = settings

    @property
    def settings(self) -> CompileSettings:
        return self._settings if self._settings is not None else CompileSettings.from_env()

    def _compile_here(self, facts) -> bool:
        return self.settings.configured or not facts.tracers.get("stap")

    def unavailable(self, target, facts) -> str | None:
        missing = [what for what, ok in (("kprobes", facts.kprobes),
                                         ("loadable modules", facts.modules)) if not ok]
        if missing:
            return (f"SystemTap needs {' and '.join(missing)}, which this kernel "
                    f"({facts.release or 'unknown'}) lacks; use bpftrace, perf or ftrace here")
        settings = self.settings
        if not settings.configured and facts.tracers.get("stap"):
            return None  # stap on the target
        if not settings.configured:
            release = facts.release if RELEASE_RE.fullmatch(facts.release or "") else ""
            local = bool(release) and bool(shutil.which("stap")) and os.path.isdir(
                f"/lib/modules/{release}/build")
            if not (local and target.which("staprun")):
                return ("SystemTap is not installed on the target (Debian/Ubuntu: apt-get "
                        "install systemtap linux-headers-$(uname -r), and the kernel's debug "
                        "symbols); or, with only staprun there (systemtap-runtime), compile "
                        f"here: set {ENV_ROOT} to a root with stap and the headers and "
                        f"debuginfo of {facts.release or 'its kernel'}, or {ENV_COMPILE}")
        why = settings.problem()
        if why:
            return why
        try:
            check_release(facts.release)
        except InvalidInput as e:
            return str(e)
        if not target.which("staprun"):
            return ("staprun is not installed on the target, which runs the module built here "
                    "(Debian/Ubuntu: apt-get install systemtap-runtime)")
        return None

    def _functions(self, plan, facts) -> list[str]:
        if plan.functions:
            return list(plan.functions)
        from slabkit.host.facts import ALLOC_FUNCTIONS
        return [f for f in ALLOC_FUNCTIONS if f in facts.functions]

    def unsupported(self, plan, facts) -> str | None:
        if plan.kind != "dedicated":
            return "slabkit's stap script probes dedicated caches only (use bpftrace for kmalloc)"
        if plan.comm is not None:
            return "the stap script filters by pid, not by comm"
        if not self._functions(plan, facts):
            return "no kmem_cache_alloc* function found in /proc/kallsyms"
        return None

    def render(self, plan, options, facts):
        functions = self._functions(plan, facts)
        text = render(plan.cache, None, function_names=functions, param="s")
        if not self._compile_here(facts):
            cmd = argv("{folder}/" + SCRIPT_FILE, plan.cache, None, plan.pid)
            return StapProgram(backend=self.name, argv=cmd, text=text)
        settings = self.settings
        module = module_name()
        build = compile_argv(SCRIPT_FILE, plan.cache, None, plan.pid,
                             release=check_release(facts.release), module=module,
                             stap=settings.stap)
        return StapProgram(backend=self.name, argv=["staprun", f"/tmp/{module}.ko"], text=text,
                           build_argv=build, build_root=settings.root, module=module,
                           release=facts.release)

    def _build(self, program: StapProgram, folder: Path) -> bytes:
        """Compile the module here; its log and facts go into the capture folder."""
        t = time.monotonic()
        try:
            data, done = build_module(program.text, program.build_argv, program.module or "",
                                      root=program.build_root)
        except ProbeFailed as e:
            (folder / BUILD_LOG).write_text(e.stderr)
            e.raw_path = str(folder / BUILD_LOG)
            raise
        seconds = time.monotonic() - t
        (folder / BUILD_LOG).write_text(
            f"$ {shlex.join(program.build_argv)}\n{done.stdout}{done.stderr}")
        (folder / BUILD_INFO).write_text(json.dumps({
            "argv": program.build_argv, "root": program.build_root, "release": program.release,
            "module": program.module, "module_bytes": len(data),
            "build_seconds": round(seconds, 2)}, indent=2) + "\n")
        return data

    def run(self, target, program, folder, control):
        import uuid

        from slabkit.backends import RunResult
        (folder / SCRIPT_FILE).write_text(program.text)
        build = isinstance(program, StapProgram) and bool(program.build_argv)
        raw_files = [RAW, STDERR_FILE, SCRIPT_FILE]
        if build:
            data = self._build(program, folder)
            remote_file = program.argv[-1]
            target.write_bytes(remote_file, data)
            cmd = list(program.argv)
            raw_files += [BUILD_LOG, BUILD_INFO]
        elif target.runs_here:
            remote_file = None
            cmd = [str(folder / SCRIPT_FILE) if a == "{folder}/" + SCRIPT_FILE else a
                   for a in program.argv]
        else:
            remote_file = f"/tmp/slabkit-{uuid.uuid4().hex}.stp"
            target.write_text(remote_file, program.text)
            cmd = [remote_file if a == "{folder}/" + SCRIPT_FILE else a for a in program.argv]
        raw, errf = folder / RAW, folder / STDERR_FILE
        what = "staprun" if build else "stap"
        try:
            with open(raw, "wb") as out, open(errf, "wb") as err:
                with target.start(cmd, stdout=out, stderr=err) as proc:
                    def attached() -> bool:  # "begin" runs before the kprobes exist
                        with open(raw, "rb") as f:
                            return ARMED.encode() in f.read(4096)
                    # stap on the target compiles the module first: allow it
                    control.wait_attached(attached, lambda: proc.poll() is None,
                                          timeout_s=120 if build else 600, what=what)
                    reason = control.run_for(lambda: proc.poll() is None)
        except ProbeFailed as e:
            e.stderr = errf.read_text(errors="replace") if errf.exists() else ""
            raise ProbeFailed(str(e).split(" (")[0], stderr=e.stderr, raw_path=str(raw)) from None
        finally:
            if remote_file is not None:
                try:
                    target.run(["rm", "-f", remote_file], timeout=30)
                except Exception:
                    pass
        stderr = errf.read_text(errors="replace")
        info = parse_stderr(stderr)
        losses = {k: int(info[k]) for k in ("skipped", "transport_failures") if info[k]}
        if info["overflow"]:
            losses["table_overflow"] = 1
        if info["overload"]:  # stap's guard ended the session early: later calls not counted
            losses["overload_stop"] = 1
        return RunResult(end_reason=reason, returncode=proc.returncode, stderr=stderr,
                         losses=losses, raw_files=raw_files)

    def parse(self, folder, plan, meta):
        return parse_output(folder / RAW, plan, meta)
