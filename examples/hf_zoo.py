"""Hugging Face transformers models of four families (random weights, built from configs: nothing is downloaded),
trained a few steps with the attention implementation you pick.

    python examples/hf_zoo.py --model gpt2 --attn eager --steps 6
    python examples/hf_zoo.py --model t5 --attn sdpa --steps 6

gpt2 (causal LM), llama (causal LM, grouped-query attention), bert (masked LM with a padding mask), t5
(encoder-decoder: self- and cross-attention). Needs `transformers` (not an attnprof dependency).
"""
from __future__ import annotations

import argparse

import torch


def build(model: str, attn: str, cuda: bool):
    import transformers as tf

    big = cuda
    if model == "gpt2":
        config = tf.GPT2Config(n_layer=4 if big else 2, n_embd=768 if big else 64, n_head=12 if big else 4,
                               vocab_size=8192 if big else 256, n_positions=1024)
        cls = tf.GPT2LMHeadModel
    elif model == "llama":
        config = tf.LlamaConfig(num_hidden_layers=4 if big else 2, hidden_size=1024 if big else 64,
                                intermediate_size=2816 if big else 128, num_attention_heads=16 if big else 4,
                                num_key_value_heads=4 if big else 2, vocab_size=8192 if big else 256,
                                max_position_embeddings=2048)
        cls = tf.LlamaForCausalLM
    elif model == "bert":
        config = tf.BertConfig(num_hidden_layers=4 if big else 2, hidden_size=768 if big else 64,
                               num_attention_heads=12 if big else 4, intermediate_size=3072 if big else 128,
                               vocab_size=8192 if big else 256, max_position_embeddings=1024)
        cls = tf.BertForMaskedLM
    else:
        config = tf.T5Config(num_layers=2 if big else 2, num_decoder_layers=2, d_model=512 if big else 64,
                             d_kv=64 if big else 16, d_ff=1024 if big else 128, num_heads=8 if big else 4,
                             vocab_size=8192 if big else 256, decoder_start_token_id=0, pad_token_id=0)
        cls = tf.T5ForConditionalGeneration
    config._attn_implementation = attn
    return cls(config), config.vocab_size


def batch_for(model: str, vocab: int, batch: int, seq: int, device: str) -> dict:
    ids = torch.randint(1, vocab, (batch, seq), device=device)
    if model == "bert":
        mask = torch.ones(batch, seq, dtype=torch.long, device=device)
        mask[0, seq // 2:] = 0  # the first sequence is padded: a real padding mask
        return dict(input_ids=ids, attention_mask=mask, labels=ids)
    if model == "t5":
        return dict(input_ids=ids, labels=torch.randint(1, vocab, (batch, seq // 2), device=device))
    return dict(input_ids=ids, labels=ids)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["gpt2", "llama", "bert", "t5"], default="gpt2")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    batch, seq = (8, 512) if cuda else (2, 16)
    torch.manual_seed(0)
    model, vocab = build(args.model, args.attn, cuda)
    model = model.to(device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for _ in range(args.steps):
        loss = model(**batch_for(args.model, vocab, batch, seq, device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    print(f"{args.steps} steps of {args.model}, attn_implementation={args.attn}, loss {loss.item():.3f} ({device})")


if __name__ == "__main__":
    main()
