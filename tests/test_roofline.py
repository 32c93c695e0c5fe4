"""The roofline's FLOP and byte model against hand-computed values, and the ceilings cache."""
import pytest

from attnprof.analysis.records import CallSplit
from attnprof.analysis.roofline import (
    BOTTOM_RIGHT,
    TOP_LEFT,
    AttentionShape,
    attention_flops,
    attention_min_bytes,
    roofline,
    shape_of_call,
)
from attnprof.trace.ceilings import Ceilings, load_ceilings, save_ceilings


def shape(b=2, hq=3, hkv=3, lq=5, lk=5, d=4, dv=4, causal=False, seqlens=None, align=TOP_LEFT):
    return AttentionShape(b, hq, hkv, lq, lk, d, dv, causal, seqlens, align)


# --- FLOPs ---------------------------------------------------------------------------------------------------------

def test_plain_forward_flops():
    # 4·B·H·Lq·Lk·D = 4·2·3·5·5·4
    assert attention_flops(shape()) == 2400


def test_backward_is_two_and_a_half_forwards():
    # backward pass alone: 5 matmuls of 2·B·H·Lq·Lk·D each = 2·(3·4 + 2·4)·2·3·5·5 = 6000 = 2.5 × 2400
    assert attention_flops(shape(), backward=True) == 6000


def test_value_head_dim_counts_in_the_pv_matmul():
    # QKᵀ: 2·B·H·Lq·Lk·D = 2·2·3·25·4 = 1200; PV: 2·B·H·Lq·Lk·Dv = 2·2·3·25·8 = 2400
    assert attention_flops(shape(dv=8)) == 3600
    # backward: 2·(3·D + 2·Dv)·B·H·Lq·Lk = 2·(12 + 16)·150
    assert attention_flops(shape(dv=8), backward=True) == 8400


def test_causal_square_is_halved():
    assert attention_flops(shape(causal=True)) == 1200
    assert attention_flops(shape(causal=True), backward=True) == 3000


def test_causal_rectangles_count_the_kept_area():
    # per (batch, head): 4·D·area = 16·area, times B·H = 6
    # Lq=2 < Lk=6, top-left (query i sees keys ≤ i): a triangle of 2·2/2 = 2
    assert attention_flops(shape(lq=2, lk=6, causal=True, align=TOP_LEFT)) == 6 * 16 * 2
    # bottom-right (the last query sees all 6 keys): 2·6 − 2·2/2 = 10
    assert attention_flops(shape(lq=2, lk=6, causal=True, align=BOTTOM_RIGHT)) == 6 * 16 * 10
    # Lq=6 > Lk=2, top-left: a triangle of 2·2/2 = 2 plus 4 full rows of 2 = 10
    assert attention_flops(shape(lq=6, lk=2, causal=True, align=TOP_LEFT)) == 6 * 16 * 10
    # bottom-right: the first 4 queries see nothing, the last 2 a triangle of 2
    assert attention_flops(shape(lq=6, lk=2, causal=True, align=BOTTOM_RIGHT)) == 6 * 16 * 2


def test_gqa_flops_use_query_heads():
    # 4·B·Hq·L·L·D = 4·1·8·4·4·2, whatever Hkv is
    assert attention_flops(shape(b=1, hq=8, hkv=2, lq=4, lk=4, d=2, dv=2)) == 1024


def test_varlen_sums_over_sequences():
    # (3, 3) and (5, 7): pairs 9 + 35 = 44; 4·H·D·44 = 4·2·4·44 (batch and seqlen_* are ignored)
    s = shape(b=99, hq=2, hkv=2, lq=1000, lk=1000, seqlens=[(3, 3), (5, 7)])
    assert attention_flops(s) == 1408
    # causal, top-left: 3·3/2 = 4.5 and 5·5/2 = 12.5 (Lq=5 ≤ Lk=7): 17 pairs; 4·2·4·17
    s.causal = True
    assert attention_flops(s) == 544


# --- bytes -----------------------------------------------------------------------------------------------------------

def test_plain_forward_bytes():
    # q, k, v, out: 4 tensors of B·L·H·D = 2·5·3·4 = 120 elements, fp16
    assert attention_min_bytes(shape(), itemsize=2) == 4 * 120 * 2


def test_gqa_bytes_use_kv_heads_for_k_and_v():
    s = shape(b=1, hq=8, hkv=2, lq=4, lk=4, d=2, dv=2)
    # q = out = 1·4·8·2 = 64 elements; k = v = 1·4·2·2 = 16; fp16
    assert attention_min_bytes(s, itemsize=2) == (64 + 16 + 16 + 64) * 2
    # backward: read q, k, v, out, dout, write dq, dk, dv: 2·(64 + 16 + 16 + 64)·2 = 640; lse: 1·8·4 fp32 = 128
    assert attention_min_bytes(s, itemsize=2, backward=True) == 640 + 128


def test_varlen_bytes_count_tokens():
    s = shape(b=99, hq=2, hkv=2, lq=1000, lk=1000, seqlens=[(3, 3), (5, 7)])
    # 8 query tokens, 10 key tokens, H=2, D=4: q = 64, k = 80, v = 80, out = 64 elements; fp32
    assert attention_min_bytes(s, itemsize=4) == (64 + 80 + 80 + 64) * 4


# --- achieved rates and % of peak -------------------------------------------------------------------------------

CEILINGS = Ceilings(device="Test GPU", copy_gbps=1000.0, matmul_tflops=100.0, dtype="bfloat16",
                    measured_at="2026-01-01T00:00:00+00:00", method="test", torch_version="9.9")


def test_compute_bound_shape():
    # B=H=1, L=1024, D=64: 4·1024·1024·64 = 268,435,456 flops; 4·1024·64·2 = 524,288 bytes:
    # 512 flops/byte, above the ridge 100e12 / 1000e9 = 100 flops/byte
    r = roofline(shape(b=1, hq=1, hkv=1, lq=1024, lk=1024, d=64, dv=64), 2, False, 10.0, CEILINGS)
    assert r.flops == 268_435_456 and r.min_bytes == 524_288
    assert r.tflops == pytest.approx(26.8435456)  # flops / 10 µs / 1e12
    assert r.gbps == pytest.approx(52.4288)
    assert r.bound == "compute" and r.pct_of_peak == pytest.approx(26.8435456)  # of 100 TFLOP/s


def test_memory_bound_shape():
    # L=16, D=64: 4·16·16·64 = 65,536 flops; 4·16·64·2 = 8,192 bytes: 8 flops/byte, below the ridge
    r = roofline(shape(b=1, hq=1, hkv=1, lq=16, lk=16, d=64, dv=64), 2, False, 1.0, CEILINGS)
    assert r.gbps == pytest.approx(8.192)
    assert r.bound == "memory" and r.pct_of_peak == pytest.approx(0.8192)  # of 1000 GB/s


def test_no_ceilings_no_percentage():
    r = roofline(shape(), 2, False, 1.0, None)  # 2,400 flops in 1 µs: 0.0024 TFLOP/s, nothing to divide it by
    assert r.tflops == pytest.approx(0.0024) and r.bound is None and r.pct_of_peak is None


def test_time_must_be_positive():
    with pytest.raises(ValueError):
        roofline(shape(), 2, False, 0.0, CEILINGS)


# --- shapes of analysed calls ----------------------------------------------------------------------------------------

def call(shapes, layout, op="sdpa", backend="cudnn", causal=False):
    return CallSplit(id=1, op=op, backend=backend, phase="fwd", site="m.py:1", found_by="attnprof", device="cuda:0",
                     shapes=shapes, layout=layout, causal=causal)


def test_shape_of_bhld_gqa_call():
    c = call({"q": [2, 8, 128, 64], "k": [2, 2, 256, 64], "v": [2, 2, 256, 32]}, "BHLD", causal=True)
    assert shape_of_call(c) == AttentionShape(2, 8, 2, 128, 256, 64, 32, True, None, TOP_LEFT)


def test_shape_of_blhd_ops_without_layout():
    # an aten op found without attnprof's range, and attnprof's entry point without runinfo (compare's traces)
    for op in ("aten::_flash_attention_forward", "aten._flash_attention_forward"):
        c = call({"q": [2, 128, 8, 64], "k": [2, 128, 8, 64], "v": [2, 128, 8, 64]}, None, op=op, backend="flash")
        assert shape_of_call(c) == AttentionShape(2, 8, 8, 128, 128, 64, 64, False, None, TOP_LEFT)


def test_shape_of_packed_calls_and_flash_attn_alignment():
    c = call({"qkv": [4, 100, 3, 6, 32]}, "qkvpacked", backend="flash-attn2", causal=True)
    assert shape_of_call(c) == AttentionShape(4, 6, 6, 100, 100, 32, 32, True, None, BOTTOM_RIGHT)
    c = call({"q": [4, 10, 6, 32], "kv": [4, 100, 2, 2, 32]}, "kvpacked", backend="fa3")
    assert shape_of_call(c) == AttentionShape(4, 6, 2, 10, 100, 32, 32, False, None, BOTTOM_RIGHT)


def test_shape_of_varlen_call_is_unknown():
    assert shape_of_call(call({"q": [300, 8, 64], "k": [300, 8, 64], "v": [300, 8, 64]}, "varlen")) is None


# --- ceilings cache -------------------------------------------------------------------------------------------------

def test_ceilings_cache_round_trip(tmp_path):
    path = tmp_path / "cache" / "ceilings.json"
    other = Ceilings(device="Other GPU", copy_gbps=1.0, matmul_tflops=2.0, dtype="bfloat16",
                     measured_at="2026-01-02T00:00:00+00:00", method="m", torch_version="9.9")
    assert load_ceilings("Test GPU", path=path) is None
    save_ceilings(CEILINGS, path)
    save_ceilings(other, path)
    assert load_ceilings("Test GPU", "9.9", path) == CEILINGS
    assert load_ceilings("Test GPU", "1.0", path) is None  # another torch: measure again
    newer = Ceilings(**{**CEILINGS.__dict__, "copy_gbps": 2000.0, "measured_at": "2026-02-01T00:00:00+00:00"})
    save_ceilings(newer, path)  # replaces the entry of the same device and torch
    assert load_ceilings("Test GPU", path=path) == newer
    assert load_ceilings("Other GPU", path=path) == other


def test_damaged_ceilings_cache_is_ignored(tmp_path):
    path = tmp_path / "ceilings.json"
    path.write_text("{not json")
    assert load_ceilings("Test GPU", path=path) is None
    save_ceilings(CEILINGS, path)
    assert load_ceilings("Test GPU", path=path) == CEILINGS


def test_ceilings_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    written = save_ceilings(CEILINGS)
    assert written == tmp_path / "attnprof" / "ceilings.json"
    assert load_ceilings("Test GPU") == CEILINGS
