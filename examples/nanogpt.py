"""A nanoGPT-style model (Karpathy's nanoGPT `CausalSelfAttention`, abridged): hand-written causal attention,
`softmax(q @ k.transpose(-2, -1) * scale)` with a mask and dropout, trained with AdamW. `--attn sdpa` runs the
same model through `F.scaled_dot_product_attention(..., is_causal=True)`, nanoGPT's own "flash" path.

    python examples/nanogpt.py --attn manual --steps 8
"""
from __future__ import annotations

import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float, attn: str):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout, self.attn = n_head, n_embd, dropout, attn
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:
            y = manual_attention(q, k, v, self.bias[:, :, :T, :T], self.attn_dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


def manual_attention(q, k, v, causal_mask, dropout):
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
    att = att.masked_fill(causal_mask == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = dropout(att)
    return att @ v


class Block(nn.Module):
    def __init__(self, n_embd, n_head, block_size, dropout, attn):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout, attn)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab, n_layer, n_embd, n_head, block_size, dropout, attn):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, block_size, dropout, attn) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx, targets):
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def sizes(device: str) -> dict:
    if device == "cuda":
        return dict(vocab=8192, n_layer=4, n_embd=768, n_head=12, block_size=512, batch=8)
    return dict(vocab=256, n_layer=2, n_embd=64, n_head=4, block_size=32, batch=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", choices=["manual", "sdpa"], default="manual")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--dropout", type=float, default=0.1)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = sizes(device)
    torch.manual_seed(0)
    model = GPT(s["vocab"], s["n_layer"], s["n_embd"], s["n_head"], s["block_size"], args.dropout, args.attn).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in range(args.steps):
        idx = torch.randint(0, s["vocab"], (s["batch"], s["block_size"]), device=device)
        with ctx:
            loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"{args.steps} steps, attn={args.attn}, loss {loss.item():.3f} ({device})")


if __name__ == "__main__":
    main()
