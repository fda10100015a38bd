"""Flame graph trees (analysis/flame.py), the plotly figures and the FlameGraph widget, checked
against the pivots' own numbers. (In Chromium: tests/test_browser.py.)"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from conftest import SAMPLES

import slabkit
from slabkit import analysis
from slabkit.errors import InvalidInput


@pytest.fixture(scope="module")
def before():
    return slabkit.load(SAMPLES / "bpftrace-filp")


@pytest.fixture(scope="module")
def after():
    return slabkit.load(SAMPLES / "bpftrace-filp-outstanding")


def _children_fit(tree, columns):
    for col in columns:
        kids = tree[tree["parent"] >= 0].groupby("parent")[col].sum()
        parents = tree.set_index("id")[col]
        for pid, total in kids.items():
            assert total <= parents[pid] + 1e-6, (col, pid)


def test_tree_totals_match_the_pivots(before):
    tree = slabkit.flame_tree(before, min_share=0)
    root = tree.iloc[0]
    assert (root["label"], root["parent"], int(root["count"])) == \
        ("all", -1, int(before.allocs["count"].sum()))
    assert int(root["bytes"]) == int(before.allocs["bytes"].sum())
    comms = tree[tree["level"] == 1].set_index("label")["count"]
    by_proc = slabkit.by_process(before)["count"]
    assert comms.sort_index().astype(int).to_dict() == by_proc.sort_index().astype(int).to_dict()
    _children_fit(tree, ["count"])
    # a function's boxes add up to its inclusive count (it appears once per stack here)
    incl = slabkit.by_frame(before, "inclusive", keep_allocator=True)["count"]
    boxes = tree[tree["kind"] == "frame"].groupby("label")["count"].sum()
    assert int(boxes["path_openat"]) == int(incl["path_openat"])
    assert tree["share"].iloc[0] == 1.0 and tree["id"].is_unique


def test_tree_prunes_and_measures_bytes(before):
    full = slabkit.flame_tree(before, min_share=0)
    pruned = slabkit.flame_tree(before, min_share=0.05)
    assert len(pruned) < len(full) and pruned["width"].min() >= 0.05
    assert set(pruned["id"]) >= set(pruned["parent"]) - {-1}       # parents are kept
    by_bytes = slabkit.flame_tree(before, value="bytes", min_share=0)
    assert by_bytes["share"].iloc[1:].max() <= 1
    with pytest.raises(InvalidInput):
        slabkit.flame_tree(before, value="nope")


def test_icicle_is_the_trees_layout(before):
    ice = analysis.icicle(before)
    tree = slabkit.flame_tree(before)
    assert ice["label"].tolist() == tree["label"].tolist()
    assert ice["width"].tolist() == tree["width"].tolist()


def test_diff_tree_rates_match_diff(before, after):
    tree = slabkit.flame_diff(before, after, min_share=0)
    root = tree.iloc[0]
    assert int(root["a_count"]) == int(before.allocs["count"].sum())
    assert int(root["b_count"]) == int(after.allocs["count"].sum())
    d = slabkit.diff(before, after, by="comm")
    comms = tree[tree["level"] == 1].set_index("label")
    for comm in d.index[:5]:
        assert comms.loc[comm, "a_per_s"] == pytest.approx(d.loc[comm, "a_per_s"])
        assert comms.loc[comm, "b_per_s"] == pytest.approx(d.loc[comm, "b_per_s"])
        assert comms.loc[comm, "delta_per_s"] == pytest.approx(d.loc[comm, "delta_per_s"])
    gone = tree[(tree["a_count"] > 0) & (tree["b_count"] == 0)]
    new = tree[(tree["a_count"] == 0) & (tree["b_count"] > 0)]
    assert len(gone) and (gone["change"] == -1).all() and (gone["width"] > 0).all()
    assert len(new) and (new["change"] == 1).all() and (new["width"] > 0).all()
    _children_fit(tree, ["a_per_s", "b_per_s"])


def test_figure_hover_and_colours(before):
    from slabkit.ui.flame.figure import figure_spec, flame_figure
    spec = figure_spec(flame_figure(before))
    trace = spec["data"][0]
    assert trace["type"] == "icicle" and trace["branchvalues"] == "total"
    assert trace["parents"][0] == "" and len(trace["ids"]) == len(trace["marker"]["colors"])
    assert isinstance(trace["values"], list)          # plain numbers, for flame.js's search
    i = trace["labels"].index("slabwork")
    count = int(slabkit.by_process(before).loc["slabwork", "count"])
    assert trace["customdata"][i][0] == f"{count:,}"
    assert trace["customdata"][i][2].endswith("%") and "MiB" in trace["customdata"][i][1]
    assert "sample, recorded on vm" in spec["layout"]["title"]["text"]


def test_widget_carries_the_figure_a_query_and_a_static_image(before, after):
    from slabkit.widgets import FlameGraph
    w = FlameGraph(before, query="openat")
    assert w.spec["data"][0]["labels"][0] == "all" and w.query == "openat"
    assert "window.Plotly" in w._esm and "slabkitFlame" in w._esm
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["image/png"][:8] == "iVBORw0K"                    # a PNG, for viewers
    d = FlameGraph(before=before, after=after)
    assert d.spec["layout"]["meta"]["slabkit"] == "flame-diff"
    with pytest.raises(TypeError):
        FlameGraph(before=before)                             # a difference needs both
    assert np.isfinite(d.spec["data"][0]["values"]).all()
