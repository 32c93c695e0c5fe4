"""Zoo: torch's own attention modules (nn.Transformer, nn.TransformerEncoder, nn.MultiheadAttention), torch.compile
and a one-pass script, traced unchanged on CPU.

Expectations come from how each script is built: layers x attention calls per layer x profiled steps, which phases
run (a backward only where the script calls it), and what a step is (an optimizer step when the script has one).
"""
from __future__ import annotations

import gzip
import json
import sys
import types
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
from attnprof.pipeline import analyze_path  # noqa: E402


def _by_phase(report) -> Counter:
    return Counter(c.phase for c in report.calls)


def _by_step(report, phase: str) -> Counter:
    return Counter(c.step for c in report.calls if c.phase == phase)


def _every_call_has_compute(report) -> None:
    """Every call ran an attention op of its own. (That its parts add up to its window is checked by the analysis
    itself, decomposition.check_call, on every call: a broken split stops analyze_path.)"""
    for c in report.calls:
        assert c.compute_us > 0 and any(k.category == "compute" for k in c.kernels), c


ENCODER_SGD = """\
import torch, torch.nn as nn
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0)
model = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(8, 2, 32)
for step in range(5):
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
"""


def test_transformer_encoder_trained_with_sgd_profiles_optimizer_steps_with_backward(trace):
    """4 layers, one self-attention each (training path: F.multi_head_attention_forward -> SDPA), 2 profiled
    optimizer steps: 8 forward and 8 backward calls, 4 of each per step."""
    r = trace(ENCODER_SGD, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled, s.profiled_calls) == ("optimizer", "one optimizer step", 5,
                                                                           [2, 3], 8)
    assert [c.step for c in r.runinfo.calls] == [2] * 4 + [3] * 4
    assert {c.op for c in r.runinfo.calls} == {"sdpa"}
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 8, "bwd": 8}
    assert _by_step(report, "fwd") == {2: 4, 3: 4} and _by_step(report, "bwd") == {2: 4, 3: 4}
    _every_call_has_compute(report)


TRANSFORMER_ADAMW = """\
import torch
from prebuilt import model, opt, sched
src, tgt = torch.randn(6, 2, 32), torch.randn(5, 2, 32)
mask = model.generate_square_subsequent_mask(5)
for step in range(5):
    model(src, tgt, tgt_mask=mask).pow(2).mean().backward()
    opt.step()
    sched.step()
    opt.zero_grad()
"""


@pytest.fixture
def prebuilt():
    """A model, an AdamW and its LR scheduler made before attnprof starts (a module the script imports)."""
    torch.manual_seed(0)
    module = types.ModuleType("prebuilt")
    module.model = torch.nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=1,
                                        dim_feedforward=64, dropout=0.0)
    module.opt = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
    module.sched = torch.optim.lr_scheduler.LambdaLR(module.opt, lambda step: 0.9 ** step)
    sys.modules["prebuilt"] = module
    yield module
    del sys.modules["prebuilt"]


def test_transformer_with_adamw_and_scheduler_created_before_attnprof(trace, prebuilt):
    """Encoder-decoder: 2 encoder self-attentions + decoder self- and cross-attention = 4 calls per forward."""
    r = trace(TRANSFORMER_ADAMW, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled) == ("optimizer", 5, [2, 3])
    assert [c.step for c in r.runinfo.calls] == [2] * 4 + [3] * 4
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 8, "bwd": 8}
    assert _by_step(report, "bwd") == {2: 4, 3: 4}
    _every_call_has_compute(report)
    assert prebuilt.sched.last_epoch == 5  # the scheduler stepped as under python


MHA_CUSTOM_OPTIMIZER = """\
import torch, torch.nn as nn
class HandSGD(torch.optim.Optimizer):
    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
torch.manual_seed(0)
layers = nn.ModuleList(nn.MultiheadAttention(32, 4) for _ in range(3))
opt = HandSGD(layers.parameters(), lr=0.01)
x = torch.randn(8, 2, 32)
for step in range(5):
    h = x
    for attn in layers:
        h = attn(h, h, h, need_weights=False)[0]
    h.pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
"""


def test_multihead_attention_layers_called_from_one_line_with_a_custom_optimizer(trace):
    """Three nn.MultiheadAttention called from the same script line (training path: F.multi_head_attention_forward
    -> SDPA): a step is one HandSGD step, not one layer call."""
    r = trace(MHA_CUSTOM_OPTIMIZER, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.seen, s.profiled) == ("optimizer", 5, [2, 3])
    assert [(c.op, c.step) for c in r.runinfo.calls] == [("sdpa", 2)] * 3 + [("sdpa", 3)] * 3
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 6, "bwd": 6}
    _every_call_has_compute(report)


MHA_EVAL = """\
import torch, torch.nn as nn
torch.manual_seed(0)
layers = nn.ModuleList(nn.MultiheadAttention(32, 4, batch_first=True) for _ in range(2)).eval()
x = torch.randn(2, 8, 32)
with torch.no_grad():
    for step in range(5):
        h = x
        for attn in layers:
            h = attn(h, h, h, need_weights=False)[0]
"""


def test_multihead_attention_eval_fast_path(trace):
    """Inference: torch._native_multi_head_attention, 2 layers per forward; no optimizer, so a step is one forward
    of the first MHA (the outermost module around the first call); no backward."""
    r = trace(MHA_EVAL, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled) == ("iteration", "one forward of MultiheadAttention", 5,
                                                        [2, 3])
    assert [(c.op, c.step) for c in r.runinfo.calls] == [("mha_fastpath", 2)] * 2 + [("mha_fastpath", 3)] * 2
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 4}
    _every_call_has_compute(report)


ENCODER_EVAL = """\
import torch, torch.nn as nn
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
model = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).eval()
x = torch.randn(2, 8, 32)
with torch.no_grad():
    for step in range(5):
        model(x)
"""


def test_transformer_encoder_eval_fast_path(trace):
    """Inference runs each layer as one fused op (torch._transformer_encoder_layer_fwd, attention in C++): the
    window still opens on forwards of the encoder and holds 3 layers x 2 steps attention ops."""
    r = trace(ENCODER_EVAL, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled) == ("iteration", "one forward of TransformerEncoder", 5, [2, 3])
    assert len(r.trace_files) == 1
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 6}
    assert {c.op for c in report.calls} == {"aten::_native_multi_head_attention"}
    _every_call_has_compute(report)


COMPILED = """\
import torch, torch.nn as nn, torch.nn.functional as F
class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(32, 96)
    def forward(self, x):
        q, k, v = self.qkv(x).view(2, 8, 3, 4, 8).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v).sum()
torch.manual_seed(0)
block = torch.compile(Block(), backend="aot_eager")
x = torch.randn(2, 8, 32)
for step in range(5):
    block(x).backward()
print("loss", float(block(x)))
"""


def _attention_ops(result) -> Counter:
    (path,) = result.trace_files
    events = json.load(gzip.open(path))["traceEvents"]
    return Counter(e["name"] for e in events
                   if e.get("ph") == "X" and e.get("name", "").startswith("aten::_scaled_dot_product"))


def test_compiled_block_opens_the_window_on_its_calls(trace, capsys):
    """No wrapped entry point runs (the graph calls the aten op): calls of the compiled module are the steps, and
    the window's trace holds the graph's attention ops, forward and backward, once per profiled step."""
    r = trace(COMPILED, warmup=1, timed=1, active=2)
    assert "loss" in capsys.readouterr().out
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.profiled) == ("iteration", "one forward of compiled Block", [2, 3])
    assert r.runinfo.calls == []  # nothing wrapped ran
    ops = _attention_ops(r)
    assert ops == {"aten::_scaled_dot_product_flash_attention_for_cpu": 2,
                   "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 2}
    assert "6 calls of torch.compile'd code" in r.runinfo.note
    report = analyze_path(r.folder)
    assert _by_phase(report)["fwd"] == 2
    _every_call_has_compute(report)


def test_module_compiled_in_place_counts_its_calls_and_runs_as_under_python(trace, capsys):
    """`module.compile()` runs the module's hooks inside the graph, where no step can be counted: its calls are
    counted where the script makes them (line 13), and the script is not broken by attnprof's hooks."""
    r = trace(COMPILED.replace('block = torch.compile(Block(), backend="aot_eager")',
                               'block = Block(); block.compile(backend="aot_eager")'), warmup=1, timed=1, active=2)
    assert r.exit_code == 0 and "loss" in capsys.readouterr().out
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.profiled) == ("iteration", "one pass through script.py:13", [2, 3])
    assert _attention_ops(r) == {"aten::_scaled_dot_product_flash_attention_for_cpu": 2,
                                 "aten::_scaled_dot_product_flash_attention_for_cpu_backward": 2}


COMPILED_FUNCTION = """\
import torch, torch.nn.functional as F
@torch.compile(backend="aot_eager")
def attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
q = torch.randn(1, 2, 8, 16)
for step in range(5):
    attend(q, q, q)
"""


def test_compiled_function_calls_recur_as_steps(trace):
    r = trace(COMPILED_FUNCTION, warmup=1, timed=1, active=2)
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled) == ("iteration", "one pass through script.py:7", 5, [2, 3])
    assert _attention_ops(r) == {"aten::_scaled_dot_product_flash_attention_for_cpu": 2}


ONE_PASS = """\
import torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0)
config._attn_implementation = "sdpa"
model = GPT2LMHeadModel(config).eval()
ids = torch.randint(0, 128, (1, 16))
with torch.no_grad():
    logits = model(ids).logits
print(tuple(logits.shape))
"""


def test_one_forward_inference_script_is_profiled_cold_by_default(trace, capsys):
    """One forward of a 2-layer GPT-2, default options (2 warm-up, 3 timed, 2 active steps): the script never
    reaches step 5, and shows no loop, so its one step is profiled, and the output says it is cold."""
    pytest.importorskip("transformers")
    r = trace(ONE_PASS, warmup=2, timed=3, active=2)
    captured = capsys.readouterr()
    assert r.exit_code == 0 and "(1, 16, 128)" in captured.out
    assert "cold" in captured.err  # the progress line names it as it opens
    s = r.runinfo.steps
    assert (s.unit, s.boundary, s.seen, s.profiled, s.stopped_early) == (
        "iteration", "one forward of GPT2LMHeadModel", 1, [0, 0], None)
    # one per layer, through HF's attention interface
    assert [(c.op, c.step) for c in r.runinfo.calls] == [("hf.sdpa", 0), ("hf.sdpa", 0)]
    assert r.runinfo.note.startswith("cold start: the script showed no loop around its first step, so step 0 was "
                                     "profiled")
    assert all(t.true_us == [] for t in r.runinfo.sites)  # nothing ran unprofiled: no true times, none invented
    report = analyze_path(r.folder)
    assert _by_phase(report) == {"fwd": 2}
    assert any(n.startswith("cold start") for n in report.notes)
    _every_call_has_compute(report)
