"""Plots on the Agg backend, checked through the artists they draw."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, tables
from matplotlib.patches import Rectangle

from slabkit import plots
from slabkit.backends import stap
from slabkit.errors import InvalidInput
from slabkit.model import schema
from slabkit.model.tables import Capture


@pytest.fixture(scope="module")
def classic() -> Capture:
    allocs, frames = tables(stap.parse_classic((FIXTURES / "stap" / "classic-size32.txt").read_text()))
    return Capture(allocs, frames, {"cache": "size-32", "duration_s": 10.0})


@pytest.fixture
def ax():
    fig, ax = plt.subplots(figsize=(10, 6))
    yield ax
    plt.close(fig)


def _bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle)]


def test_top_processes(classic, ax):
    out = plots.plot_top_processes(classic, n=3, ax=ax)
    assert out is ax
    bars = _bars(ax)
    assert len(bars) == 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["xfce4-cpugraph-", "topfew", "snmpd"]
    assert [b.get_width() for b in bars] == [11, 4, 3]
    assert "size-32" in ax.get_title() and "10 s" in ax.get_title()
    assert ax.get_xlabel() == "allocations"
    assert "44.0%" in [t.get_text() for t in ax.texts]  # 11 of 25


def test_top_processes_fewer_than_n(classic, ax):
    plots.plot_top_processes(classic, n=20, ax=ax)
    assert len(_bars(ax)) == 8


def test_top_processes_uses_current_axes(classic):
    fig = plt.figure()
    try:
        out = plots.plot_top_processes(classic, n=2)
        assert out is fig.axes[0] and len(_bars(out)) == 2
    finally:
        plt.close(fig)


def test_top_callsites(classic, ax):
    plots.plot_top_callsites(classic, n=5, ax=ax)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["[no stack]", "ext3_readdir", "pskb_expand_head"]
    assert [b.get_width() for b in _bars(ax)] == [22, 2, 1]
    assert ax.get_ylabel() == "kernel function"


def test_bytes_value_label(classic, ax):
    cap = Capture(classic.allocs.assign(bytes=classic.allocs["count"] * 32), classic.frames,
                  classic.meta)
    plots.plot_top_processes(cap, n=2, value="bytes", ax=ax)
    assert [b.get_width() for b in _bars(ax)] == [352, 128]
    assert ax.get_xlabel() == "bytes allocated"
    with pytest.raises(InvalidInput):
        plots.plot_top_processes(cap, value="objects", ax=ax)


def test_heatmap(classic, ax):
    plots.plot_process_module_heatmap(classic, ax=ax)
    mesh = ax.collections[0]
    values = np.asarray(mesh.get_array()).reshape(8, 3)
    assert values.shape == (8, 3)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert cols == ["[no stack]", "ext3", "iptable_nat"]
    assert values[rows.index("httpd"), cols.index("iptable_nat")] == 1
    assert values[rows.index("crond"), cols.index("ext3")] == 2
    assert ax.get_xlabel() == "responsible module"


def test_heatmap_limits(classic, ax):
    plots.plot_process_module_heatmap(classic, cols="callsite", n_rows=2, n_cols=2, ax=ax)
    assert np.asarray(ax.collections[0].get_array()).size == 4
    assert [t.get_text() for t in ax.get_yticklabels()] == ["xfce4-cpugraph-", "topfew"]


def _flame_boxes(ax) -> dict[str, list[Rectangle]]:
    boxes: dict[str, list[Rectangle]] = {}
    for p in _bars(ax):
        if p.get_gid():
            boxes.setdefault(p.get_gid(), []).append(p)
    return boxes


def test_flame(classic, ax):
    plots.plot_flame(classic, ax=ax, min_share=0)
    boxes = _flame_boxes(ax)
    for name in ["all", "crond", "httpd", "xfce4-cpugraph-", "ext3_readdir", "ip_nat_fn",
                 "syscall_call", "pskb_expand_head"]:
        assert name in boxes, name
    assert boxes["all"][0].get_width() == pytest.approx(1.0)
    assert boxes["ext3_readdir"][0].get_width() == pytest.approx(2 / 25)
    assert len(boxes["kmem_cache_alloc"]) == 2  # on both printed stacks
    # root at top: "all" is drawn above the frames (y axis inverted)
    lo, hi = ax.get_ylim()
    assert lo > hi
    assert boxes["all"][0].get_y() < boxes["ext3_readdir"][0].get_y()
    assert "xfce4-cpugraph-" in [t.get_text() for t in ax.texts]  # wide enough for a label
    assert "size-32" in ax.get_title()


def test_flame_min_share_drops_narrow_boxes(classic, ax):
    plots.plot_flame(classic, ax=ax, min_share=0.1)  # crond's stack is 8%
    boxes = _flame_boxes(ax)
    assert "ext3_readdir" not in boxes and "crond" not in boxes
    assert "xfce4-cpugraph-" in boxes and "topfew" in boxes


def _series() -> pd.DataFrame:
    t = np.arange(5, dtype=float)
    return pd.DataFrame({
        "time_s": np.concatenate([t, t]),
        "name": ["dentry"] * 5 + ["filp"] * 5,
        "active_objs": 1, "num_objs": 1,
        "memory_bytes": np.concatenate([np.arange(1, 6) * 2**20, np.full(5, 2**19)]),
    })


def _data_lines(ax):
    return [ln for ln in ax.lines if len(ln.get_xdata()) == 5]


def test_slab_growth(ax):
    plots.plot_slab_growth(schema.validate(_series(), "slabinfo"), ax=ax)
    lines = _data_lines(ax)
    assert len(lines) == 2
    ys = sorted(tuple(np.round(ln.get_ydata(), 3)) for ln in lines)
    assert ys == [(0.5,) * 5, (1.0, 2.0, 3.0, 4.0, 5.0)]  # MiB
    assert ax.get_ylabel() == "memory held by slabs (MiB)"
    assert "(s)" in ax.get_xlabel()


def test_slab_growth_names_and_columns(ax):
    plots.plot_slab_growth(_series(), names=["filp"], ax=ax)
    assert len(_data_lines(ax)) == 1
    with pytest.raises(InvalidInput, match="memory_bytes"):
        plots.plot_slab_growth(_series().drop(columns="memory_bytes"), ax=ax)


def test_empty_capture_says_so(ax):
    cap = Capture(schema.empty("allocs"), schema.empty("frames"), {})
    plots.plot_flame(cap, ax=ax)
    assert "no allocations recorded" in [t.get_text() for t in ax.texts]
    ax.clear()
    plots.plot_top_processes(cap, ax=ax)
    assert "no allocations recorded" in [t.get_text() for t in ax.texts]


def test_plot_bars_draws_a_tidy_frame_in_its_order(ax):
    data = pd.DataFrame({"who": ["b", "a", "c"], "n": pd.array([5, pd.NA, 2], dtype="Int64"),
                         "part": [0.625, pd.NA, 0.25]})
    out = plots.plot_bars(data, x="n", y="who", share="part", title="t", ax=ax)
    assert out is ax
    assert [t.get_text() for t in ax.get_yticklabels()] == ["b", "a", "c"]
    assert [b.get_width() for b in _bars(ax)] == [5, 0, 2]         # missing draws as 0
    assert [t.get_text() for t in ax.texts] == ["62.5%", "", "25.0%"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("n", "who", "t")
    with pytest.raises(InvalidInput, match="one of"):
        plots.plot_bars(data, x="count", y="who", ax=ax)


def test_plot_bars_with_nothing_to_draw_says_so(ax):
    data = pd.DataFrame({"who": ["a"], "bytes": pd.array([pd.NA], dtype="Int64")})
    plots.plot_bars(data, x="bytes", y="who", ax=ax)
    assert not _bars(ax) and [t.get_text() for t in ax.texts] == ["no bytes recorded"]
    ax.clear()
    plots.plot_bars(data.iloc[0:0], x="bytes", y="who", ax=ax)
    assert [t.get_text() for t in ax.texts] == ["no allocations recorded"]
