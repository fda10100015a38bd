"""Load captures: a saved folder, many folders (one host each) merged, or raw tracer output.

``load("data/captures/filp-...")`` reads a saved capture; ``load("runs/*/")`` or a list of
folders merges captures of the same cache from several hosts into one set of tables (the
``host`` column tells them apart, stack ids are renumbered); ``load("out.txt")`` parses raw
output of a tracer (the classic SystemTap script's text, slabkit's stap output, a bpftrace
``-f json`` file, ``perf script`` text or ftrace text) when no folder exists.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Union

import pandas as pd

from slabkit.capturing import store
from slabkit.capturing.folder import CaptureFolder, user_name
from slabkit.errors import CaptureNotFound, InvalidInput, ParseError, PermissionNeeded
from slabkit.model.schema import SAVED_STATUSES
from slabkit.model.tables import Capture
from slabkit.model.vocabulary import drop_tracer_glue

PathLike = Union[str, os.PathLike]


def load(path: Union[PathLike, Iterable[PathLike]], *, reparse: bool = False) -> Capture:
    """Load a capture folder, a glob or list of folders (merged), or a raw tracer output file.

    ``reparse=True`` rebuilds a folder's tables from its raw tracer output (e.g. after a crash
    left it unsaved, or with a newer slabkit).
    """
    if not isinstance(path, (str, os.PathLike)):
        return merge([load(p, reparse=reparse) for p in path])
    text = os.fspath(path)
    if glob.has_magic(text):
        folders = store.find_captures(text)
        if not folders:
            raise CaptureNotFound(f"no capture folders match {text!r}")
        return merge([load(f, reparse=reparse) for f in folders])
    p = Path(text)
    if not p.exists():
        raise CaptureNotFound(f"{p} does not exist: pass a capture folder (see "
                              "`slabkit list`) or a raw tracer output file")
    if p.is_dir():
        if reparse:
            return reparse_folder(p)
        if (p / store.META).is_file() or (p / store.RUNNING).is_file():
            return store.load_folder(p)
        folders = store.find_captures(p)
        if folders:
            return merge([store.load_folder(f) for f in folders
                          if (f / store.META).is_file()])
        raise CaptureNotFound(f"{p} holds no slabkit capture (no meta.json)")
    return load_raw(p)


def merge(caps: list[Capture]) -> Capture:
    """One Capture from several (usually one per host): tables concatenated, stack ids made
    unique, meta["captures"] listing each part's meta."""
    if not caps:
        raise CaptureNotFound("nothing to merge: no captures")
    if len(caps) == 1:
        return caps[0]
    caches = sorted({c.cache for c in caps})
    allocs, frames, outs, series = [], [], [], []
    offset = 0
    for c in caps:
        shift = lambda df: df.assign(stack_id=df["stack_id"].where(df["stack_id"] < 0,
                                                                    df["stack_id"] + offset))
        allocs.append(shift(c.allocs))
        frames.append(shift(c.frames))
        if c.outstanding is not None:
            outs.append(shift(c.outstanding))
        if c.slabinfo is not None and len(c.slabinfo):
            series.append(c.slabinfo.assign(name=c.slabinfo["name"]))
        top = int(c.frames["stack_id"].max()) + 1 if len(c.frames) else 0
        top = max(top, int(c.allocs["stack_id"].max()) + 1 if len(c.allocs) else 0)
        offset += top
    meta = {
        "cache": caches[0] if len(caches) == 1 else ",".join(caches),
        "hosts": [c.meta.get("host") for c in caps],
        "backend": ",".join(sorted({str(c.meta.get("backend")) for c in caps})),
        "duration_s": max(c.duration_s for c in caps),
        "status": "complete" if all(c.complete for c in caps) else "interrupted",
        "total_allocs": int(sum(c.allocs["count"].sum() for c in caps)),
        "lost_total": int(sum(int(c.meta.get("lost_total") or 0) for c in caps)),
        "captures": [dict(c.meta, path=str(c.path) if c.path else None) for c in caps],
        "merged": True,
    }
    if len(caches) > 1:
        meta["notes"] = [f"merged captures of different caches: {', '.join(caches)}"]
    return Capture(allocs=pd.concat(allocs, ignore_index=True),
                   frames=pd.concat(frames, ignore_index=True), meta=meta,
                   outstanding=pd.concat(outs, ignore_index=True) if outs else None,
                   slabinfo=pd.concat(series, ignore_index=True) if series else None)


def reparse_folder(folder: Path) -> Capture:
    """Rebuild a capture folder's tables from its raw tracer output and save them.

    Refused, in one line each: a folder of another user when run as root (parsing needs no
    privilege, and root reading files another user controls could leak what their symlinks
    point to: that user rebuilds it), a damaged ``meta.json``, missing raw output, and a raw
    file whose sha256 differs from the one recorded when the capture was saved
    (``meta["raw_sha256"]``): the rebuilt tables would not be what the tracer wrote, so the
    saved ones are kept.
    """
    from slabkit.backends import get_backend
    from slabkit.plan import Plan
    with CaptureFolder.open(folder) as cf:
        if cf.owner is not None:
            raise PermissionNeeded(
                f"{cf.path} belongs to user {user_name(cf.owner[0])}: rebuild it as that user "
                f"(`slabkit show --reparse {cf.path}` needs no root); as root, slabkit does not "
                "parse files another user controls")
        saved = cf.exists(store.META)
        if not saved and not cf.exists(store.RUNNING):
            raise CaptureNotFound(f"{cf.path} has no meta.json or meta.running.json to "
                                  "reparse from")
        meta = store.read_json(cf, store.META if saved else store.RUNNING, saved=saved)
        try:
            plan = Plan.from_json(meta["plan"])
        except (KeyError, TypeError, ValueError) as e:
            raise ParseError(f"the capture's plan is damaged ({type(e).__name__}: {e}); "
                             "restore meta.json from a copy",
                             path=str(cf.path / store.META)) from None
        backend = get_backend(meta["backend"])
        notes = check_raw_files(cf, meta)
        try:
            parsed = backend.parse(cf.read_path, plan, meta)
        except FileNotFoundError as e:
            raise _raw_missing(cf, Path(e.filename or "raw output").name) from None
        except ParseError as e:
            raise cf.own_errors(e) from None
        parsed.allocs, parsed.frames, parsed.outstanding = drop_tracer_glue(
            parsed.allocs, parsed.frames, parsed.outstanding)
        host = meta.get("host") or "unknown"
        meta["notes"] = list(meta.get("notes") or [])
        if not saved:          # the run ended before its record was finished: finish it here
            losses = dict(meta.get("losses") or {}, **parsed.losses)
            meta.update(losses=losses, lost_total=int(sum(losses.values())),
                        stack_losses=parsed.stack_losses, estimated_stacks=parsed.estimated)
            meta["notes"] += [n for n in parsed.notes if n not in meta["notes"]]
        if meta.get("status") not in SAVED_STATUSES:
            meta["status"] = "interrupted"
            meta["notes"].append("rebuilt from raw output after an unfinished run")
        if not saved:
            if "duration_s" not in meta:
                meta["duration_s"] = _seconds_between(meta.get("start"), meta.get("end"))
                meta["notes"].append("the run did not record how long its probe was live: "
                                     "the duration is the time from its start to its end "
                                     "record, an upper bound")
        meta["notes"] += [n for n in notes if n not in meta["notes"]]
        meta["total_allocs"] = int(parsed.allocs["count"].sum()) if len(parsed.allocs) else 0
        meta.setdefault("format", 1)
        cap = Capture(allocs=parsed.allocs.assign(host=host), frames=parsed.frames, meta=meta,
                      outstanding=parsed.outstanding.assign(host=host)
                      if parsed.outstanding is not None else None,
                      slabinfo=store.read_table(cf, "slabinfo"))
        return store.save(cf, cap)


def _raw_missing(cf: CaptureFolder, name: str) -> CaptureNotFound:
    return CaptureNotFound(f"{cf.path / name} is missing: the tables cannot be rebuilt from the "
                           f"raw tracer output (`slabkit show {cf.path}` loads the saved ones, "
                           "if any)")


def _seconds_between(start: object, end: object) -> float:
    from datetime import datetime
    try:
        return max(0.0, (datetime.fromisoformat(str(end))
                         - datetime.fromisoformat(str(start))).total_seconds())
    except ValueError:
        return 0.0


def check_raw_files(cf: CaptureFolder, meta: dict) -> list[str]:
    """Compare each raw file with the sha256 recorded when the capture was saved; raises
    :class:`~slabkit.errors.ParseError` for a file that changed or went missing. Returns
    notes (none recorded: the files cannot be checked)."""
    recorded = meta.get("raw_sha256") or {}
    if not recorded:
        return ["the raw output has no recorded checksums (a capture that did not finish, or "
                "from an older slabkit): it could not be checked for changes"]
    for name, digest in recorded.items():
        try:
            now = cf.sha256(name)
        except FileNotFoundError:
            raise _raw_missing(cf, name) from None
        if now != digest:
            raise ParseError(
                f"changed since the capture (sha256 {str(digest)[:16]}... when saved, now "
                f"{now[:16]}...): tables rebuilt from it would not be what the tracer wrote, so "
                f"the saved ones are kept (`slabkit show {cf.path}` loads them); restore the "
                "file to rebuild", path=str(cf.path / name))
    return []


def sniff(path: Path) -> str:
    """Which tracer wrote a raw output file: stap-classic | stap | bpftrace | perf | ftrace."""
    with open(path, errors="replace") as f:
        head = f.read(8192)
    if "slab allocations by process" in head or "Backtrace of processes when allocating" in head:
        return "stap-classic"
    if "slabkit-stap" in head:
        return "stap"
    if head.lstrip().startswith("{") and '"type"' in head:
        return "bpftrace"
    if "<stack trace>" in head or "# tracer:" in head or " => " in head:
        return "ftrace"
    if "kmem:kmem_cache_alloc" in head or "kmem:kmalloc" in head:
        return "perf"
    raise ParseError("cannot tell which tracer wrote this file (expected SystemTap, bpftrace "
                     "-f json, perf script or ftrace output)", path=str(path))


def load_raw(path: Path) -> Capture:
    """Parse one raw tracer output file into a Capture (no plan: meta says what is unknown)."""
    kind = sniff(path)
    text_meta: dict = {"source": str(path), "backend": kind.split("-")[0], "status": "complete",
                       "raw": True, "host": "unknown"}
    if kind in ("stap-classic", "stap"):
        from slabkit.backends import stap
        text = path.read_text(errors="replace")
        if kind == "stap-classic":
            parsed = stap.parse_classic(text, path=str(path))
            text_meta.update(stap.parse_classic_meta(text))
        else:
            parsed = stap.parse_text(text, path=str(path))
            text_meta.update(stap.parse_meta(text))
    else:
        raise InvalidInput(f"{path} looks like {kind} output: load the capture folder it came "
                           "from (it holds the plan needed to read it), or use "
                           "`slabkit show --reparse FOLDER`")
    allocs, frames = parsed.allocs, parsed.frames
    text_meta.setdefault("cache", text_meta.get("cache") or "?")
    text_meta["total_allocs"] = int(allocs["count"].sum()) if len(allocs) else 0
    if "host" not in allocs.columns:
        allocs = allocs.assign(host=text_meta["host"])
    return Capture(allocs=allocs, frames=frames, meta=text_meta, path=path).validate()
