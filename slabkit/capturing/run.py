"""Run a capture: resolve the cache, plan the probe, run the tracer, save and load the result.

``capture("filp", seconds=10)`` is the whole flow; :func:`prepare` stops before running (what
``--print-program`` shows, and what the widgets use to list backends).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import pandas as pd

from slabkit import __version__

from slabkit.capturing import store

from slabkit.model import schema
from slabkit.backends import Backend, Options, Program, choose
from slabkit.capturing.control import RunControl
from slabkit.errors import ProbeFailed, SlabkitError
from slabkit.host.facts import KernelFacts, gather_facts
from slabkit.model.stacks import drop_tracer_glue
from slabkit.validate import check_seconds
from slabkit.plan import Plan, for_backend, plan_capture
from slabkit.host.procs import TermAsInterrupt
from slabkit.model.tables import Capture
from slabkit.host.target import Target, as_target, require_root

#: default: a stack for each thread's first event (per comm, so after an exec too) and 1 in 32
#: after, every event counted. Measured (bench/results/): 0.73 of uninstrumented throughput
#: (N=8 0.68, N=16 0.72; bare exact counting 0.77); call-site shares within 0.34 pp of a
#: full-stack capture across all processes (first-event keyed by tid only: 1.77 pp).
DEFAULT_STACK_SAMPLE = 32


@dataclass
class Prepared:
    """Everything decided before a capture runs."""

    target: Target
    facts: KernelFacts
    plan: Plan
    backend: Backend
    program: Program
    options: Options
    not_used: dict[str, str] = field(default_factory=dict)
    resolved: Any = None
    cache_table: pd.DataFrame | None = None


def prepare(cache: str, *, backend: str = "auto", mode: str = "allocs",
            pid: int | str | None = None, comm: str | None = None,
            host: Union[str, Target, None] = None, stack_sample: int | None = None,
            sample_every: int = 1, map_keys: int | None = None) -> Prepared:
    """Resolve ``cache``, read the kernel's facts, plan, choose a backend and render its program.

    Raises :class:`~slabkit.errors.SlabkitError` subclasses with what to do when something is
    missing (root, tracefs, a tracer, a kernel feature).
    """
    from slabkit.host.slabinfo import caches as cache_table, resolve_cache
    target = as_target(host)
    require_root(target, "capturing slab allocations (reading /proc/slabinfo and tracing)")
    table = cache_table(target)
    resolved = resolve_cache(cache, target, table=table)
    facts = gather_facts(target)
    plan = plan_capture(resolved, facts, mode=mode, pid=pid, comm=comm,
                        cache_table=table)
    options = Options(stack_sample=_positive_int(
        DEFAULT_STACK_SAMPLE if stack_sample is None else stack_sample, "stack_sample"),
        sample_every=_positive_int(sample_every, "sample_every"),
        map_keys=None if map_keys is None else _positive_int(map_keys, "map_keys"))
    chosen, reasons = choose(backend, plan, target, facts)
    plan = for_backend(plan, chosen.name, facts)   # what the backend learnt may make it exact
    program = chosen.render(plan, options, facts)
    return Prepared(target=target, facts=facts, plan=plan, backend=chosen, program=program,
                    options=options, not_used=reasons, resolved=resolved, cache_table=table)


def _positive_int(value, what: str) -> int:
    from slabkit.errors import InvalidInput
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be a whole number >= 1, not {value!r}")
    return value


def capture(cache: str, seconds: float = 10, *, backend: str = "auto", mode: str = "allocs",
            pid: int | str | None = None, comm: str | None = None,
            host: Union[str, Target, None] = None,
            hosts: Union[list[Union[str, Target, None]], None] = None,
            out: Union[str, os.PathLike, None] = None,
            base: Union[str, os.PathLike, None] = None,
            progress: bool | Callable[[float, float], None] = True,
            stop_event: threading.Event | None = None, stack_sample: int | None = None,
            sample_every: int = 1, map_keys: int | None = None) -> Capture:
    """Capture allocations from ``cache`` for ``seconds`` and return the saved :class:`Capture`.

    >>> cap = slabkit.capture("filp", seconds=5)          # doctest: +SKIP
    >>> slabkit.by_process(cap).head()                     # doctest: +SKIP

    ``backend``: "auto" (slabkit's own BPF counter "bpf", else bpftrace, else perf, else
    ftrace, else stap), or one by name. ``meta["backends_not_used"]`` says why others were not.
    ``mode``: "allocs" (who allocates) or "outstanding" (objects not freed by the end).
    ``pid``/``comm``: only that process. ``out``: the capture folder (default: a new folder
    under ``data/captures``). ``stop_event``: set it from another thread to end early.
    Ctrl-C also ends early; either way what was captured is kept and marked ``interrupted``.

    ``host``: an SSH destination (``"root@web1"``, ``"user@host:2222"``) to capture there and
    analyse here. ``hosts=[...]``: several targets at once (``None`` is this machine); returns
    one merged Capture with a ``host`` column; a host that fails is listed in
    ``meta["failed_hosts"]`` and the others' results are kept.
    """
    seconds = check_seconds(seconds)
    if hosts is not None:
        if host is not None:
            from slabkit.errors import InvalidInput
            raise InvalidInput("pass either host= or hosts=, not both")
        return capture_hosts(cache, seconds, hosts, backend=backend, mode=mode, pid=pid,
                             comm=comm, out=out, base=base, progress=progress,
                             stop_event=stop_event, stack_sample=stack_sample,
                             sample_every=sample_every, map_keys=map_keys)
    prep = prepare(cache, backend=backend, mode=mode, pid=pid, comm=comm, host=host,
                   stack_sample=stack_sample, sample_every=sample_every, map_keys=map_keys)
    return run_prepared(prep, seconds, out=out, base=base, progress=progress,
                        stop_event=stop_event)


def capture_hosts(cache: str, seconds: float, hosts: list, *, out=None, base=None,
                  progress=True, stop_event: threading.Event | None = None,
                  **kw) -> Capture:
    """Capture ``cache`` on several targets concurrently and merge the results.

    Each host gets its own capture folder (under ``out`` or ``base``); failures are kept in
    ``meta["failed_hosts"]`` ({host: message}). Raises only when every host failed.
    """
    from slabkit.errors import InvalidInput, SlabkitError as _Err
    from slabkit.capturing.load import merge
    if not hosts:
        raise InvalidInput("hosts= needs at least one host (None stands for this machine)")
    stop_event = stop_event or threading.Event()
    results: dict[int, Capture] = {}
    failures: dict[str, str] = {}
    folder_base = Path(out) if out is not None else (Path(base) if base is not None else None)

    live: set[int] = set()
    lock = threading.Lock()

    def progress_for(i: int):
        """A callable progress is told once every host is live (or has failed)."""
        if not callable(progress):
            return progress

        def cb(done: float, total: float) -> None:
            with lock:
                live.add(i)
                ready = len(live) + len(failures) >= len(hosts)
            if ready and i == min(live):
                progress(done, total)
        return cb

    def one(i: int, host) -> None:
        label = "local" if host is None else str(getattr(host, "name", host))
        try:
            prep = prepare(cache, host=host, **kw)
            results[i] = run_prepared(prep, seconds, base=folder_base, stop_event=stop_event,
                                      progress=progress_for(i))
        except (_Err, OSError) as e:
            with lock:
                failures[label] = str(e)
            if callable(progress) and live and len(live) + len(failures) >= len(hosts):
                progress(0.0, seconds)

    threads = [threading.Thread(target=one, args=(i, h), daemon=True)
               for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except KeyboardInterrupt:
        stop_event.set()   # every host stops and keeps what it captured
        for t in threads:
            t.join()
    if not results:
        raise _Err("every host failed: " + "; ".join(f"{h}: {m}" for h, m in failures.items()))
    merged = merge([results[i] for i in sorted(results)])
    merged.meta["failed_hosts"] = failures
    if failures:
        merged.meta.setdefault("notes", []).append(
            "some hosts failed: " + "; ".join(f"{h}: {m}" for h, m in failures.items()))
    return merged


def run_prepared(prep: Prepared, seconds: float, *, out=None, base=None, progress=True,
                 stop_event: threading.Event | None = None) -> Capture:
    """Run a :class:`Prepared` capture and save it."""
    target, plan = prep.target, prep.plan
    host = _host_label(target)
    folder = store.new_folder(plan.cache, host, base=base, out=out)
    meta: dict[str, Any] = {
        "format": 1, "slabkit_version": __version__,
        "cache": plan.cache, "requested": plan.requested, "aliases": plan.aliases,
        "kind": plan.kind, "mode": plan.mode, "host": host, "target": target.name,
        "kernel_release": prep.facts.release, "backend": prep.backend.name,
        "tracer_version": prep.facts.tracers.get(prep.backend.name),
        "backends_not_used": prep.not_used, "plan": plan.to_json(),
        "options": prep.options.to_json(), "program": prep.program.text,
        "argv": prep.program.argv, "env": prep.program.env,
        "slab_size": _int_or_none(getattr(prep.resolved, "slab_size", None)),
        "object_size": _int_or_none(getattr(prep.resolved, "object_size", None)),
        "requested_seconds": seconds, "start": store.now_iso(), "status": "running",
        "exact": plan.exact, "pid_filter": plan.pid, "comm_filter": plan.comm,
    }
    store.write_running(folder, meta)
    series: list[dict] = []
    sampler = _slabinfo_sampler(target, plan.cache, series)
    control = RunControl(seconds, progress=progress, stop_event=stop_event,
                         every_second=sampler, description=f"{plan.cache} ({prep.backend.name})")
    try:
        with TermAsInterrupt():
            result = prep.backend.run(target, prep.program, folder, control)
    except BaseException as e:
        meta.update(status="failed", error=str(e) or type(e).__name__, end=store.now_iso())
        store.write_running(folder, meta)
        if isinstance(e, ProbeFailed) and not e.raw_path:
            e.raw_path = str(folder)
        raise
    sampler(control.duration_s)  # one last sample at the end
    meta.update(end=store.now_iso(), duration_s=round(control.duration_s, 3),
                end_reason=result.end_reason, returncode=result.returncode,
                tracer_stderr=result.stderr[-4000:],
                status="complete" if result.end_reason == "duration" else "interrupted")
    meta["cgroups"] = _cgroup_paths(target)
    meta.update(_save_kallsyms(target, folder))
    store.write_running(folder, meta)
    parsed = prep.backend.parse(folder, plan, meta)
    _trim_kallsyms(folder, meta, parsed.frames)   # before dropping glue: a reparse needs it
    parsed.allocs, parsed.frames, parsed.outstanding = drop_tracer_glue(
        parsed.allocs, parsed.frames, parsed.outstanding)
    meta.pop("cgroups", None)
    losses = {**result.losses, **parsed.losses}
    meta.update(losses=losses, lost_total=int(sum(losses.values())),
                stack_losses=parsed.stack_losses,
                estimated_stacks=parsed.estimated, notes=plan.notes + parsed.notes + control.messages,
                total_allocs=int(parsed.allocs["count"].sum()) if len(parsed.allocs) else 0)
    if plan.mode == "outstanding":
        meta["notes"].append("objects allocated before the capture started are not seen")
    allocs = parsed.allocs.assign(host=host)
    outstanding = parsed.outstanding.assign(host=host) if parsed.outstanding is not None else None
    cap = Capture(allocs=allocs, frames=parsed.frames, meta=meta, outstanding=outstanding,
                  slabinfo=pd.DataFrame(series, columns=[c.name for c in schema.SLABINFO_SERIES])
                  if series else schema.empty("slabinfo"))
    return store.save(folder, cap)


def _int_or_none(value) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def _host_label(target: Target) -> str:
    try:
        return target.hostname() if target.name.startswith("local") else target.name
    except Exception:
        return target.name


def _slabinfo_sampler(target: Target, cache: str, series: list[dict]) -> Callable[[float], None]:
    """A callback that appends the cache's slabinfo line to ``series``; never raises."""
    from slabkit.host.slabinfo import parse_slabinfo

    def sample(elapsed: float) -> None:
        try:
            df = parse_slabinfo(target.read_text("/proc/slabinfo"))
            row = df[df["name"] == cache]
            if len(row):
                r = row.iloc[0]
                series.append({"time_s": round(elapsed, 3), "name": cache,
                               "active_objs": int(r["active_objs"]),
                               "num_objs": int(r["num_objs"]),
                               "memory_bytes": int(r["memory_bytes"])})
        except (OSError, SlabkitError):
            pass
    return sample


def _cgroup_paths(target: Target) -> dict[int, str]:
    """cgroup v2 id (the directory's inode number) -> path, for naming bpftrace's ``cgroup``."""
    try:
        mounts = target.read_text("/proc/mounts").splitlines()
    except OSError:
        return {}
    roots = [m.split()[1] for m in mounts if len(m.split()) > 2 and m.split()[2] == "cgroup2"]
    if not roots:
        return {}  # no cgroup v2 hierarchy: bpftrace's cgroup id names nothing
    try:
        res = target.run(["find", roots[0], "-xdev", "-type", "d", "-printf", r"%i %P\n"],
                         timeout=30)
    except Exception:
        return {}
    out = {}
    for line in res.stdout.splitlines():
        ino, _, path = line.partition(" ")
        if ino.isdigit():
            out[int(ino)] = "/" + path
    return out


def _save_kallsyms(target: Target, folder: Path) -> dict[str, Any]:
    """Keep the kernel's text symbols with the capture so stacks resolve on any machine."""
    try:
        text = target.read_text("/proc/kallsyms")
    except OSError:
        return {}
    lines = [l for l in text.splitlines() if len(l) > 19 and l[17] in "tTwW"]
    if not lines or lines[0].startswith("0000000000000000"):
        return {"kallsyms_note": "kallsyms addresses are hidden (kptr_restrict): not root?"}
    import gzip
    path = folder / "kallsyms.txt.gz"
    with gzip.open(path, "wt", compresslevel=3) as f:
        f.write("\n".join(lines) + "\n")
    return {"kallsyms_path": path.name}


def _trim_kallsyms(folder: Path, meta: dict, frames: pd.DataFrame) -> None:
    """Keep only the symbols the stacks need (each frame's symbol and the one after it, which
    bounds it), so a capture stays small yet re-resolves anywhere."""
    import bisect
    import gzip
    name = meta.get("kallsyms_path")
    if not name or not len(frames) or frames["address"].isna().all():
        return
    path = folder / name
    with gzip.open(path, "rt") as f:
        lines = f.read().splitlines()
    addrs = [int(l[:16], 16) for l in lines]
    order = sorted(range(len(lines)), key=addrs.__getitem__)
    sorted_addrs = [addrs[i] for i in order]
    keep: set[int] = set()
    for a in frames["address"].dropna().unique():
        k = bisect.bisect_right(sorted_addrs, int(a)) - 1
        if k >= 0:
            keep.update(order[j] for j in (k, k + 1) if j < len(order))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines[i] for i in sorted(keep)) + "\n")
    meta["kallsyms_trimmed"] = True
