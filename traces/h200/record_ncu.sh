#!/usr/bin/env bash
# Nsight Compute on the seed case, with attnprof's NVTX ranges as the filter (see traces/h200/README.md).
#   bash traces/h200/record_ncu.sh OUTDIR
set -u
OUT=${1:?usage: record_ncu.sh OUTDIR}
mkdir -p "$OUT"
NCU=${NCU:-/usr/local/cuda/bin/ncu}
PYNCU=$(dirname "$(readlink -f "$NCU")")/../extras/python
[ -d "$PYNCU" ] || PYNCU=/opt/nvidia/nsight-compute/2025.3.1/extras/python
"$NCU" --version > "$OUT/ncu-version.txt" 2>&1
"$NCU" --query-metrics --chip gh100 > "$OUT/metrics-gh100.txt" 2>&1
SAFE="sm__inst_executed_pipe_tensor_op_gmma.sum,sm__inst_executed_pipe_tensor_op_hmma.sum,dram__bytes_read.sum,dram__bytes_write.sum"
EXTRA="sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"
run_ncu() {  # NAME METRICS
    local t0=$SECONDS
    "$NCU" --nvtx --nvtx-include "regex:attnprof@.*/" --clock-control none \
        --section SpeedOfLight --section Occupancy --section LaunchStats --metrics "$2" \
        -f -o "$OUT/$1" python3 -m attnprof trace --active 0 --warmup 0 --timed 0 --out "$OUT/$1-run" \
        examples/seed_case.py --variant all --steps 2 > "$OUT/$1.log" 2>&1
    echo "== ncu $1: rc=$? in $((SECONDS - t0)) s"; tail -n 5 "$OUT/$1.log"
    "$NCU" --import "$OUT/$1.ncu-rep" --csv --page raw > "$OUT/$1.raw.csv" 2> "$OUT/$1.csv.err"
    "$NCU" --import "$OUT/$1.ncu-rep" --csv --page details --print-nvtx-rename kernel > "$OUT/$1.details.csv" 2>/dev/null
}
run_ncu seed "$SAFE"
run_ncu seed-extra "$SAFE,$EXTRA"
PYTHONPATH=$PYNCU python3 - "$OUT" <<'PY' > "$OUT/ncu_report_dump.txt" 2>&1
import json, sys
import ncu_report
out = sys.argv[1]
for name in ("seed", "seed-extra"):
    try:
        r = ncu_report.load_report(f"{out}/{name}.ncu-rep")
    except Exception as e:
        print(name, "load failed", e); continue
    for i in range(r.num_ranges()):
        rng = r.range_by_idx(i)
        for j in range(rng.num_actions()):
            a = rng.action_by_idx(j)
            nv = a.nvtx_state()
            ranges = []
            for d in nv.domains():
                dom = nv.domain_by_id(d)
                ranges.append((dom.name(), list(dom.push_pop_ranges())))
            vals = {}
            for m in ("gpu__time_duration.sum", "sm__inst_executed_pipe_tensor_op_gmma.sum", "launch__registers_per_thread"):
                v = a.metric_by_name(m)
                vals[m] = None if v is None else v.as_double()
            print(json.dumps({"report": name, "kernel": a.name(), "nvtx": ranges, **vals}))
PY
head -c 3000 "$OUT/ncu_report_dump.txt"
cp "$PYNCU"/ncu_report.py "$OUT/" 2>/dev/null; ls -la "$PYNCU" > "$OUT/extras-python.txt" 2>&1
# the same case under attnprof trace (torch.profiler), for the kernel durations ncu is held to
python3 -m attnprof trace --out "$OUT/seed-trace" examples/seed_case.py --variant all --steps 12 > "$OUT/seed-trace.log" 2>&1
echo "== trace rc=$?"
# attnprof's own command (attnprof-ncu/ and attnprof-ncu-full/ in traces/h200/ncu-seed/)
for SET in basic full; do
    CALLS=6; [ "$SET" = full ] && CALLS=3
    t0=$SECONDS
    python3 -m attnprof ncu --set "$SET" --calls "$CALLS" --warmup 2 --out "$OUT/attnprof-ncu-$SET" \
        -- examples/seed_case.py --variant all --steps 4 > "$OUT/attnprof-ncu-$SET.log" 2>&1
    echo "== attnprof ncu --set $SET: rc=$? in $((SECONDS - t0)) s"
done
