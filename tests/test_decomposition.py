"""split_window: the four parts sum to the window, overlaps count once, foreign work leaves the window."""
import pytest

from attnprof.analysis.decomposition import FOREIGN, split_window

GPU = ("compute", "copy", "other", FOREIGN)


def parts(s):
    return s.compute_us + s.copy_us + s.other_us + s.idle_us


def test_sequential_kernels_and_gaps():
    # copy 0-10, gap 10-12, compute 12-30, gap 30-31, copy 31-40
    s = split_window(0, 40, [(0, 10, "copy"), (12, 30, "compute"), (31, 40, "copy")], GPU)
    assert (s.copy_us, s.compute_us, s.other_us, s.idle_us) == (19, 18, 0, 3)
    assert s.window_us == 40 == parts(s)


def test_overlap_counts_once_in_the_higher_priority():
    s = split_window(0, 10, [(0, 6, "compute"), (4, 10, "copy")], GPU)
    assert s.compute_us == 6 and s.copy_us == 4 and s.idle_us == 0


def test_foreign_work_is_left_out_of_the_window():
    # a k projection (foreign) between two copies
    s = split_window(0, 30, [(0, 5, "copy"), (5, 15, FOREIGN), (15, 20, "copy"), (22, 30, "compute")], GPU)
    assert s.span_us == 30 and s.window_us == 20
    assert s.copy_us == 10 and s.compute_us == 8 and s.idle_us == 2
    assert parts(s) == pytest.approx(s.window_us)


def test_foreign_overlapping_our_kernel_is_ours():
    s = split_window(0, 10, [(0, 10, "compute"), (5, 12, FOREIGN)], GPU)
    assert s.window_us == 10 and s.compute_us == 10


def test_intervals_are_clipped_to_the_window():
    s = split_window(5, 15, [(0, 10, "copy"), (12, 20, "compute")], GPU)
    assert (s.copy_us, s.compute_us, s.idle_us) == (5, 3, 2)


def test_empty_window():
    s = split_window(3, 3, [], GPU)
    assert s.window_us == 0 and parts(s) == 0


def test_segments_tile_the_span_in_time_order():
    s = split_window(0, 40, [(0, 10, "copy"), (5, 15, FOREIGN), (12, 30, "compute")], GPU)
    assert s.segments == [(0, 10, "copy"), (10, 12, FOREIGN), (12, 30, "compute"), (30, 40, "idle")]
    assert sum(b - a for a, b, _ in s.segments) == s.span_us
