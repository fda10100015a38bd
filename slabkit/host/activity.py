"""Which caches are busy right now: allocation rates per cache over a short window.

``/proc/slabinfo`` shows how many objects a cache holds, not how often it allocates: a cache can
churn a million objects a second and stay flat. Where ``kmem:kmem_cache_alloc`` carries the
cache name (6.18+) a one-second bpftrace count gives real rates; elsewhere the best available
signal is the change in active objects between two slabinfo snapshots (``basis`` says which).
"""
from __future__ import annotations

import pandas as pd

from slabkit.errors import ProbeFailed
from slabkit.host.facts import gather_facts
from slabkit.host.target import Target, require_root
from slabkit.host.where import Where, as_target, legacy_target
from slabkit.validate import check_seconds

PROGRAM = ("tracepoint:kmem:kmem_cache_alloc { @[str(args->name)] = count(); }\n"
           "interval:s:{seconds} { exit(); }\n")


def cache_activity(seconds: float = 2.0, target: Where = None, **deprecated) -> pd.DataFrame:
    """Allocation activity per cache over ``seconds``, busiest first.

    Columns: name, allocs (events counted, or |change in active objects|), per_s, basis
    ("tracepoint" = every allocation counted; "slabinfo-delta" = net change only).
    """
    seconds = check_seconds(seconds, maximum=60)
    target = as_target(legacy_target(target, deprecated, func="cache_activity"))
    require_root(target, "measuring cache activity")
    facts = gather_facts(target)
    ev = facts.event("kmem/kmem_cache_alloc")
    if facts.tracers.get("bpftrace") and ev is not None and ev.has("name"):
        return _by_tracepoint(target, seconds)
    return _by_slabinfo(target, seconds)


def _by_tracepoint(target: Target, seconds: float) -> pd.DataFrame:
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
    df = pd.DataFrame(sorted(counts.items(), key=lambda kv: -kv[1]), columns=["name", "allocs"])
    df["per_s"] = df["allocs"] / secs
    df["basis"] = "tracepoint"
    return df


def _by_slabinfo(target: Target, seconds: float) -> pd.DataFrame:
    from slabkit.host.slabinfo import growth, sample
    series = sample(duration_s=seconds, interval_s=seconds, target=target)
    g = growth(series)
    out = pd.DataFrame({"name": g["name"], "allocs": g["delta_objs"].abs()})
    out["per_s"] = out["allocs"] / seconds
    out["basis"] = "slabinfo-delta"
    return out.sort_values("allocs", ascending=False, ignore_index=True)


def busiest_cache(seconds: float = 2.0, target: Where = None) -> str:
    """The name of the cache with the most allocation activity right now."""
    df = cache_activity(seconds, target)
    df = df[df["allocs"] > 0]
    if df.empty:
        return "filp"   # an idle machine: every open() allocates from filp
    return str(df.iloc[0]["name"])
