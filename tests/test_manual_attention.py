"""Hand-written attention (analysis/manual.py) and attention inside torch.compile'd graphs (analysis/compiled.py),
found in CPU traces of real torch.nn models; the "unfused attention" diagnosis.

Expected counts come from the models' construction: layers x steps, one backward per forward; expected copy lines
from the script's text.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from attnprof.analysis import analyze  # noqa: E402
from attnprof.analysis import diagnosis as dg  # noqa: E402
from attnprof.analysis import taxonomy as tx  # noqa: E402
from attnprof.pipeline import analyze_run  # noqa: E402
from attnprof.trace.runinfo import range_name  # noqa: E402
from attnprof.trace.torch_json import load_torch_trace  # noqa: E402
from attnprof.units import us_text  # noqa: E402

B, T, C, NH = 2, 16, 32, 4
HD = C // NH


def _split_heads(x):
    return x.view(B, T, NH, HD).transpose(1, 2)


class HandWritten(nn.Module):
    """nanoGPT's CausalSelfAttention, with the variants people write."""

    def __init__(self, form="masked_dropout"):
        super().__init__()
        self.form = form
        self.qkv = nn.Linear(C, 3 * C)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        q, k, v = (_split_heads(t) for t in self.qkv(x).split(C, dim=2))
        if self.form == "masked_dropout":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = self.drop(F.softmax(att, dim=-1))
            y = att @ v
        elif self.form == "plain":
            y = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(HD), dim=-1) @ v
        elif self.form == "einsum":
            att = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(HD)
            y = torch.einsum("bhqk,bhkd->bhqd", att.softmax(-1), v)
        else:  # "bmm": heads folded into the batch
            q3, k3, v3 = (t.reshape(B * NH, T, HD) for t in (q, k, v))
            y = torch.bmm(torch.softmax(torch.bmm(q3, k3.transpose(1, 2)) * HD ** -0.5, dim=-1), v3).view(B, NH, T, HD)
        return y.transpose(1, 2).contiguous().view(B, T, C)


def _train_traced(tmp_path, model, steps=2, warm=1):
    """`warm` unprofiled steps, then `steps` training steps under torch.profiler; the analysed report."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    x = torch.randn(B, T, C)

    def step():
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()

    for _ in range(warm):
        step()
    path = tmp_path / "t.pt.trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        for _ in range(steps):
            step()
    prof.export_chrome_trace(str(path))
    return analyze([load_torch_trace(path)], None, "test")


def _calls(report, op=None, phase=None):
    return [c for c in report.calls if (op is None or c.op == op) and (phase is None or c.phase == phase)]


@pytest.mark.parametrize("form", ["masked_dropout", "plain", "einsum", "bmm"])
def test_every_form_of_hand_written_attention_is_one_call_per_layer_and_step_in_both_phases(tmp_path, form):
    layers, steps = 2, 2
    report = _train_traced(tmp_path, nn.Sequential(*[HandWritten(form) for _ in range(layers)]), steps=steps)
    fwd, bwd = _calls(report, "manual", "fwd"), _calls(report, "manual", "bwd")
    assert len(fwd) == layers * steps and len(bwd) == layers * steps
    assert len(report.calls) == 2 * layers * steps  # nothing else taken for attention
    q = [B * NH, T, HD] if form == "bmm" else [B, NH, T, HD]
    for c in fwd + bwd:
        assert c.backend == "manual" and c.found_by == "pattern" and c.device == "cpu"
        assert c.shapes == {"q": q, "k": q, "v": q, "scores": q[:-1] + [T]} and c.dtype == "float32"
        assert c.site.startswith("test_manual_attention.py:")  # the forward that holds it (with_stack frames)
        assert c.layout == (None if form == "bmm" else "BHLD")
    # the output's transpose(1, 2).contiguous() reads the call's output: charged to it, after it (not for the bmm
    # form: its output is viewed as (B, H, T, D) first, and the walk compares layouts without merging dims)
    for c in fwd if form != "bmm" else []:
        assert [cp.op for cp in c.copies if cp.position == "after"] == ["aten::contiguous"]
        assert [cp.bytes for cp in c.copies if cp.position == "after"] == [2 * B * T * C * 4]


def test_an_einsum_over_blhd_tensors_is_found_without_claiming_a_layout(tmp_path):
    q, k, v = (torch.randn(B, T, NH, HD) for _ in range(3))
    path = tmp_path / "t.pt.trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.einsum("bhqk,bkhd->bqhd", torch.einsum("bqhd,bkhd->bhqk", q, k).softmax(-1), v)
    prof.export_chrome_trace(str(path))
    (call,) = analyze([load_torch_trace(path)], None, "test").calls
    assert call.op == "manual" and call.shapes["q"] == [B, T, NH, HD] and call.shapes["scores"] == [B, NH, T, T]
    assert call.layout is None  # the trace does not record the equation: which axis is L is not known


def test_a_softmax_without_attention_around_it_is_not_a_call(tmp_path):
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(C, 10))

        def forward(self, x):
            return torch.softmax(x @ self.w, dim=-1).log()  # a GEMM before the softmax, none after

    report = _train_traced(tmp_path, Classifier(), steps=1, warm=0)
    assert report.calls == []


HAND_AND_SDPA = '''\
import math, torch, torch.nn as nn, torch.nn.functional as F
B, T, C, NH = 2, 16, 32, 4


class HandWritten(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.drop(F.softmax(att, dim=-1))
        y = att @ v
        return y.transpose(1, 2).contiguous().view(B, T, C)


class Fused(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)

    def forward(self, x):
        q, k, v = self.qkv(x).view(B, T, 3, NH, C // NH).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)


model = nn.Sequential(HandWritten(), Fused(), HandWritten())
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(B, T, C)
for step in range(4):
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()
'''


def test_under_attnprof_trace_hand_written_and_sdpa_calls_are_each_found_once(trace):
    r = trace(HAND_AND_SDPA, warmup=1, timed=0, active=2)
    assert r.exit_code == 0
    report = analyze_run(r.folder).report
    hand_layers, sdpa_layers, steps = 2, 1, 2
    assert len(_calls(report, "manual", "fwd")) == hand_layers * steps
    assert len(_calls(report, "manual", "bwd")) == hand_layers * steps
    sdpa = [c for c in report.calls if c.op != "manual"]
    assert len(sdpa) == sdpa_layers * steps * 2 and {c.found_by for c in sdpa} == {"attnprof"}
    # not twice: no hand-written call overlaps an SDPA call
    for m in _calls(report, "manual"):
        for s in sdpa:
            assert m.start_us + m.window_us <= s.start_us or s.start_us + s.window_us <= m.start_us
    lines = HAND_AND_SDPA.splitlines()
    copy_line = next(i for i, t in enumerate(lines, 1) if "y.transpose(1, 2).contiguous()" in t)
    for c in _calls(report, "manual", "fwd"):
        # attnprof's source ranges give the statement's own line
        assert [(cp.site, cp.op) for cp in c.copies if cp.position != "inside"] == [
            (f"script.py:{copy_line}", "aten::contiguous")]


def test_ops_inside_an_attnprof_range_or_a_fused_op_are_not_matched_again(tmp_path):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    q, k, v = (torch.randn(B, NH, T, HD) for _ in range(3))
    path = tmp_path / "t.pt.trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        # Hugging Face's eager attention as attnprof wraps it: a range around matmul, softmax, matmul
        with record_function(range_name("eager_attention_forward", "model.py:5", 7)):
            torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        # SDPA's math backend runs the same ops inside aten::_scaled_dot_product_attention_math
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, k, v)
    prof.export_chrome_trace(str(path))
    report = analyze([load_torch_trace(path)], None, "test")
    assert sorted((c.op, c.found_by) for c in report.calls) == [
        ("aten::scaled_dot_product_attention", "aten"), ("eager_attention_forward", "attnprof")]


class CompiledBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(C, 6 * C)

    def forward(self, x):
        q, k, v, q2, k2, v2 = (_split_heads(t) for t in self.qkv(x).split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y2 = torch.softmax(q2 @ k2.transpose(-2, -1) * HD ** -0.5, dim=-1) @ v2
        return (y + y2).transpose(1, 2).reshape(B, T, C)


def test_attention_inside_a_compiled_graph_is_found_per_step(tmp_path):
    steps = 2
    report = _train_traced(tmp_path, torch.compile(CompiledBlock()), steps=steps, warm=1)
    fwd = _calls(report, phase="fwd")
    # one SDPA and one hand-written attention per step, both inside the compiled graph
    assert len(fwd) == 2 * steps and {c.found_by for c in fwd} == {"compiled"}
    fused = [c for c in fwd if c.op != "manual"]
    assert len(fused) == steps and all(c.backend == "cpu-flash" for c in fused)
    hand = [c for c in fwd if c.op == "manual"]
    # inductor fuses the scale and softmax into a generated C++ kernel the trace does not show: said so
    assert len(hand) == steps and {c.backend for c in hand} == {"manual-fused"}
    assert all(c.copies == [] for c in hand)  # no copy invented
    # the graph's backward holds the SDPA backward op, paired with its forward through CompiledFunctionBackward
    bwd = _calls(report, phase="bwd")
    assert sorted(c.id for c in bwd) == sorted(c.id for c in fused)
    assert all(c.backend == "cpu-flash" for c in bwd)
    for c in report.calls:
        assert "torchinductor" not in c.site  # inductor's generated code is not the user's line


def test_flex_attention_template_kernels_are_attention_compute():
    # names as inductor gave them on the H200 (traces/h200/attention-forms)
    assert tx.backend_from_kernel("triton_tem_fused_flex_attention_split_transpose_view_4") == "flex"
    assert tx.backend_from_kernel("triton_tem_fused_flex_attention_backward_transpose_view_1") == "flex"
    assert tx.is_attention_fwd_op("triton_tem_fused_flex_attention_split_transpose_view_4")
    assert tx.is_attention_bwd_op("triton_tem_fused_flex_attention_backward_transpose_view_1")
    assert not tx.is_attention_fwd_op("triton_tem_fused_flex_attention_backward_transpose_view_1")
    # a generated kernel is a copy when all it fused only moves data; an attention template that fused a transpose,
    # a softmax, a matmul's epilogue are compute
    assert tx.is_copy_kernel_name("triton_poi_fused_clone_transpose_view_4")
    assert not tx.is_copy_kernel_name("triton_tem_fused_flex_attention_split_transpose_view_4")
    assert not tx.is_copy_kernel_name("triton_per_fused__softmax_eq_exp_masked_fill_mul_native_dropout_sub_view_3")
    assert not tx.is_copy_kernel_name("triton_poi_fused_addmm_clone_split_transpose_view_0")
    # the pointwise kernels inductor names after an SDPA op are the work around it, not attention
    assert tx.backend_from_kernel("triton_poi_fused__scaled_dot_product_flash_attention_5") is None


class SdpaBlock(nn.Module):
    def __init__(self, heads=NH):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(C, 3 * C)

    def forward(self, x):
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)


def _unfused(diagnosis):
    return next((c for c in diagnosis.causes if c.kind == dg.UNFUSED), None)


def test_unfused_attention_is_diagnosed_with_sdpa_measured_on_the_same_shape(tmp_path):
    report = _train_traced(tmp_path, nn.Sequential(HandWritten("plain"), SdpaBlock()), steps=1)
    manual_site = next(s.site for s in report.sites if s.op == "manual")
    sdpa_sites = [s for s in report.sites if s.op != "manual"]
    assert {s.phase for s in sdpa_sites} == {"fwd", "bwd"}
    diagnosis = dg.diagnose(dg.select(report, site=manual_site))
    cause = _unfused(diagnosis)
    assert cause is not None and "F.scaled_dot_product_attention(q, k, v, attn_mask=" in cause.fix
    # SDPA's fwd + bwd on the same shape, measured in this run, is what the fix quotes
    sdpa_us = sum(s.window_us for s in sdpa_sites)
    assert f"SDPA took {us_text(sdpa_us)} per call in this run (measured" in cause.fix
    assert "estimate" not in cause.fix
    manual_compute = sum(s.compute_us for s in report.sites if s.op == "manual")
    assert cause.us == pytest.approx(manual_compute)  # one layer per side: the hand-written kernels' time
    # the SDPA site has no such cause
    sdpa_site = sdpa_sites[0].site
    assert _unfused(dg.diagnose(dg.select(report, site=sdpa_site))) is None
    # explained against the SDPA site, the compute gap is the unfused attention
    e = dg.explain(dg.select(report, site=sdpa_site), dg.select(report, site=manual_site))
    pair = next(c for c in e.causes if c.kind == dg.UNFUSED)
    assert "scaled_dot_product_attention" in pair.fix and "measured" in pair.fix


def test_without_sdpa_on_the_same_shape_the_figure_is_flagged_as_an_estimate(tmp_path):
    # SDPA with other heads (other q dims): not the same shape, so nothing measured to quote
    report = _train_traced(tmp_path, nn.Sequential(HandWritten("plain"), SdpaBlock(heads=2)), steps=1)
    manual_site = next(s.site for s in report.sites if s.op == "manual")
    cause = _unfused(dg.diagnose(dg.select(report, site=manual_site)))
    assert cause is not None and "an estimate" in cause.fix and "in this run (measured" not in cause.fix
    # the estimate is the call's own two matmuls, fwd + bwd: its two aten::matmul ops and their two bmm backward nodes
    (fwd,), (bwd,) = _calls(report, "manual", "fwd"), _calls(report, "manual", "bwd")
    gemms = [k for k in fwd.kernels if k.name == "aten::matmul"] + \
        [k for k in bwd.kernels if k.name.endswith("BmmBackward0")]
    assert len(gemms) == 4
    assert f"SDPA would take about {us_text(sum(k.dur_us for k in gemms))} per call" in cause.fix


def test_hugging_face_eager_attention_in_a_bare_trace_is_found_by_its_pattern(tmp_path):
    transformers = pytest.importorskip("transformers")
    layers, steps, batch, seq = 2, 1, 2, 12
    config = transformers.GPT2Config(n_layer=layers, n_embd=64, n_head=4, n_positions=32, vocab_size=97,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 97, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[1, :3] = 0  # left padding: a mask is added to the scores
    path = tmp_path / "t.pt.trace.json.gz"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as prof:
        for _ in range(steps):
            model(ids, attention_mask=mask, labels=ids).loss.backward()
    prof.export_chrome_trace(str(path))
    report = analyze([load_torch_trace(path)], None, "test")
    fwd, bwd = _calls(report, "manual", "fwd"), _calls(report, "manual", "bwd")
    assert len(fwd) == layers * steps and len(bwd) == layers * steps and len(report.calls) == 2 * layers * steps
    for c in fwd:
        assert c.shapes["q"] == [batch, 4, seq, 16] and c.shapes["scores"] == [batch, 4, seq, seq]
        # the function that computes it (with_stack frames give its first line), and the output's reshape in the
        # attention module's forward, after it
        gpt2 = transformers.models.gpt2.modeling_gpt2
        assert c.site == f"transformers/models/gpt2/modeling_gpt2.py:{_first_line(gpt2.eager_attention_forward)}"
        forward_lines, first = inspect.getsourcelines(gpt2.GPT2Attention.forward)
        (after,) = [cp for cp in c.copies if cp.position == "after"]
        file, line = after.site.rsplit(":", 1)
        assert file == "transformers/models/gpt2/modeling_gpt2.py" and first <= int(line) < first + len(forward_lines)
        assert after.op == "aten::reshape" and after.bytes == 2 * batch * seq * 64 * 4


def _first_line(function) -> int:
    return inspect.getsourcelines(function)[1]


# --- H200 traces (traces/h200/attention-forms: two blocks, 2 profiled training steps each) -----------------------

H200 = Path(__file__).resolve().parent.parent / "traces" / "h200" / "attention-forms"
H200_BLOCKS, H200_STEPS = 2, 2


def _h200(name):
    return analyze([load_torch_trace(H200 / f"{name}.json.gz")], None, name)


def test_h200_hand_written_attention_has_its_gemm_softmax_and_dropout_kernels():
    report = _h200("eager_manual")
    fwd, bwd = _calls(report, "manual", "fwd"), _calls(report, "manual", "bwd")
    assert len(fwd) == len(bwd) == H200_BLOCKS * H200_STEPS and len(report.calls) == 2 * H200_BLOCKS * H200_STEPS
    for c in fwd:
        assert c.device == "cuda:0" and c.shapes["q"] == [2, 4, 64, 64]
        compute = [k.name for k in c.kernels if k.category == "compute"]
        assert sum("gemm" in n for n in compute) == 2  # q·kᵀ and ·v
        assert sum("softmax_warp_forward" in n for n in compute) == 1
        assert sum("dropout" in n for n in compute) == 1
        assert [cp.op for cp in c.copies if cp.position == "after"] == ["aten::contiguous"]
        assert c.launch_us is not None  # a GPU timeline (its parts = window: decomposition.check_call)
    for c in bwd:
        assert sum("softmax_warp_backward" in k.name for k in c.kernels) == 1
        assert sum("gemm" in k.name for k in c.kernels) == 4  # dQ, dK, dP, dV


def test_h200_compiled_sdpa_is_found_with_its_backward():
    report = _h200("compiled_sdpa")
    fwd, bwd = _calls(report, phase="fwd"), _calls(report, phase="bwd")
    assert len(fwd) == len(bwd) == H200_BLOCKS * H200_STEPS
    assert {c.found_by for c in report.calls} == {"compiled"} and {c.backend for c in report.calls} == {"efficient"}
    assert all(any(k.name.startswith("fmha_cutlassB") for k in c.kernels) for c in bwd)
    # autograd runs the graph's backward in reverse: the first block's forward pairs with the later backward
    bwd_of = {c.id: c for c in bwd}
    fwd.sort(key=lambda c: c.start_us)
    for first, second in zip(fwd[::H200_BLOCKS], fwd[1::H200_BLOCKS]):
        assert bwd_of[first.id].start_us > bwd_of[second.id].start_us > second.start_us


def test_h200_compiled_hand_written_attention_reports_its_generated_kernels():
    report = _h200("compiled_manual")
    fwd = _calls(report, "manual", "fwd")
    assert len(fwd) == H200_BLOCKS * H200_STEPS and len(report.calls) == len(fwd)  # the backward is not attributed
    for c in fwd:
        assert c.backend == "manual-fused" and c.found_by == "compiled" and c.shapes["scores"] == [8, 64, 64]
        compute = [k.name for k in c.kernels if k.category == "compute"]
        assert sum("gemm" in n for n in compute) == 2
        assert sum(n.startswith("triton_per_fused__softmax") for n in compute) == 1  # scale, mask, softmax, dropout
        # the output's transpose(1, 2).contiguous(), fused by inductor into a generated copy kernel
        (copy,) = c.copies
        assert copy.op.startswith("triton_poi_fused_clone_transpose_view") and copy.position == "after"
        assert copy.bytes == 2 * 8 * 64 * 64 * 4


def test_h200_flex_attention_template_kernels_are_calls_with_their_backward():
    report = _h200("compiled_flex")
    fwd, bwd = _calls(report, phase="fwd"), _calls(report, phase="bwd")
    assert len(fwd) == len(bwd) == H200_BLOCKS * H200_STEPS
    assert {c.backend for c in report.calls} == {"flex"} and {c.found_by for c in report.calls} == {"compiled"}
    for c in fwd + bwd:
        assert c.shapes == {}  # the template's inputs are what inductor fused into it, not q, k, v
        (kernel,) = c.kernels
        assert kernel.category == "compute" and kernel.name.startswith("triton_tem_fused_flex_attention")
        assert ("flex_attention_backward" in kernel.name) == (c.phase == "bwd")
