"""``slabkit cleanup``: end what a killed slabkit run left on this machine.

Every tracer's supervisor already ends it within a second of slabkit's death and removes its
tracefs instance (:mod:`slabkit.host.procs`); this is for what even that missed (a supervisor
killed too): recorded tracers whose owner is gone, and tracefs instances whose owner is gone.
"""
from __future__ import annotations

from slabkit.host.procs import end_recorded_leftovers
from slabkit.host.target import LocalTarget
from slabkit.host.tracefs import TRACEFS, remove_orphans


def cleanup_leftovers(tracefs: str | None = TRACEFS) -> list[str]:
    """End leftover tracers and remove leftover tracefs instances; what was done, a line each."""
    done = end_recorded_leftovers()
    if tracefs:
        done += [f"removed tracefs instance {name}"
                 for name in remove_orphans(LocalTarget(), tracefs)]
    return done
