"""split_window: every instant of the window in one part, overlaps counted once, foreign work left out; and the
model's own check (check_call) that a call's parts add up to its window and its segments tile it."""
import dataclasses

import pytest

from attnprof.analysis import calls as calls_mod
from attnprof.analysis.decomposition import FOREIGN, SplitInvariantError, check_call, split_window
from attnprof.analysis.records import CallSplit, Segment

GPU = ("compute", "copy", "other", FOREIGN)


def test_sequential_kernels_and_gaps():
    # copy 0-10, gap 10-12, compute 12-30, gap 30-31, copy 31-40
    s = split_window(0, 40, [(0, 10, "copy"), (12, 30, "compute"), (31, 40, "copy")], GPU)
    assert (s.copy_us, s.compute_us, s.other_us, s.idle_us) == (19, 18, 0, 3)
    assert (s.span_us, s.window_us) == (40, 40)


def test_overlap_counts_once_in_the_higher_priority():
    s = split_window(0, 10, [(0, 6, "compute"), (4, 10, "copy")], GPU)
    assert s.compute_us == 6 and s.copy_us == 4 and s.idle_us == 0


def test_foreign_work_is_left_out_of_the_window():
    # a k projection (foreign) between two copies: copies 5 + 5, compute 8, idle 20-22
    s = split_window(0, 30, [(0, 5, "copy"), (5, 15, FOREIGN), (15, 20, "copy"), (22, 30, "compute")], GPU)
    assert s.span_us == 30 and s.window_us == 20
    assert (s.copy_us, s.compute_us, s.other_us, s.idle_us) == (10, 8, 0, 2)


def test_foreign_overlapping_our_kernel_is_ours():
    s = split_window(0, 10, [(0, 10, "compute"), (5, 12, FOREIGN)], GPU)
    assert s.window_us == 10 and s.compute_us == 10


def test_intervals_are_clipped_to_the_window():
    s = split_window(5, 15, [(0, 10, "copy"), (12, 20, "compute")], GPU)
    assert (s.copy_us, s.compute_us, s.idle_us) == (5, 3, 2)


def test_empty_window():
    s = split_window(3, 3, [], GPU)
    assert (s.span_us, s.window_us, s.compute_us, s.copy_us, s.other_us, s.idle_us) == (0, 0, 0, 0, 0, 0)
    assert s.segments == []


def test_segments_tile_the_span_in_time_order():
    s = split_window(0, 40, [(0, 10, "copy"), (5, 15, FOREIGN), (12, 30, "compute")], GPU)
    assert s.segments == [(0, 10, "copy"), (10, 12, FOREIGN), (12, 30, "compute"), (30, 40, "idle")]


# --- the model's check: a call whose parts do not add up is reported, naming the call ---------------------------

def _hand_call(**changes):
    """copy 100-110, foreign 110-112, compute 112-130, launch 130-140: window 38, interleaved 2."""
    call = CallSplit(id=7, op="sdpa", backend="flash", phase="fwd", site="model.py:42", found_by="attnprof",
                     device="cuda:0", start_us=100.0, window_us=38.0, compute_us=18.0, copy_us=10.0, launch_us=10.0,
                     other_us=0.0, interleaved_us=2.0,
                     segments=[Segment(100, 10, "copy"), Segment(110, 2, "interleaved"), Segment(112, 18, "compute"),
                               Segment(130, 10, "launch")])
    return dataclasses.replace(call, **changes)


def test_check_call_accepts_a_call_that_adds_up():
    check_call(_hand_call())
    # CPU: no launch; the time between ops is other, in segments and in other_us alike
    check_call(_hand_call(launch_us=None, other_us=10.0, segments=[
        Segment(100, 10, "copy"), Segment(110, 2, "interleaved"), Segment(112, 18, "compute"),
        Segment(130, 10, "other")]))


@pytest.mark.parametrize("broken, says", [
    ({"copy_us": 0.0}, "parts 28.000 µs != window 38.000 µs"),  # a copy's duration dropped from the split
    ({"launch_us": 0.0, "window_us": 28.0}, "segments end at 140.000 µs"),  # window shrunk with the parts
    ({"segments": [Segment(100, 10, "copy"), Segment(112, 18, "compute"), Segment(130, 10, "launch")]},
     "do not tile the window at 110.000 µs"),  # the interleaved stretch lost: a hole
    ({"compute_us": 8.0, "copy_us": 20.0}, "compute segments sum to 18.000 µs, the call says 8.000 µs"),
])
def test_check_call_reports_a_broken_split_with_the_call_id(broken, says):
    with pytest.raises(SplitInvariantError) as err:
        check_call(_hand_call(**broken))
    assert "call 7 (sdpa fwd at model.py:42)" in str(err.value) and says in str(err.value)


def test_analysis_reports_a_split_that_drops_the_copies(monkeypatch, trace):
    """The check runs on every call a real analysis builds: a split_window that forgets the copy time (the mutation
    "drop the copies' duration from the split") stops the analysis of a real traced run, naming the call."""
    from attnprof.pipeline import analyze_path

    real = calls_mod.split_window

    def copies_dropped(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), copy_us=0.0)

    run = trace("""
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 16, 2, 8).transpose(1, 2)  # (B, L, H, D) viewed as (B, H, L, D): contiguous() copies
        for _ in range(2):
            F.scaled_dot_product_attention(q.contiguous(), q.contiguous(), q.contiguous())
    """)
    report = analyze_path(run.folder)  # unbroken: passes the check
    assert [[x.site for x in c.copies] for c in report.calls] == [["script.py:6"] * 3] * 2  # q, k, v: each call
    monkeypatch.setattr(calls_mod, "split_window", copies_dropped)
    with pytest.raises(SplitInvariantError, match=r"internal error: call \d+ \(sdpa fwd at .*\): parts .* != window"):
        analyze_path(run.folder)
