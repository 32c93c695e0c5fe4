#!/usr/bin/env bash
# explain --verify on the GPU (issue 15): the measured saving of each proposed fix beside the µs the split charged.
#   bash traces/h200/record_verify.sh OUTDIR
# Three runs, each traced then verified (about 60 s each at most): the seed example (layout copies, FA2 on Hopper),
# GPT-2 in Hugging Face's eager mode (hand-written attention against SDPA), and a GPT-2 decode loop (HF generate:
# launch-bound, the CUDA-graph saving against the launch µs). Logs: OUTDIR/<name>.log; JSON: OUTDIR/<name>.json.
set -u
OUT=${1:?usage: record_verify.sh OUTDIR}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-2}

cat > "$OUT/decode.py" <<'PY'
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
PY

side_by_side() {  # side_by_side JSON: predicted (forward µs per call) and measured saving, per site and cause
    python3 - "$1" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for d in doc["diagnoses"]:
    print(f"  {d['subject']['label']}  ({d['subject']['us']:.1f} µs per call, fwd + bwd)")
    for c in d["causes"]:
        measured = c["measured_saving_us"]
        shown = "not measured" if measured is None else ("nothing measurable" if measured == 0 else
                                                         f"{measured:9.1f} µs by {c['measured_by']}")
        print(f"    {c['kind']:12s} predicted fwd {c['by_phase'].get('fwd', 0.0):9.1f} µs   measured {shown}")
        if c["measured_note"]:
            print(f"      {c['measured_note']}")
    for n in d["notes"]:
        if n.startswith("verify:"):
            print(f"    {n}")
PY
}

case_() {  # case_ NAME [attnprof trace options and script...]
    local name=$1; shift
    echo "== $name"
    local t0=$SECONDS
    timeout 60 python3 -m attnprof trace --quiet --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 &&
        timeout 45 python3 -m attnprof verify "$OUT/$name" --budget "$BUDGET" --json > "$OUT/$name.json" \
            2>> "$OUT/$name.log" &&
        side_by_side "$OUT/$name.json"
    echo "== $name: rc=$? in $((SECONDS - t0)) s"
    tail -n 5 "$OUT/$name.log"
}

case_ seed --warmup 2 --timed 3 --active 1 examples/seed_case.py --steps 8
case_ gpt2-eager --warmup 2 --timed 2 --active 1 examples/hf_zoo.py --model gpt2 --attn eager --steps 6
case_ decode --warmup 4 --timed 8 --active 2 --step-on iteration "$OUT/decode.py"
