"""Run a capture: resolve the cache, plan the probe, run the tracer, save and load the result.

``capture("filp", seconds=10)`` is the whole flow; :func:`prepare` stops before running (what
``--print-program`` shows, and what the widgets use to list backends).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Union

import pandas as pd

from slabkit._version import __version__
from slabkit.backends import Options
from slabkit.backends.control import TermAsInterrupt
from slabkit.capturing import engine, store, via_helper
from slabkit.capturing.engine import Prepared, Request
from slabkit.capturing.folder import CaptureFolder
from slabkit.errors import InvalidInput, PermissionNeeded, ProbeFailed, SlabkitError
from slabkit.host.helper import Helper
from slabkit.host.target import Target
from slabkit.host.where import Where, as_target, legacy_target
from slabkit.model import schema
from slabkit.model.tables import Capture
from slabkit.model.vocabulary import drop_tracer_glue
from slabkit.validate import check_seconds

#: old keyword arguments of capture()/prepare() that now live in :class:`Options`
_OPTION_KEYWORDS = ("stack_sample", "sample_every", "map_keys")


def _legacy(func: str, target: Where, old: dict) -> tuple[Where, Any, dict]:
    """(target, targets, option overrides) from the old keywords (host=, hosts=,
    stack_sample=, sample_every=, map_keys=), each with a DeprecationWarning."""
    import warnings
    opts = {k: old.pop(k) for k in _OPTION_KEYWORDS if k in old}
    if opts:
        warnings.warn(f"{func}({', '.join(f'{k}=' for k in opts)}...) is deprecated: pass "
                      f"options=Options({', '.join(f'{k}=...' for k in opts)})",
                      DeprecationWarning, stacklevel=3)
    targets = old.pop("hosts", None)
    if targets is not None:
        warnings.warn(f"{func}(hosts=...) is deprecated: use targets=", DeprecationWarning,
                      stacklevel=3)
    return legacy_target(target, old, func=func, names=("host",)), targets, opts


def _options(options: Options | None, overrides: dict) -> Options:
    if options is not None and not isinstance(options, Options):
        raise InvalidInput(f"options must be a slabkit Options, not {type(options).__name__}")
    base = options.to_json() if options is not None else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Options(**base)


def prepare(cache: str, *, backend: str = "auto", mode: str = "allocs",
            pid: int | str | None = None, comm: str | None = None, target: Where = None,
            options: Options | None = None, **deprecated) -> Prepared:
    """Resolve ``cache``, read the kernel's facts, plan, choose a backend and render its program.

    Takes the arguments of :func:`capture` that decide what will run. As root the decisions are
    made here; a user who may use slabkit's capture helper gets the helper's (it decides again
    when it captures: it trusts nothing this side sends but the request's fields). Raises
    :class:`~slabkit.errors.SlabkitError` subclasses with what to do when something is missing
    (root or the helper, tracefs, a tracer, a kernel feature).
    """
    target, targets, overrides = _legacy("prepare", target, deprecated)
    if targets is not None:
        raise InvalidInput("prepare() plans for one target: pass target=")
    request = Request(cache=cache, backend=backend, mode=mode, pid=pid, comm=comm,
                      options=_options(options, overrides))
    where = as_target(target)
    if where.is_root():
        return engine.prepare(request, where)
    helper = Helper(where)
    why = helper.unavailable()
    if why:
        raise PermissionNeeded(why)
    return Prepared.from_description(helper.prepare(request.to_args()), where, request,
                                     via=helper)


def capture(cache: str, seconds: float = 10, *, backend: str = "auto", mode: str = "allocs",
            pid: int | str | None = None, comm: str | None = None, target: Where = None,
            targets: list[Where] | None = None, options: Options | None = None,
            out: Union[str, os.PathLike, None] = None,
            base: Union[str, os.PathLike, None] = None,
            progress: bool | Callable[[float, float], None] = True,
            stop_event: threading.Event | None = None, **deprecated) -> Capture:
    """Capture allocations from ``cache`` for ``seconds`` and return the saved :class:`Capture`.

    >>> cap = slabkit.capture("filp", seconds=5)          # doctest: +SKIP
    >>> slabkit.by_process(cap).head()                     # doctest: +SKIP

    ``backend``: "auto" (slabkit's own BPF counter "bpf", else bpftrace, else perf, else
    ftrace, else stap), or one by name. ``meta["backends_not_used"]`` says why others were not.
    ``mode``: "allocs" (who allocates) or "outstanding" (objects not freed by the end).
    ``pid``/``comm``: only that process. ``options``: tracer knobs
    (:class:`~slabkit.backends.Options`: stack sampling, perf sampling, map size, buffers).
    ``out``: the capture folder (default: a new folder under ``base``, by default
    ``data/captures``). ``stop_event``: set it from another thread to end early. Ctrl-C also
    ends early; either way what was captured is kept and marked ``interrupted``.

    ``target``: where to capture: this machine (None), or an SSH destination (``"root@web1"``,
    ``"user@host:2222"``) to capture there and analyse here, or a
    :class:`~slabkit.host.target.Target`. ``targets=[...]``: several at once (``None`` is this
    machine); returns one merged Capture with a ``host`` column; a target that fails is listed
    in ``meta["failed_hosts"]`` and the others' results are kept. (``host=``/``hosts=`` and the
    knobs ``stack_sample=``, ``sample_every=``, ``map_keys=`` still work, with a
    DeprecationWarning.)
    """
    target, old_targets, overrides = _legacy("capture", target, deprecated)
    if old_targets is not None:
        if targets is not None:
            raise InvalidInput("pass either targets= or hosts=, not both")
        targets = old_targets
    seconds = check_seconds(seconds)
    options = _options(options, overrides)
    if targets is not None:
        if target is not None:
            raise InvalidInput("pass either target= or targets=, not both")
        return capture_targets(cache, seconds, targets, backend=backend, mode=mode, pid=pid,
                               comm=comm, out=out, base=base, progress=progress,
                               stop_event=stop_event, options=options)
    prep = prepare(cache, backend=backend, mode=mode, pid=pid, comm=comm, target=target,
                   options=options)
    return run_prepared(prep, seconds, out=out, base=base, progress=progress,
                        stop_event=stop_event)


def capture_targets(cache: str, seconds: float, hosts: list[Where], *, out=None, base=None,
                    progress=True, stop_event: threading.Event | None = None,
                    **kw) -> Capture:
    """Capture ``cache`` on several targets concurrently and merge the results.

    Each target gets its own capture folder (under ``out`` or ``base``); failures are kept in
    ``meta["failed_hosts"]`` ({host: message}). Raises only when every target failed.
    """
    from slabkit.capturing.load import merge
    if not hosts:
        raise InvalidInput("targets= needs at least one target (None stands for this machine)")
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
            prep = prepare(cache, target=host, **kw)
            results[i] = run_prepared(prep, seconds, base=folder_base, stop_event=stop_event,
                                      progress=progress_for(i))
        except (SlabkitError, OSError) as e:
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
        raise SlabkitError("every host failed: " + "; ".join(f"{h}: {m}" for h, m in failures.items()))
    merged = merge([results[i] for i in sorted(results)])
    merged.meta["failed_hosts"] = failures
    if failures:
        merged.meta.setdefault("notes", []).append(
            "some hosts failed: " + "; ".join(f"{h}: {m}" for h, m in failures.items()))
    return merged


def run_prepared(prep: Prepared, seconds: float, *, out=None, base=None, progress=True,
                 stop_event: threading.Event | None = None) -> Capture:
    """Run a :class:`Prepared` capture (here, or through the capture helper) and save it."""
    seconds = check_seconds(seconds)
    host = _host_label(prep.target)
    folder = store.new_folder(prep.plan.cache, host, base=base, out=out)
    try:
        return _run_in(folder, prep, seconds, host, progress=progress, stop_event=stop_event)
    finally:
        folder.close()


def _start_meta(prep: Prepared, seconds: float, host: str) -> dict[str, Any]:
    plan = prep.plan
    return {
        "format": 1, "slabkit_version": __version__,
        "cache": plan.cache, "requested": plan.requested, "aliases": plan.aliases,
        "kind": plan.kind, "mode": plan.mode, "host": host, "target": prep.target.name,
        "via": "helper" if prep.via is not None else "direct",
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


def _run_in(folder: CaptureFolder, prep: Prepared, seconds: float, host: str, *, progress,
            stop_event) -> Capture:
    meta = _start_meta(prep, seconds, host)
    store.write_running(folder, meta)
    try:
        if prep.via is not None:
            def on_hello(description: dict) -> None:
                nonlocal prep
                prep = Prepared.from_description(description, prep.target, prep.request,
                                                 via=prep.via)
                meta.update(_start_meta(prep, seconds, host), start=meta["start"])
                store.write_running(folder, meta)
            with TermAsInterrupt():
                outcome = via_helper.run(prep, seconds, folder, progress=progress,
                                         stop_event=stop_event, on_hello=on_hello)
        else:
            outcome = _run_here(prep, seconds, folder, progress=progress, stop_event=stop_event)
    except BaseException as e:
        meta.update(status="failed", error=str(e) or type(e).__name__, end=store.now_iso())
        store.write_running(folder, meta)
        if isinstance(e, ProbeFailed) and not e.raw_path:
            e.raw_path = str(folder.path)
        raise
    result = outcome.result
    plan = prep.plan
    meta.update(end=store.now_iso(), duration_s=outcome.duration_s,
                end_reason=result.end_reason, returncode=result.returncode,
                tracer_stderr=result.stderr[-4000:],
                status="complete" if result.end_reason == "duration" else "interrupted")
    meta["cgroups"] = outcome.cgroups
    meta.update(outcome.kallsyms)
    store.write_running(folder, meta)
    parsed = prep.backend.parse(folder.path, plan, meta)
    _trim_kallsyms(folder, meta, parsed.frames)   # before dropping glue: a reparse needs it
    parsed.allocs, parsed.frames, parsed.outstanding = drop_tracer_glue(
        parsed.allocs, parsed.frames, parsed.outstanding)
    meta.pop("cgroups", None)
    losses = {**result.losses, **parsed.losses}
    meta.update(losses=losses, lost_total=int(sum(losses.values())),
                stack_losses=parsed.stack_losses, estimated_stacks=parsed.estimated,
                notes=plan.notes + parsed.notes + outcome.messages,
                total_allocs=int(parsed.allocs["count"].sum()) if len(parsed.allocs) else 0)
    if plan.mode == "outstanding":
        meta["notes"].append("objects allocated before the capture started are not seen")
    allocs = parsed.allocs.assign(host=host)
    outstanding = parsed.outstanding.assign(host=host) if parsed.outstanding is not None else None
    series = outcome.series
    cap = Capture(allocs=allocs, frames=parsed.frames, meta=meta, outstanding=outstanding,
                  slabinfo=pd.DataFrame(series, columns=[c.name for c in schema.SLABINFO_SERIES])
                  if series else schema.empty("slabinfo"))
    return store.save(folder, cap)


def _run_here(prep: Prepared, seconds: float, folder: CaptureFolder, *, progress,
              stop_event) -> engine.Outcome:
    """Run the engine in this process. Raw output goes straight into the capture folder when
    the folder is ours; root writing into another user's tree works in a private folder and
    moves the files in afterwards (no path there is ever opened by name while it runs)."""
    if folder.owner is None:
        return engine.run(prep, seconds, folder.path, progress=progress, stop_event=stop_event,
                          wrap=TermAsInterrupt())
    work = Path(tempfile.mkdtemp(prefix="slabkit-capture-"))
    try:
        outcome = engine.run(prep, seconds, work, progress=progress, stop_event=stop_event,
                             wrap=TermAsInterrupt())
        for name in outcome.files:
            if (work / name).is_file():
                folder.adopt(work / name, name)
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def _trim_kallsyms(folder: CaptureFolder, meta: dict, frames: pd.DataFrame) -> None:
    """Keep only the symbols the stacks need (each frame's symbol and the one after it, which
    bounds it), so a capture stays small yet re-resolves anywhere."""
    import bisect
    import gzip
    name = meta.get("kallsyms_path")
    if not name or not len(frames) or frames["address"].isna().all():
        return
    with gzip.open(folder.path / name, "rt") as f:
        lines = f.read().splitlines()
    addrs = [int(l[:16], 16) for l in lines]
    order = sorted(range(len(lines)), key=addrs.__getitem__)
    sorted_addrs = [addrs[i] for i in order]
    keep: set[int] = set()
    for a in frames["address"].dropna().unique():
        k = bisect.bisect_right(sorted_addrs, int(a)) - 1
        if k >= 0:
            keep.update(order[j] for j in (k, k + 1) if j < len(order))
    tmp = f".{name}.tmp"
    folder.remove(tmp)
    with folder.create(tmp) as raw, gzip.open(raw, "wt") as f:
        f.write("\n".join(lines[i] for i in sorted(keep)) + "\n")
    folder.rename(tmp, name)
    meta["kallsyms_trimmed"] = True
