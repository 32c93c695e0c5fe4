"""The quiet path's shortcuts (issue 10): what each keeps per path of frames or per window event, and the behaviour
each could break. Every test names the mutation that fails it."""
from __future__ import annotations

import sys

import torch

from attnprof.capture import patching
from attnprof.capture.window import StepWindow

TWO_SITES = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8)
for i in range(N):
    F.scaled_dot_product_attention(q, q, q)
    F.scaled_dot_product_attention(q, q, q)
"""


def test_two_sites_alternating_count_steps_at_the_first_site_only(trace):
    """Steps found by site recurrence (--step-on iteration): line 5 starts each step, line 6 does not. 8 iterations
    with --warmup 3 --timed 2 --active 2: steps 0-2 warm-up (3 calls per line), 3-4 timed, 5-6 profiled, 7 settling.
    Fails when the per-path memo says every site marks steps (`site == first_site` -> True: 16 steps, profiled
    [5, 5]) or none does (-> False: steps stop at the first recurrence's count, the window opens late or never)."""
    r = trace(TWO_SITES.replace("N", "8"), warmup=3, timed=2, active=2, step_on="iteration", after="nvtx")
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled) == ("iteration", 8, [5, 6])
    sites = {t.site: t for t in r.runinfo.sites if t.phase == "fwd"}
    assert set(sites) == {"script.py:5", "script.py:6"}
    # warm-up steps 0-2 and the settling step 7: 4 calls per line; timed steps 3-4: 2 per line; profiled: 2 per line
    assert [(t.warmup_calls, len(t.true_us), len(t.profiled_us)) for t in sites.values()] == [(4, 2, 2), (4, 2, 2)]
    assert [c.id for c in r.runinfo.calls] == [11, 12, 13, 14]
    assert [c.step for c in r.runinfo.calls] == [5, 5, 6, 6]


ONE_LINE_TWO_FUNCTIONS = """\
import torch
import torch.nn.functional as F
from attnprof.capture import patching
from attnprof.capture.entrypoints import ENTRY_POINTS

sdpa = next(e for e in ENTRY_POINTS if e.op == "sdpa")
other = type(sdpa)("other", "torch", (), "other", sdpa.describe)
wrapped_other = patching.wrapper_for(other, lambda q, k, v: torch._C._nn.scaled_dot_product_attention(q, k, v))
q = torch.randn(1, 2, 4, 8)
for i in range(CALLS):
    attend = F.scaled_dot_product_attention if i % 3 else wrapped_other
    attend(q, q, q)
"""


def test_one_call_line_that_calls_two_entry_points_counts_each_under_its_own_op(trace):
    """The path of frames (line 12) is the same for both functions: the memo kept on it must follow the entry point.
    9 warm-up calls: `other` at i = 0, 3, 6, sdpa at the other six. Fails when the memo is reused whatever the entry
    point (drop `quiet[0] is not entry` in dispatch): every call counted under the op seen first."""
    r = trace(ONE_LINE_TWO_FUNCTIONS.replace("CALLS", "9"), warmup=100, timed=0, active=1, step_on="call")
    counts = {t.op: t.warmup_calls for t in r.runinfo.sites if t.phase == "fwd"}
    assert counts == {"other": 3, "sdpa": 6}
    assert r.runinfo.steps.seen == 9


def _enter(w: StepWindow, site: str = "a.py:1") -> tuple[int, int, bool]:
    """A call from inside a loop (the window does not take the run for a one-pass script and open at step 0)."""
    for _ in range(1):
        return w.enter_call(site, None, sys._getframe())
    raise AssertionError


def _window(**kw) -> StepWindow:
    options = {"unit": "call", "warmup": 2, "timed": 1, "active": 1, "max_calls": 512}
    options.update(kw)
    return StepWindow(start=lambda: True, stop=lambda: None, **options)


def test_a_call_in_a_window_opened_cold_is_never_quiet():
    """A one-pass script: the first call opens the window at step 0, below --warmup 2. A call made while the
    profiler starts (another thread's) and the calls in the window must take the locked path. Fails when the lane
    lets calls through in the window (drop `or state is OPEN` from `_relane`: step 0 < --warmup)."""
    seen = []
    w: StepWindow = _window(unit="iteration", warmup=2, timed=0, active=1)

    def start() -> bool:
        seen.append(w.quiet_call(False, True))
        return True

    w._start = start
    assert w.enter_call("a.py:1", None, None) == (1, 0, True)  # no frame in a loop: cold, the window opens
    assert w.cold and w.is_open and seen == [0]
    assert w.quiet_call(False, True) == 0 and w.quiet_call(True, True) == 0


def test_quiet_calls_follow_the_window_from_warm_up_to_after_it():
    """Step = call, --warmup 2 --timed 1 --active 1: the quiet path takes call 2 (warm-up) and, with after_too, the
    calls after the window (not as warm-up calls: the settling step's call closed the window under the lock); the
    others are refused. Fails when the after-window lane lets timed calls through (`_after_ok` without `state is
    DONE`) or when a call's entry does not derive the lane again after the first call (the warm-up call refused)."""
    w = _window()
    assert w.quiet_call(False, True) == 0  # no call yet: the first call finds the step
    assert _enter(w) == (1, 0, False)
    w.exit_call()
    assert w.quiet_call(False, True) == 2  # step 1, warm-up
    assert w.quiet_call(False, True) == 0  # step 2 would be timed (and its exit opens the window)
    assert _enter(w) == (3, 2, False)
    w.exit_call()
    assert w.is_open and w.quiet_call(False, True) == 0
    assert _enter(w) == (4, 3, True)
    w.exit_call()
    assert _enter(w) == (5, 4, False)  # closes the window at its entry
    w.exit_call()
    assert w.is_over and w.profiled == [3, 3]
    assert w.quiet_call(False, False) == 0  # after the window, not asked for
    assert w.quiet_call(False, True) == -6  # step 5, after the window
    assert w.step == 5 and w.calls == 6


def test_without_timed_steps_the_call_before_the_window_is_not_quiet():
    """--warmup 2 --timed 0, step = call: call 2 (step 1) is a warm-up call, but its exit opens the window, so it
    must take the locked path (`exit_call`). Fails when the lane lets every warm-up step through while waiting
    (`_warm_below = self.warmup`): the window would open only at the next call's entry, after the script's work in
    between (its layout copies) ran unprofiled."""
    w = _window(warmup=2, timed=0, active=1)
    _enter(w)
    w.exit_call()
    assert w.quiet_call(False, True) == 0
    assert _enter(w) == (2, 1, False)
    w.exit_call()
    assert w.is_open and w.profiled == [2]


def test_the_settling_step_after_the_window_is_quiet_and_warm():
    w = _window(unit="optimizer", warmup=1, timed=0, active=1)
    _enter(w)
    w.optimizer_step()  # step 1: opens
    _enter(w)
    w.optimizer_step()  # step 2: closes; the settling step
    assert w.is_over and w.profiled == [1, 1]
    assert w.quiet_call(False, False) == 3  # warm (not timed): the profiler has just stopped
    w.optimizer_step()  # step 3
    assert w.quiet_call(False, False) == 0 and w.quiet_call(False, True) == -4


def test_a_site_recurrence_before_the_period_is_known_takes_the_locked_path():
    """Iteration by site: until the first recurrence sets the period, a call at the first site must enter the window
    under the lock (it ends step 0). Fails when `_bump_marked` is 1 before the period is known."""
    w = _window(unit="auto", warmup=5, timed=0, active=1)
    _enter(w)
    w.exit_call()
    assert w.quiet_call(False, False) == 2  # another site: a warm-up call of step 0
    assert w.quiet_call(True, False) == 0  # the first site again: the period is not known yet
    assert _enter(w) == (3, 1, False)
    assert (w.unit, w.period) == ("iteration", 2)
    w.exit_call()
    assert w.quiet_call(True, False) == 4 and w.step == 2


def test_warm_up_backward_is_counted_with_grad_on_and_not_asked_for_with_grad_off(trace):
    """A warm-up call's backward is counted (the gate on grad mode must not skip it), and under no_grad there is none
    to count. Fails when the dispatch's gate on grad mode skips the grad-on case (`call_id > 0 and grad_enabled()`
    -> `call_id > 0 and False`): no warm-up backward is counted."""
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 4, 8, requires_grad=True)
        for _ in range(3):
            F.scaled_dot_product_attention(q, q, q).sum().backward()
        with torch.no_grad():
            for _ in range(2):
                F.scaled_dot_product_attention(q, q, q)
        """, warmup=100, timed=0, active=1, step_on="call")
    by_phase = {(t.site, t.phase): t.warmup_calls for t in r.runinfo.sites}
    assert by_phase == {("script.py:5", "fwd"): 3, ("script.py:5", "bwd"): 3, ("script.py:8", "fwd"): 2}


def test_the_wrapper_passes_through_under_export_s_tracing_flag(monkeypatch):
    """torch.export's non-strict tracing runs Python for real with `torch.compiler._is_compiling_flag` set: the
    wrapper must call the original, never the session. Fails when the wrapper's test drops the flag (`or
    _flag_owner._is_compiling_flag`)."""
    from attnprof.capture.entrypoints import ENTRY_POINTS

    sdpa = next(e for e in ENTRY_POINTS if e.op == "sdpa")
    dispatched = []
    wrapper = patching._make_wrapper(sdpa, lambda *args: "original")
    monkeypatch.setattr(patching, "_dispatch", lambda *args: dispatched.append(1) or "dispatched")
    assert wrapper() == "dispatched" and dispatched == [1]
    monkeypatch.setattr(torch.compiler, "_is_compiling_flag", True)
    assert wrapper() == "original" and dispatched == [1]
    assert torch.compiler.is_compiling()  # what the wrapper's test stands for


def test_the_wrapper_passes_through_where_dynamo_traces(monkeypatch):
    """Under torch.compile (fullgraph: a graph break would fail) the wrapper's body is traced with the dispatch
    skipped, and the compiled function never reaches the session. Fails when the wrapper's test drops
    `_is_dynamo_compiling()`: dynamo traces into the dispatch (sys._getframe: no full graph)."""
    import sys

    from attnprof.capture.entrypoints import ENTRY_POINTS

    sdpa = next(e for e in ENTRY_POINTS if e.op == "sdpa")
    dispatched = []

    def dispatch(entry, original, args, kwargs):
        sys._getframe(1)  # what the session's dispatch does first: dynamo cannot trace it
        dispatched.append(1)
        return original(*args, **kwargs)

    wrapper = patching._make_wrapper(sdpa, torch._C._nn.scaled_dot_product_attention)
    monkeypatch.setattr(patching, "_dispatch", dispatch)
    # as under a torch whose dynamo does not hold `_is_compiling_flag` while it traces (2.13 does): the test of
    # `is_dynamo_compiling()` alone must keep the dispatch out
    monkeypatch.setattr(patching, "_flag_owner", patching._NoCompilingFlag)
    q = torch.randn(1, 2, 4, 8)
    compiled = torch.compile(lambda q: wrapper(q, q, q) * 2, backend="eager", fullgraph=True)
    torch._dynamo.reset()
    try:
        out = compiled(q)
    finally:
        torch._dynamo.reset()
    assert dispatched == []
    assert torch.allclose(out, torch._C._nn.scaled_dot_product_attention(q, q, q) * 2)


# --- the timed path ---------------------------------------------------------------------------------------------------


def test_the_current_stream_is_read_per_call_and_its_object_made_once_per_stream(monkeypatch):
    """Timer.pair hands out the stream that is current at the call (CUDA faked: the current stream's numbers come
    from a variable), building a Stream object once per stream. Fails when the cache is keyed by the device alone
    (`self._streams.get(device)`: the call after a switch to another stream records on the old one) or when there
    is no cache (one Stream built per call)."""
    from attnprof.capture import timing

    current = [(7, 0, 1)]
    built = []

    class Stream:
        def __init__(self, stream_id, device_index, device_type):
            built.append(stream_id)
            self.stream_id = stream_id

    class Event:
        def __init__(self, enable_timing=False):
            pass

    monkeypatch.setattr(timing, "_current_stream_data", lambda device: current[0])
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    timer = timing.Timer()
    first = timer.pair(0)[2]
    assert timer.pair(0)[2] is first and first.stream_id == 7
    current[0] = (9, 0, 1)  # the script entered `with torch.cuda.stream(s)`
    assert timer.pair(0)[2].stream_id == 9
    current[0] = (7, 0, 1)
    assert timer.pair(0)[2] is first
    assert built == [7, 9]
