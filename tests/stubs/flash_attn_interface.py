"""Stand-in for FA3 (flash-attn's hopper/ build, top-level module `flash_attn_interface`); maths by torch SDPA."""
import torch
import torch.nn.functional as F


def attend(q, k, v, causal=False, scale=None, dropout_p=0.0):
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    out = F.scaled_dot_product_attention(qt, kt, vt, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                         enable_gqa=kt.shape[1] != qt.shape[1])
    return out.transpose(1, 2)


def attend_varlen(q, k, v, cu_q, cu_k, causal=False, scale=None):
    """(total, H, D) packed sequences: one SDPA per sequence (a host sync on cu_seqlens: fine for a stand-in)."""
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    outs = []
    for i in range(len(bounds_q) - 1):
        qs = q[bounds_q[i]:bounds_q[i + 1]].unsqueeze(0)
        ks = k[bounds_k[i]:bounds_k[i + 1]].unsqueeze(0)
        vs = v[bounds_k[i]:bounds_k[i + 1]].unsqueeze(0)
        outs.append(attend(qs, ks, vs, causal, scale)[0])
    return torch.cat(outs)


def lse(q, k, scale=None):
    """softmax log-sum-exp (B, H, Lq), as the real kernels return it."""
    s = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float().repeat_interleave(q.shape[2] // k.shape[2], 2))
    return torch.logsumexp(scores * s, dim=-1)



def flash_attn_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                    v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1,
                    pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    out = attend(q, k, v, causal, softmax_scale)
    return (out, lse(q, k, softmax_scale)) if return_attn_probs else out


def flash_attn_qkvpacked_func(qkv, softmax_scale=None, causal=False, q_descale=None, k_descale=None,
                              v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                              deterministic=False, num_heads_q=None, sm_margin=0, return_attn_probs=False):
    if qkv.dim() == 5:
        q, k, v = qkv.unbind(2)
    else:  # (B, L, Hq + 2 Hk, D)
        hk = (qkv.shape[2] - num_heads_q) // 2
        q, k, v = qkv.split([num_heads_q, hk, hk], dim=2)
    return attend(q, k, v, causal, softmax_scale)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, seqused_q=None,
                           seqused_k=None, softmax_scale=None, causal=False, qv=None, q_descale=None,
                           k_descale=None, v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0,
                           num_splits=1, pack_gqa=None, deterministic=False, sm_margin=0, return_attn_probs=False):
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, qv=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, page_table=None,
                            cu_seqlens_q=None, cu_seqlens_k_new=None, max_seqlen_q=None, rotary_seqlens=None,
                            q_descale=None, k_descale=None, v_descale=None, softmax_scale=None, causal=False,
                            window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                            scheduler_metadata=None, num_splits=0, pack_gqa=None, sm_margin=0,
                            return_softmax_lse=False):
    return attend(q, k_cache, v_cache, causal, softmax_scale)
