"""The in-memory result of a capture: tidy tables plus metadata.

:class:`Capture` is what ``slabkit.capture()`` and ``slabkit.load()`` return and what every
pivot and plot accepts. The tables follow ``slabkit.model.schema``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from slabkit.model import schema


@dataclass
class Capture:
    """One capture: ``allocs`` and ``frames`` (always), ``outstanding`` and ``slabinfo``
    (where recorded), and ``meta`` (cache, plan, backend, kernel, duration, losses, sampling)."""

    allocs: pd.DataFrame
    frames: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    outstanding: pd.DataFrame | None = None
    slabinfo: pd.DataFrame | None = None
    path: Path | None = None

    @property
    def cache(self) -> str:
        return str(self.meta.get("cache", "?"))

    @property
    def duration_s(self) -> float:
        return float(self.meta.get("duration_s") or 0.0)

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def validate(self) -> "Capture":
        """Return a copy whose tables are checked against and cast to the schema."""
        return Capture(
            allocs=schema.validate(self.allocs, "allocs"),
            frames=schema.validate(self.frames, "frames"),
            meta=dict(self.meta),
            outstanding=None if self.outstanding is None
            else schema.validate(self.outstanding, "outstanding"),
            slabinfo=None if self.slabinfo is None else schema.validate(self.slabinfo, "slabinfo"),
            path=self.path,
        )

    def __repr__(self) -> str:
        total = int(self.allocs["count"].sum()) if len(self.allocs) else 0
        return (f"<Capture {self.cache!r} {self.meta.get('backend', '?')} "
                f"{self.duration_s:.1f}s {total} allocs, {len(self.allocs)} rows, "
                f"{self.frames['stack_id'].nunique() if len(self.frames) else 0} stacks, "
                f"{self.meta.get('status', '?')}>")
