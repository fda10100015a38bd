"""What the backends share when they render: the in-kernel filter of the streaming tracers.

The table builders they share when they parse are in :mod:`slabkit.backends._tables`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from slabkit.errors import ProbeFailed

if TYPE_CHECKING:
    from slabkit.plan import Plan


# --------------------------------------------------------------------------------------------
# shared by the streaming backends

def tracefs_filter(plan: "Plan") -> str:
    """The plan's filter (:meth:`Plan.predicate`) in the syntax of tracefs event filters and
    ``perf record --filter``, evaluated in the kernel.

    ``comm`` is a special field every event filter accepts (checked here with ftrace and perf);
    ``common_pid`` is the *thread* id. A kprobe plan's cache name is out of reach of a filter.
    """
    parts = []
    for term in plan.predicate():
        f, op, v = term.field, term.op, term.value
        if f in ("bytes_alloc", "pid") and op == "==":
            parts.append(f"{'common_pid' if f == 'pid' else f} == {int(v)}")
        elif f in ("name", "comm") and op == "==":
            parts.append(f'{f} == "{v}"')
        elif f == "gfp_flags" and op == "any":
            parts.append(f"gfp_flags & {int(v):#x}")
        elif f == "gfp_flags" and op == "none":
            parts.append(f"!(gfp_flags & {int(v):#x})")
        else:
            raise ProbeFailed(f"a tracefs filter cannot test {f} {op} {v!r}")
    return " && ".join(parts)
