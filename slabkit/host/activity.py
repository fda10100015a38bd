"""Which caches are busy right now: allocation rates per cache over a short window.

``/proc/slabinfo`` shows how many objects a cache holds, not how often it allocates: a cache can
churn a million objects a second and stay flat. Where ``kmem:kmem_cache_alloc`` carries the
cache name (6.18+) a one-second bpftrace count gives real rates; elsewhere the best available
signal is the change in active objects between two slabinfo snapshots (``basis`` says which).
"""
from __future__ import annotations

from slabkit.errors import PermissionNeeded, ProbeFailed
from slabkit.host.facts import gather_facts
from slabkit.host.target import Target
from slabkit.host.where import Where, as_target, legacy_target
from slabkit.validate import check_seconds

PROGRAM = ("tracepoint:kmem:kmem_cache_alloc { @[str(args->name)] = count(); }\n"
           "interval:s:{seconds} { exit(); }\n")


def activity_records(seconds: float, target: Target) -> list[dict]:
    """Allocation activity per cache over ``seconds`` on ``target`` (root), busiest first, as
    records: name, allocs, per_s, basis (see :func:`cache_activity`)."""
    facts = gather_facts(target)
    ev = facts.event("kmem/kmem_cache_alloc")
    if facts.tracers.get("bpftrace") and ev is not None and ev.has("name"):
        return _by_tracepoint(target, seconds)
    return _by_slabinfo(target, seconds)


def cache_activity(seconds: float = 2.0, target: Where = None, **deprecated):
    """Allocation activity per cache over ``seconds``, busiest first (a DataFrame).

    Columns: name, allocs (events counted, or |change in active objects|), per_s, basis
    ("tracepoint" = every allocation counted; "slabinfo-delta" = net change only). Needs root,
    or slabkit's capture helper for a user who may use it.
    """
    import pandas as pd
    seconds = check_seconds(seconds, maximum=60)
    target = as_target(legacy_target(target, deprecated, func="cache_activity"))
    if target.is_root():
        records = activity_records(seconds, target)
    else:
        from slabkit.host.helper import Helper
        helper = Helper(target)
        why = helper.unavailable()
        if why:
            raise PermissionNeeded(f"measuring cache activity needs root or the capture "
                                   f"helper: {why}")
        records = helper.activity(seconds)
    return pd.DataFrame(records, columns=["name", "allocs", "per_s", "basis"])


def _by_tracepoint(target: Target, seconds: float) -> list[dict]:
    import json
    secs = max(1, int(round(seconds)))
    res = target.run(["bpftrace", "-f", "json", "-e", PROGRAM.replace("{seconds}", str(secs))],
                     timeout=secs + 60)
    counts: dict[str, int] = {}
    for line in res.stdout.splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if doc.get("type") == "map":
            for data in doc["data"].values():
                counts.update({k: int(v) for k, v in data.items()})
    if res.returncode != 0 and not counts:
        raise ProbeFailed("bpftrace could not count allocations per cache",
                          returncode=res.returncode, stderr=res.stderr)
    return [{"name": k, "allocs": v, "per_s": v / secs, "basis": "tracepoint"}
            for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]


def _by_slabinfo(target: Target, seconds: float) -> list[dict]:
    import time

    from slabkit.host.slabinfo import SLABINFO, parse_rows
    first = {r["name"]: r["active_objs"] for r in parse_rows(target.read_text(SLABINFO))}
    time.sleep(seconds)
    last = {r["name"]: r["active_objs"] for r in parse_rows(target.read_text(SLABINFO))}
    rows = [{"name": n, "allocs": abs(last[n] - first.get(n, 0)),
             "per_s": abs(last[n] - first.get(n, 0)) / seconds, "basis": "slabinfo-delta"}
            for n in last]
    return sorted(rows, key=lambda r: -r["allocs"])


def busiest_cache(seconds: float = 2.0, target: Where = None) -> str:
    """The name of the cache with the most allocation activity right now."""
    df = cache_activity(seconds, target)
    df = df[df["allocs"] > 0]
    if df.empty:
        return "filp"   # an idle machine: every open() allocates from filp
    return str(df.iloc[0]["name"])
