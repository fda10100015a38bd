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
