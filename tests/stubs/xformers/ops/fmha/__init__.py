"""Stand-in for xformers.ops.fmha: memory_efficient_attention on BMHK (= BLHD) or BMGHK inputs."""
import torch
import torch.nn.functional as F

from .attn_bias import AttentionBias, LowerTriangularMask  # noqa: F401


def attend(q, k, v, causal=False, scale=None, dropout_p=0.0):
    """(B, L, H, D) attention by torch SDPA on (B, H, L, D) views."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p,
                                         is_causal=causal, scale=scale, enable_gqa=k.shape[2] != q.shape[2])
    return out.transpose(1, 2)


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                               output_dtype=None):
    return _attention(query, key, value, attn_bias, p, scale)


def memory_efficient_attention_forward(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None,
                                       output_dtype=None):
    return _attention(query, key, value, attn_bias, p, scale)


def _attention(q, k, v, bias, p, scale):
    causal = isinstance(bias, LowerTriangularMask)
    if q.dim() == 5:  # (B, M, G, H, K): groups of heads sharing k/v (expanded over H)
        B, M, G, H, K = q.shape
        out = attend(q.reshape(B, M, G * H, K), k.reshape(B, k.shape[1], G * H, K),
                     v.reshape(B, v.shape[1], G * H, v.shape[-1]), causal, scale, p)
        return out.reshape(B, M, G, H, -1)
    if q.dim() == 3:
        return attend(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), causal, scale, p).squeeze(2)
    if isinstance(bias, torch.Tensor):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias, dropout_p=p, scale=scale)
        return out.transpose(1, 2)
    return attend(q, k, v, causal, scale, p)
