#!/usr/bin/env bash
# Records the reference runs under traces/h200/ on the GPU machine (see traces/h200/README.md).
#   bash traces/h200/record.sh OUTDIR PART...
# PARTs: truth (zoo_truth.py: CUDA-event ground truth), plain (the zoo under a plain torch.profiler: traces attnprof
# did not make), zoo (the zoo under attnprof trace). Each step logs to OUTDIR/<name>.log and goes on after a failure.
set -u
OUT=${1:?usage: record.sh OUTDIR PART...}
shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

step() {  # step NAME command...
    local name=$1; shift
    echo "== $name: $*"
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-150}" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || tail -n 25 "$OUT/$name.log"
}
trace() {  # trace NAME [attnprof trace options and script...]
    local name=$1; shift
    step "$name" python3 -m attnprof trace --out "$OUT/$name" "$@"
}
plain() {  # plain NAME MODE script args...
    local name=$1 mode=$2; shift 2
    mkdir -p "$OUT/$name"
    step "$name" python3 traces/h200/plain_profile.py "$mode" "$OUT/$name" "$@"
}

python3 - > "$OUT/environment.txt" 2>&1 <<'PY'
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("python", platform.python_version())
import transformers; print("transformers", transformers.__version__)
PY
cat "$OUT/environment.txt"

for part in "$@"; do case $part in
truth)
    step truth python3 traces/h200/zoo_truth.py "$OUT/truth.json"
    ;;
plain)
    plain plain-back-to-back whole examples/back_to_back.py --steps 4
    plain plain-nanogpt steps examples/nanogpt.py --steps 5
    plain plain-gpt2-eager steps examples/hf_zoo.py --model gpt2 --attn eager --steps 5
    ;;
zoo)
    trace back-to-back examples/back_to_back.py --steps 12
    trace nanogpt --active 1 examples/nanogpt.py --steps 8
    trace gpt2-eager --active 1 examples/hf_zoo.py --model gpt2 --attn eager --steps 8
    trace gpt2-sdpa --active 1 examples/hf_zoo.py --model gpt2 --attn sdpa --steps 8
    trace llama-eager --active 1 examples/hf_zoo.py --model llama --attn eager --steps 8
    ;;
*) echo "unknown part $part" ;;
esac; done
ls -la "$OUT" "$OUT"/*/
