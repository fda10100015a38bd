"""Stack frame parsing in every tracer's form, kallsyms resolution, the frames table."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from slabkit.errors import ParseError, PermissionNeeded
from slabkit.model import schema
from slabkit.model.stacks import Frame, FrameParser, Kallsyms, frames_table, parse_frame

K = 0xFFFFFFFF00000000


@pytest.mark.parametrize("text, expected", [
    # stap print_stack, classic (32-bit, [] = vmlinux)
    ("0xc045d717 : kmem_cache_alloc+0x2/0x4f []",
     Frame("kmem_cache_alloc", 2, "vmlinux", 0xC045D717)),
    ("0xf890da44 : ext3_readdir+0x9c/0x5f4 [ext3]",
     Frame("ext3_readdir", 0x9C, "ext3", 0xF890DA44)),
    # stap 4.x: leading space, [kernel]
    (" 0xffffffff8123f0a1 : d_alloc+0x11/0xa0 [kernel]",
     Frame("d_alloc", 0x11, "vmlinux", 0xFFFFFFFF8123F0A1)),
    (" 0xffffffff8123f0a1 : d_alloc+0x11/0xa0 [kernel] (inexact)",
     Frame("d_alloc", 0x11, "vmlinux", 0xFFFFFFFF8123F0A1)),
    # stap, address inside a module without a symbol
    (" 0xffffffffc0a1b2c3 : 0xffffffffc0a1b2c3 [nfs+0x1b2c3/0x9a000]",
     Frame(None, None, "nfs", 0xFFFFFFFFC0A1B2C3)),
    # %pS form without the address
    ("func+0x2/0x4f [mod]", Frame("func", 2, "mod", None)),
    # bpftrace kstack: decimal offset, no module
    ("kmem_cache_alloc+556", Frame("kmem_cache_alloc", 556, None, None)),
    ("        kmem_cache_alloc+556", Frame("kmem_cache_alloc", 556, None, None)),
    # bpftrace kstack(perf)
    ("\tffffffff81638677 kmem_cache_alloc_noprof+551",
     Frame("kmem_cache_alloc_noprof", 551, None, 0xFFFFFFFF81638677)),
    # perf script
    ("ffffffff816380fc kmem_cache_alloc_lru_noprof+0x22c ([kernel.kallsyms])",
     Frame("kmem_cache_alloc_lru_noprof", 0x22C, "vmlinux", 0xFFFFFFFF816380FC)),
    ("\t    ffffffffc0a1b2c3 ext4_da_write_begin+0x4a ([ext4])",
     Frame("ext4_da_write_begin", 0x4A, "ext4", 0xFFFFFFFFC0A1B2C3)),
    ("ffffffffc0a1b2c3 ext4_da_write_begin+0x4a ([ext4.ko])",
     Frame("ext4_da_write_begin", 0x4A, "ext4", 0xFFFFFFFFC0A1B2C3)),
    ("ffffffffc0a1b2c3 ext4_lookup+0x4a (/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko.xz)",
     Frame("ext4_lookup", 0x4A, "ext4", 0xFFFFFFFFC0A1B2C3)),
    ("ffffffffc0a1b2c3 [unknown] ([unknown])", Frame(None, None, None, 0xFFFFFFFFC0A1B2C3)),
    # ftrace
    (" => d_alloc_parallel", Frame("d_alloc_parallel", None, None, None)),
    (" => func+0x1a/0x50", Frame("func", 0x1A, "vmlinux", None)),
    (" => ext4_lookup+0x1a/0x50 [ext4]", Frame("ext4_lookup", 0x1A, "ext4", None)),
    (" => alloc_empty_file+0x3c/0x110 <ffffffff816bdd0c>",
     Frame("alloc_empty_file", 0x3C, "vmlinux", 0xFFFFFFFF816BDD0C)),
    (" => ext4_lookup+0x1a/0x50 [ext4] <ffffffffc0a1b2c3>",
     Frame("ext4_lookup", 0x1A, "ext4", 0xFFFFFFFFC0A1B2C3)),
    # addresses alone
    ("0x0000000c", Frame(None, None, None, 0xC)),
    ("0xffffffffc0a1b2c3", Frame(None, None, None, 0xFFFFFFFFC0A1B2C3)),
    ("[unknown]", Frame(None, None, None, None)),
    # names that look like other things
    ("foo.isra.0+0x10/0x20", Frame("foo.isra.0", 0x10, "vmlinux", None)),
    ("add", Frame("add", None, None, None)),
])
def test_parse_frame_forms(text, expected):
    assert parse_frame(text) == expected


@pytest.mark.parametrize("bad", ["<stack trace>", "", "   ", "two words"])
def test_parse_frame_rejects_non_frames(bad):
    with pytest.raises(ParseError):
        parse_frame(bad)


def test_frame_parser_caches_distinct_lines():
    p = FrameParser()
    a = p("0xc045d717 : kmem_cache_alloc+0x2/0x4f []")
    b = p("0xc045d717 : kmem_cache_alloc+0x2/0x4f []")
    assert a is b
    assert p.parse(["x+1", "y+2"]) == [Frame("x", 1, None, None), Frame("y", 2, None, None)]


def test_frames_table_matches_schema_and_depths():
    df = frames_table({
        7: ["0xc045d717 : kmem_cache_alloc+0x2/0x4f []",
            "0xf890da44 : ext3_readdir+0x9c/0x5f4 [ext3]", "0x0000000c"],
        3: ["kmem_cache_alloc+556", "d_alloc+12"],
    })
    checked = schema.validate(df, "frames")
    assert [str(t) for t in df.dtypes] == [c.dtype for c in schema.FRAMES]
    assert len(checked) == 5
    assert df["stack_id"].tolist() == [7, 7, 7, 3, 3]
    assert df["depth"].tolist() == [0, 1, 2, 0, 1]
    assert df["function"].tolist()[:2] == ["kmem_cache_alloc", "ext3_readdir"]
    assert pd.isna(df["function"][2]) and df["address"][2] == 12
    assert df["module"].tolist()[:2] == ["vmlinux", "ext3"]
    assert df["module"][3:].isna().all()  # bpftrace prints no module
    assert df["offset"].tolist()[3:] == [556, 12]
    assert df["address"][3:].isna().all()


def test_frames_table_default_module_and_empty():
    df = frames_table({0: ["kmem_cache_alloc+556", "ext4_lookup+0x1a/0x50 [ext4]"]},
                      default_module="vmlinux")
    assert df["module"].tolist() == ["vmlinux", "ext4"]
    empty = frames_table({})
    assert list(empty.columns) == [c.name for c in schema.FRAMES] and len(empty) == 0
    assert len(frames_table({5: []})) == 0


def test_frames_table_is_fast_on_100k_stacks():
    rng = np.random.default_rng(0)
    lines = [f"0x{0xffffffff81000000 + i * 4096:x} : fn_{i}+0x{i % 4000 + 1:x}/0x1000 "
             f"[{'ext4' if i % 10 == 0 else 'kernel'}]" for i in range(3000)]
    picks = (3000 * rng.random((100_000, 30)) ** 3).astype(int)
    stacks = {s: [lines[j] for j in row] for s, row in enumerate(picks)}
    t = time.perf_counter()
    df = frames_table(stacks)
    elapsed = time.perf_counter() - t
    assert len(df) == 3_000_000
    # about 1 s on a quiet machine; the bound only catches a lost cache or a per-row regex
    assert elapsed < 10, f"frames_table took {elapsed:.1f} s for 3M frames"


KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t do_one
ffffffff81001000 T do_one_alias
ffffffff81001100 T do_two
ffffffff81001200 T _etext
ffffffff82000000 D some_data
ffffffff82000100 d more_data
0000000000000000 A fixed_percpu_data
ffffffffc0100000 t ext4_lookup\t[ext4]
ffffffffc0100200 t ext4_create\t[ext4]
ffffffffc0100300 d ext4_table\t[ext4]
ffffffffc0200000 t nfs_get\t[nfs]
ffffffffc0200400 t nfs_put\t[nfs]
"""


def test_kallsyms_resolve():
    ks = Kallsyms.from_text(KALLSYMS)
    addrs = [
        0xFFFFFFFF81001010,  # do_one+0x10 (alias at same address: text name kept, first)
        0xFFFFFFFF81001100,  # do_two+0
        0xFFFFFFFF81001210,  # past _etext: not text
        0xFFFFFFFF82000050,  # inside data
        0xFFFFFFFFC0100210,  # ext4_create+0x10 (bounded by ext4_table)
        0xFFFFFFFFC0100310,  # inside ext4_table (data)
        0xFFFFFFFFC0200410,  # past nfs_put, the last symbol of nfs and of the file
        0xFFFFFFFF80000000,  # below the first symbol
        0xFFFFFFFFC0200010,  # nfs_get+0x10
    ]
    func, off, mod = ks.resolve(np.array(addrs, dtype=np.uint64))
    assert func.tolist() == ["do_one", "do_two", pd.NA, pd.NA, "ext4_create", pd.NA, pd.NA,
                             pd.NA, "nfs_get"]
    assert off.tolist() == [0x10, 0, pd.NA, pd.NA, 0x10, pd.NA, pd.NA, pd.NA, 0x10]
    assert mod.tolist() == ["vmlinux", "vmlinux", pd.NA, pd.NA, "ext4", pd.NA, pd.NA, pd.NA,
                            "nfs"]
    assert str(func.dtype) == "string" and str(off.dtype) == "Int64"


def test_kallsyms_last_symbol_of_a_region_is_unbounded():
    ks = Kallsyms.from_text("ffffffffc0100000 t only_fn\t[mod_a]\n"
                            "ffffffffc0200000 t other_fn\t[mod_b]\n"
                            "ffffffffc0200100 t other_end\t[mod_b]\n")
    func, _, _ = ks.resolve([0xFFFFFFFFC0100010, 0xFFFFFFFFC0200010])
    # only_fn is mod_a's last symbol: nothing says where it ends
    assert func.tolist() == [pd.NA, "other_fn"]


def test_kallsyms_hidden_addresses_need_root():
    with pytest.raises(PermissionNeeded, match="root"):
        Kallsyms.from_text("0000000000000000 T _stext\n0000000000000000 t foo\t[bar]\n")


def test_kallsyms_bad_line():
    with pytest.raises(ParseError):
        Kallsyms.from_text("zzzz T foo\n")


def test_kallsyms_fill_resolves_only_unresolved_frames():
    ks = Kallsyms.from_text(KALLSYMS)
    df = frames_table({0: ["0xffffffffc0100210", "kmem_cache_alloc+0x1/0x2 [kernel]",
                           "0xffffffff81001104"]})
    out = ks.fill(df)
    assert out["function"].tolist() == ["ext4_create", "kmem_cache_alloc", "do_two"]
    assert out["module"].tolist() == ["ext4", "vmlinux", "vmlinux"]
    assert out["offset"].tolist() == [0x10, 1, 4]
    assert df["function"].isna().sum() == 2  # the input is not modified
    schema.validate(out, "frames")
