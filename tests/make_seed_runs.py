"""Run folders of the seed case made the way `attnprof trace` makes them, for tests on a machine without a GPU.

The attention entry points of examples/seed_case.py are wrapped like capture wraps them: an attnprof range
(`attnprof:<op> <site> #<id>`, runinfo.range_name) around each call inside torch.profiler, the call's arguments in
runinfo.json, and its end-to-end time measured outside (true) and inside (profiled) the profiler. On CPU the clock
is the host's; with --device cuda, CUDA events.

    python tests/make_seed_runs.py OUT_DIR [--device cuda] [--backward]   # one run folder per variant + "all"
"""
from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
import seed_case  # noqa: E402

from attnprof.trace.runinfo import (  # noqa: E402
    SOURCE_PREFIX, CallInfo, RunInfo, SiteTiming, StepInfo, TensorInfo, range_name, write_runinfo,
)

VARIANTS = ("seed", "native", "sdpa")


class _Recorder:
    """Wraps seed_case's two attention entry points; records calls and timings like capture does."""

    def __init__(self, device: str):
        self.device = device
        self.mode = "warmup"  # warmup | timed | profiled
        self.calls: list[CallInfo] = []
        self.timings: dict[tuple[str, str], SiteTiming] = {}
        self.next_id = 1
        self.step = 0

    def _clock(self):
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            return lambda: (end.record(), end.synchronize(), start.elapsed_time(end) * 1000.0)[-1]
        t0 = time.perf_counter()
        return lambda: (time.perf_counter() - t0) * 1e6

    def wrap(self, fn, op: str, layout: str):
        def wrapper(q, k, v, causal=False):
            frame = sys._getframe(1)
            site = f"{os.path.relpath(frame.f_code.co_filename, ROOT)}:{frame.f_lineno}"
            stop = self._clock()
            if self.mode == "profiled":
                call_id = self.next_id
                self.next_id += 1
                name = range_name(op, site, call_id)
                with record_function(name):
                    out = fn(q, k, v, causal)
                self.calls.append(self._info(call_id, op, site, name, layout, q, k, v, out, causal))
            else:
                out = fn(q, k, v, causal)
            elapsed = stop()
            if self.mode != "warmup":
                t = self.timings.setdefault((site, op), SiteTiming(
                    site=site, op=op, phase="fwd", clock="cuda_event" if self.device == "cuda" else "host"))
                (t.profiled_us if self.mode == "profiled" else t.true_us).append(elapsed)
            return out
        return wrapper

    def _info(self, call_id, op, site, name, layout, q, k, v, out, causal) -> CallInfo:
        def tensor(t):
            return TensorInfo(shape=list(t.shape), stride=list(t.stride()), dtype=str(t.dtype).replace("torch.", ""),
                              device=str(t.device))
        heads_axis, seq_axis = (1, 2) if layout == "BHLD" else (2, 1)
        return CallInfo(id=call_id, op=op, library="torch", site=site, function="", step=self.step, range_name=name,
                        layout=layout, tensors={"q": tensor(q), "k": tensor(k), "v": tensor(v), "out": tensor(out)},
                        batch=q.shape[0], heads_q=q.shape[heads_axis], heads_kv=k.shape[heads_axis],
                        seqlen_q=q.shape[seq_axis], seqlen_k=k.shape[seq_axis], head_dim=q.shape[-1],
                        head_dim_v=v.shape[-1], gqa_ratio=q.shape[heads_axis] / k.shape[heads_axis], causal=causal)


@contextmanager
def _patched(recorder: _Recorder, source_lines: bool):
    saved = seed_case.flash_attention, seed_case.sdpa
    contiguous = torch.Tensor.contiguous
    seed_case.flash_attention = recorder.wrap(saved[0], "flash_attention", "BLHD")
    seed_case.sdpa = recorder.wrap(saved[1], "sdpa", "BHLD")

    def marked_contiguous(self, *args, **kwargs):
        # capture's --source-lines: name the statement that ran the layout-prep call, while profiling
        if recorder.mode != "profiled":
            return contiguous(self, *args, **kwargs)
        frame = sys._getframe(1)
        with record_function(f"{SOURCE_PREFIX}{os.path.relpath(frame.f_code.co_filename, ROOT)}:{frame.f_lineno}"):
            return contiguous(self, *args, **kwargs)

    if source_lines:
        torch.Tensor.contiguous = marked_contiguous
    try:
        yield
    finally:
        seed_case.flash_attention, seed_case.sdpa = saved
        torch.Tensor.contiguous = contiguous


def make_run(folder: Path, variants: tuple[str, ...], shape=(32, 8, 32, 64), device: str = "cpu",
             backward: bool = False, warmup: int = 2, timed: int = 7, active: int = 3, with_runinfo: bool = True,
             source_lines: bool = True, dtype=None) -> Path:
    """A run folder: trace + runinfo.json (with_runinfo=False: a bare torch.profiler trace, like someone else's)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        torch.set_num_threads(1)  # intra-op threads spin against each other on a busy test machine
    B, H, L, D = shape
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    torch.manual_seed(0)
    bhld = [torch.randn(B, H, L, D, device=device, dtype=dtype, requires_grad=backward) for _ in range(3)]
    blhd = [torch.randn(B, L, H, D, device=device, dtype=dtype, requires_grad=backward) for _ in range(3)]
    rec = _Recorder(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])

    def step():
        for name in variants:
            if name == "seed":
                out = seed_case.seed_wrapper(*bhld)
            elif name == "native":
                out = seed_case.flash_attention(*blhd)
            else:
                out = seed_case.sdpa(*bhld)
            if backward:
                out.float().square().mean().backward()
        rec.step += 1

    started = datetime.datetime.now().isoformat(timespec="seconds")
    with _patched(rec, source_lines):
        for _ in range(warmup):
            step()
        rec.mode = "timed"
        for _ in range(timed):
            step()
        rec.mode = "profiled"
        first = rec.step
        with profile(activities=activities, record_shapes=True, with_stack=True) as prof:
            for _ in range(active):
                step()
        if device == "cuda":
            torch.cuda.synchronize()
    trace = folder / f"{socket.gethostname()}_{os.getpid()}.pt.trace.json"
    prof.export_chrome_trace(str(trace))
    if with_runinfo:
        write_runinfo(RunInfo(
            version=1, attnprof_version="test", torch_version=str(torch.__version__), cuda_version=torch.version.cuda,
            device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
            device_capability=".".join(map(str, torch.cuda.get_device_capability())) if device == "cuda" else None,
            hostname=socket.gethostname(), pid=os.getpid(),
            command=["examples/seed_case.py", "--variant", "+".join(variants)] + (["--backward"] if backward else []),
            started_at=started, trace_files=[trace.name],
            steps=StepInfo(unit="iteration", warmup=warmup, timed=timed, active=active, seen=rec.step,
                           profiled=[first, rec.step - 1], profiled_calls=len(rec.calls)),
            calls=rec.calls, sites=list(rec.timings.values()),
        ), folder)
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", default=None, help="B,H,L,D")
    p.add_argument("--backward", action="store_true")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split(",")) if args.shape else (
        (12, 64, 256, 64) if args.device == "cuda" else (32, 8, 32, 64))
    suffix = "-train" if args.backward else ""
    for variants in [(v,) for v in VARIANTS] + [VARIANTS]:
        name = f"seed_case-{'all' if len(variants) > 1 else variants[0]}{suffix}"
        print(make_run(args.out / name, variants, shape=shape, device=args.device, backward=args.backward))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
