"""Notes that apply, on real captures: the bytes_alloc slot-size pre-filter is a note of the
backends that filter on event fields (bpftrace here), never of slabkit's bpf counter, which
matches the cache by its pointer; the summary and the report show only what the capture
carries."""
from __future__ import annotations

import pytest
from conftest import require_bpf, require_tool

import slabkit
from slabkit.ui.summary import summarize

SLOT_NOTE = "the kernel filter tests bytes_alloc =="


@pytest.mark.live
@pytest.mark.parametrize("backend", ["bpf", "bpftrace"])
def test_slot_size_note_only_where_it_applies(live, backend, tmp_path):
    if backend == "bpf":
        require_bpf()
    else:
        require_tool("bpftrace")
    cap = slabkit.capture("filp", 1, backend=backend, base=tmp_path, progress=False)
    assert cap.meta["backend"] == backend
    has = any(SLOT_NOTE in n for n in cap.meta["notes"])
    assert has == (backend == "bpftrace"), cap.meta["notes"]
    text = summarize(cap).to_text()
    assert (SLOT_NOTE in text) == (backend == "bpftrace")
