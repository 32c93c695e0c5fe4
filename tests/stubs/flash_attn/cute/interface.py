"""Stand-in for flash_attn.cute.interface (FA4): same signatures, returns (out, lse); maths by torch SDPA."""
from flash_attn._sdpa import attend, attend_varlen, lse


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size_left=None, window_size_right=None,
                    learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None, deterministic=False,
                    mask_mod=None, return_lse=False):
    return attend(q, k, v, causal, softmax_scale), lse(q, k, softmax_scale)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, seqused_q=None, seqused_k=None,
                           page_table=None, softmax_scale=None, causal=False, window_size_left=None,
                           window_size_right=None, learnable_sink=None, softcap=0.0, num_splits=1, pack_gqa=None,
                           deterministic=False, return_lse=False):
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale), None
