"""Time one piece of work per repetition, outside any profiler: CUDA events on a GPU, the host clock on CPU.

Shared by `attnprof compare` (each backend variant), the ceiling measurements and the ground-truth scripts of the
recorded fixtures (traces/*/: `event_times_us`), so all are timed with the same CUDA-event code.

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
from collections.abc import Callable
from functools import cache

import torch

#: Spin cycles per calibration run, and runs (the first ones also raise the clock from idle).
CALIBRATION_CYCLES, CALIBRATION_RUNS = 1_000_000, 5
#: The head start before a repetition, as a multiple of the longest host time seen issuing one.
HEAD_START_FACTOR = 2.0


def event_pair() -> tuple[torch.cuda.Event, torch.cuda.Event]:
    """A (start, end) pair of timing CUDA events."""
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def elapsed_us(pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> list[float]:
    """µs between each pair's events; the events must have completed (synchronize first)."""
    return [start.elapsed_time(end) * 1000.0 for start, end in pairs]


def event_times_us(fn: Callable[[], object], reps: int, warmup: int, spin_cycles: int = 0,
                   batch: int = 1) -> list[float]:
    """GPU µs per call of `fn` (CUDA only): `warmup` untimed calls, then `reps` event pairs back to back, each around
    `batch` calls (its time divided by `batch`: the pair's own cost spread over them) and, with `spin_cycles`, queued
    behind a spin kernel that long, so the pair holds the GPU work rather than the host's launch latency."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(reps):
        start, end = event_pair()
        if spin_cycles:
            torch.cuda._sleep(spin_cycles)
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [us / batch for us in elapsed_us(pairs)]


@cache
def _spin_cycles_per_us(device: torch.device) -> float:
    """The spin kernel's cycles per µs at the GPU's fastest clock seen: a head start in cycles then lasts at least
    as long as intended at any clock."""
    rates = []
    for _ in range(CALIBRATION_RUNS):
        start, end = event_pair()
        start.record()
        torch.cuda._sleep(CALIBRATION_CYCLES)
        end.record()
        torch.cuda.synchronize(device)
        rates.append(CALIBRATION_CYCLES / elapsed_us([(start, end)])[0])
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
            start, end = event_pair()
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
        return elapsed_us(pairs)
    return issue_us[warmup:]


def median_us(step: Callable[[int], object], device: torch.device, warmup: int, reps: int,
              setup: Callable[[int], object] | None = None) -> float:
    return statistics.median(time_reps(step, device, warmup, reps, setup))
