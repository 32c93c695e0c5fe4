"""What each wrapped call costs, counted instead of timed: the work done per call in each phase (issue 10)."""
from __future__ import annotations

import pytest
import torch

from attnprof.capture import session as session_mod
from attnprof.capture import sources as sources_mod
from attnprof.capture import timing as timing_mod
from attnprof.capture.sources import SiteResolver
from attnprof.capture.timing import Timer

LOOP = """\
import json
import torch
import torch.nn.functional as F
bare = torch._C._nn.scaled_dot_product_attention
q = torch.randn(1, 2, 4, 8)
seen = []
for i in range(N):
    F.scaled_dot_product_attention(q, q, q)
    seen.append(F.scaled_dot_product_attention is bare)
json.dump(seen, open("seen.json", "w"))
"""


def _seen(tmp_path) -> list[bool]:
    import json

    return json.loads((tmp_path / "seen.json").read_text())


def test_after_none_puts_the_original_function_back_when_the_window_closes(trace, tmp_path):
    r = trace(LOOP.replace("N", "6"), warmup=1, timed=1, active=2, step_on="call", after="none")
    # calls 3-4 profiled; the window closes at the entry of call 5, which still runs wrapped
    assert _seen(tmp_path) == [False, False, False, False, True, True]
    assert r.runinfo.steps.profiled == [2, 3] and [c.id for c in r.runinfo.calls] == [3, 4]
    assert r.exit_code == 0 and torch.nn.functional.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


def test_after_nvtx_keeps_the_wrapper_and_the_step_counter_and_times_nothing(trace, tmp_path, monkeypatch):
    names = []
    monkeypatch.setattr(session_mod, "_nvtx_listening", lambda: True)  # as under nsys
    monkeypatch.setattr(session_mod, "_nvtx_push", names.append)
    r = trace(LOOP.replace("N", "7"), warmup=1, timed=1, active=2, step_on="call", after="nvtx")
    assert _seen(tmp_path) == [False] * 7
    # one range per call, numbered on after the window: call 5 entered the full path (it closed the window)
    assert names == [f"sdpa script.py:8 #{i}" for i in range(1, 8)]
    assert r.runinfo.steps.seen == 7
    (fwd,) = r.runinfo.sites
    # 1 warm-up call and call 5 (settling after the profiler) counted; 1 timed, 2 profiled; nothing after
    assert (fwd.warmup_calls, len(fwd.true_us), len(fwd.profiled_us), fwd.after_us) == (2, 1, 2, [])


def test_after_time_times_the_calls_after_the_window(trace):
    r = trace(LOOP.replace("N", "7"), warmup=1, timed=1, active=2, step_on="call", after="time")
    (fwd,) = r.runinfo.sites
    assert (fwd.warmup_calls, len(fwd.true_us), len(fwd.profiled_us), len(fwd.after_us)) == (2, 1, 2, 2)


def test_bad_after_is_an_attnprof_error(trace):
    from attnprof.errors import AttnprofError

    with pytest.raises(AttnprofError, match="--after must be one of none, nvtx, time"):
        trace(LOOP.replace("N", "1"), after="off")


def test_calls_are_described_only_inside_the_window(trace, monkeypatch):
    described = []
    real = session_mod.describe_call

    def counting(*args, **kwargs):
        described.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(session_mod, "describe_call", counting)
    r = trace(LOOP.replace("N", "8"), warmup=2, timed=2, active=2, step_on="call", after="time")
    assert len(described) == 2 and len(r.runinfo.calls) == 2


def test_hf_model_sites_are_resolved_once_per_code_location(trace, monkeypatch):
    """GPT-2's two layers reach SDPA through the same two lines: one resolution (the site's line and its caller's
    line read once each) for 2 layers x 3 forwards, and each code object on the way classified once."""
    pytest.importorskip("transformers")
    named, classified = [], []
    real_site, real_classify = SiteResolver.site, sources_mod._classify

    def site(self, frame):
        named.append(frame.f_code.co_name)
        return real_site(self, frame)

    def classify(frame):
        classified.append(frame.f_code)
        return real_classify(frame)

    monkeypatch.setattr(SiteResolver, "site", site)
    monkeypatch.setattr(sources_mod, "_classify", classify)
    r = trace("""\
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
        config._attn_implementation = "sdpa"
        model = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randint(0, 64, (1, 8)))
        """, warmup=1, timed=1, active=0, after="time")
    assert r.exit_code == 0 and r.runinfo.steps.seen == 3
    (fwd,) = r.runinfo.sites
    assert fwd.site == f"transformers/models/gpt2/modeling_gpt2.py:{_line_calling('GPT2Attention', 'attention_interface(')}" \
                       f" via :{_line_calling('GPT2Block', 'self.attn(')}"
    assert fwd.warmup_calls + len(fwd.true_us) == 6
    assert named == ["forward", "forward"]  # GPT2Attention.forward, then GPT2Block.forward: once, not per call
    assert len(classified) == len(set(map(id, classified)))


def _line_calling(cls: str, text: str) -> int:
    """The one line of `cls.forward` in transformers' GPT-2 that contains `text` (read from its source)."""
    import inspect

    from transformers.models.gpt2 import modeling_gpt2

    lines, first = inspect.getsourcelines(getattr(modeling_gpt2, cls).forward)
    (line,) = [first + i for i, source in enumerate(lines) if text in source]
    return line


def test_timing_keeps_a_uniform_sample_past_max_values(monkeypatch):
    """Past MAX_VALUES the list goes on sampling every measurement (it used to stop silently): 10 values of 1.0 then
    990 of 2.0 keep about 1% ones, not all ten."""
    monkeypatch.setattr(timing_mod, "MAX_VALUES", 10)
    timer = Timer()
    clock = timer.clock("a.py:1", "sdpa", "fwd")
    for us in [1.0] * 10 + [2.0] * 990:
        clock.store("true", us)
    kept = clock.timing.true_us
    assert len(kept) == 10 and clock.measured["true"] == 1000
    assert kept.count(1.0) <= 2  # expected 0.1 of them; a list that stopped at 10 keeps all ten


class _Event:
    """torch.cuda.Event stand-in that logs what happens to it."""

    log: list = []

    def __init__(self, enable_timing=False):
        _Event.log.append("new")
        self.t = None

    def record(self, stream=None):
        _Event.log.append("record")
        self.t = 0.0

    def query(self):
        return True

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return 0.001


def test_the_end_event_is_recorded_first_thing_after_the_call(monkeypatch):
    """Both events of a pair come from the pool at the start: between the call and its end event, no pool lookup,
    no lock, no event made."""
    _Event.log = []
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    timer = Timer()
    clock = timer.clock("a.py:1", "sdpa", "fwd")
    token = timer.start(0)
    assert _Event.log == ["new", "new", "record"]

    class LoggedLock:
        def __enter__(self):
            _Event.log.append("lock")

        def __exit__(self, *exc):
            return None

    timer._lock = LoggedLock()
    timer.stop(token, clock, "true")
    assert _Event.log == ["new", "new", "record", "record", "lock"]
    assert clock.pending["true"] == 1


# --- the quiet path: warm-up calls and calls after the window under --after nvtx --------------------------------------


def test_warm_up_calls_do_not_enter_the_window_under_its_lock(trace, monkeypatch):
    """Of 8 calls (step = call) with --warmup 6 --timed 2: the first (it finds what a step is) and the two timed calls
    take enter_call; warm-up calls 2-6 are counted by the quiet path."""
    from attnprof.capture.window import StepWindow

    entered = []
    real = StepWindow.enter_call

    def counting(self, site, frame, user):
        entered.append(self.calls + 1)
        return real(self, site, frame, user)

    monkeypatch.setattr(StepWindow, "enter_call", counting)
    r = trace(LOOP.replace("N", "8"), warmup=6, timed=2, active=0, step_on="call")
    assert entered == [1, 7, 8]
    (fwd,) = r.runinfo.sites
    assert (fwd.warmup_calls, len(fwd.true_us), r.runinfo.steps.seen) == (6, 2, 8)


HELPER = """\
import torch
import torch.nn.functional as F
q = torch.randn(1, 2, 4, 8)
def attend(x):
    return F.scaled_dot_product_attention(x, x, x)
for i in range(N):
    attend(q)
    attend(q)
    if i % 2:
        attend(q)
"""


def test_one_helper_called_from_two_lines_counts_each_line_apart_on_the_quiet_path(trace):
    """The wrapper's caller is the same frame location for every call (the helper's line); only the line calling the
    helper tells the sites apart: 4 iterations give 4 calls via :7, 4 via :8 and 2 via :10, all warm-up."""
    r = trace(HELPER.replace("N", "4"), warmup=100, timed=0, active=1, step_on="call")
    counts = {t.site: t.warmup_calls for t in r.runinfo.sites}
    assert counts == {"script.py:5 via :7": 4, "script.py:5 via :8": 4, "script.py:5 via :10": 2}


def test_the_quiet_path_pushes_nvtx_ranges_only_when_a_tool_listens(trace, monkeypatch):
    names = []
    monkeypatch.setattr(session_mod, "_nvtx_push", names.append)
    monkeypatch.setattr(session_mod, "_nvtx_listening", lambda: False)  # no nsys / ncu: a dummy NVTX domain
    trace(LOOP.replace("N", "4"), warmup=4, timed=0, active=1, step_on="call")
    assert names == []
    monkeypatch.setattr(session_mod, "_nvtx_listening", lambda: True)
    trace(LOOP.replace("N", "4"), warmup=4, timed=0, active=1, step_on="call")
    assert names == [f"sdpa script.py:8 #{i}" for i in range(1, 5)]


def test_nvtx_is_heard_only_with_a_tool_attached():
    """On this machine nothing listens to NVTX (no nsys, no injection library): the nvtx package hands out its dummy
    domain, and attnprof pushes no range."""
    import os

    if os.environ.get("NVTX_INJECTION64_PATH"):
        pytest.skip("a tool listens to NVTX here")
    assert session_mod._nvtx_listening() is False


def test_the_default_after_is_the_one_readme_gives(trace):
    """README's options table, `attnprof trace --help`'s default and TraceOptions' default agree."""
    import argparse
    import re
    from pathlib import Path

    from attnprof.capture.session import TraceOptions
    from attnprof.cli import trace_cmd

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `--after none")]
    readme_default = re.match(r"\| `[^`]*` \| (\w+) \|", row).group(1)
    parser = argparse.ArgumentParser()
    trace_cmd.register(parser.add_subparsers())
    cli_default = parser.parse_args(["trace", "x.py"]).after
    assert readme_default == cli_default == TraceOptions(target="x.py", is_module=False, args=[], out=None).after


def test_a_backward_that_could_not_be_timed_is_said_in_the_note(trace, monkeypatch):
    """A failure inside the backward hooks must not pass silently (the calls would be untimed without a word)."""
    real = Timer.start

    def failing(self, device):
        if self.on_error is not None and any(c.timing.phase == "bwd" for c in self.sites.values()):
            raise RuntimeError("no events left")
        return real(self, device)

    monkeypatch.setattr(Timer, "start", failing)
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 4, 8, requires_grad=True)
        for _ in range(3):
            F.scaled_dot_product_attention(q, q, q).sum().backward()
        """, warmup=0, timed=2, active=0, step_on="call")
    assert "could not time a backward call: RuntimeError: no events left" in r.runinfo.note
    bwd = [t for t in r.runinfo.sites if t.phase == "bwd"]
    assert all(t.true_us == [] for t in bwd)


def test_nothing_runs_between_the_start_event_and_the_call_nor_between_the_call_and_the_end(trace, monkeypatch):
    """A timed call on CUDA (events faked on this CPU machine): from the start event's record to the end event's, the
    only thing called is the attention op itself."""
    import sys

    log: list = []

    class Event:
        records = 0

        def __init__(self, enable_timing=False):
            pass

        def record(self, stream=None):
            Event.records += 1
            if Event.records == 3:  # the second call's pair (the first call finds the step): start
                sys.setprofile(lambda frame, event, arg: event != "c_return" and log.append(
                    (event, arg.__name__ if event == "c_call" else frame.f_code.co_name)))
            elif Event.records == 4:
                sys.setprofile(None)

        def query(self):
            return True

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 0.002

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(session_mod, "_cuda_index", lambda args, kwargs: 0)
    r = trace(LOOP.replace("N", "3"), warmup=0, timed=3, active=0, step_on="call")
    # the start's record returns, the op runs, the end's record is called (and nothing else happens in between)
    assert log == [("return", "record"), ("c_call", "scaled_dot_product_attention"), ("call", "record"),
                   ("c_call", "setprofile")]
    (fwd,) = r.runinfo.sites
    assert (fwd.clock, fwd.true_us) == ("cuda_event", [2.0, 2.0, 2.0])
