"""Shared maths of the stand-ins: attention on (B, L, H, D) tensors with torch SDPA on (B, H, L, D) views."""
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
