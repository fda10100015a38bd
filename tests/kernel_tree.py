"""Build a fake root (``/proc``, ``/sys``) from kernel facts recorded in tests/fixtures/kernels.

The recordings come from real kernels (Debian 6.1 and 6.12 under QEMU, this machine's 6.18; see
tests/fixtures/kernels/README.md). A fake root lets ``slabinfo.caches``, ``facts.gather_facts``
and the planner run on them exactly as on a live machine.
"""
from __future__ import annotations

import shutil
from pathlib import Path

KERNELS = Path(__file__).parent / "fixtures" / "kernels"


def kernel_dirs() -> list[Path]:
    return sorted(p for p in KERNELS.iterdir() if (p / "events").is_dir())


def _feature(fixture: Path, name: str) -> bool:
    """A kernel feature, from features.txt (this machine) or config-excerpt.txt (guests)."""
    feats = fixture / "features.txt"
    if feats.is_file():
        for line in feats.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip() == "yes"
    config = fixture / "config-excerpt.txt"
    options = {"kprobe_events": "CONFIG_KPROBE_EVENTS=y", "btf": "CONFIG_DEBUG_INFO_BTF=y",
               "modules": "CONFIG_MODULES=y"}
    return config.is_file() and name in options and options[name] in config.read_text().splitlines()


def build_root(fixture: Path, dest: Path) -> Path:
    """Lay out ``fixture`` as a root tree under ``dest``; returns ``dest``."""
    (dest / "proc/sys/kernel").mkdir(parents=True)
    shutil.copy(fixture / "slabinfo.txt", dest / "proc/slabinfo")
    shutil.copy(fixture / "uname-r.txt", dest / "proc/sys/kernel/osrelease")
    shutil.copy(fixture / "kallsyms-filtered.txt", dest / "proc/kallsyms")
    slab = dest / "sys/kernel/slab"
    slab.mkdir(parents=True)
    for line in (fixture / "sys-kernel-slab.txt").read_text().splitlines():
        name, arrow, target = line.partition(" -> ")
        if arrow:
            (slab / name).symlink_to(target)
        elif name:
            (slab / name).mkdir(exist_ok=True)
    sizes = (fixture / "sys-kernel-slab-sizes.txt").read_text().splitlines()
    header = sizes[0].split()
    for line in sizes[1:]:
        values = dict(zip(header, line.split()))
        d = slab / values.pop("name")
        d.mkdir(exist_ok=True)
        for key, value in values.items():
            (d / key).write_text(value + "\n")
    tracing = dest / "sys/kernel/tracing"
    shutil.copytree(fixture / "events", tracing / "events")
    if _feature(fixture, "kprobe_events"):
        (tracing / "kprobe_events").write_text("")
    if _feature(fixture, "btf"):
        # only what slabkit reads of the BTF file: whether the member name kernel_btf is in its
        # string table (features.txt "btf_kernel_btf", recorded from the real file)
        (dest / "sys/kernel/btf").mkdir(parents=True)
        strings = b"\0kernel_btf\0" if _feature(fixture, "btf_kernel_btf") else b"\0"
        (dest / "sys/kernel/btf/vmlinux").write_bytes(b"\x9f\xeb\x01\0" + strings)
    return dest
