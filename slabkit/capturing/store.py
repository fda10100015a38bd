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

from slabkit.capturing.folder import CaptureFolder, FolderExists
from slabkit.errors import CaptureNotFound, InvalidInput, ParseError
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
        except FolderExists:
            continue          # the name is taken (even by a symlink): the next one
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
    schema.validate_meta(cap.meta, source="the capture's meta")
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


def read_json(cf: CaptureFolder, name: str, *, saved: bool) -> dict[str, Any]:
    """``name`` (meta.json or meta.running.json) of an open folder, read without following a
    symlink and checked against the meta schema (:func:`slabkit.model.schema.validate_meta`)."""
    path = cf.path / name
    try:
        with cf.open_file(name) as f:
            data = f.read()
    except FileNotFoundError:
        raise CaptureNotFound(f"{cf.path} is not a slabkit capture (no {name})") from None
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ParseError(f"not valid JSON ({e}): the capture's record is damaged; restore "
                         "it from a copy", path=str(path)) from None
    return schema.validate_meta(meta, source=str(path), saved=saved)


def read_meta(folder: Union[str, os.PathLike, CaptureFolder]) -> dict[str, Any]:
    """A saved capture's ``meta.json``, checked against the meta schema."""
    cf, close = _folder(folder)
    try:
        if not cf.exists(META):
            if cf.exists(RUNNING):
                raise CaptureNotFound(
                    f"{cf.path} holds a capture that did not finish saving (it is still "
                    "running, or was killed): its raw tracer output is kept there; "
                    f"`slabkit show --reparse {cf.path}` rebuilds the tables from it")
            raise CaptureNotFound(f"{cf.path} is not a slabkit capture (no {META})")
        return read_json(cf, META, saved=True)
    finally:
        if close:
            cf.close()


def read_table(cf: CaptureFolder, name: str) -> pd.DataFrame | None:
    """Table ``name`` of an open capture folder (None where it has none), checked against the
    schema; a damaged file is a :class:`~slabkit.errors.ParseError` saying what to run."""
    import pyarrow as pa
    path = cf.path / f"{name}.parquet"
    try:
        with cf.open_file(f"{name}.parquet") as f:
            df = pd.read_parquet(f)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError, ValueError) as e:
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ParseError(f"not a readable parquet table ({why}): `slabkit show --reparse "
                         f"{cf.path}` rebuilds it from the raw tracer output",
                         path=str(path)) from None
    return schema.validate(df, name, source=str(path))


def load_folder(folder: Union[str, os.PathLike]) -> Capture:
    """Load one saved capture folder and check its meta and tables against the schema."""
    with CaptureFolder.open(Path(folder)) as cf:
        meta = read_meta(cf)
        tables = {name: read_table(cf, name) for name in TABLES}
        if tables["allocs"] is None or tables["frames"] is None:
            raise CaptureNotFound(f"{cf.path} lacks allocs.parquet or frames.parquet; "
                                  f"`slabkit show --reparse {cf.path}` rebuilds them")
    return Capture(allocs=tables["allocs"], frames=tables["frames"], meta=meta,
                   outstanding=tables["outstanding"], slabinfo=tables["slabinfo"],
                   path=Path(folder))


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
        except (ParseError, InvalidInput):
            rows.append({"path": str(p), "status": "damaged"})
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
