#!/usr/bin/env bash
# Records the reference runs under traces/h100/ on the GPU machine (see traces/h100/README.md).
#   bash traces/h100/record.sh OUTDIR PART...
# PARTs: seed (the seed case fwd and train + CUDA-event ground truth), models (tiny transformer, HF Llama),
# nsys (attnprof nsys, nsys stats, PyTorch's own NVTX ranges), compare (attnprof compare + ceilings).
# Each step logs to OUTDIR/<name>.log and goes on after a failure, so one bad step never loses the others.
set -u
OUT=${1:?usage: record.sh OUTDIR PART...}
shift
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
NSYS=${NSYS:-/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys}

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

python3 - > "$OUT/environment.txt" 2>&1 <<'EOF'
import torch, platform
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("python", platform.python_version())
try:
    import transformers; print("transformers", transformers.__version__)
except Exception as e:
    print("transformers missing", e)
EOF
cat "$OUT/environment.txt"

for part in "$@"; do case $part in
seed)
    # seed wrapper vs native (B, L, H, D) vs SDPA, (B, H, L, D) = (12, 64, 256, 64) fp16; 40 steps so that each
    # site's true time is a median over ~35 calls
    trace seed-fwd examples/seed_case.py --variant all --steps 40
    trace seed-train examples/seed_case.py --variant all --steps 40 --backward
    step truth python3 traces/h100/ground_truth.py "$OUT/truth.json" --shape 12,64,256,64 --shape 16,128,784,128
    ;;
models)
    trace train-seed examples/tiny_transformer.py --attn seed --steps 10
    trace train-sdpa examples/tiny_transformer.py --attn sdpa --steps 10
    trace hf-llama-sdpa --active 1 examples/hf_llama.py --attn sdpa --steps 6
    trace hf-llama-eager --active 1 examples/hf_llama.py --attn eager --steps 6
    ;;
nsys)
    if [ -d .debs ]; then  # nsys needs libdw, which the image lacks (GPU.md)
        mkdir -p /tmp/dw; for f in .debs/*.deb; do dpkg -x "$f" /tmp/dw; done
        export LD_LIBRARY_PATH=/tmp/dw/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    fi
    beside=(); [ -d "$OUT/seed-fwd" ] && beside=(--beside "$OUT/seed-fwd")
    step nsys-seed python3 -m attnprof nsys --nsys "$NSYS" --out "$OUT/nsys-seed" "${beside[@]}" \
        -- examples/seed_case.py --variant all --steps 40
    step nsys-seed-stats "$NSYS" stats -r nvtx_gpu_proj_sum --format csv -o "$OUT/nsys-seed/stats" \
        "$OUT/nsys-seed/report.sqlite"
    find "$(dirname "$NSYS")" -name 'nvtx_gpu_proj_sum.py' -exec cp {} "$OUT/" \; 2>/dev/null
    "$NSYS" --version > "$OUT/nsys-version.txt" 2>&1
    ;;
compare)
    STEP_TIMEOUT=300 step compare python3 -m attnprof compare --shape 12,64,256,64 --shape 16,128,784,128 \
        --dtype fp16 --out "$OUT/compare"
    cp ~/.cache/attnprof/ceilings.json "$OUT/ceilings.json" 2>/dev/null
    ;;
*) echo "unknown part $part" ;;
esac; done
ls -la "$OUT"
