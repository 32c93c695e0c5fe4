"""A small transformer language model trained for a few steps, with a choice of attention implementation.

  --attn sdpa    torch.nn.functional.scaled_dot_product_attention on (B, H, L, D)
  --attn seed    the seed's wrapper: (B, H, L, D) -> transpose(1, 2).contiguous() -> FlashAttention-2 on
                 (B, L, H, D) -> transpose(1, 2).contiguous() back (examples/seed_case.py)
  --attn native  FlashAttention-2 on the (B, L, H, D) tensors the projection produces: no layout copies

    python examples/tiny_transformer.py --attn seed --steps 8
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seed_case import flash_attention, seed_wrapper  # noqa: E402


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, impl: str):
        super().__init__()
        self.heads, self.impl = heads, impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, L, E = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, E // self.heads).unbind(2)  # each (B, L, H, D)
        if self.impl == "native":
            out = flash_attention(q, k, v, causal=True)  # (B, L, H, D)
        else:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, L, D), as SDPA takes them
            if self.impl == "seed":
                out = seed_wrapper(q, k, v, causal=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out = out.transpose(1, 2)  # back to (B, L, H, D)
        return self.proj(out.reshape(B, L, E))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, impl: str):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, impl)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, dim: int, heads: int, layers: int, impl: str):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, impl) for _ in range(layers))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", choices=["sdpa", "seed", "native"], default="seed")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch = args.batch or (8 if cuda else 2)
    seq = args.seq or (1024 if cuda else 64)
    dim = args.dim or (1024 if cuda else 64)
    heads = args.heads or (16 if cuda else 4)
    torch.manual_seed(0)
    model = TinyLM(1024, dim, heads, args.layers, args.attn).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if cuda else torch.float32
    for step in range(args.steps):
        tokens = torch.randint(0, 1024, (batch, seq), device=device)
        with torch.autocast(device, dtype=dtype, enabled=cuda):
            logits = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 1024), tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"{args.steps} steps, attn={args.attn}, loss {loss.item():.3f} ({device})")


if __name__ == "__main__":
    main()
