"""End-to-end time of each call site, forward and backward, measured around the call.

On CUDA: a pair of pooled `torch.cuda.Event`s recorded on the current stream before and after the call (after the
backward), resolved lazily with `.query()` and once with a synchronize at the end, never a sync per call. On CPU:
the host clock. A call's phase decides its list: warm-up calls are only counted, calls in timed steps and after the
profiled window go to `true_us`, calls inside it to `profiled_us`. Each list keeps at most MAX_VALUES values: past
that, a uniform sample of all the phase's measurements (a reservoir), so a long run is timed to its end.
Calls come from any thread of the script: the shared state (sites, pending pairs, pools) changes under one lock.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from attnprof.trace.runinfo import SiteTiming

#: At most this many values per site, op, phase and list (a uniform sample of them all beyond): enough for a
#: median, bounded memory.
MAX_VALUES = 10_000
#: Resolve finished event pairs every this many calls.
POLL_EVERY = 256
#: How far up the autograd graph to look for the nodes that produce the inputs' gradients.
MAX_GRAPH_NODES = 32

WARMUP, TRUE, PROFILED, AFTER = "warmup", "true", "profiled", "after"

#: (stream id, device index, device type) of a device's current stream: what torch.cuda.current_stream reads before
#: it builds a Stream object around it (absent from CPU-only builds).
_current_stream_data: Callable[[int], tuple[int, int, int]] | None = getattr(torch._C, "_cuda_getCurrentStream", None)


class SiteClock:
    """The SiteTiming of one (site, op, phase), its CUDA-event measurements still in flight, and how many values
    each of its lists was offered."""

    __slots__ = ("timing", "pending", "measured", "_sample")

    def __init__(self, timing: SiteTiming):
        self.timing = timing
        self.pending = {TRUE: 0, PROFILED: 0, AFTER: 0}
        self.measured = {TRUE: 0, PROFILED: 0, AFTER: 0}
        self._sample = random.Random(0)  # reproducible: the same run keeps the same values

    def values(self, phase: str) -> list[float]:
        t = self.timing
        return t.profiled_us if phase == PROFILED else t.after_us if phase == AFTER else t.true_us

    def store(self, phase: str, us: float) -> None:
        """Keep one measurement: all of the first MAX_VALUES, then each with probability MAX_VALUES / n in place
        of a random kept one (reservoir sampling, algorithm R): the kept values stay a uniform sample."""
        values = self.values(phase)
        n = self.measured[phase] = self.measured[phase] + 1
        if len(values) < MAX_VALUES:
            values.append(us)
            return
        j = self._sample.randrange(n)
        if j < MAX_VALUES:
            values[j] = us


class Timer:
    def __init__(self) -> None:
        self.sites: dict[tuple[str, str, str], SiteClock] = {}
        self._pools: dict[int, list[Any]] = {}
        #: (stream id, device index, device type) -> the Stream object for it, made once (see `current_stream`)
        self._streams: dict[tuple[int, int, int], Any] = {}
        self._pending: deque = deque()
        self._lock = threading.RLock()
        self._calls = 0
        self.devices: set[int] = set()
        #: (what, error) of a measurement lost to an error; the session notes it in runinfo
        self.on_error: Callable[[str, BaseException], None] | None = None

    # --- sites ----------------------------------------------------------------------------------------------------

    def clock(self, site: str, op: str, phase: str) -> SiteClock:
        key = (site, op, phase)
        c = self.sites.get(key)
        if c is None:
            with self._lock:
                c = self.sites.get(key)
                if c is None:
                    c = self.sites[key] = SiteClock(SiteTiming(site=site, op=op, phase=phase, clock="host"))
        return c

    def timings(self) -> list[SiteTiming]:
        """Sites and phases with something measured or counted (a backward that never ran leaves nothing)."""
        with self._lock:
            clocks = list(self.sites.values())
        return [c.timing for c in clocks
                if c.timing.true_us or c.timing.profiled_us or c.timing.after_us or c.timing.warmup_calls]

    # --- one measurement --------------------------------------------------------------------------------------------

    def pair(self, device: int) -> tuple[Any, Any, Any, Any]:
        """(start, end, stream, record) for one call on `device`: two events from its pool (new ones when it is
        empty), the current stream and the function that records an event on it, all taken before the call so that
        nothing but the call runs between the two records. `record` is the C method itself for torch's events
        (`Event.record` is a Python method around it: a frame per record)."""
        stream = self.current_stream(device)
        with self._lock:
            pool = self._pools.get(device)
            if pool and len(pool) >= 2:
                start, end = pool.pop(), pool.pop()
            else:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        record = _C_RECORD if type(start) is _TORCH_EVENT and _C_RECORD is not None else getattr(type(start), "record",
                                                                                                 None)
        return start, end, stream, record

    def current_stream(self, device: int) -> Any:
        """torch.cuda.current_stream(device), without building a Stream object per call (its constructor is Python,
        microseconds a call): the current stream's (id, device, type) is asked each time, so a stream the script
        switches to (`with torch.cuda.stream(s)`) is the one used, and its object is made once. A Stream object is
        nothing but those three numbers."""
        read = _current_stream_data
        if read is None:
            return torch.cuda.current_stream(device)
        data = read(device)
        if type(data) is not tuple:  # a torch whose binding answers otherwise: its own function
            return torch.cuda.current_stream(device)
        stream = self._streams.get(data)
        if stream is None:
            stream = self._streams[data] = torch.cuda.Stream(stream_id=data[0], device_index=data[1],
                                                             device_type=data[2])
        return stream

    def host_done(self, clock: SiteClock, phase: str, us: float) -> None:
        with self._lock:
            clock.store(phase, us)

    def events_done(self, device: int, start: Any, end: Any, clock: SiteClock, phase: str) -> None:
        """Both events recorded around a call: resolved later (`poll`), never waited for here."""
        with self._lock:
            clock.timing.clock = "cuda_event"
            clock.pending[phase] += 1
            self._pending.append((device, start, end, clock, phase))
            self.devices.add(device)

    def start(self, device: int | None) -> tuple:
        """A token for `stop` (a backward, whose two ends are hooks): the start event recorded now on `device`'s
        current stream (the end comes from the pool here too, so that `stop` records it first thing), or the host
        clock."""
        if device is None:
            return (None, time.perf_counter_ns(), None, None)
        start, end, stream, _ = self.pair(device)
        start.record(stream)
        return (device, start, stream, end)

    def stop(self, token: tuple, clock: SiteClock, phase: str) -> None:
        device, start, stream, end = token
        if device is None:
            self.host_done(clock, phase, (time.perf_counter_ns() - start) / 1000.0)
            return
        end.record(stream)
        self.events_done(device, start, end, clock, phase)

    def cancel(self, token: tuple) -> None:
        device, start, _, end = token
        if device is not None:
            self.release(device, start, end)

    def release(self, device: int, *events: Any) -> None:
        with self._lock:
            self._pools.setdefault(device, []).extend(events)

    def failed(self, what: str, e: BaseException) -> None:
        """A measurement lost to an error: told to the session (runinfo's note), never raised into the script."""
        if self.on_error is not None:
            self.on_error(what, e)

    def tick(self) -> None:
        # no lock: a count lost to a race only moves the next poll (the pending queue itself is locked)
        self._calls += 1
        if self._calls % POLL_EVERY == 0 and self._pending:
            self.poll()

    def poll(self, wait: bool = False) -> None:
        """Move finished pairs into their lists (oldest first; stops at the first unfinished one)."""
        with self._lock:
            pending = self._pending
            while pending:
                device, start, end, clock, phase = pending[0]
                if not wait and not end.query():
                    break
                pending.popleft()
                if wait:
                    end.synchronize()
                clock.pending[phase] -= 1
                clock.store(phase, start.elapsed_time(end) * 1000.0)
                self.release(device, start, end)

    def finish(self) -> None:
        """Synchronize once and resolve everything still pending."""
        if self._pending:
            with self._lock:
                devices = sorted(self.devices)
            for device in devices:
                torch.cuda.synchronize(device)
            self.poll(wait=True)

    # --- backward ---------------------------------------------------------------------------------------------------

    def arm_backward(self, out: Any, inputs: list, clock: SiteClock, phase: str, device: int | None) -> None:
        """Time the backward of one call: from the moment the grad of `out` arrives (before the op's backward
        runs) to the moment the gradients of all `inputs` (those requiring grad) have been produced.

        The end is taken on the autograd nodes that produce the inputs' gradients (found by walking the graph from
        `out` to the inputs), not on hooks of the inputs themselves: the engine may run unrelated nodes (other
        projections' backward) before it gets to an input's own node. If the graph is too large to walk, the
        last input hook gives the end instead. Events are taken from the pool only when the backward runs.
        """
        node = out.grad_fn
        if node is None:
            return
        grads = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        unique: dict[int, torch.Tensor] = {}
        for t in grads:
            unique.setdefault(id(t), t)
        producers = _producers(node, list(unique.values()))
        measure = _Backward(self, clock, phase, device)
        node.register_prehook(measure.begin)
        if producers:
            measure.parts = len(producers)
            for p in producers:
                p.register_hook(measure.node_done)
        elif any(t.grad_fn is not None for t in unique.values()):
            # hooks on non-leaf inputs only: a leaf's hooks would outlive this call (they stay on the tensor)
            non_leaf = [t for t in unique.values() if t.grad_fn is not None]
            measure.parts = len(non_leaf)
            for t in non_leaf:
                t.register_hook(measure.tensor_done)
        else:
            measure.parts = 1
            node.register_hook(measure.node_done)

    def count_backward(self, out: Any, clock: SiteClock) -> None:
        """Warm-up calls: count their backward, no timing."""
        node = out.grad_fn
        if node is not None:
            node.register_prehook(_Counter(clock).hit)


def host_timed(fn: Any, args: tuple, kwargs: dict) -> tuple[Any, float]:
    """fn(*args, **kwargs) and its µs on the host clock, read right before and right after it."""
    t0 = time.perf_counter_ns()
    result = fn(*args, **kwargs)
    t1 = time.perf_counter_ns()
    return result, (t1 - t0) / 1000.0


def event_timed(fn: Any, args: tuple, kwargs: dict, start: Any, end: Any, stream: Any, record: Any) -> Any:
    """fn(*args, **kwargs) between two CUDA events recorded on `stream` (`record(event, stream)`): nothing else
    runs between them."""
    record(start, stream)
    result = fn(*args, **kwargs)
    record(end, stream)
    return result


_TORCH_EVENT = torch.cuda.Event
_C_RECORD = getattr(getattr(torch._C, "_CudaEventBase", None), "record", None)


class _Counter:
    __slots__ = ("clock",)

    def __init__(self, clock: SiteClock):
        self.clock = clock

    def hit(self, grad_outputs):
        self.clock.timing.warmup_calls += 1
        return None


class _Backward:
    __slots__ = ("timer", "clock", "phase", "device", "token", "parts", "left")

    def __init__(self, timer: Timer, clock: SiteClock, phase: str, device: int | None):
        self.timer, self.clock, self.phase, self.device = timer, clock, phase, device
        self.token: tuple | None = None
        self.parts = 1
        self.left = 0

    def begin(self, grad_outputs):
        try:
            if self.token is not None:
                self.timer.cancel(self.token)
            self.left = self.parts
            self.token = self.timer.start(self.device)
        except Exception as e:
            self.token = None
            self.timer.failed("could not time a backward call", e)
        return None

    def _part_done(self) -> None:
        if self.token is None:
            return
        self.left -= 1
        if self.left <= 0:
            token, self.token = self.token, None
            try:
                self.timer.stop(token, self.clock, self.phase)
            except Exception as e:
                self.timer.failed("could not time a backward call", e)

    def node_done(self, grad_inputs, grad_outputs):
        self._part_done()
        return None

    def tensor_done(self, grad):
        self._part_done()
        return None


def _producers(out_node: Any, inputs: list[torch.Tensor]) -> list | None:
    """Autograd nodes between `out_node` and the inputs that hand a gradient to an input; None if the walk gets
    larger than MAX_GRAPH_NODES (the op's backward is then not a small subgraph) or finds no input."""
    if not inputs:
        return None
    targets = {t.grad_fn for t in inputs if t.grad_fn is not None}
    leaves = {id(t) for t in inputs if t.grad_fn is None}
    producers = []
    seen = {out_node}
    stack = [out_node]
    while stack:
        node = stack.pop()
        feeds_input = False
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if nxt in targets:
                feeds_input = True
                continue
            var = getattr(nxt, "variable", None)  # AccumulateGrad of a leaf
            if var is not None:
                if id(var) in leaves:
                    feeds_input = True
                continue
            if nxt not in seen:
                if len(seen) >= MAX_GRAPH_NODES:
                    return None
                seen.add(nxt)
                stack.append(nxt)
        if feeds_input:
            producers.append(node)
    return producers or None
