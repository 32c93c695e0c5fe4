"""Run an example under a plain torch.profiler, as anyone would without attnprof: the "someone else's trace" the
analysis must get right from the trace alone.

    python traces/h200/plain_profile.py steps OUTDIR examples/nanogpt.py --steps 6
    python traces/h200/plain_profile.py whole OUTDIR examples/back_to_back.py --steps 4

`steps`: a schedule (wait 2, warmup 1, active 1) stepped at every optimizer step, written through
tensorboard_trace_handler, the way the PyTorch docs show. `whole`: one window around the whole run, written with
export_chrome_trace. Both with record_shapes and with_stack.
"""
from __future__ import annotations

import runpy
import sys

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def main() -> int:
    mode, out, script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    sys.path.insert(0, str(__import__("pathlib").Path(script).resolve().parent))
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    if mode == "whole":
        with torch.profiler.profile(activities=acts, record_shapes=True, with_stack=True) as prof:
            runpy.run_path(script, run_name="__main__")
        prof.export_chrome_trace(f"{out}/{script.rsplit('/', 1)[-1].removesuffix('.py')}.pt.trace.json")
        return 0
    handler = torch.profiler.tensorboard_trace_handler(out, use_gzip=True)
    prof = torch.profiler.profile(activities=acts, schedule=torch.profiler.schedule(wait=2, warmup=1, active=1),
                                  on_trace_ready=handler, record_shapes=True, with_stack=True)
    register_optimizer_step_post_hook(lambda *a: prof.step())
    prof.start()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        prof.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
