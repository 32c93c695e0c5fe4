"""capture/bench.py's CUDA-event timing (`event_times_us`, what the fixtures' ground-truth scripts use) on CPU: a
stand-in GPU whose clock advances only by the work queued on it, so every expected figure follows from the work."""
from __future__ import annotations

import pytest
import torch

from attnprof.capture import bench


class FakeGpu:
    """One stream: events read its clock (µs) when recorded; a call queues `call_us` of work, a spin kernel
    `cycles` µs (one cycle per µs)."""

    def __init__(self, call_us: float):
        self.clock_us = 0.0
        self.call_us = call_us
        self.calls = 0
        self.spins: list[int] = []
        gpu = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.t = None

            def record(self, stream=None):
                self.t = gpu.clock_us

            def elapsed_time(self, end):  # ms, as torch's
                return (end.t - self.t) / 1000.0

        self.Event = Event

    def call(self) -> None:
        self.calls += 1
        self.clock_us += self.call_us

    def sleep(self, cycles: int) -> None:
        self.spins.append(cycles)
        self.clock_us += cycles


@pytest.fixture
def gpu(monkeypatch):
    fake = FakeGpu(call_us=7.0)
    monkeypatch.setattr(torch.cuda, "Event", fake.Event)
    monkeypatch.setattr(torch.cuda, "_sleep", fake.sleep)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    return fake


def test_each_pair_times_its_calls_and_not_the_spin(gpu):
    times = bench.event_times_us(gpu.call, reps=4, warmup=3, spin_cycles=50)
    assert times == [7.0] * 4  # the 50 µs spin is queued before the start event, outside the pair
    assert gpu.calls == 3 + 4 and gpu.spins == [50] * 4


def test_a_batch_is_divided_by_its_calls(gpu):
    times = bench.event_times_us(gpu.call, reps=2, warmup=5, spin_cycles=500, batch=20)
    assert times == [7.0, 7.0]  # 20 calls of 7 µs in each pair: 140 µs / 20
    assert gpu.calls == 5 + 2 * 20 and gpu.spins == [500, 500]


def test_no_spin_unless_asked(gpu):
    assert bench.event_times_us(gpu.call, reps=3, warmup=0) == [7.0] * 3
    assert gpu.spins == []
