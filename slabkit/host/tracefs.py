"""tracefs instances: a private ring buffer per capture, named after its owner, taken down again.

An instance is ``<tracefs>/instances/slabkit-<owner pid>-<owner start time>-<n>``: the name says
which process made it, so anything can tell an instance in use from one a killed run left
(:func:`owner_alive`). :class:`Instance` creates and configures one, reads its ring-buffer
stats and removes it; :func:`remove_orphans` removes the leftovers of dead owners (``slabkit
cleanup``, every ftrace capture on this machine, and the tests' leak check use it).
"""
from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from slabkit.errors import ProbeFailed
from slabkit.host.procs import is_alive, proc_start_time

if TYPE_CHECKING:
    from slabkit.host.target import Target

TRACEFS = "/sys/kernel/tracing"
INSTANCE_PREFIX = "slabkit-"
_seq = itertools.count()


def instance_name(seq: int | None = None) -> str:
    """A new instance name that says which live process owns it:
    ``slabkit-<pid>-<pid start time>-<seq>``."""
    n = next(_seq) if seq is None else seq
    return f"{INSTANCE_PREFIX}{os.getpid()}-{proc_start_time(os.getpid())}-{n}"


def owner_of(name: str) -> tuple[int, str] | None:
    """(pid, start time) of the process that created instance ``name``; None if not ours."""
    parts = name.split("-")
    if len(parts) >= 4 and name.startswith(INSTANCE_PREFIX) and parts[1].isdigit():
        return int(parts[1]), parts[2]
    return None


def owner_alive(name: str) -> bool:
    """Whether the process that created instance ``name`` (on this machine) still runs."""
    owner = owner_of(name)
    return owner is not None and is_alive(*owner)


class Instance:
    """One tracefs instance on a target: ``base`` is its folder there."""

    def __init__(self, target: "Target", tracefs: str, name: str):
        self.target, self.tracefs, self.name = target, tracefs, name
        self.base = f"{tracefs}/instances/{name}"

    @classmethod
    def create(cls, target: "Target", tracefs: str, *, buffer_kb: int) -> Instance:
        """Make a new instance (named by :func:`instance_name`) and size its per-CPU buffer."""
        inst = cls(target, tracefs, instance_name())
        try:
            target.mkdir(inst.base)
        except OSError as e:
            raise ProbeFailed(f"cannot create tracefs instance {inst.base}: {e}") from None
        try:
            inst.write("buffer_size_kb", str(int(buffer_kb)))
        except BaseException:
            inst.remove()
            raise
        return inst

    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to ``rel`` in the instance; a refusal raises ProbeFailed with the
        kernel's ``error_log``."""
        try:
            self.target.write_text(f"{self.base}/{rel}", value)
        except OSError as e:
            log = ""
            try:
                log = self.target.read_text(f"{self.base}/error_log")
            except OSError:
                pass
            raise ProbeFailed(f"writing {value!r} to {rel} of the tracefs instance failed: {e}",
                              stderr=log) from None

    def present(self, rels: list[str]) -> set[str]:
        """Which of the files ``rels`` exist in the instance (one round trip on SSH targets)."""
        texts = self.target.read_many([f"{self.base}/{r}" for r in rels])
        return {r for r in rels if texts.get(f"{self.base}/{r}") is not None}

    def enable(self, events: list[str], on: bool = True) -> None:
        """Enable (or disable) events given as ``system/name``."""
        for ev in events:
            self.write(f"events/{ev}/enable", "1" if on else "0")

    def stats(self) -> tuple[dict[str, int], str]:
        """Sum of the per-CPU ring buffer stats: (numbers by name, raw text)."""
        return read_stats(self.target, self.base)

    def remove(self) -> None:
        remove_instance(self.target, self.tracefs, self.name)


def remove_orphans(target: "Target", tracefs: str = TRACEFS) -> list[str]:
    """Remove slabkit instances on this machine whose creating process is gone; their names."""
    inst = Path(tracefs) / "instances"
    removed = []
    if inst.is_dir():
        for d in sorted(inst.iterdir()):
            if d.name.startswith(INSTANCE_PREFIX) and not owner_alive(d.name):
                remove_instance(target, tracefs, d.name)
                removed.append(d.name)
    return removed


def remove_instance(target: "Target", tracefs: str, name: str, *,
                    timeout_s: float = 5.0) -> None:
    """Disable, un-trigger and remove the tracefs instance ``name``; tolerant of partial state.

    Used at the end of every ftrace capture and by ``slabkit cleanup`` for instances a killed
    run left. ``rmdir`` fails with EBUSY while a reader still has ``trace_pipe`` open: it is
    retried for ``timeout_s``, then the OSError is raised.
    """
    base = f"{tracefs}/instances/{name}"
    if not target.exists(base):
        return
    for path in (f"{base}/tracing_on", f"{base}/events/enable"):
        try:
            target.write_text(path, "0")
        except OSError:
            pass
    # triggers: rmdir clears them too, but say so explicitly (older kernels, manual runs)
    kmem = f"{base}/events/kmem"
    try:
        events = target.listdir(kmem)
    except OSError:
        events = []
    paths = [f"{kmem}/{ev}/{f}" for ev in events for f in ("trigger", "filter")]
    texts = target.read_many(paths) if paths else {}   # one round trip on SSH targets
    for ev in events:
        _clear_event(target, f"{kmem}/{ev}", texts.get(f"{kmem}/{ev}/trigger"),
                     texts.get(f"{kmem}/{ev}/filter"))
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            target.rmdir(base)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _clear_event(target: "Target", evdir: str, triggers: str | None,
                 filter_text: str | None) -> None:
    """Remove every trigger and the filter of one event folder; ignore what is not there."""
    for line in (triggers or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cmd = line.split(" if ", 1)[0].split(":", 1)[0].strip()
        try:
            target.write_text(f"{evdir}/trigger", f"!{cmd}")
        except OSError:
            pass
    if (filter_text or "").strip() not in ("", "none"):
        try:
            target.write_text(f"{evdir}/filter", "0")
        except OSError:
            pass


def read_stats(target: "Target", base: str) -> tuple[dict[str, int], str]:
    """Sum the per-CPU ring buffer stats of an instance: (numbers by name, raw text)."""
    try:
        cpus = [c for c in target.listdir(f"{base}/per_cpu") if c.startswith("cpu")]
    except OSError:
        return {}, ""
    texts = target.read_many([f"{base}/per_cpu/{c}/stats" for c in cpus])
    texts = {path: text for path, text in texts.items() if text}
    total: dict[str, int] = {}
    for text in texts.values():
        for k, v in sum_stats(text).items():
            total[k] = total.get(k, 0) + v
    return total, "".join(f"# {path}\n{text}" for path, text in texts.items())


def sum_stats(text: str) -> dict[str, int]:
    """The ``name: number`` lines of per-CPU ring buffer stats, summed by name (``# path``
    headers and other lines add nothing)."""
    total: dict[str, int] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        v = v.strip()
        if sep and v.isdigit():
            total[k.strip()] = total.get(k.strip(), 0) + int(v)
    return total

