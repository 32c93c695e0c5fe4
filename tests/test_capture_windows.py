"""Capture: what a step is (optimizer / iteration / call / auto) and which steps run under the profiler."""
from __future__ import annotations

import json

from trace_ranges import trace_names

from attnprof.trace.runinfo import RANGE_PREFIX, SOURCE_PREFIX

OPTIMIZER = """\
import torch, torch.nn as nn, torch.nn.functional as F
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
    def forward(self, x):
        q = self.proj(x).view(2, 4, 2, 4).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q).sum()
net = Net()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
x = torch.randn(2, 4, 8)
for step in range(6):
    for micro in range(FORWARDS):
        net(x).backward()
    opt.step()
    opt.zero_grad()
"""


def test_optimizer_steps(trace):
    r = trace(OPTIMIZER.replace("FORWARDS", "2"), warmup=1, timed=1, active=2, step_on="optimizer")
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled, s.profiled_calls, s.stopped_early) == ("optimizer", 6, [2, 3], 4, None)
    assert [c.step for c in r.runinfo.calls] == [2, 2, 3, 3]
    assert [c.id for c in r.runinfo.calls] == [5, 6, 7, 8]
    names = [n for n in trace_names(r) if n.startswith(RANGE_PREFIX)]
    assert names == [c.range_name for c in r.runinfo.calls]


def test_auto_picks_optimizer_when_it_steps_before_the_next_forward(trace):
    r = trace(OPTIMIZER.replace("FORWARDS", "1"), warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled, s.profiled_calls) == ("optimizer", "one optimizer step", 6,
                                                                           [2, 3], 2)


def test_auto_picks_iteration_when_the_model_is_called_again_first(trace):
    r = trace(OPTIMIZER.replace("FORWARDS", "2"), warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled) == ("iteration", "one forward of Net", 12, [2, 3])
    assert [c.step for c in r.runinfo.calls] == [2, 3]


LAYERS = """\
import torch, torch.nn as nn, torch.nn.functional as F
class Layer(nn.Module):
    def forward(self, x):
        return F.scaled_dot_product_attention(x, x, x)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Layer() for _ in range(3))
    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
net = Net()
x = torch.randn(1, 2, 4, 8)
with torch.no_grad():
    for i in range(6):
        net(x)
"""


def test_iteration_is_one_forward_of_the_outermost_module_not_one_layer(trace):
    """All three layers call attention from the same line: a step is still one forward of the whole model."""
    r = trace(LAYERS, warmup=1, timed=1, active=2, step_on="iteration")
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled, s.profiled_calls) == ("iteration", "one forward of Net", 6,
                                                                           [2, 3], 6)
    assert [c.id for c in r.runinfo.calls] == [7, 8, 9, 10, 11, 12]
    assert [c.step for c in r.runinfo.calls] == [2, 2, 2, 3, 3, 3]
    assert {c.site for c in r.runinfo.calls} == {"script.py:4 via :11"}  # every layer: one line, one caller


SITES = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8)
for i in range(6):
    x = q.transpose(1, 2).contiguous().transpose(1, 2)
    a = F.scaled_dot_product_attention(x, x, x)
    b = F.scaled_dot_product_attention(q, q, q)
"""


def test_iteration_without_a_module_is_the_recurrence_of_the_first_site(trace):
    r = trace(SITES, warmup=1, timed=1, active=2, step_on="auto", after="nvtx")  # steps counted to the end
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled) == ("iteration", "one pass through script.py:6", 6, [2, 3])
    assert [(c.id, c.step, c.site) for c in r.runinfo.calls] == [
        (5, 2, "script.py:6"), (6, 2, "script.py:7"), (7, 3, "script.py:6"), (8, 3, "script.py:7")]
    names = trace_names(r)
    # started right after the exit of call 4, so step 2's layout copy is in; stopped at the entry of call 9
    assert names == [f"{SOURCE_PREFIX}script.py:5", "attnprof:sdpa script.py:6 #5", "attnprof:sdpa script.py:7 #6",
                     f"{SOURCE_PREFIX}script.py:5", "attnprof:sdpa script.py:6 #7", "attnprof:sdpa script.py:7 #8",
                     f"{SOURCE_PREFIX}script.py:5"]


CALLS = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8, requires_grad=True)
for i in range(N):
    F.scaled_dot_product_attention(q * 1, q, q).sum().backward()
"""


def test_call_steps(trace):
    r = trace(CALLS.replace("N", "8"), warmup=2, timed=1, active=2, step_on="call", after="nvtx")
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled, s.profiled_calls) == ("call", 8, [3, 4], 2)
    assert [(c.id, c.step) for c in r.runinfo.calls] == [(4, 3), (5, 4)]


def test_timing_phases_follow_the_window(trace):
    r = trace(CALLS.replace("N", "10"), warmup=2, timed=3, active=2, step_on="call", after="time")
    timings = {t.phase: t for t in r.runinfo.sites}
    for phase in ("fwd", "bwd"):
        t = timings[phase]
        assert (t.site, t.op, t.clock) == ("script.py:5", "sdpa", "host")
        # 10 calls: 2 warm-up, 3 timed, 2 profiled, 1 settling after the profiler (untimed), 2 timed after it
        assert (t.warmup_calls, len(t.true_us), len(t.profiled_us), len(t.after_us)) == (3, 3, 2, 2)


SLEEPY = """\
import json, time
import torch
import flash_attn.flash_attn_interface as interface
from flash_attn import flash_attn_func
attend = interface.attend
inner, outer = [], []
def slow_attend(*args, **kwargs):
    t = time.perf_counter()
    time.sleep(0.02)  # 20 ms inside the call attnprof wraps and times
    out = attend(*args, **kwargs)
    inner.append((time.perf_counter() - t) * 1e6)
    return out
interface.attend = slow_attend
q = torch.randn(1, 4, 2, 8)
for i in range(9):
    t = time.perf_counter()
    flash_attn_func(q, q, q)
    outer.append((time.perf_counter() - t) * 1e6)
json.dump({"inner": inner, "outer": outer}, open("times.json", "w"))
"""


def test_timed_calls_measure_the_calls_own_time(trace, stubs, tmp_path):
    """Each timed value lies between the script's own clock inside the wrapped function (a 20 ms sleep and the
    attention) and its clock around the call, for consecutive calls in the window's order: timed, profiled, after."""
    r = trace(SLEEPY, warmup=1, timed=3, active=2, step_on="call", after="time")
    (t,) = [t for t in r.runinfo.sites if t.op == "flash_attn_func"]
    # 9 calls: 1 warm-up, 3 timed (calls 1-3), 2 profiled (4, 5), 1 settling after the profiler, 2 timed after (7, 8)
    assert (t.phase, t.clock, len(t.true_us), len(t.profiled_us), len(t.after_us)) == ("fwd", "host", 3, 2, 2)
    clock = json.loads((tmp_path / "times.json").read_text())
    inner, outer = clock["inner"], clock["outer"]
    assert len(inner) == len(outer) == 9 and min(inner) >= 20_000

    def where(values):
        """The calls (first index) whose own clocks bracket `values`, one by one."""
        return [j for j in range(len(inner) - len(values) + 1)
                if all(inner[j + n] <= v <= outer[j + n] for n, v in enumerate(values))]

    assert 1 in where(t.true_us) and 4 in where(t.profiled_us) and 7 in where(t.after_us)


def test_max_calls_caps_the_window(trace):
    r = trace(CALLS.replace("N", "8"), warmup=0, timed=0, active=10, step_on="call", max_calls=3)
    s = r.runinfo.steps
    assert [c.id for c in r.runinfo.calls] == [1, 2, 3] and s.profiled_calls == 3 and s.profiled == [0, 2]
    assert "--max-calls 3" in s.stopped_early
    assert len([n for n in trace_names(r) if n.startswith(RANGE_PREFIX)]) == 3


def test_script_ending_inside_the_window_stops_it_there(trace):
    r = trace(SITES.replace("range(6)", "range(2)"), warmup=0, timed=0, active=5)
    s = r.runinfo.steps
    assert s.profiled == [0, 1] and s.profiled_calls == 4
    assert s.stopped_early == "the script ended during step 1, before the window's last step 4"
    assert len(r.trace_files) == 1


def test_script_ending_in_the_last_active_step_is_not_early(trace):
    r = trace(SITES.replace("range(6)", "range(2)"), warmup=0, timed=0, active=2)
    assert r.runinfo.steps.stopped_early is None and r.runinfo.steps.profiled == [0, 1]


def test_script_ending_before_the_window_leaves_a_note_and_no_trace(trace):
    r = trace(SITES.replace("range(6)", "range(2)"), warmup=2, timed=3, active=2)
    assert r.trace_files == [] and r.runinfo.trace_files == [] and r.runinfo.steps.profiled == []
    assert r.runinfo.note == ("the script ran 2 steps (one step = one pass through script.py:6); profiling starts "
                              "after 5 (--warmup 2 --timed 3): rerun with --warmup 0 --timed 0")
    assert sorted(p.name for p in r.folder.iterdir()) == ["runinfo.json"]


def test_no_attention_call_says_so(trace):
    r = trace("import torch\nx = torch.ones(3) * 2\n", warmup=1)
    assert r.trace_files == [] and "no attention call" in r.runinfo.note


def test_no_warmup_and_no_timed_steps_profiles_from_the_start(trace):
    r = trace("import torch\ny = torch.randn(4).contiguous()\n" + SITES, warmup=0, timed=0, active=1)
    names = trace_names(r)
    assert names[0] == f"{SOURCE_PREFIX}script.py:2"  # before any attention call: the profiler ran already
    assert r.runinfo.steps.profiled == [0, 0] and [c.id for c in r.runinfo.calls] == [1, 2]


def test_active_zero_runs_no_profiler_but_times_every_call(trace):
    """`--active 0` (what `attnprof nsys` runs under Nsight): NVTX ranges and CUDA-event timing, no trace."""
    r = trace(LAYERS, warmup=1, timed=2, active=0, step_on="iteration")
    assert r.trace_files == [] and r.runinfo.calls == [] and r.runinfo.steps.profiled == []
    (timing,) = r.runinfo.sites
    assert timing.warmup_calls == 3 and len(timing.true_us) == 15 and timing.profiled_us == []
    assert "no profiler (--active 0)" in r.runinfo.note
    assert not list(r.folder.glob("*.pt.trace.json*"))


SHARED_LINE_LAYERS = """\
import torch
import torch.nn.functional as F
weights = [torch.randn(8, 8, requires_grad=True) for _ in range(3)]
opt = torch.optim.SGD(weights, lr=0.01)
def layer(h, w):
    return F.scaled_dot_product_attention(h @ w, h, h)
x = torch.randn(1, 2, 4, 8)
for step in range(8):
    h = x
    for w in weights:
        h = layer(h, w)
    h.sum().backward()
    opt.step()
    opt.zero_grad()
"""


def test_auto_does_not_commit_to_site_steps_inside_the_first_forward(trace):
    """Three layers (no nn.Module) share one call site: its recurrence inside the first forward is not a step; the
    optimizer step that follows makes the unit optimizer, so each profiled step holds all three layers."""
    r = trace(SHARED_LINE_LAYERS, warmup=2, timed=3, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled, s.profiled_calls) == ("optimizer", "one optimizer step", 8,
                                                                           [5, 6], 6)
    assert [c.step for c in r.runinfo.calls] == [5, 5, 5, 6, 6, 6]


ONE_PASS = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8)
x = q.transpose(1, 2).contiguous().transpose(1, 2)
a = F.scaled_dot_product_attention(x, x, x)
b = F.scaled_dot_product_attention(q, q, q)
"""


def test_a_script_without_a_loop_is_profiled_cold_from_its_first_call(trace):
    r = trace(ONE_PASS, warmup=2, timed=3, active=2)
    s = r.runinfo.steps
    assert (s.seen, s.profiled, s.profiled_calls, s.stopped_early) == (1, [0, 0], 2, None)
    # the window opened at the entry of the first call: the copy on line 4, before it, is not in the trace
    assert trace_names(r) == ["attnprof:sdpa script.py:5 #1", "attnprof:sdpa script.py:6 #2"]
    assert r.runinfo.note.startswith("cold start: the script showed no loop around its first step, so step 0 was "
                                     "profiled from the start")
    assert all(t.true_us == [] and t.after_us == [] for t in r.runinfo.sites)


LOOP_OUTSIDE = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8)
def infer():
    return F.scaled_dot_product_attention(q, q, q)
LOOP
"""


def test_a_loop_in_any_frame_outside_the_step_keeps_warmup_and_timed_steps(trace):
    """The call's own function has no loop, but its caller loops (a for statement, a comprehension, a while) or will
    (a warm-up call before a loop): the run may repeat its step, so it is not profiled cold; with 3 steps it ends
    before step 5, as it would without attnprof (the warm-up call's site, `:5 via :6`, never recurs: 1 step)."""
    loops = {"for i in range(3):\n    infer()": 3, "outs = [infer() for i in range(3)]": 3,
             "i = 0\nwhile i < 3:\n    infer()\n    i += 1": 3, "infer()\nfor i in range(2):\n    infer()": 1}
    for loop, steps in loops.items():
        r = trace(LOOP_OUTSIDE.replace("LOOP", loop), warmup=2, timed=3, active=2)
        assert r.trace_files == [] and r.runinfo.steps.profiled == [] and r.runinfo.steps.seen == steps, loop
        assert r.runinfo.note.startswith(f"the script ran {steps} step"), loop


ONE_TRAINING_STEP = """\
import torch, torch.nn as nn, torch.nn.functional as F
net = nn.Linear(8, 8)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
q = net(torch.randn(2, 4, 2, 8)).transpose(1, 2)
F.scaled_dot_product_attention(q, q, q).sum().backward()
opt.step()
"""


def test_one_training_step_without_a_loop_profiles_that_step_only(trace):
    """Cold, and the optimizer step ends step 0: the script then ends in a step 1 that ran nothing, which is not
    reported as profiled."""
    r = trace(ONE_TRAINING_STEP, warmup=2, timed=3, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled, s.profiled_calls, s.stopped_early) == ("optimizer", 1, [0, 0], 1, None)
    assert "so step 0 was profiled" in r.runinfo.note
