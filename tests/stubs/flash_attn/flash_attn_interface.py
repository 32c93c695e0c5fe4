"""Stand-in for flash_attn.flash_attn_interface (flash-attn 2.6-2.8 signatures); maths by torch SDPA."""

from flash_attn._sdpa import attend, attend_varlen


def _check(q):
    # the real kernels need a contiguous last dim; the stand-in copies like a careful wrapper would
    return q if q.stride(-1) == 1 else q.contiguous()


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    return attend(_check(q), _check(k), _check(v), causal, softmax_scale, dropout_p)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    q, k, v = qkv.unbind(2)
    return attend(q, k, v, causal, softmax_scale, dropout_p)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    k, v = kv.unbind(2)
    return attend(q, k, v, causal, softmax_scale, dropout_p)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    q, k, v = qkv.unbind(1)
    return attend_varlen(q, k, v, cu_seqlens, cu_seqlens, causal, softmax_scale)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    k, v = kv.unbind(1)
    return attend_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, softmax_scale)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    n = cache_seqlens if isinstance(cache_seqlens, int) else k_cache.shape[1]
    if k is not None:
        k_cache[:, n:n + k.shape[1]] = k
        v_cache[:, n:n + v.shape[1]] = v
        n += k.shape[1]
    return attend(q, k_cache[:, :n], v_cache[:, :n], causal, softmax_scale)
