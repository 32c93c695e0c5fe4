"""GPT-2 (random weights, from its config) generating 48 tokens greedily: one attention call per layer per token."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
config = GPT2Config(n_layer=4, n_embd=256, n_head=4, attn_implementation="sdpa")
device = "cuda" if torch.cuda.is_available() else "cpu"
model = GPT2LMHeadModel(config).to(device, torch.float16 if device == "cuda" else torch.float32).eval()
prompt = torch.randint(0, config.vocab_size, (1, 64), device=device)
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=48, min_new_tokens=48, do_sample=False, pad_token_id=0)
print("generated", out.shape[1] - prompt.shape[1], "tokens")
