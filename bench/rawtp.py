"""The cost floor of a BPF program on the *raw* ``kmem_cache_alloc`` tracepoint.

bpftrace 0.17 attaches ``tracepoint:kmem:kmem_cache_alloc`` through perf: for every event of
every cache the kernel first builds the event record (all fields, the cache name copied as a
string) and only then runs the program, which then throws most events away. A raw tracepoint
(``rawtracepoint:`` in bpftrace >= 0.18, ``BPF_RAW_TRACEPOINT_OPEN``) runs the program on the
tracepoint's arguments directly (6.0+: arg 2 is the ``struct kmem_cache *``), with no record.

This module loads the smallest raw tracepoint program (``r0 = 0; exit``) through the ``bpf()``
system call and holds it attached for a session, so the bench can show the floor slabkit
would have with a raw tracepoint program (compare a cache pointer learnt once, then count),
next to the floor of the perf tracepoint path bpftrace 0.17 uses (``filter-int``).
The program is detached when its file descriptors are closed (end of the session, or when
this process exits by any means).
"""
from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .tracers import Tracer

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17

# struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm}: r0 = 0; exit
_INSNS = bytes([0xB7, 0x00, 0, 0, 0, 0, 0, 0,
                0x95, 0x00, 0, 0, 0, 0, 0, 0])


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_int(cmd), attr,
                      ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return int(fd)


BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_GET_FD_BY_ID = 30
BPF_LINK_GET_NEXT_ID = 31
BPF_LINK_TYPE_RAW_TRACEPOINT = 1
BPF_LINK_TYPE_PERF_EVENT = 7
BPF_PERF_EVENT_TRACEPOINT = 5
#: the tracepoints whose programs run on the bench's workloads' allocations
KMEM_TRACEPOINTS = ("kmem_cache_alloc", "kmalloc")


def _link_info(fd: int, name_at: int | None) -> tuple[int, int, str]:
    """(link type, perf event type, name) of a link; ``name_at``: where ``struct
    bpf_link_info`` wants a name buffer for this link type (None: ask for no name)."""
    name = ctypes.create_string_buffer(128)
    info = ctypes.create_string_buffer(256)
    if name_at is not None:
        ctypes.memmove(ctypes.byref(info, name_at),
                       (ctypes.c_uint64 * 1)(ctypes.addressof(name)), 8)
        ctypes.memmove(ctypes.byref(info, name_at + 8), (ctypes.c_uint32 * 1)(len(name)), 4)
    attr = ctypes.create_string_buffer(16)
    ctypes.memmove(attr, (ctypes.c_uint32 * 2)(fd, len(info)), 8)
    ctypes.memmove(ctypes.byref(attr, 8), (ctypes.c_uint64 * 1)(ctypes.addressof(info)), 8)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return (ctypes.c_uint32.from_buffer(info, 0).value,
            ctypes.c_uint32.from_buffer(info, 16).value, name.value.decode(errors="replace"))


def _link_tracepoint(fd: int) -> str | None:
    """The tracepoint a BPF link is attached to (raw, or a perf event's), or None.

    ``struct bpf_link_info``: type, id, prog_id, then a union at byte 16: a raw tracepoint's
    ``{u64 tp_name; u32 tp_name_len}``; a perf event's ``{u32 type; u32 pad; {u64 tp_name;
    u32 name_len} tracepoint}``."""
    try:
        kind, _, _ = _link_info(fd, None)
        if kind == BPF_LINK_TYPE_RAW_TRACEPOINT:
            return _link_info(fd, 16)[2]
        if kind == BPF_LINK_TYPE_PERF_EVENT:
            _, event, _ = _link_info(fd, None)
            if event == BPF_PERF_EVENT_TRACEPOINT:
                return _link_info(fd, 24)[2]
    except OSError:
        pass
    return None


def kmem_links() -> dict[int, str]:
    """BPF links on the allocation tracepoints, anyone's: link id -> tracepoint name.
    Empty where links cannot be listed (not root, an old kernel)."""
    if _SYS_BPF is None:
        return {}
    found: dict[int, str] = {}
    start = 0
    while True:
        attr = ctypes.create_string_buffer(16)
        ctypes.memmove(attr, (ctypes.c_uint32 * 1)(start), 4)
        try:
            _bpf(BPF_LINK_GET_NEXT_ID, attr)
        except OSError:
            return found
        start = ctypes.c_uint32.from_buffer(attr, 4).value
        get = ctypes.create_string_buffer(16)
        ctypes.memmove(get, (ctypes.c_uint32 * 1)(start), 4)
        try:
            fd = _bpf(BPF_LINK_GET_FD_BY_ID, get)
        except OSError:
            continue       # gone meanwhile
        try:
            tp = _link_tracepoint(fd)
        finally:
            os.close(fd)
        if tp and any(tp.endswith(k) for k in KMEM_TRACEPOINTS):
            found[start] = tp


def links_held_by(pids: set[int]) -> set[int]:
    """Ids of the BPF links these processes hold open (from /proc/PID/fdinfo)."""
    held = set()
    for pid in pids:
        try:
            infos = list(Path(f"/proc/{pid}/fdinfo").iterdir())
        except OSError:
            continue
        for info in infos:
            try:
                for line in info.read_text().splitlines():
                    if line.startswith("link_id:"):
                        held.add(int(line.split()[1]))
            except (OSError, ValueError):
                continue
    return held


def attach_empty(tracepoint: str = "kmem_cache_alloc") -> tuple[int, int]:
    """Load ``r0 = 0; exit`` and attach it to the raw tracepoint; (prog fd, link fd)."""
    if _SYS_BPF is None:
        raise OSError(f"no bpf syscall number known for {platform.machine()}")
    insns = ctypes.create_string_buffer(_INSNS, len(_INSNS))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    # prog_type u32, insn_cnt u32, insns u64, license u64 (then zeros)
    ctypes.memmove(attr, (ctypes.c_uint32 * 2)(BPF_PROG_TYPE_RAW_TRACEPOINT, len(_INSNS) // 8), 8)
    ctypes.memmove(ctypes.byref(attr, 8), (ctypes.c_uint64 * 2)(
        ctypes.addressof(insns), ctypes.addressof(lic)), 16)
    prog = _bpf(BPF_PROG_LOAD, attr)
    try:
        name = ctypes.create_string_buffer(tracepoint.encode())
        attr2 = ctypes.create_string_buffer(128)
        ctypes.memmove(attr2, (ctypes.c_uint64 * 1)(ctypes.addressof(name)), 8)
        ctypes.memmove(ctypes.byref(attr2, 8), (ctypes.c_uint32 * 1)(prog), 4)
        link = _bpf(BPF_RAW_TRACEPOINT_OPEN, attr2)
    except OSError:
        os.close(prog)
        raise
    return prog, link


@dataclass
class RawTpEmpty(Tracer):
    """An empty BPF program on the raw tracepoint (see the module doc)."""

    tracepoint: str = "kmem_cache_alloc"

    def text(self) -> str:
        return f"BPF_RAW_TRACEPOINT_OPEN {self.tracepoint}: r0 = 0; exit"

    @contextmanager
    def session(self, workdir: Path) -> Iterator[dict]:
        prog, link = attach_empty(self.tracepoint)
        try:
            yield {}
        finally:
            os.close(link)
            os.close(prog)
