"""A Hugging Face transformers Llama (random weights, built from a config: nothing is downloaded), trained for a
few steps with `attn_implementation="sdpa"` or `"eager"`.

    python examples/hf_llama.py --attn sdpa --steps 8
    python examples/hf_llama.py --attn eager --steps 8

Needs `transformers` (not an attnprof dependency).
"""
from __future__ import annotations

import argparse

import torch


def build_model(attn: str, layers: int, dim: int, heads: int, kv_heads: int, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=dim, intermediate_size=int(dim * 2.75) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=4096, attn_implementation=attn,
    )
    config._attn_implementation = attn  # older transformers read only the private field
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    layers = args.layers or (4 if cuda else 2)
    dim, heads, kv_heads = (1024, 16, 4) if cuda else (128, 4, 2)
    batch = args.batch or (4 if cuda else 1)
    seq = args.seq or (1024 if cuda else 64)
    torch.manual_seed(0)
    model = build_model(args.attn, layers, dim, heads, kv_heads, device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for _ in range(args.steps):
        tokens = torch.randint(0, 32000, (batch, seq), device=device)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"{args.steps} steps, attn_implementation={args.attn}, loss {loss.item():.3f} ({device})")


if __name__ == "__main__":
    main()
