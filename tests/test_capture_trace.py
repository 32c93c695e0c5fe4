"""Capture: what lands in the exported trace (attnprof ranges, source lines of layout copies) and the timings."""
from __future__ import annotations

import gzip
import json
import time

import pytest
import torch
import torch.nn.functional as F
from trace_ranges import trace_names

from attnprof.capture import timing as timing_mod
from attnprof.capture.timing import Timer, _producers
from attnprof.trace.runinfo import RANGE_RE, SOURCE_PREFIX, parse_source_range


def test_every_profiled_call_has_its_range_in_the_trace(trace):
    r = trace("""\
        import torch
        import torch.nn.functional as F
        def block(x):
            return F.scaled_dot_product_attention(x, x, x, is_causal=True)
        x = torch.randn(1, 2, 8, 4)
        for i in range(5):
            block(x)
            block(x * 2)
        """, warmup=1, timed=1, active=2, step_on="call")
    names = [n for n in trace_names(r) if RANGE_RE.match(n)]
    assert names == [c.range_name for c in r.runinfo.calls] == [
        "attnprof:sdpa script.py:4 via :7 #3", "attnprof:sdpa script.py:4 via :8 #4"]  # one helper, two callers
    assert [c.function for c in r.runinfo.calls] == ["block", "block"]


SOURCES = """\
import torch
import torch.nn.functional as F
from flash_attn import flash_attn_func

def prep(x):
    return x.transpose(1, 2).contiguous()

q = torch.randn(1, 4, 8, 16)
errors = []
for i in range(4):
    k = prep(q)
    v = torch.cat([k, k], dim=1)
    F.scaled_dot_product_attention(k, k, k)
    flash_attn_func(q.transpose(-1, -2), q.transpose(-1, -2), q.transpose(-1, -2))
    try:
        torch.cat([])
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
open("errors.json", "w").write(__import__("json").dumps(errors))
"""


def test_source_lines_of_layout_copies_made_by_the_script(trace, stubs, tmp_path):
    r = trace(SOURCES, warmup=2, timed=0, active=1)
    # step 2 is profiled: from the exit of step 1's last call to the entry of step 3's first call
    src = SOURCE_PREFIX + "script.py:"
    assert trace_names(r) == [
        src + "16",  # step 1's failing torch.cat([]), after its last attention call
        src + "6", src + "12", "attnprof:sdpa script.py:13 #5", "attnprof:flash_attn_func script.py:14 #6",
        src + "16", src + "6", src + "12",
    ]  # the stand-in's own .contiguous() (inside flash_attn) is the op's business, not a source line
    with pytest.raises(Exception) as plain:
        torch.cat([])
    expected = f"{type(plain.value).__name__}: {plain.value}"
    assert json.loads((tmp_path / "errors.json").read_text()) == [expected] * 4


def test_no_source_lines_when_turned_off(trace, stubs):
    r = trace(SOURCES, warmup=2, timed=0, active=1, source_lines=False)
    assert not [n for n in trace_names(r) if n.startswith(SOURCE_PREFIX)]


def test_a_users_own_torch_function_mode_is_left_intact(trace, tmp_path):
    r = trace("""\
        import json, torch
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack
        class Count(TorchFunctionMode):
            n = 0
            def __torch_function__(self, func, types, args=(), kwargs=None):
                Count.n += 1
                return func(*args, **(kwargs or {}))
        q = torch.randn(1, 2, 4, 8)
        mode = Count()
        for i in range(4):
            if i == 1:
                mode.__enter__()  # above attnprof's mode, and still there when the window closes
            F.scaled_dot_product_attention(q, q, q)
        before = Count.n
        q.contiguous()
        after = Count.n
        stack = [type(m).__name__ for m in _get_current_function_mode_stack()]
        mode.__exit__(None, None, None)
        json.dump({"counted": after - before, "stack": stack}, open("modes.json", "w"))
        """, active=2, step_on="call")
    got = json.loads((tmp_path / "modes.json").read_text())
    assert got == {"counted": 1, "stack": ["SourceLineMode", "Count"]}
    assert r.exit_code == 0 and torch._C._len_torch_function_stack() == 0
    assert not torch.overrides.has_torch_function((torch.ones(1),))


def test_backward_is_timed_when_the_script_calls_backward(trace):
    r = trace("""\
        import torch, torch.nn as nn
        import torch.nn.functional as F
        proj = nn.Linear(16, 48)
        x = torch.randn(2, 8, 16)
        for i in range(6):
            q, k, v = proj(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
            F.scaled_dot_product_attention(q, k, v).sum().backward()
        """, warmup=1, timed=1, active=2, step_on="call", after="time")
    bwd = next(t for t in r.runinfo.sites if t.phase == "bwd")
    # 6 calls: 1 warm-up, 1 timed, 2 profiled, 1 settling after the profiler (untimed), 1 timed after it
    assert (bwd.site, bwd.op, bwd.warmup_calls, len(bwd.true_us), len(bwd.profiled_us), len(bwd.after_us)) == (
        "script.py:7", "sdpa", 2, 1, 2, 1)


def test_no_backward_no_backward_timing(trace):
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 4, 8, requires_grad=True)
        for i in range(4):
            F.scaled_dot_product_attention(q, q, q)
        """, warmup=1, timed=1, active=1)
    assert [t.phase for t in r.runinfo.sites] == ["fwd"]


def test_runinfo_is_written_when_the_window_closes(trace, tmp_path):
    r = trace("""\
        import json, torch
        import torch.nn.functional as F
        from attnprof.capture.session import _active
        q = torch.randn(1, 2, 4, 8)
        for i in range(3):
            F.scaled_dot_product_attention(q, q, q)
        early = json.load(open(_active.folder / "runinfo.json"))
        json.dump([early["outcome"], len(early["calls"]), early["trace_files"]], open("early.json", "w"))
        """, active=1, step_on="call")
    outcome, calls, files = json.loads((tmp_path / "early.json").read_text())
    assert (outcome, calls, files) == ("running", 1, [r.trace_files[0].name])
    assert r.runinfo.outcome == "completed"


# --- the backward's end: the nodes that produce the inputs' gradients -------------------------------------------------


def test_producers_of_a_fused_backward_are_the_attention_node():
    proj = torch.nn.Linear(8, 24)
    q, k, v = proj(torch.randn(2, 4, 8)).view(2, 4, 3, 2, 4).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)
    assert _producers(out.grad_fn, [q, k, v]) == [out.grad_fn]
    leaf = torch.randn(1, 2, 4, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(leaf, leaf, leaf)
    assert _producers(out.grad_fn, [leaf]) == [out.grad_fn]


def test_producers_of_a_composite_op_are_its_first_nodes_and_large_graphs_give_up():
    q = torch.randn(1, 4, 2, 8, requires_grad=True) * 1  # (B, L, H, D), non-leaf
    out = F.scaled_dot_product_attention(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2)).transpose(1, 2)
    producers = _producers(out.grad_fn, [q])
    assert len(producers) == 3 and all(type(p).__name__ == "TransposeBackward0" for p in producers)
    deep = q
    for _ in range(timing_mod.MAX_GRAPH_NODES + 5):
        deep = deep + 1
    assert _producers(deep.grad_fn, [q]) is None


class FakeEvent:
    """torch.cuda.Event for a CPU test of the CUDA path: host times, readiness under the test's control."""

    created = 0
    ready = False

    def __init__(self, enable_timing=False):
        FakeEvent.created += 1
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def query(self):
        return FakeEvent.ready

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1000.0


@pytest.fixture
def fake_cuda(monkeypatch):
    FakeEvent.created, FakeEvent.ready = 0, False
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return FakeEvent


def test_cuda_events_are_pooled_and_resolved_lazily(fake_cuda):
    timer = Timer()
    clock = timer.clock("a.py:1", "sdpa", "fwd")
    timer.stop(timer.start(0), clock, "true")
    assert clock.timing.true_us == [] and clock.pending["true"] == 1 and clock.timing.clock == "cuda_event"
    for _ in range(timing_mod.POLL_EVERY):
        timer.tick()
    assert clock.timing.true_us == []  # not finished yet: left pending, no wait
    fake_cuda.ready = True
    for _ in range(timing_mod.POLL_EVERY):
        timer.tick()
    assert len(clock.timing.true_us) == 1 and clock.pending["true"] == 0
    timer.stop(timer.start(0), clock, "profiled")
    assert fake_cuda.created == 2  # the first pair came back to the pool
    fake_cuda.ready = False
    timer.finish()  # synchronizes once and resolves the rest
    assert len(clock.timing.profiled_us) == 1


def test_backward_events_are_taken_only_when_the_backward_runs(fake_cuda):
    timer = Timer()
    clock = timer.clock("a.py:1", "sdpa", "bwd")
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    out = F.scaled_dot_product_attention(q, q, q)
    timer.arm_backward(out, [q], clock, "true", 0)
    del out  # never backpropagated: nothing held
    assert fake_cuda.created == 0 and not timer._pending
    out = F.scaled_dot_product_attention(q, q, q)
    timer.arm_backward(out, [q], clock, "true", 0)
    out.sum().backward()
    fake_cuda.ready = True
    timer.poll()
    assert fake_cuda.created == 2 and len(clock.timing.true_us) == 1


def test_source_ranges_name_the_storage_the_copy_reads(trace):
    """The output copy's range names the attention output's storage, the one CallInfo records for the call."""
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 8, 4)
        out = F.scaled_dot_product_attention(q, q, q)
        back = out.transpose(1, 2).contiguous()
        """, active=1)
    (call,) = r.runinfo.calls
    (path,) = r.trace_files
    names = [e["name"] for e in json.load(gzip.open(path))["traceEvents"]
             if e.get("name", "").startswith(SOURCE_PREFIX)]
    assert [parse_source_range(n)[:2] for n in names] == [("script.py:5", call.tensors["out"].storage)]
