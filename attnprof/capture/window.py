"""Steps, and the one window of them that runs under the profiler.

Steps are numbered from 0. With W warm-up, T timed and A active steps, steps W+T .. W+T+A-1 are profiled:

- optimizer: a step ends at every optimizer step; the profiler starts right after the optimizer step that ends step
  W+T-1 and stops right after the one that ends step W+T+A-1.
- iteration: one forward. When the run's first attention call happens inside an nn.Module, a step starts at each
  call of the outermost module on that call's stack (a forward pre-hook on it; the layers of one forward all
  share it). Otherwise a step starts each time the site of the first attention call is called again; after the
  first recurrence the number of calls per step P is known, the profiler starts right after the exit of the P-th
  call of step W+T-1 and stops at the entry of the first call of step W+T+A.
- call: every attention call is a step (start after the exit of call W+T-1, stop at the entry of call W+T+A).
- auto: optimizer if an optimizer step happens before the first iteration boundary, else iteration.

At most `max_calls` attention calls are profiled: the profiler stops at the entry of the next one.
"""
from __future__ import annotations

import threading
from types import FrameType
from typing import Any, Callable

import torch

WAITING, OPEN, DONE = "waiting", "open", "done"


def _module_call_codes() -> frozenset:
    codes = set()
    for name in ("_wrapped_call_impl", "_call_impl"):
        fn = getattr(torch.nn.Module, name, None)
        code = getattr(fn, "__code__", None)
        if code is not None:
            codes.add(code)
    return frozenset(codes)


class StepWindow:
    def __init__(self, unit: str, warmup: int, timed: int, active: int, max_calls: int,
                 start: Callable[[], bool], stop: Callable[[], None]):
        self.unit: str | None = None if unit == "auto" else unit
        self.warmup, self.timed, self.active = warmup, timed, active
        self.first = warmup + timed  # first profiled step
        self.end = self.first + active  # first step after the window
        self.max_calls = max_calls
        self._start, self._stop = start, stop
        self.state = WAITING if active > 0 else DONE  # --active 0: no profiler, NVTX ranges and timings only
        self.tried = False  # the window was due to open (whether or not the profiler started)
        self.lock = threading.RLock()  # callers hold it around every event; hooks take it themselves
        self.step = 0
        self.calls = 0
        self.calls_in_step = 0
        self.period: int | None = None  # attention calls per step (site-based iteration)
        self.first_site: str | None = None
        self.root: str | None = None  # class name of the nn.Module whose calls are the steps
        self._root_handle = None
        self.optimizer_steps = 0
        self.profiled_calls = 0
        self.first_timed_call: int | None = None  # id of the first call after the warm-up steps
        self.profiled: list[int] = []
        self._last_profiled_step: int | None = None
        self.stopped_early: str | None = None
        self._module_codes = _module_call_codes()

    # --- what a step is ---------------------------------------------------------------------------------------------

    @property
    def unit_name(self) -> str:
        return self.unit or "iteration"

    @property
    def boundary(self) -> str:
        unit = self.unit_name
        if unit == "optimizer":
            return "one optimizer step"
        if unit == "call":
            return "one attention call"
        if self.root is not None:
            return f"one forward of {self.root}"
        if self.first_site is not None:
            return f"one pass through {self.first_site}"
        return "one forward"

    @property
    def seen(self) -> int:
        unit = self.unit_name
        if unit == "optimizer":
            return self.optimizer_steps
        if unit == "call":
            return self.calls
        return self.step + 1 if (self.calls or self.step) else 0

    # --- events -----------------------------------------------------------------------------------------------------

    def before_script(self) -> None:
        if self.first == 0 and self.active > 0:
            self._open()

    def enter_call(self, site: str, frame: FrameType | None) -> tuple[int, int, bool]:
        """(call id, step, profiled) of an attention call about to run."""
        self.calls += 1
        if self.calls == 1:
            self.first_site = site
            if self.unit in (None, "iteration"):
                self._find_root(frame)
        elif self.unit == "call":
            self._next_step("call")
        elif self.unit in (None, "iteration") and self.root is None and site == self.first_site:
            self._next_step("iteration")
        if self.state == OPEN and self.profiled_calls >= self.max_calls:
            self._close(f"--max-calls {self.max_calls} reached: the profiler stopped at the next attention call "
                        f"(step {self.step})", last=self._last_profiled_step)
        profiled = self.state == OPEN
        if profiled:
            self.profiled_calls += 1
            self._last_profiled_step = self.step
        self.calls_in_step += 1
        if self.first_timed_call is None and self.step >= self.warmup:
            self.first_timed_call = self.calls
        return self.calls, self.step, profiled

    def exit_call(self) -> None:
        if self.state != WAITING or self.step != self.first - 1:
            return
        if self.unit == "call":
            self._open()
        elif (self.unit == "iteration" and self.root is None and self.period is not None
              and self.calls_in_step >= self.period):
            self._open()

    def optimizer_step(self) -> None:
        self.optimizer_steps += 1
        if self.unit is None:
            self.unit = "optimizer"
        if self.unit == "optimizer":
            self._next_step("optimizer")

    def root_forward(self, module: Any = None, args: Any = None) -> None:
        """Forward pre-hook of the root module: a new iteration. Never raises into the user's forward."""
        try:
            with self.lock:
                self._next_step("iteration")
        except Exception:
            pass

    def script_ended(self) -> None:
        if self.state == OPEN:
            if self.step < self.end - 1:
                self.stopped_early = (f"the script ended during step {self.step}, before the window's last step "
                                      f"{self.end - 1}")
            self._close(None, last=self.step)

    def stop_early(self, reason: str) -> None:
        """Close an open window now, whatever the step (the script needs the profiler for itself)."""
        if self.state == OPEN:
            self._close(reason, last=self.step)

    def remove_hooks(self) -> None:
        if self._root_handle is not None:
            try:
                self._root_handle.remove()
            except Exception:
                pass
            self._root_handle = None

    # --- internals --------------------------------------------------------------------------------------------------

    def _next_step(self, kind: str) -> None:
        if self.unit is None:
            self.unit = kind
        if kind != self.unit:
            return
        if kind == "iteration" and self.root is None and self.period is None:
            self.period = self.calls_in_step
        self.step += 1
        self.calls_in_step = 0
        if self.state == OPEN and self.step >= self.end:
            self._close(None, last=self.step - 1)
        elif self.state == WAITING and self.first <= self.step < self.end:
            self._open()

    def settling(self, step: int) -> bool:
        """The step right after the profiled window: the profiler has just stopped and exported (hundreds of ms of
        host work, caches cold), so its calls are not representative and are not timed."""
        return self.state == DONE and len(self.profiled) == 2 and step == self.profiled[1] + 1

    def _open(self) -> None:
        self.tried = True
        self.profiled = [max(self.step, self.first)]
        self.state = OPEN
        if not self._start():
            self.state = DONE
            self.profiled = []

    def _close(self, reason: str | None, last: int | None) -> None:
        self.state = DONE
        if reason is not None:
            self.stopped_early = reason
        first = self.profiled[0] if self.profiled else self.first
        self.profiled = [first, max(first, last if last is not None else first)]
        self._stop()

    def _find_root(self, frame: FrameType | None) -> None:
        """The outermost nn.Module call on the stack of the first attention call."""
        codes = self._module_codes
        outer = None
        while frame is not None:
            if frame.f_code in codes:
                outer = frame
            frame = frame.f_back
        if outer is None:
            return
        module = outer.f_locals.get("self")
        if not isinstance(module, torch.nn.Module):
            return
        try:
            self._root_handle = module.register_forward_pre_hook(self.root_forward)
            self.root = type(module).__name__
        except Exception:
            self.root = None
