"""Captures of different hosts merged into one set of tables keep their stacks and symbols apart.

The live multi-host tests reach this machine twice, so both "hosts" have the same kernel and
the same symbols. Here the two really differ:

* a capture of this 6.18 VM (``data/samples/bpftrace-filp``) and a real SystemTap capture of
  Debian's 6.1 kernel (``tests/fixtures/stap/real-6.1-filp.txt``, in a capture folder of its
  own), each re-parsed from its raw output and loaded together;
* the same raw addresses on two hosts whose saved kernel symbols name them differently (the
  second host's ``kallsyms.txt.gz`` uses the pre-6.10 names, ``kmem_cache_alloc`` for
  ``kmem_cache_alloc_noprof``): each host's stacks must be resolved with its own symbols.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
from conftest import FIXTURES, SAMPLES

import slabkit
from slabkit.plan import Plan

SAMPLE = SAMPLES / "bpftrace-filp"
REAL_61 = FIXTURES / "stap" / "real-6.1-filp.txt"


def _stap_61_folder(folder: Path) -> Path:
    """A capture folder for the real 6.1 stap output, as a stap capture on that host saves it."""
    folder.mkdir()
    shutil.copy(REAL_61, folder / "stap.out")
    plan = Plan(cache="filp", requested="filp", kind="dedicated", strategy="kprobe-cachep",
                exact=True, reason="6.1: no name field; kprobes on kmem_cache_alloc*",
                functions=["kmem_cache_alloc", "kmem_cache_alloc_lru"], match_name="filp")
    meta = {"format": 1, "cache": "filp", "host": "deb61", "backend": "stap", "mode": "allocs",
            "kernel_release": "6.1.0-57-amd64", "plan": plan.to_json(), "slab_size": 256,
            "start": "2026-11-30T12:00:00+00:00", "status": "complete", "duration_s": 10.0,
            "total_allocs": 0, "losses": {}, "lost_total": 0, "notes": []}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def _stacks_by_host(cap) -> dict[str, dict[str, int]]:
    """host -> {stack text (function+offset, innermost first): count}."""
    text = (cap.frames.sort_values(["stack_id", "depth"])
            .assign(f=lambda d: d["function"].fillna("?") + "+" + d["offset"].astype(str))
            .groupby("stack_id")["f"].agg(" <- ".join))
    rows = cap.allocs[cap.allocs["stack_id"] >= 0]
    out: dict[str, dict[str, int]] = {}
    for (host, sid), n in rows.groupby(["host", "stack_id"])["count"].sum().items():
        d = out.setdefault(str(host), {})
        d[text[sid]] = d.get(text[sid], 0) + int(n)
    return out


def _assert_stack_ids_apart(cap) -> None:
    """Each stack id belongs to one host's allocation rows, and each has its frames."""
    rows = cap.allocs[cap.allocs["stack_id"] >= 0]
    hosts_per_id = rows.groupby("stack_id")["host"].nunique()
    assert (hosts_per_id == 1).all(), hosts_per_id[hosts_per_id > 1]
    assert set(rows["stack_id"]) <= set(cap.frames["stack_id"])


def test_two_kernels_merged_keep_their_stacks_and_symbols(tmp_path):
    vm = tmp_path / "vm"
    shutil.copytree(SAMPLE, vm)
    deb61 = _stap_61_folder(tmp_path / "deb61")
    alone = {"vm": slabkit.load(vm, reparse=True), "deb61": slabkit.load(deb61, reparse=True)}
    merged = slabkit.load([vm, deb61])
    assert set(merged.allocs["host"]) == {"vm", "deb61"} and merged.meta["merged"]
    _assert_stack_ids_apart(merged)
    # each host's stacks, with their counts, are exactly its own capture's
    by_host = _stacks_by_host(merged)
    for host, cap in alone.items():
        assert by_host[host] == _stacks_by_host(cap)[host], host
        assert (int(merged.allocs.loc[merged.allocs["host"] == host, "count"].sum())
                == int(cap.allocs["count"].sum()))
    # symbols: each kernel's allocator name and 6.1's __alloc_file stay on their own host
    functions = {h: {f.split("+")[0] for s in stacks for f in s.split(" <- ")}
                 for h, stacks in by_host.items()}
    assert "kmem_cache_alloc_noprof" in functions["vm"]
    assert "kmem_cache_alloc_noprof" not in functions["deb61"]
    assert {"kmem_cache_alloc", "__alloc_file"} <= functions["deb61"]
    assert not {"kmem_cache_alloc", "__alloc_file"} & functions["vm"]
    # pivots by host give each capture's own numbers
    sites = slabkit.matrix(merged, rows="host", cols="callsite")
    for host, cap in alone.items():
        own = slabkit.by_frame(cap)["count"]
        got = sites.loc[host]
        assert got[got > 0].to_dict() == own[own > 0].to_dict(), host


def _renamed_kallsyms(src: Path, dst: Path) -> dict[str, str]:
    """Copy a saved kallsyms, naming each ``*_noprof`` function as kernels before 6.10 do;
    returns old -> new names."""
    renamed = {}
    lines = []
    for line in gzip.open(src, "rt").read().splitlines():
        addr, kind, name, *rest = line.split()
        if name.endswith("_noprof"):
            renamed[name] = name[: -len("_noprof")]
            name = renamed[name]
        lines.append(" ".join([addr, kind, name, *rest]))
    with gzip.open(dst, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return renamed


def test_the_same_addresses_resolve_through_each_hosts_own_symbols(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(SAMPLE, a)
    shutil.copytree(SAMPLE, b)
    meta = json.loads((b / "meta.json").read_text())
    meta["host"] = "other"
    (b / "meta.json").write_text(json.dumps(meta))
    renamed = _renamed_kallsyms(a / "kallsyms.txt.gz", b / "kallsyms.txt.gz")
    assert "kmem_cache_alloc_noprof" in renamed
    merged = slabkit.load([a, b], reparse=True)
    assert set(merged.allocs["host"]) == {"vm", "other"}
    _assert_stack_ids_apart(merged)
    frames = merged.frames.merge(
        merged.allocs[["stack_id", "host"]].drop_duplicates(), on="stack_id")
    # one address, two names: each host's frames carry what its own kallsyms says
    names = frames.groupby(["host", "address"])["function"].agg(set)
    both = set(names.loc["vm"].index) & set(names.loc["other"].index)
    assert both, "the two hosts' stacks share no address"
    for addr in both:
        mine, theirs = names.loc[("vm", addr)], names.loc[("other", addr)]
        assert len(mine) == 1 and len(theirs) == 1
        (f,), (g,) = mine, theirs
        assert g == renamed.get(f, f), (hex(addr), f, g)
    assert "kmem_cache_alloc_noprof" not in set(frames.loc[frames["host"] == "other", "function"])
    by = slabkit.by_frame(merged, keep_allocator=True)["count"]
    half = int(merged.allocs["count"].sum()) // 2
    assert by.get("kmem_cache_alloc_noprof") == by.get("kmem_cache_alloc") == half
    pd.testing.assert_series_equal(
        merged.allocs[merged.allocs["host"] == "vm"].groupby("comm")["count"].sum(),
        merged.allocs[merged.allocs["host"] == "other"].groupby("comm")["count"].sum())
