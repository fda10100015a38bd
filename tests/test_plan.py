"""The probe planner on facts recorded from real kernels (6.1, 6.12 under QEMU; this 6.18)."""
from __future__ import annotations

import pytest
from kernel_tree import KERNELS, build_root, kernel_dirs

from slabkit.backends import Options
from slabkit.backends._common import tracefs_filter
from slabkit.backends.bpftrace import render_program
from slabkit.errors import InvalidInput, TracerUnavailable
from slabkit.host import slabinfo
from slabkit.host.facts import gather_facts, gfp_bits, parse_format
from slabkit.host.target import LocalTarget
from slabkit.plan import kmalloc_max_cache_size, plan_capture


def kernel(tmp_path, release_prefix: str):
    matches = [d for d in kernel_dirs() if d.name.startswith(release_prefix)]
    assert matches, f"no recorded kernel {release_prefix}* in {KERNELS}"
    root = LocalTarget(build_root(matches[0], tmp_path / "root"))
    return root, gather_facts(root), slabinfo.caches(root)


def plan_for(tmp_path, release, cache, **kw):
    root, facts, table = kernel(tmp_path, release)
    resolved = slabinfo.resolve_cache(cache, root, table=table)
    return plan_capture(resolved, facts, cache_table=table, **kw), facts, resolved


def test_recorded_formats_say_which_kernel_has_the_name_field():
    by_release = {d.name: parse_format((d / "events/kmem/kmem_cache_alloc/format").read_text())
                  for d in kernel_dirs()}
    assert by_release, "no recorded kernels"
    for release, fmt in by_release.items():
        assert {"call_site", "ptr", "bytes_req", "bytes_alloc", "gfp_flags"} <= set(fmt.fields)
        major, minor = (int(x) for x in release.split(".")[:2])
        assert fmt.has("name") == ((major, minor) >= (6, 18)), release
        assert fmt.fields.get("name", "__data_loc char[]") == "__data_loc char[]"


def test_gfp_bits_read_from_each_kernels_print_fmt():
    for d in kernel_dirs():
        bits = gfp_bits(parse_format((d / "events/kmem/kmalloc/format").read_text()).print_fmt)
        # the three flags that pick a kmalloc cache type must decode on every kernel
        assert bits["__GFP_DMA"] == 0x1, d.name
        assert bits["__GFP_RECLAIMABLE"] == 0x10, d.name
        assert bits["__GFP_ACCOUNT"] in (0x400000, 0x100000, 0x200000), d.name


def test_6_18_dedicated_cache_filters_on_the_tracepoint_name(tmp_path):
    plan, facts, resolved = plan_for(tmp_path, "6.18", "filp")
    assert plan.strategy == "tracepoint-name" and plan.exact
    assert plan.alloc_events == ["kmem:kmem_cache_alloc"]
    assert plan.match_name == "filp" and plan.match_bytes_alloc == resolved.slab_size
    assert tracefs_filter(plan) == f'bytes_alloc == {resolved.slab_size} && name == "filp"'
    text = render_program(plan, Options(stack_sample=1))
    assert 'str(args->name, 6) == "filp"' in text and "kstack" in text


def test_the_slot_size_note_is_said_of_the_backends_that_filter_on_it(tmp_path):
    """bpftrace, perf and ftrace test bytes_alloc before the name; slabkit's bpf counter
    matches the cache by its pointer, so a bpf capture does not carry that note."""
    plan, _, resolved = plan_for(tmp_path, "6.18", "filp")
    slot_note = f"bytes_alloc == {resolved.slab_size}"
    assert slot_note in tracefs_filter(plan)
    for name in ("bpftrace", "perf", "ftrace"):
        assert any(slot_note in n for n in plan.notes_for(name)), name
    for name in ("bpf", "stap", None):
        assert not any(slot_note in n for n in plan.notes_for(name)), name
    assert not any(slot_note in n for n in plan.notes)
    again = type(plan).from_json(plan.to_json())              # kept through the helper's JSON
    assert again.notes_for("bpf") == plan.notes_for("bpf")
    assert again.notes_for("perf") == plan.notes_for("perf")


def test_6_1_has_no_name_so_kprobes_on_its_function_names(tmp_path):
    plan, facts, _ = plan_for(tmp_path, "6.1.", "dentry")
    assert not facts.event("kmem/kmem_cache_alloc").has("name")
    assert plan.strategy == "kprobe-cachep" and plan.exact
    assert set(plan.functions) == {"kmem_cache_alloc", "kmem_cache_alloc_lru",
                                   "kmem_cache_alloc_node"}
    text = render_program(plan, Options())
    assert "kprobe:kmem_cache_alloc, kprobe:kmem_cache_alloc_lru" in text
    assert 'str(((struct kmem_cache *)arg0)->name, 8) == "dentry"' in text


def test_6_12_uses_the_noprof_names(tmp_path):
    plan, _, _ = plan_for(tmp_path, "6.12", "dentry")
    assert plan.strategy == "kprobe-cachep"
    assert plan.functions and all(f.endswith("_noprof") for f in plan.functions)
    assert "kmem_cache_alloc_noprof" in plan.functions


def test_a_kernel_without_name_or_kprobes_is_refused_with_what_is_missing(tmp_path):
    root_dir = [d for d in kernel_dirs() if d.name.startswith("6.1.")][0]
    root = LocalTarget(build_root(root_dir, tmp_path / "root"))
    (tmp_path / "root/sys/kernel/tracing/kprobe_events").unlink()
    (tmp_path / "root/sys/kernel/btf/vmlinux").unlink()
    facts = gather_facts(root)
    table = slabinfo.caches(root)
    with pytest.raises(TracerUnavailable, match="kprobes or fentry"):
        plan_capture(slabinfo.resolve_cache("dentry", root, table=table), facts, cache_table=table)


@pytest.mark.parametrize("release", ["6.1.", "6.12", "6.18"])
def test_kmalloc_plans_by_size_class_and_gfp_type(tmp_path, release):
    root, facts, table = kernel(tmp_path, release)
    for name, require, forbid in [("kmalloc-64", 0, 0x400011), ("kmalloc-cg-64", 0x400000, 0x11),
                                  ("kmalloc-rcl-64", 0x10, 0x1), ("dma-kmalloc-64", 0x1, 0)]:
        if name not in set(table["name"]) and name not in {a for al in table["aliases"] for a in al}:
            continue
        r = slabinfo.resolve_cache(name, root, table=table)
        if r.kind != "kmalloc":
            continue
        plan = plan_capture(r, facts, cache_table=table)
        assert plan.strategy == "kmalloc-size-class", name
        assert plan.match_bytes_alloc == 64
        assert (plan.gfp_require, plan.gfp_forbid) == (require, forbid), name
        assert "kmem:kmalloc" in plan.alloc_events


@pytest.mark.parametrize("release", ["6.1.", "6.12", "6.18"])
def test_the_largest_kmalloc_slab_is_planned_and_nothing_bigger(tmp_path, release):
    """kmalloc-8k (2 pages of 4 KiB) is the largest kmalloc slab: it is planned; on a kernel
    whose pages were 2 KiB it would be page-allocator memory, refused."""
    assert kmalloc_max_cache_size(4096) == 8192
    root, facts, table = kernel(tmp_path, release)
    r = slabinfo.resolve_cache("kmalloc-8k", root, table=table)
    plan = plan_capture(r, facts, cache_table=table)
    assert plan.strategy == "kmalloc-size-class" and plan.match_bytes_alloc == 8192
    facts.page_size = 2048
    with pytest.raises(InvalidInput, match="bigger than the largest kmalloc slab"):
        plan_capture(r, facts, cache_table=table)
    four = slabinfo.resolve_cache("kmalloc-4k", root, table=table)
    assert plan_capture(four, facts, cache_table=table).match_bytes_alloc == 4096


def test_kmalloc_is_an_estimate_where_buckets_share_the_size(tmp_path):
    plan, _, _ = plan_for(tmp_path, "6.18", "kmalloc-96")
    assert not plan.exact and "msg_msg-96" in plan.reason
    plan61, _, _ = plan_for(tmp_path / "b", "6.1.", "kmalloc-96")
    assert plan61.exact, plan61.reason
    # 6.1 has no slab buckets: bio-192 / bio-256 are an ordinary cache family, not a bucket set
    plan61, _, _ = plan_for(tmp_path / "c", "6.1.", "kmalloc-cg-192")
    assert plan61.exact, plan61.reason


def test_the_object_slab_makes_kmalloc_exact_for_the_bpf_backend_only(tmp_path):
    """A size-class plan becomes kmalloc-slab (exact) for the bpf backend where slabcount's
    probe found and checked the slab lookup; bpftrace, or a kernel without it, keep the
    size-class plan and its estimate."""
    from dataclasses import replace

    from slabkit.plan import for_backend
    plan, facts, _ = plan_for(tmp_path, "6.18", "kmalloc-96")
    assert not plan.exact and plan.strategy == "kmalloc-size-class"
    assert for_backend(plan, "bpf", facts) is plan                    # nothing probed yet
    probed = replace(facts, bpf={"slab_lookup": 1, "slab_lookup_kfunc": 1})
    assert for_backend(plan, "bpftrace", probed) is plan
    exact = for_backend(plan, "bpf", probed)
    assert exact.strategy == "kmalloc-slab" and exact.exact
    assert exact.match_name == "kmalloc-96" and exact.match_bytes_alloc == 96
    assert "bpf_get_kmem_cache" in exact.reason and "estimate" in exact.reason
    by_page = for_backend(plan, "bpf", replace(facts, bpf={"slab_lookup": 1}))
    assert "vmemmap_base" in by_page.reason
    assert for_backend(plan, "bpf", replace(facts, bpf={"slab_lookup": 0})) is plan
    dedicated, facts, _ = plan_for(tmp_path / "b", "6.18", "filp")
    assert for_backend(dedicated, "bpf", replace(facts, bpf={"slab_lookup": 1})) is dedicated


def test_merged_alias_plans_for_the_slabinfo_name_and_says_so(tmp_path):
    root, facts, table = kernel(tmp_path, "6.18")
    merged = table[table["aliases"].map(len) > 0].iloc[0]
    alias = merged["aliases"][0]
    plan = plan_capture(slabinfo.resolve_cache(alias, root, table=table), facts, cache_table=table)
    assert plan.cache == merged["name"] and plan.requested == alias
    assert alias in plan.aliases
    assert any("merged into" in n for n in plan.notes)


def test_outstanding_mode_plans_free_events(tmp_path):
    plan, _, _ = plan_for(tmp_path, "6.18", "filp", mode="outstanding")
    assert plan.free_events == ["kmem:kmem_cache_free", "kmem:kfree"]
    text = render_program(plan, Options())
    assert "@live[args->ptr] = nsecs" in text and "tracepoint:kmem:kmem_cache_free" in text


def test_bad_filters_and_modes_are_refused_before_any_program_text(tmp_path):
    root, facts, table = kernel(tmp_path, "6.18")
    r = slabinfo.resolve_cache("filp", root, table=table)
    with pytest.raises(InvalidInput):
        plan_capture(r, facts, cache_table=table, comm='x" || 1 == 1 || "')
    with pytest.raises(InvalidInput):
        plan_capture(r, facts, cache_table=table, pid="1; rm")
    with pytest.raises(InvalidInput, match="mode must be one of"):
        plan_capture(r, facts, cache_table=table, mode="leaks")
    plan = plan_capture(r, facts, cache_table=table, pid=42, comm="nginx worker")
    text = render_program(plan, Options())
    assert "pid == 42" in text and 'comm == "nginx worker"' in text


# --- Linux 5.10 (Debian 11) --------------------------------------------------------------------


def test_5_10_dedicated_cache_kprobes_its_functions_and_says_filp_is_shared(tmp_path):
    plan, facts, resolved = plan_for(tmp_path, "5.10", "filp")
    assert not facts.event("kmem/kmem_cache_alloc").has("name")
    assert plan.strategy == "kprobe-cachep" and plan.exact
    assert plan.functions == ["kmem_cache_alloc", "kmem_cache_alloc_node"]   # no _lru before 5.18
    assert plan.aliases == ["io_kiocb"]
    assert any("io_kiocb" in n and "counted together" in n for n in plan.notes), plan.notes


def test_5_10_kmalloc_matches_both_events_and_has_no_cg_caches(tmp_path):
    plan, facts, _ = plan_for(tmp_path, "5.10", "kmalloc-1k")
    assert facts.event("kmem/kmalloc_node") is not None
    assert plan.strategy == "kmalloc-size-class" and plan.exact
    assert plan.alloc_events == ["kmem:kmalloc", "kmem:kmalloc_node"]
    # no kmalloc-cg caches (5.14+): accounted kmallocs land in kmalloc-1k too
    assert (plan.gfp_require, plan.gfp_forbid) == (0, 0x11)
    assert any("no kmalloc-cg caches" in n for n in plan.notes)
    assert tracefs_filter(plan) == "bytes_alloc == 1024 && !(gfp_flags & 0x11)"
    assert "tracepoint:kmem:kmalloc, tracepoint:kmem:kmalloc_node" in render_program(plan, Options())


# --- bulk allocations ----------------------------------------------------------------------------


@pytest.mark.parametrize("release, bulk", [
    ("5.10", ["kmem_cache_alloc_bulk"]), ("6.1.", ["kmem_cache_alloc_bulk"]),
    ("6.12", ["kmem_cache_alloc_bulk_noprof"]), ("6.18", []),
])
def test_bulk_allocations_are_probed_where_the_kernel_allows_else_noted(tmp_path, release, bulk):
    plan, facts, _ = plan_for(tmp_path, release, "skbuff_head_cache")
    assert plan.bulk_functions == bulk
    missing = [n for n in plan.notes if "bulk allocations of 'skbuff_head_cache'" in n]
    if bulk:
        assert facts.kprobes and not missing
    else:   # this machine's 6.18: no kprobes, no fentry
        assert missing and "no kprobes or fentry" in missing[0] and "not seen" in missing[0]
    kmalloc, _, _ = plan_for(tmp_path / "k", release, "kmalloc-1k")
    assert kmalloc.bulk_functions == []     # kmalloc() has no bulk form
    outstanding, _, _ = plan_for(tmp_path / "o", release, "filp", mode="outstanding") \
        if not facts.kprobes or release == "6.18" else (None, None, None)
    if outstanding is not None:
        assert outstanding.bulk_functions == []


def test_bpftrace_counts_bulk_allocations_at_their_return_with_the_cache_compared_on_entry(
        tmp_path):
    plan, facts, _ = plan_for(tmp_path, "6.12", "filp", comm="nginx")
    text = render_program(plan, Options())
    entry = text[text.index("kprobe:kmem_cache_alloc_bulk_noprof\n"):]
    entry = entry[:entry.index("\n}\n")]
    assert 'if (str(((struct kmem_cache *)arg0)->name, 6) == "filp" && comm == "nginx")' in entry
    assert "@bs[tid, $d] = kstack(perf);" in entry            # the stack is taken on entry
    ret = text[text.index("kretprobe:kmem_cache_alloc_bulk_noprof\n"):]
    assert "@b[pid, tid, cgroup, comm, @bs[tid, $d]] = sum((int32)retval);" in ret
    assert "clear(@bd); clear(@bm); clear(@bs);" in text
    assert "kretprobe" not in render_program(plan, Options(), bulk=False)


def test_backends_that_do_not_count_bulk_allocations_say_so(tmp_path):
    from slabkit.backends import capture_notes, get_backend
    plan, facts, _ = plan_for(tmp_path, "6.1.", "filp")
    for name in ("bpf", "perf", "ftrace", "stap"):
        notes = capture_notes(get_backend(name), plan, get_backend("bpftrace").render(
            plan, Options(), facts), facts)
        assert any(f"not seen by the {name} backend" in n for n in notes), (name, notes)
    bpftrace = get_backend("bpftrace")
    assert not any("not seen" in n for n in capture_notes(
        bpftrace, plan, bpftrace.render(plan, Options(), facts), facts))


# --- bpftrace before 0.18 and kernels whose BTF has no object id ---------------------------------


@pytest.mark.parametrize("release, pointed", [("5.10", True), ("6.1.", False), ("6.18", False)])
def test_bpftrace_is_pointed_at_the_btf_file_where_it_cannot_find_it(tmp_path, release, pointed):
    from slabkit.backends.bpftrace import BpftraceBackend
    root, facts, table = kernel(tmp_path, release)
    facts.tracers["bpftrace"] = "0.17.0"           # Debian 12's, the one these kernels met
    backend = BpftraceBackend()
    assert backend.unavailable(root, facts) is None
    assert facts.btf_has_id is (not pointed)       # read from the kernel's BTF (features.txt)
    plan = plan_capture(slabinfo.resolve_cache("kmalloc-1k", root, table=table), facts,
                        cache_table=table)
    program = backend.render(plan, Options(), facts)
    if pointed:
        assert program.env["BPFTRACE_BTF"] == "/sys/kernel/btf/vmlinux"
        (why,) = program.workarounds.values()
        assert "Linux before 5.11" in why and "linux/types.h" in why
    else:
        assert "BPFTRACE_BTF" not in program.env and program.workarounds == {}
    facts.tracers["bpftrace"] = "0.18.0"           # finds the file by itself
    assert "BPFTRACE_BTF" not in backend.render(plan, Options(), facts).env


def test_bpftrace_before_0_18_without_btf_or_headers_is_refused_with_that_reason(tmp_path):
    from slabkit.backends.bpftrace import BpftraceBackend
    root_dir = [d for d in kernel_dirs() if d.name.startswith("5.10")][0]
    root = LocalTarget(build_root(root_dir, tmp_path / "root"))
    (tmp_path / "root/sys/kernel/btf/vmlinux").unlink()
    facts = gather_facts(root)
    facts.tracers["bpftrace"] = "0.17.0"
    why = BpftraceBackend().unavailable(root, facts)
    assert why and "neither BTF" in why and "linux-headers-5.10.0-46-amd64" in why
