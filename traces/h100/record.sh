#!/usr/bin/env bash
# Records the reference runs under traces/h100/ on the GPU machine (see traces/h100/README.md).
#   bash traces/h100/record.sh OUTDIR [runs|nsys|all]
# Each step logs to OUTDIR/<name>.log and goes on after a failure, so one bad step never loses the others.
set -u
OUT=${1:?usage: record.sh OUTDIR [runs|nsys|all]}
PART=${2:-all}
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

if [ "$PART" != nsys ]; then
trace() {  # trace NAME [attnprof trace options and script...]
    local name=$1; shift
    step "$name" python3 -m attnprof trace --out "$OUT/$name" "$@"
}

# The seed case, forward only: seed wrapper vs native (B, L, H, D) vs SDPA, (B, H, L, D) = (12, 64, 256, 64) fp16.
trace seed-fwd examples/seed_case.py --variant all --steps 12
# The same with a backward through each variant.
trace seed-train examples/seed_case.py --variant all --steps 12 --backward
# A small transformer training step (optimizer steps) per attention implementation.
trace train-seed examples/tiny_transformer.py --attn seed --steps 10
trace train-sdpa examples/tiny_transformer.py --attn sdpa --steps 10
# Hugging Face Llama, random weights from a config, sdpa vs eager.
trace hf-llama-sdpa --active 1 examples/hf_llama.py --attn sdpa --steps 6
trace hf-llama-eager --active 1 examples/hf_llama.py --attn eager --steps 6
# Ground truth measured independently with CUDA events, in the same session.
step truth python3 traces/h100/ground_truth.py "$OUT/truth.json" --shape 12,64,256,64 --shape 16,128,784,128
fi
[ "$PART" = runs ] && exit 0

# Nsight Systems: the seed case with attnprof's NVTX ranges (no torch.profiler: --active 0), then PyTorch's own
# autograd NVTX ranges without attnprof.
if [ -x "$NSYS" ]; then
    if [ -d .debs ]; then  # nsys needs libdw, which the image lacks (GPU.md)
        mkdir -p /tmp/dw; for f in .debs/*.deb; do dpkg -x "$f" /tmp/dw; done
        export LD_LIBRARY_PATH=/tmp/dw/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    fi
    mkdir -p "$OUT/nsys-seed" "$OUT/nsys-autograd"
    step nsys-seed "$NSYS" profile -t cuda,nvtx -s none --cpuctxsw=none --force-overwrite=true \
        -o "$OUT/nsys-seed/report" python3 -m attnprof trace --active 0 --out "$OUT/nsys-seed/run" \
        examples/seed_case.py --variant all --steps 12
    step nsys-seed-export "$NSYS" export --type sqlite --force-overwrite=true -o "$OUT/nsys-seed/report.sqlite" \
        "$OUT/nsys-seed/report.nsys-rep"
    step nsys-seed-stats "$NSYS" stats -r nvtx_gpu_proj_sum --format csv -o "$OUT/nsys-seed/stats" \
        "$OUT/nsys-seed/report.sqlite"
    step nsys-autograd "$NSYS" profile -t cuda,nvtx -s none --cpuctxsw=none --force-overwrite=true \
        --pytorch=autograd-shapes-nvtx -o "$OUT/nsys-autograd/report" \
        python3 examples/seed_case.py --variant all --steps 4 --backward
    step nsys-autograd-export "$NSYS" export --type sqlite --force-overwrite=true \
        -o "$OUT/nsys-autograd/report.sqlite" "$OUT/nsys-autograd/report.nsys-rep"
    # the report script defines what "projected GPU time" is: keep it beside the data
    find "$(dirname "$NSYS")" -name 'nvtx_gpu_proj_sum.py' -exec cp {} "$OUT/" \; 2>/dev/null
    "$NSYS" --version > "$OUT/nsys-version.txt" 2>&1
else
    echo "no nsys at $NSYS"
fi
ls -la "$OUT" "$OUT"/*/ 2>/dev/null | head -80
