"""Steps, and the one window of them that runs under the profiler.

Steps are numbered from 0. With W warm-up, T timed and A active steps, steps W+T .. W+T+A-1 are profiled:

- optimizer: a step ends at every optimizer step; the profiler starts right after the optimizer step that ends step
  W+T-1 and stops right after the one that ends step W+T+A-1.
- iteration: one forward. When the run's first attention call (or call with attention unwrapped inside: a
  torch.compile'd module or function, TransformerEncoderLayer's fused inference op) happens inside an nn.Module,
  a step starts at each call of the outermost module on that call's stack (a forward pre-hook on it; the layers of
  one forward all share it). Otherwise a step starts each time the site of the first
  such call is called again; after the first recurrence the number of calls per step P is known, the profiler
  starts right after the exit of the P-th call of step W+T-1 and stops at the entry of the first call of step W+T+A.
- call: every attention call is a step (start after the exit of call W+T-1, stop at the entry of call W+T+A).
- auto: optimizer if an optimizer step happens before the first iteration boundary, else iteration. Iteration by
  site recurrence stays provisional: an optimizer step before the window opens still makes the unit optimizer.

Cold start: a script that shows no loop around its first step (a one-pass inference script) would end before step
W+T. When no frame outside that step (outside the outermost module, or around the call site) is executing a loop
or has one after its current line, the window opens there, at step 0, and covers steps 0 .. A-1: those numbers are
cold and the run has no true (unprofiled) times. A run that loops keeps W warm-up and T timed steps before its window.

At most `max_calls` attention calls are profiled: the profiler stops at the entry of the next one.
"""
from __future__ import annotations

import ast
import enum
import linecache
import os
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import torch


class WindowState(enum.Enum):
    """Where the run is relative to its profiled window; changed only by StepWindow's own methods."""
    WAITING = "waiting"  # before the window's first step
    OPEN = "open"  # the profiler runs
    DONE = "done"  # after the window, or no window at all (--active 0, a profiler that could not start)


WAITING, OPEN, DONE = WindowState.WAITING, WindowState.OPEN, WindowState.DONE
_ATTNPROF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
_LOOP_NODES = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


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
                 start: Callable[[], bool], stop: Callable[[], None], done: Callable[[], None] | None = None,
                 on_error: Callable[[str, BaseException, str], None] | None = None):
        self.auto = unit == "auto"
        self.unit: str | None = None if unit == "auto" else unit
        self.warmup, self.timed, self.active = warmup, timed, active
        self.first = warmup + timed  # first profiled step
        self.end = self.first + active  # first step after the window
        self.max_calls = max_calls
        self._start, self._stop = start, stop
        self._done = done  # called once when the window is over (closed, or its profiler could not start)
        # (what, exception, what it costs the run): a failure in a hook, reported in the run's notes, never raised
        self._on_error = on_error
        self._state = WAITING if active > 0 else DONE  # --active 0: no profiler, NVTX ranges and timings only
        self.tried = False  # the window was due to open (whether or not the profiler started)
        self.cold = False  # the window opened at step 0 because the run showed no loop (see the module docstring)
        self.lock = threading.RLock()  # callers hold it around every event; hooks take it themselves
        self.step = 0
        self.calls = 0
        self.unwrapped_calls = 0  # calls whose attention runs unwrapped inside: torch.compile'd code, fused layers
        self.calls_in_step = 0
        self.step_ran = False  # an attention or unwrapped call ran in the current step
        self.period: int | None = None  # attention calls per step (site-based iteration)
        self.first_site: str | None = None
        self.root: str | None = None  # class name of the nn.Module whose calls are the steps
        self._root_handles: list[Any] = []
        self.optimizer_steps = 0
        self.profiled_calls = 0
        self.first_timed_call: int | None = None  # id of the first call after the warm-up steps
        self.profiled: list[int] = []
        self._last_profiled_step: int | None = None
        self.stopped_early: str | None = None
        self._module_codes = _module_call_codes()
        self._bump: int = 0
        self._bump_marked: int | None = None
        self._warm_below = -1
        self._after_ok = False
        self._settle = -1
        self._relane()

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
        return self.step + 1 if (self.calls or self.unwrapped_calls or self.step) else 0

    @property
    def state(self) -> WindowState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is OPEN

    @property
    def is_over(self) -> bool:
        """The window will not open (again): it closed, could not start, or there is none."""
        return self._state is DONE

    # --- events -----------------------------------------------------------------------------------------------------

    def before_script(self) -> None:
        if self.first == 0 and self.active > 0:
            self._open()

    def enter_call(self, site: str, frame: FrameType | None, user: FrameType | None) -> tuple[int, int, bool]:
        """(call id, step, profiled) of an attention call about to run; `frame` is the innermost frame outside
        attnprof (where the module calls are), `user` the user frame of the call site. What `quiet_call` reads is
        derived again only when the call changed it (the first call, the unit or period found, the first timed
        call; the state changes do it themselves): this runs on every timed call."""
        unit, period, first_timed = self.unit, self.period, self.first_timed_call
        try:
            self.calls += 1
            self.step_ran = True
            if self.calls + self.unwrapped_calls == 1:
                self._first_mark(site, frame, user)
            elif self.unit == "call":
                if self.calls > 1:
                    self._next_step("call")
            elif self.unit in (None, "iteration") and self.root is None and site == self.first_site:
                self._next_step("iteration")
            if self._state == OPEN and self.profiled_calls >= self.max_calls:
                self._close(f"--max-calls {self.max_calls} reached: the profiler stopped at the next attention call "
                            f"(step {self.step})", last=self._last_profiled_step)
            profiled = self._state == OPEN
            if profiled:
                self.profiled_calls += 1
                self._last_profiled_step = self.step
            self.calls_in_step += 1
            if self.first_timed_call is None and self.step >= self.warmup:
                self.first_timed_call = self.calls
        except BaseException:
            self._relane()
            raise
        if (self.calls == 1 or self.unit != unit or self.period != period
                or self.first_timed_call != first_timed):
            self._relane()
        return self.calls, self.step, profiled

    def quiet_call(self, marks: bool, after_too: bool) -> int:
        """`enter_call` and `exit_call` at once, without the lock, for a call that changes nothing but counters: one
        in a warm-up step that neither opens nor closes the window, the step right after the window, or (with
        `after_too`) any call after the window. `marks`: the call's site is `first_site` (whose calls start the steps
        when they are found by site recurrence); the caller knows it once per path of frames. Returns the call id,
        negated when the call is not a warm-up call (after the window), or 0 for any other call: the caller then
        takes `enter_call` and `exit_call` under the lock. Without the lock, two threads calling at the same instant
        can lose a count (a call id or step number, never a timing). It reads what `_relane` derived from the state
        at the last event, a few plain attributes: it runs on every quiet call."""
        bump = self._bump_marked if marks else self._bump
        if bump is None:  # the first recurrence sets the unit and the period: `enter_call`
            return 0
        step = self.step + bump
        if step < self._warm_below:
            warm = True
        elif not self._after_ok:  # the first call, a call in the window or one that may open it, a timed call
            return 0
        else:  # after the window
            warm = step == self._settle
            if not (warm or after_too):
                return 0
        calls = self.calls = self.calls + 1
        if step != self.step:
            self.step = step
            self.calls_in_step = 1
        else:
            self.calls_in_step += 1
        self.step_ran = True
        return calls if warm else -calls

    def _relane(self) -> None:
        """Derive what `quiet_call` reads from the state that only events change (under the lock): how far a call
        moves the step (`_bump`; `_bump_marked` for a call at `first_site`, None while the period is unknown), the
        steps whose calls are quiet warm-up calls (below `_warm_below`: in a warm-up step that cannot open the
        window), whether calls after the window may be quiet (`_after_ok`) and the step right after it
        (`_settle`). Called at the end of the events that change what it reads besides the state (a call's entry,
        an unwrapped call, an optimizer step, a root forward) and whenever the state changes (`_set_state`, before
        the profiler starts or stops)."""
        unit = self.unit
        if unit == "call":
            self._bump, self._bump_marked = 1, 1
        elif unit == "optimizer" or self.root is not None:
            self._bump, self._bump_marked = 0, 0
        else:
            self._bump, self._bump_marked = 0, (1 if self.period is not None else None)
        state = self._state
        if not self.calls or state is OPEN:  # the first call (or one after unwrapped calls only), or in the window
            self._warm_below = -1
        elif state is WAITING:  # a call in step first - 1 may open the window at its exit
            self._warm_below = min(self.warmup, self.first - 1)
        else:
            self._warm_below = self.warmup
        self._after_ok = (bool(self.calls) and state is DONE and self.tried and self.first_timed_call is not None)
        self._settle = self.profiled[1] + 1 if self._after_ok and len(self.profiled) == 2 else -1

    def _set_state(self, state: WindowState) -> None:
        self._state = state
        self._relane()

    def unwrapped_call(self, site: str, frame: FrameType | None, user: FrameType | None) -> None:
        """A call whose attention runs unwrapped inside it (a torch.compile'd module or function, a fused layer op)
        stands in for the attention calls when finding what a step is."""
        try:
            self.unwrapped_calls += 1
            if self.calls + self.unwrapped_calls == 1:
                self._first_mark(site, frame, user)
            elif self.unit in (None, "iteration") and self.root is None and site == self.first_site:
                self._next_step("iteration")
            self.step_ran = True
        finally:
            self._relane()

    def exit_call(self) -> None:
        if self._state is not WAITING or self.step != self.first - 1:
            return
        if self.unit == "call" or (self.unit == "iteration" and self.root is None and self.period is not None
                                   and self.calls_in_step >= self.period):
            self._open()

    def optimizer_step(self) -> None:
        try:
            self.optimizer_steps += 1
            if self.auto and self.unit == "iteration" and self.root is None and self._state == WAITING:
                # The site recurred before any optimizer step: layers sharing one line inside the first forward, not
                # iterations. Nothing was profiled yet: count optimizer steps from here.
                self.unit, self.step, self.period, self.calls_in_step, self.first_timed_call = None, 0, None, 0, None
            if self.unit is None:
                self.unit = "optimizer"
            if self.unit == "optimizer":
                self._next_step("optimizer")
        finally:
            self._relane()

    def root_forward(self, module: Any = None, args: Any = None) -> None:
        """Forward pre-hook of the root module: a new iteration. Never raises into the user's forward, and does nothing
        where dynamo traces it (the module called inside compiled code)."""
        if torch.compiler.is_compiling():
            return
        try:
            with self.lock:
                try:
                    self._next_step("iteration")
                finally:
                    self._relane()
        except Exception as e:
            self._report(f"step counting failed in the forward pre-hook of {self.root}", e,
                         "that forward was not counted as a step")

    def script_ended(self) -> None:
        if self._state == OPEN:
            # A step that began (an optimizer step ended the one before) but ran nothing was not profiled.
            last = self.step if self.step_ran or not self.profiled or self.step <= self.profiled[0] else self.step - 1
            if last < self.end - 1 and not self.cold:
                self.stopped_early = (f"the script ended during step {last}, before the window's last step "
                                      f"{self.end - 1}")
            self._close(None, last=last)

    def stop_early(self, reason: str) -> None:
        """Close an open window now, whatever the step (the script needs the profiler for itself)."""
        if self._state == OPEN:
            self._close(reason, last=self.step)

    def disable(self) -> None:
        """No window from here on, whatever the hooks see (a forked child: no profiler there; the parent's is not
        stopped)."""
        self._set_state(DONE)
        self.remove_hooks()

    def remove_hooks(self) -> None:
        handles, self._root_handles = self._root_handles, []
        for handle in handles:
            try:
                handle.remove()
            except Exception as e:
                self._report(f"could not remove attnprof's forward pre-hook from {self.root}", e,
                             "it stays on the module (it counts nothing after the run)")

    # --- internals --------------------------------------------------------------------------------------------------

    def _first_mark(self, site: str, frame: FrameType | None, user: FrameType | None) -> None:
        self.first_site = site
        outer = self._outer_module_call(frame)
        if outer is not None and self.unit in (None, "iteration"):
            self._hook_root(outer)
        # --step-on call: every call is a step, so a script without a loop still has as many steps as calls
        if (self._state == WAITING and self.first > 0 and self.unit != "call"
                and not _in_loop(outer.f_back if outer is not None else user)):
            self.cold = True
            self.first, self.end = 0, self.active
            self._open()

    def _next_step(self, kind: str) -> None:
        if self.unit is None:
            self.unit = kind
        if kind != self.unit:
            return
        if kind == "iteration" and self.root is None and self.period is None:
            self.period = self.calls_in_step
        self.step += 1
        self.calls_in_step = 0
        self.step_ran = False
        if self._state == OPEN and self.step >= self.end:
            self._close(None, last=self.step - 1)
        elif self._state == WAITING and self.first <= self.step < self.end:
            self._open()

    def settling(self, step: int) -> bool:
        """The step right after the profiled window: the profiler has just stopped and exported (hundreds of ms of
        host work, caches cold), so its calls are not representative and are not timed."""
        return self._state == DONE and len(self.profiled) == 2 and step == self.profiled[1] + 1

    def _open(self) -> None:
        self.tried = True
        self.profiled = [max(self.step, self.first)]
        self._set_state(OPEN)
        if not self._start():
            self._set_state(DONE)
            self.profiled = []
            self._window_over()

    def _close(self, reason: str | None, last: int | None) -> None:
        self._set_state(DONE)
        if reason is not None:
            self.stopped_early = reason
        first = self.profiled[0] if self.profiled else self.first
        self.profiled = [first, max(first, last if last is not None else first)]
        self._relane()
        self._stop()
        self._window_over()

    def _window_over(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done()

    def _outer_module_call(self, frame: FrameType | None) -> FrameType | None:
        """The frame of the outermost nn.Module call on the stack from `frame` outwards, None if there is none. A
        module compiled in place (`module.compile()`) runs its hooks inside the graph, where they cannot count
        steps: it is passed over."""
        codes = self._module_codes
        outer = None
        while frame is not None:
            if frame.f_code in codes:
                module = frame.f_locals.get("self")
                if isinstance(module, torch.nn.Module) and getattr(module, "_compiled_call_impl", None) is None:
                    outer = frame
            frame = frame.f_back
        return outer

    def _hook_root(self, outer: FrameType) -> None:
        """The module called in `outer` is the root: its forwards become the steps (a forward pre-hook)."""
        module = outer.f_locals["self"]
        try:
            self._root_handles.append(module.register_forward_pre_hook(self.root_forward))
            original = getattr(module, "_orig_mod", None)  # torch.compile's OptimizedModule: name what it compiled
            name = type(original if isinstance(original, torch.nn.Module) else module).__name__
            self.root = f"compiled {name}" if original is not None else name
        except Exception as e:
            self.root = None
            self._report(f"could not hook the forward of {type(module).__name__} (the model the first attention "
                         f"call ran in)", e, "steps are counted by the first call site instead")

    def _report(self, what: str, e: BaseException, then: str) -> None:
        if self._on_error is not None:
            self._on_error(what, e, then)


def _in_loop(frame: FrameType | None) -> bool:
    """Whether `frame` or a frame outside it (up to attnprof's runner) is executing a loop, or has one still to
    run after its current line (a warm-up call before a benchmark loop): the signs that the step about to run may
    run again. Unknown source counts as a loop (the safe side: no cold window).
    Asked once per run, so nothing is cached: a file may change between runs in one process."""
    trees: dict[str, ast.AST | None] = {}
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith(_ATTNPROF_DIR):
            return False
        if code.co_name in _COMPREHENSIONS:
            return True
        spans = _loop_spans(code, trees)
        if spans is None:
            return True
        line = frame.f_lineno or 0
        if any(line <= last for _, last in spans):  # inside a loop, or a loop comes later
            return True
        frame = frame.f_back
    return False


def _loop_spans(code: CodeType, trees: dict[str, ast.AST | None]) -> tuple[tuple[int, int], ...] | None:
    """(first, last) lines of the loops (header and body) that belong to `code` itself, not to functions nested in
    it; None when its source cannot be read."""
    filename = code.co_filename
    if filename not in trees:
        linecache.checkcache(filename)
        try:
            trees[filename] = ast.parse("".join(linecache.getlines(filename)) or "\x00")
        except (SyntaxError, ValueError, MemoryError):
            trees[filename] = None
    tree = trees[filename]
    if tree is None:
        return None
    owner = tree if code.co_name == "<module>" else _function_node(tree, code)
    return None if owner is None else tuple(_own_loops(owner))


def _function_node(tree: ast.AST, code: CodeType) -> ast.AST | None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            name = "<lambda>" if isinstance(node, ast.Lambda) else node.name
            if first == code.co_firstlineno and name == code.co_name:
                return node
    return None


def _own_loops(owner: ast.AST):
    """Loop bodies of `owner`, not descending into nested functions and classes (their frames are their own)."""
    todo = list(ast.iter_child_nodes(owner))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):  # the header and the body, not the else block
            yield node.lineno, node.body[-1].end_lineno or node.body[-1].lineno
        elif isinstance(node, _LOOP_NODES):
            yield node.lineno, node.end_lineno or node.lineno
        todo.extend(ast.iter_child_nodes(node))
