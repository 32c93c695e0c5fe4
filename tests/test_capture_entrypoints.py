"""Capture: every attention entry point is wrapped (however the script reaches it) and its call described."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from attnprof.capture import patching
from attnprof.capture import session as session_mod
from attnprof.capture.entrypoints import ENTRY_POINTS, Binder, describe_call
from attnprof.trace.runinfo import range_name


def calls_by_op(result) -> dict:
    out = {}
    for c in result.runinfo.calls:
        out.setdefault(c.op, []).append(c)
    return out


def test_sdpa_through_F_and_through_a_name_imported_by_the_script(trace, tmp_path):
    r = trace("""\
        import torch
        import torch.nn.functional as F
        from torch.nn.functional import scaled_dot_product_attention as sdpa
        q = torch.randn(2, 8, 16, 32)
        kv = torch.randn(2, 2, 16, 32)
        mask = torch.ones(1, 1, 8, 8, dtype=torch.bool).tril()
        a = F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True, scale=0.5)
        b = sdpa(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), attn_mask=mask[0], dropout_p=0.25)
        c = sdpa(q, q, q, is_causal=True)
        ref = torch._C._nn.scaled_dot_product_attention(q, kv, kv, enable_gqa=True, scale=0.5)
        assert torch.equal(a, ref)
        """, active=5)
    assert r.exit_code == 0
    a, b, c = r.runinfo.calls
    assert (a.op, a.library, a.site, a.function, a.layout) == ("sdpa", "torch", "script.py:7", "<module>", "BHLD")
    assert (a.batch, a.heads_q, a.heads_kv, a.gqa_ratio, a.seqlen_q, a.seqlen_k, a.head_dim, a.head_dim_v) == (
        2, 8, 2, 4.0, 16, 16, 32, 32)
    assert (a.scale, a.causal, a.dropout_p, a.mask, a.extra) == (0.5, False, 0.0, None, {"enable_gqa": "True"})
    assert a.tensors["q"].shape == [2, 8, 16, 32] and a.tensors["q"].stride == [4096, 512, 32, 1]
    assert a.tensors["k"].shape == [2, 2, 16, 32] and a.tensors["q"].dtype == "float32"
    assert a.tensors["out"].shape == [2, 8, 16, 32] and a.tensors["q"].device == "cpu"
    assert (b.site, b.heads_q, b.seqlen_q, b.head_dim) == ("script.py:8", 16, 8, 32)
    assert b.tensors["q"].stride == [4096, 32, 512, 1]  # the transpose, as the call saw it
    assert (b.mask, b.dropout_p, b.tensors["mask"].dtype) == ("bool[1, 8, 8]", 0.25, "bool")
    assert (c.site, c.causal, c.range_name) == ("script.py:9", True, range_name("sdpa", "script.py:9", c.id))


def test_modules_imported_before_the_run_have_their_references_replaced(trace, tmp_path, monkeypatch):
    (tmp_path / "helper_mod_xyz.py").write_text(
        "from torch.nn.functional import scaled_dot_product_attention as sdpa\n"
        "def attend(q):\n"
        "    return sdpa(q, q, q)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helper_mod_xyz

    try:
        original = helper_mod_xyz.sdpa
        r = trace("import torch, helper_mod_xyz\nhelper_mod_xyz.attend(torch.randn(1, 2, 4, 8))\n")
        assert [(c.op, c.site, c.function) for c in r.runinfo.calls] == [("sdpa", "helper_mod_xyz.py:3 via script.py:2", "attend")]
        assert helper_mod_xyz.sdpa is original is F.scaled_dot_product_attention
    finally:
        del sys.modules["helper_mod_xyz"]


def test_hf_transformers_attention_glue_is_not_the_call_site(trace, tmp_path):
    """HF models reach SDPA through transformers.integrations.sdpa_attention: the site is the model's line."""
    if "transformers" in sys.modules:
        pytest.skip("a real transformers is imported in this process")
    glue = tmp_path / "transformers" / "integrations"
    glue.mkdir(parents=True)
    (tmp_path / "transformers" / "__init__.py").write_text("")
    (glue / "__init__.py").write_text("")
    (glue / "sdpa_attention.py").write_text(
        "import torch.nn.functional as F\n"
        "def sdpa_attention_forward(q):\n"
        "    q = q.contiguous()\n"
        "    return F.scaled_dot_product_attention(q, q, q)\n")
    try:
        r = trace("""\
            import torch
            from transformers.integrations.sdpa_attention import sdpa_attention_forward
            class LlamaAttention(torch.nn.Module):
                def forward(self, q):
                    return sdpa_attention_forward(q.transpose(1, 2))
            LlamaAttention()(torch.randn(1, 4, 2, 8))
            """, active=1)
        (call,) = r.runinfo.calls
        assert (call.site, call.function) == ("script.py:5 via :6", "LlamaAttention.forward")
    finally:
        for name in [n for n in sys.modules if n.partition(".")[0] == "transformers"]:
            del sys.modules[name]


def test_hf_model_attention_functions_are_found_by_what_they_are(trace, tmp_path):
    """Any transformers.models.* module, of a model no list names: the functions it defines whose name ends in
    attention_forward and whose parameters start (module, query, key, value, attention_mask) are calls; a helper
    of another signature and a function it imports are not (that one is wrapped where it is defined)."""
    if "transformers" in sys.modules:
        pytest.skip("a real transformers is imported in this process")
    pkg = tmp_path / "transformers" / "models" / "zoomodel"
    pkg.mkdir(parents=True)
    for d in (tmp_path / "transformers", tmp_path / "transformers" / "models", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "modeling_zoomodel.py").write_text(
        "import torch\n"
        "from torch.nn.functional import scaled_dot_product_attention\n"
        "def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):\n"
        "    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)\n"
        "    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)\n"
        "    w = torch.softmax(query @ key.transpose(2, 3) * scaling, dim=-1)\n"
        "    return (w @ value).transpose(1, 2).contiguous(), w\n"
        "def vision_eager_attention_forward(module, query_states, key_states, value_states, attention_mask,\n"
        "                                   **kwargs):\n"
        "    return eager_attention_forward(module, query_states, key_states, value_states, attention_mask, 1.0)\n"
        "def mask_attention_forward(hidden_states, attention_mask):\n"
        "    return torch.softmax(hidden_states @ hidden_states.transpose(1, 2) + attention_mask, -1)\n")
    try:
        r = trace("""\
            import torch
            from transformers.models.zoomodel import modeling_zoomodel as m
            q, kv = torch.randn(2, 8, 16, 4), torch.randn(2, 2, 16, 4)
            out, w = m.eager_attention_forward(None, q, kv, kv, None, scaling=0.5)
            m.vision_eager_attention_forward(None, query_states=q, key_states=q, value_states=q, attention_mask=None)
            m.mask_attention_forward(q[0], torch.zeros(16, 16))
            """, active=1)
        eager, vision = r.runinfo.calls
        assert (eager.op, eager.library, eager.layout, eager.site) == ("hf.eager_attention_forward", "transformers",
                                                                    "BHLD", "script.py:4")
        assert (eager.heads_q, eager.heads_kv, eager.gqa_ratio, eager.scale) == (8, 2, 4.0, 0.5)
        assert "lse" not in eager.tensors  # the second result is the attention weights
        # the nested eager call inside it is its own business: one call, named after the outer function
        assert (vision.op, vision.site, vision.heads_kv, vision.seqlen_k) == (
            "hf.vision_eager_attention_forward", "script.py:5", 8, 16)
    finally:
        for name in [n for n in sys.modules if n.partition(".")[0] == "transformers"]:
            del sys.modules[name]


def test_flex_attention_is_a_call(trace):
    """FlexAttention runs eagerly on CPU (no backward there): its score_mod and block mask's mask_mod are named."""
    r = trace("""\
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
        def relative_bias(score, b, h, q_idx, kv_idx):
            return score + (q_idx - kv_idx)
        q, kv = torch.randn(2, 4, 16, 8), torch.randn(2, 2, 32, 8)
        mask = create_block_mask(causal, None, None, 16, 32, device="cpu")
        out = flex_attention(q, kv, kv, score_mod=relative_bias, block_mask=mask, enable_gqa=True, scale=0.5)
        assert out.shape == (2, 4, 16, 8)
        """, active=1)
    assert r.exit_code == 0
    (call,) = r.runinfo.calls
    assert (call.op, call.library, call.layout, call.site) == ("flex_attention", "torch", "BHLD", "script.py:9")
    assert (call.batch, call.heads_q, call.heads_kv, call.gqa_ratio, call.seqlen_q, call.seqlen_k, call.head_dim,
            call.scale) == (2, 4, 2, 2.0, 16, 32, 8, 0.5)
    assert call.extra == {"score_mod": "relative_bias", "mask_mod": "causal", "enable_gqa": "True",
                          "block_mask": "seq_lengths=(16, 32) block=(128, 128)"}


MHA = """\
import torch, torch.nn as nn
mha = nn.MultiheadAttention(16, 4, batch_first=True)
x = torch.randn(2, 5, 16)
out, w = mha(x, x, x)
out2, _ = mha(x, x, x, need_weights=False)
mha.eval()
with torch.no_grad():
    out3, _ = mha(x, x, x)
"""


def test_fast_path_comes_back_when_the_window_closed_inside_a_torch_function(trace):
    """The window closes at an SDPA call made inside F.multi_head_attention_forward, which torch runs through
    attnprof's mode (popped meanwhile): the mode comes off later, and the eval fast path is taken again."""
    r = trace("""\
        import torch, torch.nn as nn
        mha = nn.MultiheadAttention(16, 4, batch_first=True)
        x = torch.randn(2, 5, 16)
        for i in range(4):
            mha(x, x, x, need_weights=False)
        mha.eval()
        with torch.no_grad():
            mha(x, x, x)
        """, warmup=1, timed=0, active=1, step_on="call", after="time")  # a call after the window leaves a timing
    assert [c.op for c in r.runinfo.calls] == ["sdpa"]
    assert [t.op for t in r.runinfo.sites] == ["sdpa", "mha_fastpath"]
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("source_lines", [True, False])
def test_multihead_attention_training_path_and_eval_fast_path(trace, source_lines):
    r = trace(MHA, active=5, source_lines=source_lines)
    got = [(c.op, c.site, c.layout, c.tensors["q"].shape) for c in r.runinfo.calls]
    assert got == [
        ("mha", "script.py:4", "LBE", [5, 2, 16]),  # need_weights=True: F.multi_head_attention_forward's own maths
        ("sdpa", "script.py:5", "BHLD", [2, 4, 5, 4]),  # need_weights=False: it calls SDPA
        ("mha_fastpath", "script.py:8", "BLE", [2, 5, 16]),  # eval + no_grad: torch._native_multi_head_attention
    ]
    fast = r.runinfo.calls[2]
    assert (fast.heads_q, fast.head_dim, fast.batch, fast.seqlen_q) == (4, 4, 2, 5)


FA2 = """\
import torch
import torch.nn.functional as F
from flash_attn import (flash_attn_func, flash_attn_qkvpacked_func, flash_attn_kvpacked_func, flash_attn_varlen_func,
                        flash_attn_varlen_qkvpacked_func, flash_attn_varlen_kvpacked_func, flash_attn_with_kvcache)
import flash_attn.flash_attn_interface as fi
assert flash_attn_func is fi.flash_attn_func and hasattr(flash_attn_func, "__wrapped__")
B, L, H, HK, D = 2, 16, 8, 2, 32
q = torch.randn(B, H, L, D).transpose(1, 2)
k, v = torch.randn(B, L, HK, D), torch.randn(B, L, HK, D)
o = flash_attn_func(q, k, v, causal=True, softmax_scale=0.25, window_size=(8, 0))
ref = torch._C._nn.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, scale=0.25, enable_gqa=True).transpose(1, 2)
assert torch.allclose(o, ref)
flash_attn_qkvpacked_func(torch.randn(B, L, 3, H, D), dropout_p=0.0)
flash_attn_kvpacked_func(q, torch.randn(B, L, 2, HK, D))
cu = torch.tensor([0, 5, 16], dtype=torch.int32)
flash_attn_varlen_func(torch.randn(16, H, D), torch.randn(16, HK, D), torch.randn(16, HK, D), cu, cu, 11, 11,
                       causal=True)
flash_attn_varlen_qkvpacked_func(torch.randn(16, 3, H, D), cu, 11)
flash_attn_varlen_kvpacked_func(torch.randn(16, H, D), torch.randn(16, 2, HK, D), cu, cu, 11, 11)
kc, vc = torch.zeros(B, 32, HK, D), torch.zeros(B, 32, HK, D)
flash_attn_with_kvcache(q[:, :1], kc, vc, k=k[:, :1], v=v[:, :1], cache_seqlens=4)
"""


def test_flash_attn_2_imported_by_the_script(trace, stubs):
    r = trace(FA2, active=3)
    assert r.exit_code == 0
    calls = r.runinfo.calls
    assert [c.op for c in calls] == [
        "flash_attn_func", "flash_attn_qkvpacked_func", "flash_attn_kvpacked_func", "flash_attn_varlen_func",
        "flash_attn_varlen_qkvpacked_func", "flash_attn_varlen_kvpacked_func", "flash_attn_with_kvcache"]
    assert {c.library for c in calls} == {"flash_attn"}  # the stand-ins' inner SDPA calls are not recorded
    func, qkv, kv, varlen, varlen_qkv, varlen_kv, cache = calls
    assert (func.layout, func.site, func.batch, func.seqlen_q, func.heads_q, func.heads_kv, func.gqa_ratio,
            func.head_dim, func.causal, func.scale) == ("BLHD", "script.py:10", 2, 16, 8, 2, 4.0, 32, True, 0.25)
    assert func.tensors["q"].stride == [4096, 32, 512, 1] and func.extra == {"window_size": "(8, 0)"}
    assert func.tensors["out"].shape == [2, 16, 8, 32]
    assert (qkv.layout, qkv.heads_q, qkv.heads_kv, qkv.seqlen_k, qkv.tensors["qkv"].shape) == (
        "qkvpacked", 8, 8, 16, [2, 16, 3, 8, 32])
    assert (kv.layout, kv.heads_q, kv.heads_kv, kv.gqa_ratio) == ("kvpacked", 8, 2, 4.0)
    assert (varlen.layout, varlen.batch, varlen.seqlen_q, varlen.heads_q, varlen.heads_kv, varlen.causal) == (
        "varlen", 2, 11, 8, 2, True)
    assert varlen.extra["total_q"] == "16" and varlen.tensors["cu_seqlens_q"].dtype == "int32"
    assert (varlen_qkv.layout, varlen_qkv.batch, varlen_qkv.seqlen_q, varlen_qkv.heads_kv) == (
        "varlen-qkvpacked", 2, 11, 8)
    assert (varlen_kv.layout, varlen_kv.heads_kv, varlen_kv.gqa_ratio) == ("varlen-kvpacked", 2, 4.0)
    assert (cache.layout, cache.batch, cache.seqlen_q, cache.seqlen_k, cache.heads_q, cache.heads_kv) == (
        "kvcache", 2, 1, 32, 8, 2)
    assert cache.extra == {"new_tokens": "1", "cache_seqlens": "4"}


def test_fa3_fa4_and_xformers_imported_by_the_script(trace, stubs):
    r = trace("""\
        import torch
        import flash_attn_interface as fa3
        from flash_attn.cute import flash_attn_func as fa4_func
        from xformers.ops import memory_efficient_attention, LowerTriangularMask
        import xformers.ops.fmha as fmha
        assert memory_efficient_attention is fmha.memory_efficient_attention
        q, k = torch.randn(2, 16, 8, 32), torch.randn(2, 16, 2, 32)
        fa3.flash_attn_func(q, k, k, causal=True)
        fa3.flash_attn_qkvpacked_func(torch.randn(2, 16, 8 + 2 * 2, 32), num_heads_q=8)
        out, lse = fa4_func(q, k, k, window_size_left=4)
        memory_efficient_attention(q, q, q, attn_bias=LowerTriangularMask())
        kx = torch.randn(2, 16, 2, 1, 32).expand(2, 16, 2, 4, 32)
        memory_efficient_attention(q.view(2, 16, 2, 4, 32), kx, kx)
        fmha.memory_efficient_attention_forward(q, q, q, attn_bias=torch.zeros(2, 8, 16, 16), p=0.0, scale=0.1)
        """, active=3)
    assert r.exit_code == 0
    fa3_func, fa3_qkv, fa4, xf_causal, xf_gqa, xf_fwd = r.runinfo.calls
    assert (fa3_func.op, fa3_func.library, fa3_func.layout, fa3_func.causal, fa3_func.gqa_ratio) == (
        "fa3.flash_attn_func", "flash_attn_interface", "BLHD", True, 4.0)
    assert (fa3_qkv.op, fa3_qkv.layout, fa3_qkv.heads_q, fa3_qkv.heads_kv) == (
        "fa3.flash_attn_qkvpacked_func", "qkvpacked", 8, 2)
    assert (fa4.op, fa4.library, fa4.layout, fa4.heads_kv, fa4.extra) == (
        "fa4.flash_attn_func", "flash_attn.cute", "BLHD", 2, {"window_size_left": "4"})
    assert fa4.tensors["out"].shape == [2, 16, 8, 32] and fa4.tensors["lse"].shape == [2, 8, 16]
    assert (xf_causal.op, xf_causal.library, xf_causal.layout, xf_causal.causal, xf_causal.extra) == (
        "xformers.memory_efficient_attention", "xformers", "BLHD", True, {"attn_bias": "LowerTriangularMask"})
    assert (xf_gqa.heads_q, xf_gqa.heads_kv, xf_gqa.gqa_ratio, xf_gqa.extra["layout"]) == (8, 2, 4.0, "BMGHK")
    assert (xf_fwd.op, xf_fwd.mask, xf_fwd.scale) == (
        "xformers.memory_efficient_attention_forward", "float32[2, 8, 16, 16]", 0.1)


def test_aten_flash_attention_forward_is_wrapped_and_described(trace):
    r = trace("""\
        import importlib, torch
        import torch.utils.flop_counter
        op = torch.ops.aten._flash_attention_forward
        assert type(op).__name__ == "_WatchedPacket" and isinstance(op, torch._ops.OpOverloadPacket)
        assert id(op) == PACKET_ID and op.default is not None  # the very object torch had
        importlib.reload(torch.utils.flop_counter)  # registers the op at import (torch.compile imports it)
        q = torch.randn(1, 8, 2, 16)
        try:
            op(q, q, q, None, None, 8, 8, 0.0, False, False)
        except Exception as e:
            error = (type(e).__name__, str(e).splitlines()[0])
        open("error.json", "w").write(__import__("json").dumps(error))
        """.replace("PACKET_ID", str(id(torch.ops.aten._flash_attention_forward))))
    assert r.exit_code == 0
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(Exception) as direct:  # CPU builds have no kernel: the wrapper must raise the same
        torch.ops.aten._flash_attention_forward(q, q, q, None, None, 8, 8, 0.0, False, False)
    assert json.load(open("error.json")) == [type(direct.value).__name__, str(direct.value).splitlines()[0]]

    entry = next(e for e in ENTRY_POINTS if e.op == "aten._flash_attention_forward")
    q, k = torch.empty(2, 128, 8, 64, device="meta"), torch.empty(2, 96, 2, 64, device="meta")
    result = (torch.empty(2, 128, 8, 64, device="meta"), torch.empty(2, 8, 128, device="meta"))
    f = describe_call(entry, Binder(entry, torch.ops.aten._flash_attention_forward),
                      (q, k, k, None, None, 128, 96, 0.1, True, False), {"scale": 0.125}, result)
    assert (f.layout, f.batch, f.seqlen_q, f.seqlen_k, f.heads_q, f.heads_kv, f.gqa_ratio) == (
        "BLHD", 2, 128, 96, 8, 2, 4.0)
    assert (f.causal, f.dropout_p, f.scale) == (True, 0.1, 0.125)
    assert f.tensors["lse"].shape == [2, 8, 128] and f.tensors["q"].device == "meta"


def test_nvtx_range_around_every_call(trace, monkeypatch):
    import nvtx

    log = []
    monkeypatch.setattr(nvtx, "push_range", lambda message=None, color=None, domain=None, **kw:
                        log.append(("push", message, domain)))
    monkeypatch.setattr(nvtx, "pop_range", lambda domain=None: log.append(("pop", None, domain)))
    from attnprof.capture import session

    monkeypatch.setattr(session, "_nvtx_listening", lambda: True)  # as under nsys: ranges pushed only then
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 4, 8)
        for i in range(4):
            F.scaled_dot_product_attention(q, q, q)
        """, warmup=1, timed=1, active=1, after="nvtx")
    assert log == [entry for i in range(1, 5)
                   for entry in (("push", f"sdpa script.py:5 #{i}", "attnprof"), ("pop", None, "attnprof"))]
    (profiled,) = r.runinfo.calls  # NVTX for all calls, the profiler range for the window's only
    assert profiled.range_name == "attnprof:" + log[4][1]


def test_nested_attention_calls_are_recorded_once(trace, stubs):
    r = trace("""\
        import torch
        from flash_attn import flash_attn_func
        q = torch.randn(1, 4, 2, 8)
        for i in range(3):
            flash_attn_func(q, q, q)
        """, active=5)
    assert [(c.op, c.site) for c in r.runinfo.calls] == [("flash_attn_func", "script.py:5")] * 3
    assert {(t.op, t.site) for t in r.runinfo.sites} == {("flash_attn_func", "script.py:5")}


def test_a_failing_description_never_breaks_the_call(trace, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no idea")

    monkeypatch.setattr(session_mod, "describe_call", broken)
    r = trace("""\
        import torch
        import torch.nn.functional as F
        q = torch.randn(1, 2, 4, 8)
        assert torch.equal(F.scaled_dot_product_attention(q, q, q), torch._C._nn.scaled_dot_product_attention(q, q, q))
        """)
    assert r.exit_code == 0
    (call,) = r.runinfo.calls
    assert (call.op, call.layout, call.extra) == ("sdpa", "unknown",
                                                   {"error": "could not read the arguments: RuntimeError: no idea"})


def test_everything_is_unpatched_after_the_run(trace, stubs, tmp_path):
    (tmp_path / "uses_fa.py").write_text("from flash_attn import flash_attn_func\n")
    original_sdpa = F.scaled_dot_product_attention
    original_mha = torch._native_multi_head_attention
    r = trace("""\
        import torch, uses_fa
        import torch.nn.functional as F
        assert F.scaled_dot_product_attention is not torch._C._nn.scaled_dot_product_attention
        assert hasattr(uses_fa.flash_attn_func, "__wrapped__")
        """)
    assert r.exit_code == 0
    assert F.scaled_dot_product_attention is original_sdpa is torch._C._nn.scaled_dot_product_attention
    assert F.multi_head_attention_forward.__module__ == "torch.nn.functional"
    assert not hasattr(F.multi_head_attention_forward, "__wrapped__")
    assert torch._native_multi_head_attention is original_mha
    assert isinstance(torch.ops.aten._flash_attention_forward, torch._ops.OpOverloadPacket)
    import flash_attn
    import flash_attn.flash_attn_interface as fi
    import uses_fa

    for fn in (flash_attn.flash_attn_func, fi.flash_attn_func, uses_fa.flash_attn_func):
        assert fn.__code__.co_filename == fi.__file__ and not patching.is_wrapper(fn)
    assert not [f for f in sys.meta_path if type(f).__name__ == "_PostImportFinder"]
    del sys.modules["uses_fa"]
