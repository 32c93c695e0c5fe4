"""Time one piece of work per repetition, outside any profiler: CUDA events on a GPU, the host clock on CPU.

Shared by `attnprof compare` (each backend variant) and the ceiling measurements, so both are timed the same way.

On CUDA the time is the device's: each repetition is bracketed by its own event pair on the current stream, and
before it the GPU is kept busy (a spin kernel, `torch.cuda._sleep`) for longer than the host takes to issue the
repetition, so the host is ahead when the start event is reached and the pair holds the repetition's GPU work
alone (as `triton.testing.do_bench` measures). Without that head start a call whose host side takes about as long
as its kernels (cuDNN's SDPA on small shapes) would be timed at the host's pace, which varies from run to run; the
host's share is what the profiled split's launch column shows.
"""
from __future__ import annotations

import statistics
import time
from functools import cache
from collections.abc import Callable

import torch

#: Spin cycles per calibration run, and runs (the first ones also raise the clock from idle).
CALIBRATION_CYCLES, CALIBRATION_RUNS = 1_000_000, 5
#: The head start before a repetition, as a multiple of the longest host time seen issuing one.
HEAD_START_FACTOR = 2.0


@cache
def _spin_cycles_per_us(device: torch.device) -> float:
    """The spin kernel's cycles per µs at the GPU's fastest clock seen: a head start in cycles then lasts at least
    as long as intended at any clock."""
    rates = []
    for _ in range(CALIBRATION_RUNS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(CALIBRATION_CYCLES)
        end.record()
        torch.cuda.synchronize(device)
        rates.append(CALIBRATION_CYCLES / (start.elapsed_time(end) * 1000.0))
    return max(rates)


def time_reps(step: Callable[[int], object], device: torch.device, warmup: int, reps: int,
              setup: Callable[[int], object] | None = None) -> list[float]:
    """µs of `step(i)` for each of `reps` repetitions after `warmup` untimed ones.

    `setup(i)`, when given, runs before each repetition and is not timed (the forward before a timed backward).
    The step's result (an output and its autograd graph) is freed only after the clock stops: what is timed is the
    call, not the teardown of what it returned, which a model keeps alive. On CUDA the warm-up repetitions also
    measure how long the host takes to issue one (from an idle GPU, so nothing blocks it), which sets the head start.
    """
    on_cuda = device.type == "cuda"
    issue_us: list[float] = []  # host time of each repetition
    head_start_cycles = 0
    pairs: list[tuple] = []
    for i in range(warmup + reps):
        if setup is not None:
            setup(i)
        timed = i >= warmup
        if on_cuda:
            if timed:
                torch.cuda._sleep(head_start_cycles)
            else:
                torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        result = step(i)
        t1 = time.perf_counter()
        if on_cuda:
            end.record()
            if timed:
                pairs.append((start, end))
        issue_us.append((t1 - t0) * 1e6)
        del result
        if on_cuda and i == warmup - 1:
            head_start_cycles = int(HEAD_START_FACTOR * max(issue_us) * _spin_cycles_per_us(device))
    if on_cuda:
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) * 1000.0 for s, e in pairs]
    return issue_us[warmup:]


def median_us(step: Callable[[int], object], device: torch.device, warmup: int, reps: int,
              setup: Callable[[int], object] | None = None) -> float:
    return statistics.median(time_reps(step, device, warmup, reps, setup))
