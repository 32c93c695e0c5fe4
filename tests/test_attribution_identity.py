"""Layout copies go to the call whose tensors they write or read (issue 7, "attribution by identity"), never to a
call beside it whose tensors merely look alike; where a trace cannot tell, the copy is charged to no call and said so.

Expectations come from the scripts' construction: which lines copy, and which call reads or wrote each copy's tensor.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from attnprof.pipeline import analyze_path, analyze_run

REPO = Path(__file__).resolve().parents[1]

# A wrapper (the seed's: (B, H, L, D) copied to (B, L, H, D) for flash-attn, and the output back) and SDPA on other
# tensors of the same shape, back to back inside one module forward (one step per forward).
BACK_TO_BACK = """\
import torch
import torch.nn.functional as F
from flash_attn import flash_attn_func

def wrapper(q, k, v):
    q = q.transpose(1, 2).contiguous()
    k = k.transpose(1, 2).contiguous()
    v = v.transpose(1, 2).contiguous()
    out = flash_attn_func(q, k, v)
    return out.transpose(1, 2).contiguous()

class TwoCalls(torch.nn.Module):
    def forward(self, a, b):
        for _ in range({loops}):
            if {wrapper_first}:
                x = wrapper(*a)
                y = F.scaled_dot_product_attention(*b)
            else:
                y = F.scaled_dot_product_attention(*b)
                x = wrapper(*a)
        return x, y

torch.manual_seed(0)
a = [torch.randn(2, 4, 64, 16) for _ in range(3)]
b = [torch.randn(2, 4, 64, 16) for _ in range(3)]
m = TwoCalls()
for _ in range(3):
    m(a, b)
"""
WRAPPER_COPIES = [("script.py:6", "before"), ("script.py:7", "before"), ("script.py:8", "before"),
                  ("script.py:10", "after")]


def _copies(call) -> list[tuple[str, str]]:
    """(line, position) of a call's copies, in line order."""
    return sorted(((c.site, c.position) for c in call.copies), key=lambda c: int(c[0].rpartition(":")[2]))


def _bare(trace_file: Path, folder: Path) -> Path:
    """A copy of a run's trace alone, without the runinfo.json beside it."""
    folder.mkdir()
    return Path(shutil.copy(trace_file, folder))


@pytest.mark.parametrize("wrapper_first,loops", [(True, 1), (False, 3), (True, 3)])
def test_back_to_back_calls_each_get_their_own_copies(trace, stubs, tmp_path, wrapper_first, loops):
    r = trace(BACK_TO_BACK.format(wrapper_first=wrapper_first, loops=loops), warmup=0, timed=1, active=1)
    (trace_file,) = r.trace_files
    # With what capture recorded (storages), and from the trace alone (frames, shapes, the order of the ops)
    for report in (analyze_run(r.folder).report, analyze_path(_bare(trace_file, tmp_path / "bare"))):
        wrapper_calls = [c for c in report.calls if c.op == "flash_attn_func"]
        sdpa_calls = [c for c in report.calls if c.op == "sdpa"]
        assert len(wrapper_calls) == len(sdpa_calls) == loops  # one profiled forward
        for call in wrapper_calls:
            assert _copies(call) == WRAPPER_COPIES  # q, k, v in, the output back: lines 6-8 and 10
            assert all(c.op == "aten::contiguous" and c.bytes == 2 * 2 * 4 * 64 * 16 * 4 for c in call.copies)
        assert [c.copies for c in sdpa_calls] == [[]] * loops  # SDPA reads b as it is: no copy is its
        assert report.unattributed_copies == []


# Two SDPA calls in one function; between them, a copy of the first call's output and a copy that makes the second
# call's q. All four tensors are (2, 4, 64, 16) contiguous, and both copies run in the function that makes both
# calls: shapes, strides and Python frames cannot tell which copy is whose. Only the storages can.
LOOK_ALIKE = """\
import torch
import torch.nn.functional as F

class Pair(torch.nn.Module):
    def forward(self, a, b):
        x = F.scaled_dot_product_attention(*a)
        kept = x.clone()
        q = b[0].clone()
        y = F.scaled_dot_product_attention(q, b[1], b[2])
        return kept, y

torch.manual_seed(0)
a = [torch.randn(2, 4, 64, 16) for _ in range(3)]
b = [torch.randn(2, 4, 64, 16) for _ in range(3)]
m = Pair()
for _ in range(3):
    m(a, b)
"""


def test_storages_tell_apart_copies_that_shapes_and_frames_cannot(trace, tmp_path):
    r = trace(LOOK_ALIKE, warmup=0, timed=1, active=1)
    first, second = analyze_run(r.folder).report.calls
    assert (first.site, second.site) == ("script.py:6 via :17", "script.py:9 via :17")
    assert _copies(first) == [("script.py:7", "after")]  # kept = x.clone() reads the first call's output
    assert _copies(second) == [("script.py:8", "before")]  # q = b[0].clone() writes the second call's q

    # The trace alone (no runinfo.json): the output's clone could be either call's. It is charged to neither.
    (trace_file,) = r.trace_files
    report = analyze_path(_bare(trace_file, tmp_path / "bare"))
    first, second = report.calls
    assert first.copies == [] and _copies(second) == [("script.py:8", "before")]
    (unowned,) = report.unattributed_copies
    assert (unowned.site, unowned.op, unowned.calls) == ("script.py:7", "aten::clone", [first.id, second.id])
    assert any("1 layout copies charged to no call (script.py:7)" in n for n in report.notes)


def test_bare_trace_of_the_seed_case_charges_no_wrapper_copy_to_sdpa(tmp_path, monkeypatch):
    from attnprof.capture.session import TraceOptions, trace_script

    monkeypatch.chdir(REPO)  # sites relative to the repository: examples/seed_case.py:NN
    r = trace_script(TraceOptions(target="examples/seed_case.py", is_module=False, args=["--steps", "4"], warmup=0,
                                  timed=1, active=1, out=tmp_path / "run", root=tmp_path))
    (trace_file,) = r.trace_files
    report = analyze_path(_bare(trace_file, tmp_path / "bare"))
    by_site = {}
    for c in report.calls:
        by_site.setdefault(c.site, []).append(c)
    seed, native, sdpa = (by_site[f"examples/seed_case.py:{s}"] for s in ("37 via :47", "37 via :84", "52 via :86"))
    assert [c.copies for c in sdpa + native] == [[]] * len(sdpa + native)  # neither copies anything
    seed_lines = {f"examples/seed_case.py:{n}" for n in (44, 45, 46, 48)}  # q, k, v in; the output back
    attributed = {c.site for call in seed for c in call.copies}
    unowned = {c.site for c in report.unattributed_copies}
    assert attributed <= seed_lines and unowned <= seed_lines
    assert attributed | unowned == seed_lines  # every copy the seed wrapper made is shown, owned or not
    if unowned:
        assert any("layout copies charged to no call" in n for n in report.notes)


# A helper makes the first call and then copies a tensor the second call reads as k, v: the storages say whose it
# is. From the trace alone the copy ran inside a function that made another attention call, so it may be that
# call's work: it is charged to neither, least of all to the later call.
HELPER_COPY = """\
import torch
import torch.nn.functional as F

def layer(x, other):
    y = F.scaled_dot_product_attention(x, x, x)
    nxt = other.clone()
    return y, nxt

class Pair(torch.nn.Module):
    def forward(self, a, other, q):
        y, nxt = layer(a, other)
        z = F.scaled_dot_product_attention(q, nxt, nxt)
        return y, z

torch.manual_seed(0)
a, other, q = torch.randn(2, 4, 64, 16), torch.randn(2, 4, 32, 16), torch.randn(2, 4, 64, 16)
m = Pair()
for _ in range(3):
    m(a, other, q)
"""


def test_a_copy_in_a_helper_that_makes_another_call_is_not_guessed(trace, tmp_path):
    r = trace(HELPER_COPY, warmup=0, timed=1, active=1)
    first, second = analyze_run(r.folder).report.calls
    assert first.copies == [] and _copies(second) == [("script.py:6", "before")]  # nxt: the second call's k, v

    (trace_file,) = r.trace_files
    report = analyze_path(_bare(trace_file, tmp_path / "bare"))
    first, second = report.calls
    assert first.copies == second.copies == []
    assert [(c.site, c.calls) for c in report.unattributed_copies] == [("script.py:6", [second.id])]


# The wrapper's output copy is what the SDPA call after it reads, and SDPA's output is what the next wrapper's q copy
# reads: each of those copies writes one call's input and reads another's output. Each is the code's that made it.
CHAINED_CALLS = """\
import torch
import torch.nn.functional as F
from flash_attn import flash_attn_func

def wrapper(q, k, v):
    q = q.transpose(1, 2).contiguous()
    k = k.transpose(1, 2).contiguous()
    v = v.transpose(1, 2).contiguous()
    out = flash_attn_func(q, k, v)
    return out.transpose(1, 2).contiguous()

class Chain(torch.nn.Module):
    def forward(self, a, b):
        x = wrapper(*a)
        y = F.scaled_dot_product_attention(x, b[1], b[2])
        return wrapper(y, b[1], b[2])

torch.manual_seed(0)
a = [torch.randn(2, 4, 64, 16) for _ in range(3)]
b = [torch.randn(2, 4, 64, 16) for _ in range(3)]
m = Chain()
for _ in range(3):
    m(a, b)
"""


def test_a_copy_between_two_calls_that_both_touch_it_is_the_wrappers(trace, stubs, tmp_path):
    r = trace(CHAINED_CALLS, warmup=0, timed=1, active=1)
    (trace_file,) = r.trace_files
    for report in (analyze_run(r.folder).report, analyze_path(_bare(trace_file, tmp_path / "bare"))):
        first, sdpa, second = report.calls
        assert (first.op, sdpa.op, second.op) == ("flash_attn_func", "sdpa", "flash_attn_func")
        assert _copies(first) == _copies(second) == WRAPPER_COPIES
        assert sdpa.copies == [] and report.unattributed_copies == []


# Copies of copies: q to (B, H, L, D) then to float64 before the call; the output to float32 then back to
# (B, L, H, D) after it. Only the last copy before / the first after touch the call's own tensors.
CHAINED_COPIES = """\
import torch
import torch.nn.functional as F

class Block(torch.nn.Module):
    def forward(self, x, k, v):
        q = x.transpose(1, 2).contiguous().double()
        out = F.scaled_dot_product_attention(q, k, v)
        return out.float().transpose(1, 2).contiguous()

torch.manual_seed(0)
x = torch.randn(2, 64, 4, 16)
k, v = torch.randn(2, 4, 64, 16, dtype=torch.float64), torch.randn(2, 4, 64, 16, dtype=torch.float64)
m = Block()
for _ in range(3):
    m(x, k, v)
"""


def test_copies_of_copies_follow_the_data(trace):
    r = trace(CHAINED_COPIES, warmup=0, timed=1, active=1)
    (call,) = analyze_run(r.folder).report.calls
    before, after = [("script.py:6", "before")] * 2, [("script.py:8", "after")] * 2
    assert [(c.site, c.position) for c in call.copies] == before + after
