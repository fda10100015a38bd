"""The formatting layer (slabkit.analysis.present): numbers, tables, titles, the sample badge,
stack labels that tell stacks apart; and the plots that use it."""
from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from conftest import SAMPLES

import slabkit
from slabkit import plots
from slabkit.analysis import present


@pytest.mark.parametrize("func, value, text", [
    (present.count_text, 4224000, "4,224,000"),
    (present.count_text, pd.NA, "-"),
    (present.bytes_text, 512, "512 B"),
    (present.bytes_text, 4224000, "4.03 MiB"),
    (present.bytes_text, 226_000, "220.7 KiB"),
    (present.bytes_text, None, "-"),
    (present.share_text, 0.664, "66.4%"),
    (present.share_text, 0.0001, "<0.1%"),
    (present.rate_text, 14350.946, "14,351/s"),
    (present.rate_text, 2.54, "2.5/s"),
    (present.change_text, 1204.2, "+1,204/s"),
    (present.change_text, -3.5, "-3.5/s"),
    (present.ratio_text, 1.244945, "×1.24"),
    (present.ratio_text, float("inf"), "new"),
    (present.ratio_text, 0.0, "gone"),
    (present.seconds_text, 1.735, "1.7 s"),
    (present.seconds_text, 60, "1 min"),
    (present.seconds_text, 125, "2 min 5 s"),
    (present.date_text, "2026-11-30T09:29:08+00:00", "2026-11-30 09:29 UTC"),
])
def test_numbers_read_as_people_write_them(func, value, text):
    assert func(value) == text


def test_readable_tables_format_every_column_by_name():
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    df = slabkit.by_process(cap).head(3)
    html = present.readable(df).to_html()
    top = df.index[0]
    assert f">{top}<" in html
    assert f">{present.count_text(df['count'].iloc[0])}<" in html       # 20,161 not 20161
    assert f">{present.share_text(df['share'].iloc[0])}<" in html       # 57.0% not 0.570
    assert f">{present.rate_text(df['per_s'].iloc[0])}<" in html
    assert ">allocations<" in html and ">per second<" in html and ">process<" in html
    assert str(float(df["share"].iloc[0])) not in html
    pd.testing.assert_frame_equal(present.readable(df).data, df)       # the data is untouched


def test_readable_diff_has_before_after_columns_and_words_for_ratios():
    before = slabkit.load(SAMPLES / "bpftrace-filp")
    after = slabkit.load(SAMPLES / "bpftrace-filp-outstanding")
    d = slabkit.diff(before, after)
    html = present.readable(d).to_html()
    assert "a_count" not in html and "before: allocations" in html
    assert "change per second" in html and "after / before" in html
    ratios = set(d["ratio"].map(present.ratio_text))
    assert {"new", "gone"} & ratios and all(f">{r}<" in html for r in ratios)


def test_sample_badge_only_for_the_shipped_samples(tmp_path):
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    assert present.sample_badge(cap) == "sample, recorded on vm, 2026-11-30"
    assert present.sample_badge(slabkit.load(SAMPLES / "stap-classic" / "raw.txt")) == \
        "sample, recorded on another machine"
    copy = tmp_path / "filp-mine"
    shutil.copytree(SAMPLES / "bpftrace-filp", copy)
    assert present.sample_badge(slabkit.load(copy)) is None          # a capture of one's own
    assert present.sample_badge(SAMPLES / "perf-filp") is not None   # a path works too


def test_a_stop_on_request_does_not_read_like_a_fault():
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    assert cap.meta["status"] == "interrupted"
    text = present.status_text(cap)
    assert text.startswith("stopped on request after 1.7 s") and "kept" in text
    assert present.status_text({"status": "complete", "duration_s": 10.0}) == "ran its full 10 s"
    assert "tracer exited" in present.status_text(
        {"status": "interrupted", "end_reason": "tracer-exited", "duration_s": 3})


def test_subject_names_the_cache_and_host():
    assert present.subject({"cache": "filp", "host": "web1"}) == "filp on web1"
    assert present.subject({"cache": "filp", "captures": [{"host": "a"}, {"host": "b"}]}) == \
        "filp on 2 hosts"
    assert present.subject({"cache": "size-32", "host": "unknown"}) == "size-32"


def test_stack_labels_tell_stacks_apart():
    stacks = {
        1: "alloc_empty_file <- path_openat <- do_filp_open <- do_sys_openat2 <- x64_sys_openat",
        2: "alloc_empty_file <- path_openat <- do_filp_open <- do_open_execat <- alloc_bprm",
        3: "alloc_empty_file <- alloc_file_pseudo <- create_pipe_files",
        4: "alloc_empty_file <- path_openat <- do_filp_open <- do_sys_openat2 <- x64_sys_openat",
    }
    labels = present.stack_labels(stacks)
    assert len(set(labels.values())) == 4
    # cut to three frames, 1 and 2 would read the same: the frame where they part is shown
    assert "do_sys_openat2" in labels[1] and "do_open_execat" in labels[2]
    assert labels[1].startswith("#1 alloc_empty_file <- path_openat <- ")
    assert labels[3] == "#3 alloc_empty_file <- alloc_file_pseudo <- create_pipe_files"
    assert labels[4].endswith("(same functions as #1)")
    long = present.stack_labels({7: " <- ".join(["f" * 40] * 6), 8: " <- ".join(["f" * 40] * 5
                                                                              + ["g"])},
                                width=80)
    assert all(len(v) < 100 for v in long.values()) and long[8].endswith("g")


def test_plots_name_cache_and_host_and_a_sample():
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    fig, ax = plt.subplots()
    try:
        plots.plot_top_processes(cap, ax=ax, value="bytes")
        assert "filp on vm (sample)" in ax.get_title()
        fig.canvas.draw()
        ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
        assert any(t.endswith(("KiB", "MiB")) for t in ticks), ticks
    finally:
        plt.close(fig)


def test_slab_growth_axis_reads_in_a_unit_that_suits_it():
    cap = slabkit.load(SAMPLES / "bpftrace-filp")
    fig, ax = plt.subplots()
    try:
        plots.plot_slab_growth(cap, ax=ax)
        fig.canvas.draw()
        assert ax.get_ylabel() == "memory held by slabs (KiB)"   # ~220 KiB, not 0.215 MiB
        assert "filp on vm" in ax.get_title()
        ticks = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        assert ticks and all(float(t.replace(",", "")) > 100 for t in ticks), ticks
        assert ax.get_legend() is None                          # one cache: the title says it
    finally:
        plt.close(fig)
