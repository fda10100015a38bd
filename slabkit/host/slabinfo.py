"""The slab cache table: ``/proc/slabinfo`` parsed, then enriched from ``/sys/kernel/slab``.

:func:`caches` returns one row per cache that ``/proc/slabinfo`` lists:

================  ========  ==================================================================
column            dtype     meaning
================  ========  ==================================================================
name              string    cache name as ``/proc/slabinfo`` (and the tracepoints) report it
active_objs       Int64     objects in use (SLUB: objects on per-cpu slabs count as in use)
num_objs          Int64     object slots in the cache's slabs
objsize           Int64     bytes per slot (SLUB: ``slab_size``, object plus metadata/padding)
objperslab        Int64     slots per slab
pagesperslab      Int64     pages per slab (``2 ** order``)
active_slabs      Int64     slabs in use (SLUB: same as num_slabs)
num_slabs         Int64     slabs the cache holds
memory_bytes      Int64     ``num_slabs * pagesperslab * page_size``
active_bytes      Int64     ``active_objs * objsize``
utilisation       Float64   ``active_objs / num_objs``; NA for an empty cache
kind              string    ``dedicated``, ``kmalloc`` or ``bucket`` (see :func:`caches`)
kmalloc_type      string    ``normal``, ``cg``, ``rcl``, ``dma`` or ``rnd``; NA unless kmalloc
size_class        Int64     kmalloc/bucket size in bytes (``kmalloc-1k`` -> 1024); NA otherwise
object_size       Int64     ``/sys/kernel/slab/<name>/object_size``: bytes the caller gets
slab_size         Int64     ``/sys/kernel/slab/<name>/slab_size``: bytes per slot
order             Int64     ``/sys/kernel/slab/<name>/order``
reclaim_account   boolean   ``/sys/kernel/slab/<name>/reclaim_account`` (counted in SReclaimable)
merged_dir        string    the ``:[flags-]<size>`` directory a mergeable cache lives in, else NA
aliases           object    list of the other cache names merged into this one (``[]`` if none)
================  ========  ==================================================================

The ``/sys/kernel/slab`` columns are NA where that folder is missing (SLAB kernels before 6.8,
a saved slabinfo file) or lacks the cache.

.. warning:: **Merged caches.** With SLUB merging (the default) several caches share one: their
   ``/sys/kernel/slab/<name>`` entries are symlinks to the same ``:A-0000192``-style directory,
   and ``/proc/slabinfo`` and the ``kmem`` tracepoints report only the first-created name
   (``cred`` arrives as ``pid``). Use :func:`resolve_cache` to map a name a user typed to the
   name the kernel reports, and tell the user what else shares it.
"""
from __future__ import annotations

import difflib
import os
import posixpath
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from slabkit.errors import (
    InvalidInput,
    ParseError,
    PermissionNeeded,
    SlabkitError,
    UnknownCache,
)
from slabkit.host.target import Target
from slabkit.host.where import Where, as_target, legacy_target
from slabkit.validate import check_cache_name, check_seconds

SLABINFO = "/proc/slabinfo"
SYS_SLAB = "/sys/kernel/slab"

COUNT_COLUMNS = ("active_objs", "num_objs", "objsize", "objperslab", "pagesperslab",
                 "active_slabs", "num_slabs")
SYSFS_COLUMNS = ("object_size", "slab_size", "order", "reclaim_account")
CACHE_COLUMNS = ["name", *COUNT_COLUMNS, "memory_bytes", "active_bytes", "utilisation", "kind",
                 "kmalloc_type", "size_class", *SYSFS_COLUMNS, "merged_dir", "aliases"]

# A data line (SLUB, 6.18) and the name of each number, in order:
#   pid  357 357 192 21 1 : tunables 0 0 0 : slabdata 17 17 0
#   name, active_objs num_objs objsize objperslab pagesperslab,
#   tunables: limit batchcount sharedfactor (SLAB only), slabdata: active_slabs num_slabs sharedavail
# SLAB kernels with statistics append ": globalstat ..." and ": cpustat ..."; we ignore them.
_LINE_RE = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<counts>(?:\S+\s+){4}\S+)\s+:\s+tunables\s+(?:\S+\s+){2}\S+"
    r"\s+:\s+slabdata\s+(?P<slabdata>\S+\s+\S+)\s+\S+")
_LINE_FORMAT = ("'<name> <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : "
                "tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> "
                "<num_slabs> <sharedavail>'")
_VERSION_RE = re.compile(r"^slabinfo - version: 2\.1\b")  # SLUB and SLAB since 2.6.10

# kmalloc cache names, newest first. Sizes are N, Nk or NM bytes.
_KMALLOC_NAMES = (
    (re.compile(r"^kmalloc-(\d+[kM]?)$"), "normal"),
    (re.compile(r"^kmalloc-cg-(\d+[kM]?)$"), "cg"),            # 5.14+, __GFP_ACCOUNT
    (re.compile(r"^kmalloc-rcl-(\d+[kM]?)$"), "rcl"),          # 4.20+, __GFP_RECLAIMABLE
    (re.compile(r"^dma-kmalloc-(\d+[kM]?)$"), "dma"),          # __GFP_DMA
    (re.compile(r"^kmalloc-rnd-\d+-(\d+[kM]?)$"), "rnd"),      # 6.6+, RANDOM_KMALLOC_CACHES
    (re.compile(r"^size-(\d+)$"), "normal"),                   # SLAB up to 3.9
    (re.compile(r"^size-(\d+)\(DMA\)$"), "dma"),
)
_SIZED_NAME_RE = re.compile(r"^(?P<base>.+)-(?P<size>\d+[kM]?)$")


def _size_bytes(text: str) -> int:
    """``"96"`` -> 96, ``"1k"`` -> 1024, ``"4M"`` -> 4194304 (kmalloc name suffixes)."""
    scale = {"k": 1024, "M": 1024 * 1024}.get(text[-1], 1)
    return int(text.rstrip("kM")) * scale


def kmalloc_class(name: str) -> tuple[str, int] | None:
    """The kmalloc type and size of a kmalloc cache name, or None for any other cache.

    >>> kmalloc_class("kmalloc-cg-1k"), kmalloc_class("kmalloc-rnd-03-64"), kmalloc_class("pid")
    (('cg', 1024), ('rnd', 64), None)
    """
    for regex, kind in _KMALLOC_NAMES:
        m = regex.match(name)
        if m:
            return kind, _size_bytes(m.group(1))
    return None


# --- /proc/slabinfo ------------------------------------------------------------------------

def parse_rows(text: str, *, source: str = SLABINFO) -> list[dict]:
    """Parse ``/proc/slabinfo`` (version 2.1) into plain rows: ``name`` and the counts of the
    file. Raises :class:`~slabkit.errors.ParseError` (file, line number, line) for a wrong
    version line, a truncated row or a non-numeric field."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if not _VERSION_RE.match(first):
        raise ParseError("expected the first line 'slabinfo - version: 2.1'",
                         path=source, lineno=1, line=first)
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip() or line.startswith("#"):
            continue
        m = _LINE_RE.match(line)
        if not m:
            raise ParseError(f"truncated or malformed cache line, expected {_LINE_FORMAT}",
                             path=source, lineno=lineno, line=line)
        fields = m.group("counts").split() + m.group("slabdata").split()
        row: dict = {"name": m.group("name")}
        for column, value in zip(COUNT_COLUMNS, fields):
            if not value.isdigit():
                raise ParseError(f"{column} is {value!r}, expected a whole number",
                                 path=source, lineno=lineno, line=line)
            row[column] = int(value)
        rows.append(row)
    return rows


def parse_slabinfo(text: str, *, source: str = SLABINFO, page_size: int = 4096):
    """Parse ``/proc/slabinfo`` (version 2.1) into a DataFrame, one row per cache.

    Columns: ``name`` and the counts of the file (see the module table), plus ``memory_bytes``,
    ``active_bytes`` and ``utilisation``. Raises :class:`~slabkit.errors.ParseError` (file, line
    number, line) for a wrong version line, a truncated row or a non-numeric field.

    >>> df = parse_slabinfo("slabinfo - version: 2.1\\n"
    ...     "pid 357 357 192 21 1 : tunables 0 0 0 : slabdata 17 17 0\\n")
    >>> int(df.loc[0, "memory_bytes"])  # 17 slabs * 1 page * 4096
    69632
    """
    return _frame_of_rows(parse_rows(text, source=source), page_size)


def _frame_of_rows(rows: list[dict], page_size: int):
    import pandas as pd
    df = pd.DataFrame(rows, columns=["name", *COUNT_COLUMNS])
    df = df.astype({"name": "string", **{c: "Int64" for c in COUNT_COLUMNS}})
    df["memory_bytes"] = df["num_slabs"] * df["pagesperslab"] * page_size
    df["active_bytes"] = df["active_objs"] * df["objsize"]
    num = df["num_objs"].astype("Float64")
    df["utilisation"] = (df["active_objs"].astype("Float64") / num).where(num > 0, pd.NA)
    return df


def _open(where: object) -> tuple[Target | None, str | None]:
    """(target, None) for a root or target; (None, path) for a saved slabinfo file."""
    if where is None or isinstance(where, Target):
        return as_target(where), None
    path = os.fspath(where)  # type: ignore[arg-type]
    if os.path.isfile(path):
        return None, path
    ssh = path.startswith("ssh://") or ("@" in path and not path.startswith("/"))
    if not ssh and not os.path.exists(path):
        raise InvalidInput(f"{path!r} does not exist: pass a saved copy of /proc/slabinfo, "
                           "a root folder, or '/' for this machine")
    return as_target(path), None


def _saved_rows(path: str) -> list[dict]:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except PermissionError:
        raise PermissionNeeded(f"cannot read {path}: permission denied") from None
    return parse_rows(text, source=str(path))


def _read_text(where: Target) -> tuple[str, str]:
    """(``/proc/slabinfo`` text, its name for messages) of a target."""
    try:
        text = where.read_text(SLABINFO)
    except PermissionError:
        on = "" if where.name == "local" else f" on {where.name}"
        raise PermissionNeeded(f"reading {SLABINFO}{on} needs root") from None
    except FileNotFoundError:
        raise SlabkitError(
            f"{SLABINFO} does not exist on {where.name}: this kernel does not list its slab "
            "caches (SLUB kernels need CONFIG_SLUB_DEBUG for it)") from None
    return text, SLABINFO if where.name == "local" else f"{where.name}:{SLABINFO}"


def read_slabinfo(target: Where = None, *, page_size: int | None = None, **deprecated):
    """The :func:`parse_slabinfo` table of a target, or of a saved copy of ``/proc/slabinfo``.

    A path to a regular file is parsed as a saved copy (``page_size`` defaults to this
    machine's); anything else is a root or target whose ``/proc/slabinfo`` is read (through
    slabkit's capture helper for a user who may use it but may not read the file).

    >>> read_slabinfo("tests/fixtures/slabinfo/proc/slabinfo").shape[1]
    11
    """
    where, saved = _open(legacy_target(target, deprecated, func="read_slabinfo",
                                       names=("root", "root_or_file")))
    if where is None:
        return _frame_of_rows(_saved_rows(str(saved)), page_size or os.sysconf("SC_PAGE_SIZE"))
    try:
        text, source = _read_text(where)
    except PermissionNeeded:
        from slabkit.host.helper import Helper
        helper = Helper(where)
        if helper.unavailable():
            raise
        text, source = helper.slabinfo_text(), SLABINFO
    return parse_slabinfo(text, source=source, page_size=page_size or where.page_size())


# --- /sys/kernel/slab ----------------------------------------------------------------------

def _read_sysfs(target: Target | None, names: list[str]) -> tuple[dict, dict]:
    """(entries, attrs): ``entries`` maps every /sys/kernel/slab name to its merged directory
    (None for a real directory); ``attrs[(name, attr)]`` holds the int value or None."""
    if target is None:
        return {}, {}
    try:
        links = target.readlinks(SYS_SLAB)
    except OSError:  # SLAB kernels, no sysfs in a fake root
        return {}, {}
    entries = {n: (posixpath.basename(t.rstrip("/")) if t else None) for n, t in links.items()}
    present = [n for n in names if n in entries]
    paths = {(n, a): f"{SYS_SLAB}/{n}/{a}" for n in present for a in SYSFS_COLUMNS}
    texts = target.read_many(list(paths.values()))
    attrs = {}
    for key, path in paths.items():
        text = (texts.get(path) or "").split()
        attrs[key] = int(text[0]) if text and text[0].isdigit() else None
    return entries, attrs


def bucket_caches(object_sizes: dict[str, int | None]) -> set[str]:
    """The names among ``object_sizes`` (cache name -> object size) that are slab buckets.

    Slab buckets (6.11+, ``CONFIG_SLAB_BUCKETS``) carry no marker of their own in
    ``/proc/slabinfo`` or ``/sys/kernel/slab``, so this is a heuristic. A non-kmalloc name
    ``<base>-<N>`` (N in bytes, ``Nk`` or ``NM``) is a bucket when N is the size of one of the
    kernel's kmalloc caches in ``object_sizes``, the cache's object size is exactly N, and at
    least one other ``<base>-<M>`` passes the same tests (``kmem_buckets_create`` makes one cache
    per kmalloc size). This keeps ``bio-312`` (312 is no kmalloc size) and ``erofs_pcluster-16``
    (376-byte objects) dedicated. Limits: two ordinary caches named like ``foo-64`` and
    ``foo-128`` holding exactly 64 and 128 bytes would be called buckets; a kernel whose
    kmalloc caches all hide in merged names has no sizes to match.

    >>> sorted(bucket_caches({"kmalloc-96": 96, "kmalloc-1k": 1024, "msg_msg-96": 96,
    ...                       "msg_msg-1k": 1024, "bio-312": 312}))
    ['msg_msg-1k', 'msg_msg-96']
    """
    kmalloc_sizes = {k[1] for k in map(kmalloc_class, object_sizes) if k}
    families: dict[str, list[str]] = {}
    for name, object_size in object_sizes.items():
        m = _SIZED_NAME_RE.match(name)
        if m and kmalloc_class(name) is None:
            size = _size_bytes(m.group("size"))
            if size in kmalloc_sizes and object_size == size:
                families.setdefault(m.group("base"), []).append(name)
    # kmem_buckets_create() makes one cache per kmalloc size (8 .. 8k: 11+ of them); a pair or
    # so of same-family sizes is an ordinary cache family (bio-192 and bio-256 on 6.1, which
    # has no buckets at all), not a bucket set.
    need = max(2, min(len(kmalloc_sizes) // 2, 6))
    return {name for family in families.values() if len(family) >= need for name in family}


def _aliases(name: str, entries: dict[str, str | None],
             by_dir: dict[str, list[str]]) -> list[str] | None:
    if name not in entries:
        return None  # no /sys/kernel/slab entry: unknown, not "none"
    merged = entries[name]
    return sorted(set(by_dir[merged]) - {name}) if merged else []


def records_from(rows: list[dict], page_size: int, entries: dict[str, str | None],
                 attrs: dict) -> list[dict]:
    """Cache records (plain dicts with the :data:`CACHE_COLUMNS`, None where unknown) from
    slabinfo rows (:func:`parse_rows`) and the ``/sys/kernel/slab`` facts of :func:`_read_sysfs`."""
    by_dir: dict[str, list[str]] = {}
    for entry, merged in entries.items():
        if merged:
            by_dir.setdefault(merged, []).append(entry)
    out = []
    for row in rows:
        name = row["name"]
        rec = dict(row)
        rec["memory_bytes"] = row["num_slabs"] * row["pagesperslab"] * page_size
        rec["active_bytes"] = row["active_objs"] * row["objsize"]
        rec["utilisation"] = (row["active_objs"] / row["num_objs"]) if row["num_objs"] else None
        for col in SYSFS_COLUMNS:
            rec[col] = attrs.get((name, col))
        if rec["reclaim_account"] is not None:
            rec["reclaim_account"] = bool(rec["reclaim_account"])
        rec["merged_dir"] = entries.get(name)
        rec["aliases"] = _aliases(name, entries, by_dir)
        out.append(rec)
    # Without /sys/kernel/slab, slabinfo's slot size stands in for the object size.
    buckets = bucket_caches({r["name"]: r["object_size"] if r["object_size"] is not None
                             else r["objsize"] for r in out})
    for rec in out:
        km = kmalloc_class(rec["name"])
        if km:
            kind, size = "kmalloc", km[1]
        elif rec["name"] in buckets:
            kind, size = "bucket", _size_bytes(_SIZED_NAME_RE.match(rec["name"]).group("size"))
        else:
            kind, size = "dedicated", None
        rec.update(kind=kind, kmalloc_type=km[0] if km else None, size_class=size)
    return [{c: rec[c] for c in CACHE_COLUMNS} for rec in out]


def cache_records(target: Where = None) -> list[dict]:
    """The slab cache table as plain records (no pandas): what :func:`caches` shows, and what
    slabkit's capture helper hands to users who may not read ``/proc/slabinfo`` themselves.

    ``target``: as for :func:`caches`. Raises PermissionNeeded where ``/proc/slabinfo`` is not
    readable (not root)."""
    where, saved = _open(target)
    if where is None:
        rows, page_size = _saved_rows(saved), os.sysconf("SC_PAGE_SIZE")
        return records_from(rows, page_size, {}, {})
    text, source = _read_text(where)
    rows = parse_rows(text, source=source)
    entries, attrs = _read_sysfs(where, [r["name"] for r in rows])
    return records_from(rows, where.page_size(), entries, attrs)


def table_of(records: list[dict]):
    """The :func:`caches` DataFrame of cache records (dtypes of the module table)."""
    import pandas as pd
    df = pd.DataFrame(records, columns=CACHE_COLUMNS)
    ints = [*COUNT_COLUMNS, "memory_bytes", "active_bytes", "object_size", "slab_size",
            "order", "size_class"]
    df = df.astype({**{c: "Int64" for c in ints}, "utilisation": "Float64",
                    "reclaim_account": "boolean", "name": "string", "kind": "string",
                    "kmalloc_type": "string", "merged_dir": "string"})
    df["aliases"] = [r["aliases"] if isinstance(r["aliases"], list) else pd.NA for r in records]
    return df


def caches(target: Where = None, **deprecated):
    """The slab cache table: ``/proc/slabinfo`` plus ``/sys/kernel/slab`` facts, a DataFrame.

    ``target`` is None (this machine), a fake root folder, an SSH destination, a
    :class:`~slabkit.host.target.Target`, or a saved slabinfo file (then the
    ``/sys/kernel/slab`` columns are NA). Columns: see the module docs. Kinds: ``kmalloc`` from
    the name (:func:`kmalloc_class`), ``bucket`` by the rule of :func:`bucket_caches`, else
    ``dedicated``. A user who may not read ``/proc/slabinfo`` gets it through slabkit's capture
    helper where that is installed for them (:mod:`slabkit.host.helper`).

    >>> df = caches("tests/fixtures/slabinfo").set_index("name")
    >>> df.loc["pid", "aliases"], int(df.loc["kmalloc-cg-1k", "size_class"])
    (['cred'], 1024)
    """
    target = legacy_target(target, deprecated, func="caches")
    return table_of(_records_or_helper(target))


def _records_or_helper(target: Where) -> list[dict]:
    """:func:`cache_records`, or the capture helper's copy of them when this user may not read
    ``/proc/slabinfo`` but may use the helper."""
    try:
        return cache_records(target)
    except PermissionNeeded as e:
        from slabkit.host.helper import Helper
        where, saved = _open(target)
        if where is None:
            raise
        helper = Helper(where)
        if helper.unavailable():
            raise PermissionNeeded(f"{e}; or {helper.unavailable()}") from None
        return helper.cache_records()


# --- resolving a name the user typed ---------------------------------------------------------

@dataclass(frozen=True)
class ResolvedCache:
    """A cache name resolved against the running kernel (see :func:`resolve_cache`)."""

    name: str                    # the name /proc/slabinfo and the tracepoints report
    requested: str               # what the user typed
    via_alias: bool              # True when ``requested`` is merged into ``name``
    aliases: tuple[str, ...]     # every other name merged into ``name`` (incl. ``requested``)
    kind: str
    kmalloc_type: str | None
    size_class: int | None
    object_size: int | None
    slab_size: int | None

    @property
    def message(self) -> str:
        """One or two sentences for the user on what they will see and why."""
        if self.via_alias:
            others = [a for a in (self.name, *self.aliases) if a != self.requested]
            text = (f"{self.requested!r} is merged into {self.name!r} (shares with: "
                    f"{', '.join(others)}): the kernel reports its allocations under "
                    f"{self.name!r}")
        elif self.aliases:
            text = (f"{self.name!r} is shared with {', '.join(self.aliases)}: the kernel "
                    f"reports their allocations under {self.name!r} too")
        else:
            text = f"{self.name!r} is not merged with any other cache"
        if self.kind != "dedicated":
            text += (f"; it is a {self.kind} cache: its allocations fire kmem:kmalloc, which "
                     "does not name the cache, so they are attributed by size and flags")
        return text


def optional_int(value) -> int | None:
    """``value`` as an int, or None where it is missing (None, NaN, pandas' NA)."""
    if value is None or value != value:  # None, NaN
        return None
    try:
        return int(value)
    except (TypeError, ValueError):   # pandas' NA
        return None


def resolve(records: list[dict], name: str) -> ResolvedCache:
    """Resolve ``name`` against cache records (:func:`cache_records`); see :func:`resolve_cache`."""
    name = check_cache_name(name)
    rec = next((r for r in records if r["name"] == name), None)
    via_alias = False
    if rec is None:
        rec = next((r for r in records if isinstance(r.get("aliases"), list)
                    and name in r["aliases"]), None)
        via_alias = True
    if rec is None:
        known = [r["name"] for r in records] + [a for r in records
                                                  if isinstance(r.get("aliases"), list)
                                                  for a in r["aliases"]]
        raise UnknownCache(name, close=difflib.get_close_matches(name, known, n=5))
    aliases = rec["aliases"] if isinstance(rec.get("aliases"), list) else []
    ktype = rec.get("kmalloc_type")
    return ResolvedCache(
        name=str(rec["name"]), requested=name, via_alias=via_alias, aliases=tuple(aliases),
        kind=str(rec["kind"]), kmalloc_type=ktype if isinstance(ktype, str) else None,
        size_class=optional_int(rec.get("size_class")), object_size=optional_int(rec.get("object_size")),
        slab_size=optional_int(rec.get("slab_size")))


def resolve_cache(name: str, target: Where = None, *, table=None,
                  **deprecated) -> ResolvedCache:
    """Map a cache name (a slabinfo name or an alias of a merged cache) to the kernel's name.

    ``table`` is a :func:`caches` table (or :func:`cache_records`) of the same target already
    read (saves reading it again). Raises :class:`~slabkit.errors.InvalidInput` for characters
    no cache name has and :class:`~slabkit.errors.UnknownCache` (with close matches) for a
    name this kernel lacks.

    >>> r = resolve_cache("cred", "tests/fixtures/slabinfo")
    >>> r.name, r.via_alias
    ('pid', True)
    """
    check_cache_name(name)
    target = legacy_target(target, deprecated, func="resolve_cache")
    if table is None:
        records = _records_or_helper(target)
    elif isinstance(table, list):
        records = table
    else:
        records = table.to_dict("records")
    return resolve(records, name)


# --- sampling over time -------------------------------------------------------------------

SERIES_COLUMNS = ("time_s", "name", "active_objs", "num_objs", "memory_bytes", "active_bytes")


def sample(duration_s: float, interval_s: float = 1.0, target: Where = None,
           names: list[str] | None = None,
           on_sample: Callable[[int, int], None] | None = None, **deprecated):
    """Snapshot ``/proc/slabinfo`` every ``interval_s`` for ``duration_s`` (first one at 0).

    Returns a long table: ``time_s`` (Float64, seconds since the first snapshot), ``name``,
    ``active_objs``, ``num_objs``, ``memory_bytes``, ``active_bytes``. ``names`` (slabinfo names
    or aliases, which map to their slabinfo name) limits the rows. ``on_sample(i, n)`` is called
    after snapshot ``i`` of ``n`` (1-based) for progress.

    >>> series = sample(1, 0.5, target="tests/fixtures/slabinfo", names=["cred"])
    >>> series["name"].unique().tolist(), len(series)  # cred counts under pid; 0, 0.5, 1 s
    (['pid'], 3)
    """
    duration_s = check_seconds(duration_s, what="duration")
    interval_s = check_seconds(interval_s, what="interval")
    if interval_s > duration_s:
        raise InvalidInput(f"interval of {interval_s:g} s is longer than the duration of "
                           f"{duration_s:g} s")
    target = as_target(legacy_target(target, deprecated, func="sample"))
    page_size = target.page_size()
    import pandas as pd
    wanted = None
    if names is not None:
        records = _records_or_helper(target)
        wanted = {resolve(records, n).name for n in names}
    count = int(duration_s / interval_s + 1e-9) + 1
    frames = []
    start = time.monotonic()
    for i in range(count):
        delay = start + i * interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.monotonic() - start
        df = read_slabinfo(target, page_size=page_size)
        if wanted is not None:
            df = df[df["name"].isin(wanted)]
        df = df[list(SERIES_COLUMNS[1:])]
        df.insert(0, "time_s", pd.array([now] * len(df), dtype="Float64"))
        frames.append(df)
        if on_sample:
            on_sample(i + 1, count)
    return pd.concat(frames, ignore_index=True)


def growth(series):
    """Per cache: first and last ``active_objs`` and ``memory_bytes`` of a :func:`sample`
    series, their change, and the change per second; fastest growing (bytes) first.

    Columns: name, first_active_objs, last_active_objs, first_memory_bytes, last_memory_bytes,
    delta_objs, delta_bytes (memory), seconds, objs_per_s, bytes_per_s (NA over 0 seconds).

    >>> series = sample(1, 0.5, target="tests/fixtures/slabinfo", names=["pid"])
    >>> growth(series)[["name", "delta_objs"]].to_dict("records")  # a saved file never grows
    [{'name': 'pid', 'delta_objs': 0}]
    """
    import pandas as pd
    missing = [c for c in SERIES_COLUMNS if c not in series.columns]
    if missing:
        raise InvalidInput(f"growth() needs a sample() series; this one lacks {missing}")
    ordered = series.sort_values("time_s", kind="stable").groupby("name", sort=False)
    first, last = ordered.first(), ordered.last()
    out = pd.DataFrame({
        "first_active_objs": first["active_objs"], "last_active_objs": last["active_objs"],
        "first_memory_bytes": first["memory_bytes"], "last_memory_bytes": last["memory_bytes"],
    })
    out["delta_objs"] = out["last_active_objs"] - out["first_active_objs"]
    out["delta_bytes"] = out["last_memory_bytes"] - out["first_memory_bytes"]
    seconds = (last["time_s"] - first["time_s"]).astype("Float64")
    out["seconds"] = seconds
    span = seconds.where(seconds > 0, pd.NA)
    out["objs_per_s"] = out["delta_objs"].astype("Float64") / span
    out["bytes_per_s"] = out["delta_bytes"].astype("Float64") / span
    out = out.reset_index().astype({"name": "string"})
    return out.sort_values(["bytes_per_s", "delta_objs"], ascending=False, kind="stable",
                           na_position="last").reset_index(drop=True)
