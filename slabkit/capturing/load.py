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
from slabkit.errors import CaptureNotFound, InvalidInput, ParseError
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
    """Rebuild a capture folder's tables from its raw tracer output and save them."""
    import json

    from slabkit.backends import get_backend
    from slabkit.plan import Plan
    meta_path = folder / store.META if (folder / store.META).is_file() else folder / store.RUNNING
    if not meta_path.is_file():
        raise CaptureNotFound(f"{folder} has no meta.json or meta.running.json to reparse from")
    meta = json.loads(meta_path.read_text())
    plan = Plan.from_json(meta["plan"])
    parsed = get_backend(meta["backend"]).parse(folder, plan, meta)
    parsed.allocs, parsed.frames, parsed.outstanding = drop_tracer_glue(
        parsed.allocs, parsed.frames, parsed.outstanding)
    host = meta.get("host") or "unknown"
    if meta.get("status") in (None, "running", "failed"):
        meta["status"] = "interrupted"
        meta.setdefault("notes", []).append("rebuilt from raw output after an unfinished run")
    meta["total_allocs"] = int(parsed.allocs["count"].sum()) if len(parsed.allocs) else 0
    series = folder / "slabinfo.parquet"
    cap = Capture(allocs=parsed.allocs.assign(host=host), frames=parsed.frames, meta=meta,
                  outstanding=parsed.outstanding.assign(host=host)
                  if parsed.outstanding is not None else None,
                  slabinfo=pd.read_parquet(series) if series.is_file() else None)
    return store.save(folder, cap)


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
                           "`slabkit load --reparse FOLDER`")
    allocs, frames = parsed.allocs, parsed.frames
    text_meta.setdefault("cache", text_meta.get("cache") or "?")
    text_meta["total_allocs"] = int(allocs["count"].sum()) if len(allocs) else 0
    if "host" not in allocs.columns:
        allocs = allocs.assign(host=text_meta["host"])
    return Capture(allocs=allocs, frames=frames, meta=text_meta, path=path).validate()
