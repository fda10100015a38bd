"""Captures on disk: one folder each, written so that a half-written one never loads.

Layout of a capture folder::

    meta.json            written LAST, atomically: its presence marks the capture as saved
    meta.running.json    while the tracer runs (removed when meta.json is written)
    <raw tracer files>   exactly as the tracer wrote them (bpftrace.jsonl, perf.data, ...)
    kallsyms.txt         the kallsyms lines the stacks needed, to re-resolve elsewhere
    allocs.parquet, frames.parquet, [outstanding.parquet], [slabinfo.parquet]

``meta.json["status"]`` is ``complete`` (ran its full duration) or ``interrupted`` (stopped
early; what was captured is kept).
"""
from __future__ import annotations

import glob
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Union

import pandas as pd

from slabkit.capturing.folder import CaptureFolder
from slabkit.errors import CaptureNotFound, InvalidInput
from slabkit.model import schema
from slabkit.model.tables import Capture

META = "meta.json"
RUNNING = "meta.running.json"
TABLES = ("allocs", "frames", "outstanding", "slabinfo")


def default_base() -> Path:
    """Where captures go by default: ``$SLABKIT_CAPTURE_DIR`` or ``./data/captures``."""
    return Path(os.environ.get("SLABKIT_CAPTURE_DIR") or Path.cwd() / "data" / "captures")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60]


def new_folder(cache: str, host: str, base: Union[str, os.PathLike, None] = None,
               out: Union[str, os.PathLike, None] = None) -> CaptureFolder:
    """Create the capture's folder: ``out`` itself (new, or an empty folder of ours), or a fresh
    ``<cache>-<time>-<host>`` under ``base`` (default :func:`default_base`). Written safely
    (:mod:`slabkit.capturing.folder`)."""
    if out is not None:
        return CaptureFolder.make(Path(out), exist_ok_empty=True)
    root = Path(base) if base is not None else default_base()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = f"{_safe(cache)}-{stamp}-{_safe(host)}"
    for i in range(1000):
        try:
            return CaptureFolder.make(root / (stem if i == 0 else f"{stem}-{i}"))
        except InvalidInput:
            if not (root / (stem if i == 0 else f"{stem}-{i}")).exists():
                raise
    raise InvalidInput(f"could not make a new capture folder under {root}")


def _folder(folder: Union[CaptureFolder, str, os.PathLike]) -> tuple[CaptureFolder, bool]:
    """(an open CaptureFolder, whether we opened it and must close it)."""
    if isinstance(folder, CaptureFolder):
        return folder, False
    return CaptureFolder.open(Path(folder)), True


def write_running(folder: Union[CaptureFolder, str, os.PathLike], meta: dict[str, Any]) -> None:
    """Record that a capture is in progress (never loads as a capture)."""
    cf, close = _folder(folder)
    try:
        cf.write_bytes(RUNNING, json.dumps(meta, indent=1, default=str).encode())
    finally:
        if close:
            cf.close()


def save(folder: Union[CaptureFolder, str, os.PathLike], cap: Capture) -> Capture:
    """Write the tables, then ``meta.json`` last, then hand the folder to its owner (root
    writing into a user's tree); returns the capture with ``path`` set."""
    cap = cap.validate()
    cf, close = _folder(folder)
    try:
        for name in TABLES:
            df = getattr(cap, name)
            if df is None:
                cf.remove(f"{name}.parquet")
                continue
            tmp = f".{name}.parquet.tmp"
            cf.remove(tmp)
            with cf.create(tmp) as f:
                df.to_parquet(f, index=False)
            cf.rename(tmp, f"{name}.parquet")
        cf.write_bytes(META, json.dumps(cap.meta, indent=1, default=str).encode())
        cf.remove(RUNNING)
        cf.hand_over()
    finally:
        if close:
            cf.close()
    cap.path = cf.path
    return cap


def read_meta(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    folder = Path(folder)
    meta_path = folder / META
    if not meta_path.is_file():
        if (folder / RUNNING).is_file():
            raise CaptureNotFound(
                f"{folder} holds a capture that did not finish saving (it is still running, "
                "or was killed): its raw tracer output is kept there; "
                f"`slabkit load --reparse {folder}` rebuilds the tables from it")
        raise CaptureNotFound(f"{folder} is not a slabkit capture (no {META})")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CaptureNotFound(f"{meta_path} is not valid JSON ({e})") from None


def load_folder(folder: Union[str, os.PathLike]) -> Capture:
    """Load one saved capture folder and check its tables against the schema."""
    folder = Path(folder)
    meta = read_meta(folder)
    tables: dict[str, pd.DataFrame | None] = {}
    for name in TABLES:
        p = folder / f"{name}.parquet"
        tables[name] = schema.validate(pd.read_parquet(p), name, source=str(p)) \
            if p.is_file() else None
    if tables["allocs"] is None or tables["frames"] is None:
        raise CaptureNotFound(f"{folder} lacks allocs.parquet or frames.parquet; "
                              f"`slabkit load --reparse {folder}` rebuilds them")
    return Capture(allocs=tables["allocs"], frames=tables["frames"], meta=meta,
                   outstanding=tables["outstanding"], slabinfo=tables["slabinfo"], path=folder)


def find_captures(where: Union[str, os.PathLike, Iterable, None] = None) -> list[Path]:
    """Capture folders under ``where`` (a folder, a glob, or a list of them)."""
    if where is None:
        where = default_base()
    items = [where] if isinstance(where, (str, os.PathLike)) else list(where)
    found: list[Path] = []
    for item in items:
        text = os.fspath(item)
        paths = [Path(p) for p in sorted(glob.glob(text))] if glob.has_magic(text) else [Path(text)]
        for p in paths:
            if (p / META).is_file() or (p / RUNNING).is_file():
                found.append(p)
            elif p.is_dir():
                found += sorted(q.parent for q in p.glob(f"*/{META}"))
                found += sorted(q.parent for q in p.glob(f"*/{RUNNING}")
                                if not (q.parent / META).exists())
    return found


def list_captures(where: Union[str, os.PathLike, Iterable, None] = None) -> pd.DataFrame:
    """One row per capture folder: path, cache, host, backend, start, duration, status, allocs."""
    rows = []
    for p in find_captures(where):
        try:
            meta = read_meta(p)
        except CaptureNotFound:
            rows.append({"path": str(p), "status": "unsaved"})
            continue
        rows.append({"path": str(p), "cache": meta.get("cache"), "host": meta.get("host"),
                     "backend": meta.get("backend"), "mode": meta.get("mode"),
                     "start": meta.get("start"), "duration_s": meta.get("duration_s"),
                     "status": meta.get("status"), "total_allocs": meta.get("total_allocs")})
    cols = ["path", "cache", "host", "backend", "mode", "start", "duration_s", "status",
            "total_allocs"]
    return pd.DataFrame(rows, columns=cols)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
