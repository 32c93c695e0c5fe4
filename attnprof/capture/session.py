"""`trace_script`: run a script unchanged, wrap its attention calls, profile a window of steps, write a run folder.

Every wrapped call gets an NVTX range `<op> <site> #<id>` (domain "attnprof"), a host or CUDA-event timing, and,
inside the profiled window only, a `torch.profiler.record_function` range of the same name plus a `CallInfo`.
The run folder holds `<host>_<pid>.pt.trace.json.gz` (written when the window closes) and `runinfo.json`.

Any thread of the script may make attention calls and so open or close the window: the profiler itself is started,
stopped and exported on one thread of attnprof's own (`ProfilerThread`), recording every thread. When the script
runs a profiler of its own, attnprof yields: it never starts one under it, and stops its own before the script's
starts (`UserProfilerWatch`).
"""
from __future__ import annotations

import functools
import os
import queue
import re
import socket
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from weakref import WeakSet

import torch

from attnprof import __version__, files
from attnprof.capture import distributed, ncu_select, patching
from attnprof.capture.ceilings import device_name
from attnprof.capture.entrypoints import Binder, EntryPoint, describe_call, first_tensor
from attnprof.capture.kineto import export_trace, quiet_kineto
from attnprof.capture.runner import (
    Target,
    print_syntax_error,
    resolve_target,
    restore_default_sigterm,
    run_target,
    signals_held,
    sigterm_raises,
)
from attnprof.capture.sources import UNKNOWN_SITE, Place, SitePath, SiteResolver, SourceLines
from attnprof.capture.timing import AFTER, PROFILED, TRUE, WARMUP, SiteClock, Timer, event_timed, host_timed
from attnprof.capture.window import StepWindow, WindowState
from attnprof.errors import AttnprofError, failure_reason
from attnprof.files import say
from attnprof.trace.runinfo import (
    RANGE_PREFIX,
    RUNINFO_VERSION,
    CallInfo,
    RunInfo,
    StepInfo,
    ascii_name,
    range_name,
    write_runinfo,
)

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - nvtx is a dependency; torch's NVTX (CUDA builds) is the fallback
    _nvtx = None

NVTX_DOMAIN = "attnprof"
STEP_UNITS = ("auto", "optimizer", "iteration", "call")
#: What wraps attention calls after the profiled window: nothing (the original functions are put back), an NVTX
#: range with the step counter, or that and a timing per call (as in the timed steps).
AFTER_MODES = ("none", "nvtx", "time")


@dataclass
class TraceOptions:
    target: str
    is_module: bool
    args: list[str]
    out: Path | None
    root: Path = Path("traces")
    warmup: int = 2
    timed: int = 3
    active: int = 2
    step_on: str = "auto"  # auto | optimizer | iteration | call
    max_calls: int = 512
    source_lines: bool = True
    after: str = "none"  # one of AFTER_MODES; none: the only one that adds nothing per call (README "Overhead")
    quiet: bool = False  # no "attnprof:" progress lines (errors are still printed)


@dataclass
class RunResult:
    folder: Path | None  # None only when the script did not compile (nothing ran, nothing saved)
    exit_code: int
    outcome: str
    trace_files: list[Path] = field(default_factory=list)
    runinfo: RunInfo | None = None
    #: SIGINT / SIGTERM that arrived while the run was being saved, after the script: no analysis wanted
    late_signals: list[int] = field(default_factory=list)


#: The session running in this process, if any (one at a time).
_active: Session | None = None


def trace_script(options: TraceOptions) -> RunResult:
    """Run `options.target` as python would, traced. Raises AttnprofError only for bad input, before it runs."""
    if _active is not None:
        raise AttnprofError("attnprof is already tracing a script in this process")
    _check_options(options)
    target = resolve_target(options.target, options.is_module, list(options.args))
    job = distributed.current_job()
    if options.out is not None and Path(options.out).exists() and (job is None or (job.rank == 0 and job.run_id)):
        raise AttnprofError(f"{options.out} already exists: choose another --out or remove it")
    session = Session(options, target)
    if target.syntax_error is not None:
        print_syntax_error(target.syntax_error)
        return RunResult(folder=None, exit_code=1, outcome="raised", trace_files=[],
                         runinfo=session.runinfo(exit_code=1, outcome="raised"))
    return session.run()


def _check_options(o: TraceOptions) -> None:
    for name in ("warmup", "timed", "active", "max_calls"):
        if getattr(o, name) < 0:
            raise AttnprofError(f"--{name.replace('_', '-')} must be >= 0")
    if o.step_on not in STEP_UNITS:
        raise AttnprofError(f"--step-on must be one of {', '.join(STEP_UNITS)}")
    if o.after not in AFTER_MODES:
        raise AttnprofError(f"--after must be one of {', '.join(AFTER_MODES)}")


def worker_name() -> str:
    """`<hostname>_<pid>`: the worker name torch-tb-profiler reads from `<worker>[.<span>].pt.trace.json[.gz]`."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return f"{host}_{os.getpid()}"


def trace_file_name(worker: str, span: int | None = None) -> str:
    return f"{worker}.pt.trace.json.gz" if span is None else f"{worker}.{span}.pt.trace.json.gz"


class _Call:
    """What `dispatch` needs between the entry and the exit of one call."""

    __slots__ = ("call_id", "step", "phase", "site", "function", "clock", "events", "timed", "device", "name", "ncu",
                 "place")
    call_id: int
    step: int
    phase: str
    site: str
    function: str
    clock: SiteClock
    events: tuple | None  # (start, end, stream) CUDA events of a timed GPU call
    timed: bool
    device: int | None
    name: str  # the NVTX / record_function range's name ("" when none is pushed)
    ncu: bool
    place: Place | None


class _NoSources:
    pending = False  # --no-source-lines: no source-line mode waits to come off the stack


_NO_SOURCES = _NoSources()


def _run(call: _Call, original: Any, args: tuple, kwargs: dict) -> tuple[Any, float | None]:
    """(the call's result, its host-clock µs when timed on the CPU): between CUDA events when timed on a GPU (their
    µs come later), else as is."""
    if call.events is not None:
        return event_timed(original, args, kwargs, *call.events), None
    if call.timed:
        return host_timed(original, args, kwargs)
    return original(*args, **kwargs), None


class Session:
    def __init__(self, options: TraceOptions, target: Target):
        self.options = options
        self.target = target
        self.cwd = os.getcwd()
        self.started_at = files.now()
        self.job = distributed.current_job()  # a rank of a torchrun job, or None
        self.worker = distributed.worker_name(self.job) if self.job else worker_name()
        self.folder: Path | None = None
        self.resolver = SiteResolver(self.cwd)
        self.timer = Timer()
        self.timer.on_error = self._note_error
        self.window = StepWindow(options.step_on, options.warmup, options.timed, options.active, options.max_calls,
                                 start=self._start_profiler, stop=self._stop_profiler, done=self._window_done,
                                 on_error=self._note_error)
        self.patcher = patching.Patcher(on_failure=self._note_failure)
        self.sources = SourceLines(self.resolver) if options.source_lines else None
        self.calls: list[CallInfo] = []
        self.trace_files: list[Path] = []
        self.errors: list[str] = []
        self._binders: dict[int, Binder] = {}
        self._prof: Any = None
        self._profiler_thread = ProfilerThread() if _ALL_THREADS is not None else None
        self._user_watch = UserProfilerWatch(self._user_profiler_takes, self._user_profiler_released,
                                             on_error=self._note_error)
        self._user_profilers: WeakSet = WeakSet()  # the script's own profilers that hold the profiler now
        self._saw_user_profiler = False
        self._tore_down_cupti = False
        self.notes: list[str] = []  # what attnprof did instead of what was asked (runinfo note, said once)
        self._profiled_calls = InFlight()
        self._spans = 0
        #: threads (idents) inside a followed attention call, or a quiet one that may reach another wrapped function:
        #: their nested calls pass straight through. A set rather than a threading.local: while it is empty (no
        #: call nests) the quiet path tests it for nothing but emptiness; its add, discard and `in` are atomic.
        self._busy: set[int] = set()
        self._optimizer_hook: Any = None  # torch's RemovableHandle, once registered
        self._unwrapped: list[tuple[str, Any, Any]] = []  # (torch attribute, original, attnprof's wrapper)
        self._enabled = False
        self._cuda_device: int | None = None
        self._warned: set[str] = set()
        self._final: RunInfo | None = None
        self._range_prefixes: dict[tuple[str, str], str] = {}  # (op, site) -> ASCII `<op> <site> #`
        self._nvtx_on = _nvtx_listening()
        self._ncu = ncu_select.selecting()  # under `attnprof ncu` (fixed for the process: its environment)
        #: calls after the window take the quiet path: set when a profiled window closes under --after nvtx
        self._quiet_after = False
        self.dispatch = self._make_dispatch()

    # --- the run ----------------------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        global _active
        exit_code, outcome = 1, "raised"
        try:
            if self.job is not None:
                self.folder = self.job.agree_folder(self._new_folder, Path(self.options.root), self.target.stem,
                                                    self.options.out)
            else:
                self.folder = self._new_folder()
        except OSError as e:
            where = self.options.out if self.options.out is not None else self.options.root
            raise AttnprofError(f"can't create the run folder in {where}: {e.strerror or e}") from None
        _active = self
        late: list[int] = []
        try:
            with sigterm_raises():
                try:
                    self._activate()
                    exit_code, outcome = run_target(self.target, list(self.options.args),
                                                    before=self.window.before_script)
                finally:
                    with signals_held(redeliver=False) as late:
                        self._finish(exit_code, outcome)
        finally:
            _active = None
        return RunResult(folder=self.folder, exit_code=exit_code, outcome=outcome,
                         trace_files=list(self.trace_files), runinfo=self._final, late_signals=list(late))

    def _run_folder(self) -> Path:
        assert self.folder is not None, "the run folder is made first, before anything is traced or saved"
        return self.folder

    def _new_folder(self) -> Path:
        return files.create_run_folder(self.options.out, Path(self.options.root), self.target.stem, self.started_at)

    def _activate(self) -> None:
        self._enabled = True
        try:
            self.patcher.install()
        except Exception as e:
            self._note_error("could not wrap the attention functions", e)
        patching.set_dispatch(self.dispatch)
        try:
            self._user_watch.install()
        except Exception as e:
            self._note_error("could not watch the script's own profilers", e)
        try:
            from torch.optim.optimizer import register_optimizer_step_post_hook

            self._optimizer_hook = register_optimizer_step_post_hook(self._on_optimizer_step)
        except Exception as e:
            self._note_error("could not watch optimizer steps", e)
        self._watch_unwrapped()

    def _deactivate(self) -> None:
        self._enabled = False
        patching.set_dispatch(None)
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        self._unwatch_unwrapped()
        self.window.remove_hooks()
        self._user_watch.uninstall()
        self.patcher.uninstall()
        if self.sources is not None:
            self.sources.cleanup()
        ncu_select.cleanup()

    def _finish(self, exit_code: int, outcome: str) -> None:
        """Stop what runs, restore what was patched, resolve timings, write runinfo.json: each step on its own, so
        that one failing still leaves the others done (and never a traceback)."""
        self._save_step("the profiled window", self.window.script_ended)
        if self._profiler_thread is not None:
            self._save_step("the profiler thread", self._profiler_thread.close)
        self._save_step("the run state (unpatching)", self._deactivate)
        self._save_step("the timings", self.timer.finish)

        def save() -> None:
            self._final = self.runinfo(exit_code, outcome)
            write_runinfo(self._final, self._run_folder())

        if self._save_step("runinfo.json", save):
            self._say(f"run saved to {self.folder}{os.sep}")

    def _save_step(self, what: str, fn) -> bool:
        try:
            fn()
            return True
        except BaseException as e:  # noqa: BLE001 - never an attnprof traceback
            print(f"attnprof: could not save {what}: {failure_reason(e)}", file=sys.stderr)
            return False

    # --- the profiler -----------------------------------------------------------------------------------------------

    def _start_profiler(self) -> bool:
        w = self.window
        if self._user_profiler_running():
            self._tell(f"the script's own profiler was running when attnprof's window was due (step {w.first}): "
                       f"attnprof did not start one under it; NVTX ranges and CUDA-event timings only")
            return False
        steps = f"step {w.first}" if w.active == 1 else f"steps {w.first}-{w.end - 1}"
        cold = ", cold: no loop around the first step" if w.cold else ""
        self._say(f"profiling {steps} of {self.target.display} (one step = {w.boundary}{cold})")
        try:
            # a Ctrl-C or SIGTERM waits for the start to finish, then ends the run with the profiler running
            with signals_held(redeliver=True):
                # Unless CUPTI is torn down when the profiler stops, every later kernel launch keeps paying its
                # callbacks (pytorch#144455): the steps after the window run slower than the run really does. But
                # a profiler started after the teardown records no kernels (torch 2.11, CUDA 13, H200): not when
                # the script has run a profiler of its own already (it may run it again), nor when the user set
                # TEARDOWN_CUPTI (=0 keeps CUPTI: CUDA graphs before CUDA 12.6 need it).
                teardown = "TEARDOWN_CUPTI" not in os.environ and not self._saw_user_profiler
                self._prof = self._on_profiler_thread(lambda: _new_profiler(teardown))
                self._tore_down_cupti = teardown and torch.cuda.is_available()
        except Exception as e:
            self._prof = None
            self._note_error("could not start the profiler", e)
            return False
        if self.sources is not None:
            try:
                self.sources.push()
            except Exception as e:
                self._note_error("could not mark source lines", e)
        return True

    def _stop_profiler(self) -> None:
        if self.sources is not None:
            try:
                self.sources.pop()
            except Exception as e:
                self._note_error("could not unmark source lines", e)
        prof, self._prof = self._prof, None
        if prof is None:
            return
        # calls still running on other threads: let them end inside the profiler, or their ranges are lost
        self._profiled_calls.wait_others(timeout=IN_FLIGHT_WAIT_S)
        with signals_held(redeliver=True):
            try:
                self._on_profiler_thread(lambda: _stop(prof))
            except Exception as e:
                self._note_error("could not stop the profiler", e)
                return
            finally:
                if self._tore_down_cupti:
                    os.environ.pop("TEARDOWN_CUPTI", None)  # the script's environment as it was
            self._export(prof)

    def _on_profiler_thread(self, fn: Callable[[], Any]) -> Any:
        """Run one profiler action where every action of this session runs (its own thread, or inline where torch
        cannot record other threads than the profiler's), marked as attnprof's own."""
        def own() -> Any:
            _own.active = True
            try:
                return fn()
            finally:
                _own.active = False

        return own() if self._profiler_thread is None else self._profiler_thread.call(own)

    def _export(self, prof: Any) -> None:
        self._spans += 1
        name = trace_file_name(self.worker) if self._spans == 1 else trace_file_name(self.worker, self._spans)
        path = self._run_folder() / name
        try:
            self._on_profiler_thread(lambda: export_trace(prof, path))
            self.trace_files.append(path)
        except Exception as e:
            steps = self.window.profiled
            which = f"step {steps[0]}" if len(steps) == 2 and steps[0] == steps[1] else (
                f"steps {steps[0]}-{steps[1]}" if len(steps) == 2 else "the profiled window")
            self._note_error(f"could not save the trace of {which} ({name})", e)
            return
        try:  # in case the process dies before the end (killed): the calls are known already
            write_runinfo(self.runinfo(exit_code=0, outcome="running"), self._run_folder())
        except Exception as e:
            self._note_error("could not save runinfo.json when the window closed", e,
                             "it is written at the end of the run only (a killed run keeps no record of its calls)")

    # --- the script's own profilers ---------------------------------------------------------------------------------

    def _user_profiler_running(self) -> bool:
        if len(self._user_profilers):
            return True
        try:  # one started before attnprof watched (or from C++): torch's own flags
            return bool(torch.autograd.profiler._is_profiler_enabled) or torch._C._autograd._profiler_enabled()
        except Exception as e:
            self._note_error("could not tell whether a profiler of the script's own was running", e,
                             "attnprof started its own (one the script started outside its watch may clash)")
            return False

    def _user_profiler_takes(self, profiler: Any, kind: str) -> None:
        """The script's own profiler is about to take the profiler (on the script's thread): attnprof's stops first,
        its trace saved; it will not start again under the script's."""
        if not self._enabled or getattr(_own, "active", False) or not getattr(profiler, "enabled", True):
            return
        if profiler in self._user_profilers:
            return
        self._user_profilers.add(profiler)
        self._saw_user_profiler = True
        w = self.window
        if self._tore_down_cupti and w.is_over:
            self._tell("attnprof tore CUPTI down when its window closed: a profiler started after that records no "
                       "CUDA kernels (torch 2.11, CUDA 13); rerun with TEARDOWN_CUPTI=0 to keep the script's own "
                       "profiler whole")
        with w.lock:
            if not w.is_open:
                return
            self._tell(f"the script started its own profiler ({kind}) while attnprof's window (from step "
                       f"{w.first}) was open: attnprof stopped its own first, after {w.profiled_calls} profiled "
                       f"attention call{'' if w.profiled_calls == 1 else 's'}; later calls get NVTX ranges and "
                       f"CUDA-event timings only")
            w.stop_early(f"the script started its own profiler ({kind}) after {w.profiled_calls} profiled calls")

    def _user_profiler_released(self, profiler: Any) -> None:
        self._user_profilers.discard(profiler)

    # --- hooks ------------------------------------------------------------------------------------------------------

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        if not self._enabled:
            return
        try:
            if self.sources is not None and self.sources.pending:
                self.sources.retry()
            with self.window.lock:
                self.window.optimizer_step()
        except Exception as e:
            self._note_error("step counting failed", e)

    def _watch_unwrapped(self) -> None:
        """Calls whose attention runs where no wrapper sees it count as steps: what torch.compile returns (the graph
        calls the real op) and TransformerEncoderLayer's fused inference op (its attention is C++). Without them
        such a model would never open a window; the trace then holds the attention's aten ops and kernels."""
        original = torch.compile
        session = self

        @functools.wraps(original)
        def compile(*args, **kwargs):
            model = args[0] if args else kwargs.get("model")
            if model is None:  # @torch.compile(mode=...): the decorator comes back here with the model
                options = {k: v for k, v in kwargs.items() if k != "model"}
                return lambda model: compile(model, *args[1:], **options)
            return session._watch_compiled(original(*args, **kwargs))

        self._unwrapped.append(("compile", original, compile))
        fused = getattr(torch, "_transformer_encoder_layer_fwd", None)
        if fused is not None:
            wrapper = self._unwrapped_entry(fused)
            try:  # TorchScript (torch.jit.script of the layer) must see the aten op, not a Python function
                from torch.jit._builtins import _register_builtin

                _register_builtin(wrapper, "aten::_transformer_encoder_layer_fwd")
            except Exception as e:
                self._note_error("TransformerEncoderLayer's fused op not registered with TorchScript", e,
                                 "torch.jit.script of such a layer may fail under attnprof")
            self._unwrapped.append(("_transformer_encoder_layer_fwd", fused, wrapper))
        for name, _, wrapper in self._unwrapped:
            setattr(torch, name, wrapper)

    def _unwatch_unwrapped(self) -> None:
        entries, self._unwrapped = self._unwrapped, []
        for name, original, wrapper in entries:
            if getattr(torch, name, None) is wrapper:
                setattr(torch, name, original)

    def _watch_compiled(self, compiled: Any) -> Any:
        """What torch.compile returned, its calls marked: a function is wrapped, a module (OptimizedModule) gets
        its `forward` (the compiled callable) wrapped, so it stays the very module the user holds."""
        if isinstance(compiled, torch.nn.Module):
            forward = compiled.__dict__.get("forward")
            if callable(forward):
                compiled.forward = self._unwrapped_entry(forward)
            return compiled
        return self._unwrapped_entry(compiled) if callable(compiled) else compiled

    def _unwrapped_entry(self, inner: Any) -> Any:
        session = self

        def unwrapped_call(*args, **kwargs):
            if not session._enabled or torch.compiler.is_compiling():
                return inner(*args, **kwargs)
            session._on_unwrapped_call(sys._getframe(1))
            # Off the mode stack while compiled code runs: its guards were made without attnprof's source-line mode
            # (dynamo would recompile, and fails tracing it), and neither a graph nor a fused op has Python copy
            # calls to mark anyway.
            mode = session.sources.mode if session.sources is not None else None
            n = torch._C._len_torch_function_stack()
            if mode is None or not n or torch._C._get_function_stack_at(n - 1) is not mode:
                return inner(*args, **kwargs)
            torch._C._pop_torch_function_stack()
            try:
                return inner(*args, **kwargs)
            finally:
                torch._C._push_on_torch_function_stack(mode)

        try:
            functools.update_wrapper(unwrapped_call, inner)
        except Exception:  # a name and a docstring only: the calls are watched all the same
            pass
        return unwrapped_call

    def _on_unwrapped_call(self, frame: Any) -> None:
        if self._thread_busy():
            return
        try:
            site, _, user = self.resolver.call_site(frame)
            with self.window.lock:
                self.window.unwrapped_call(site, frame, user)
        except Exception as e:
            self._note_error("step counting failed", e)

    # --- every attention call ---------------------------------------------------------------------------------------

    def _thread_busy(self) -> bool:
        """This thread is inside a followed call, or a quiet one that may reach another wrapped function (`dispatch`
        asks the same inline: it runs on every call)."""
        return bool(self._busy) and threading.get_ident() in self._busy

    def _passes_through(self, entry: EntryPoint, args: tuple, kwargs: dict) -> bool:
        """Whether a call goes straight to the original: no session, a call nested in one being followed, or one its
        entry point leaves to a nested entry point (`record_if`)."""
        if not self._enabled or self._thread_busy():
            return True
        if self.sources is not None and self.sources.pending:
            self.sources.retry()
        if entry.record_if is None:
            return False
        try:
            return not entry.record_if(args, kwargs)
        except Exception as e:
            self._note_error(f"could not tell whether a {entry.op} call is attention", e,
                             "such calls are not profiled")
            return True

    def _make_dispatch(self) -> Callable[[EntryPoint, Any, tuple, dict], Any]:
        """What every wrapped call runs. One that changes nothing but counters (in a warm-up step, the step after the
        window, and after it with --after nvtx) takes the quiet path: its site (found once per path of frames), the
        step counter, the warm-up count and, only when a tool listens to NVTX, its range. The others enter the window
        under its lock and are timed or profiled (`_follow`). A closure over what it reads, and what is constant for
        a path of frames is kept on it (`_quiet_memo`): on a slow CPU each attribute lookup saved is ~0.1 µs per
        call, and a quiet call that neither nests nor pushes an NVTX range runs the original with nothing around."""
        session, busy, get_ident = self, self._busy, threading.get_ident
        sources = self.sources if self.sources is not None else _NO_SOURCES
        site_path, quiet_call, follow, careful = (self.resolver.site_path, self.window.quiet_call, self._follow,
                                                  self._quiet_careful)
        getframe, tensor, grad_enabled = sys._getframe, torch.Tensor, torch.is_grad_enabled

        def dispatch(entry: EntryPoint, original: Any, args: tuple, kwargs: dict) -> Any:
            if (busy and get_ident() in busy) or not session._enabled:
                return original(*args, **kwargs)
            if (entry.record_if is not None or sources.pending) and session._passes_through(entry, args, kwargs):
                return original(*args, **kwargs)
            try:
                frame = getframe(2)  # the wrapper's caller
                path = site_path(frame)
                quiet: Any = path.memo if path is not None else None
                if quiet is None or quiet[0] is not entry:
                    quiet = session._quiet_memo(entry, path)
                call_id = quiet_call(quiet[5], session._quiet_after) if quiet is not None else 0
                if call_id > 0:  # a warm-up call
                    quiet[1].warmup_calls += 1
            except Exception as e:
                session._note_error("could not follow an attention call", e)
                return original(*args, **kwargs)
            if not call_id:
                return follow(entry, original, args, kwargs, frame, path)
            if quiet[4]:
                return careful(quiet, call_id, original, args, kwargs)
            result = original(*args, **kwargs)
            # a warm-up call's backward is counted too; with grad off (no_grad, inference_mode) a torch op's result
            # has none: the grad mode is cheaper to ask than the result's grad_fn
            if call_id > 0 and grad_enabled():
                out = result if type(result) is tensor else first_tensor(result)
                if out is not None and out.grad_fn is not None:
                    session.timer.count_backward(out, quiet[2])
            return result

        return dispatch

    def _quiet_careful(self, quiet: tuple, call_id: int, original: Any, args: tuple, kwargs: dict) -> Any:
        """A quiet call that may reach another wrapped function (its thread is busy meanwhile: nested calls pass
        straight through) or whose NVTX range is pushed (a tool listens)."""
        nests, nvtx = quiet[6], self._nvtx_on
        if nvtx:
            _nvtx_push(quiet[3] + str(call_id if call_id > 0 else -call_id))
        if nests:
            me = threading.get_ident()
            self._busy.add(me)
        try:
            result = original(*args, **kwargs)
        finally:
            if nests:
                self._busy.discard(me)
            if nvtx:
                _nvtx_pop()
        if call_id > 0 and (nests or torch.is_grad_enabled()):  # a function may turn grad on inside
            # transformers' attention functions return (output, weights): that case read inline (a call costs ~1 µs)
            out = result if type(result) is torch.Tensor else (
                result[0] if type(result) is tuple and result and type(result[0]) is torch.Tensor
                else first_tensor(result))
            if out is not None and out.grad_fn is not None:
                self.timer.count_backward(out, quiet[2])
        return result

    def _quiet_memo(self, entry: EntryPoint, path: SitePath | None) -> tuple | None:
        """(entry, forward SiteTiming, backward clock, range prefix, careful, marks steps, nests, forward clock): what
        the quiet path (and `_follow`, the clock) keeps on a path (`SitePath.memo`), made on its first call through
        `entry`; None (nothing kept) without a path or until the first call set the window's first site (it never
        changes after). `nests`: the call can
        reach another wrapped function, so its thread is marked busy (transformers' functions call SDPA or
        flash-attn; torch's own ops call none). `careful`: it nests or pushes an NVTX range (`_quiet_careful`).
        `marks steps`: the path's site is the first site, whose calls start the steps when steps are found by
        site recurrence."""
        first_site = self.window.first_site
        if path is None or first_site is None:
            return None
        site = path.site
        nests = not (entry.library == "torch" and entry.record_if is None and not entry.op.startswith("hf."))
        fwd = self.timer.clock(site, entry.op, "fwd")
        memo = path.memo = (entry, fwd.timing, self.timer.clock(site, entry.op, "bwd"),
                            self._range_prefix(entry.op, site), nests or self._nvtx_on, site == first_site, nests, fwd)
        return memo

    def _follow(self, entry: EntryPoint, original: Any, args: tuple, kwargs: dict, frame: Any,
                path: SitePath | None) -> Any:
        """A call that is timed or profiled, or may open or close the window. Between the start of its timing and
        the call nothing else runs, nor between the call and the end: the end event (or clock) comes first."""
        busy = self._busy
        try:
            if path is None:
                site, function, user = UNKNOWN_SITE, "?", None
            else:
                site, function, user = path.site, path.function, self.resolver.user_of(path, frame)
            memo = path.memo if path is not None else None
            clock = memo[7] if memo is not None and memo[0] is entry else self.timer.clock(site, entry.op, "fwd")
            call = self._enter(entry, args, kwargs, frame, site, function, user, clock)
        except Exception as e:
            self._note_error("could not follow an attention call", e)
            return original(*args, **kwargs)
        me = threading.get_ident()
        busy.add(me)
        us = None
        try:
            if call.phase == PROFILED:
                with self._profiled_calls, torch.profiler.record_function(RANGE_PREFIX + call.name):
                    result, us = _run(call, original, args, kwargs)
            else:
                result, us = _run(call, original, args, kwargs)
        except BaseException:
            busy.discard(me)
            self._abort(call)
            raise
        busy.discard(me)
        try:
            self._exit(entry, original, call, args, kwargs, result, us)
        except Exception as e:
            self._note_error("could not follow an attention call", e)
        return result

    def _window_done(self) -> None:
        """The profiled window is over: from now on calls get what `--after` asks for (see AFTER_MODES). Calls
        already inside `dispatch` finish there."""
        after = self.options.after
        if not self._enabled or not self.window.profiled:
            return  # no trace (the script ran its own profiler): the calls' timings are the run's only numbers
        if after == "nvtx":
            self._quiet_after = not ncu_select.selecting()  # under `attnprof ncu` calls may be selected: followed
        if after != "none":
            return  # time: timed in `_follow`; nvtx: the quiet path (`dispatch`)
        patching.set_dispatch(None)  # wrappers the script still holds (an attribute set before) call straight through
        try:
            self.patcher.uninstall()
        except Exception as e:
            self._note_error("could not unwrap the attention functions after the window", e)

    def _range_prefix(self, op: str, site: str) -> str:
        """`<op> <site> #`, ASCII (profilers keep ASCII range names only): made once per op and site."""
        prefix = self._range_prefixes.get((op, site))
        if prefix is None:
            prefix = self._range_prefixes[(op, site)] = ascii_name(f"{op} {site} #")
        return prefix

    def _enter(self, entry: EntryPoint, args: tuple, kwargs: dict, frame: Any, site: str, function: str,
               user: Any, clock: SiteClock) -> _Call:
        """`frame`: the wrapper's caller (inside the module calls, where the step's root is found); `user`: the user
        frame of the call site; `clock`: the forward clock of the site and op."""
        call = _Call()
        w = self.window
        with w.lock:
            call.call_id, call.step, profiled = w.enter_call(site, frame, user)
        untimed = call.step < w.warmup or w.settling(call.step)
        # The profiler can leave the process slower for the rest of the run: on an H100 (torch 2.11, CUPTI torn
        # down) two of the seed case's three sites still ran 25-90% slower after the window than before it
        # (traces/h100/seed-fwd). Calls after the window are timed apart; true times come from before it.
        after = w.tried and w.is_over
        call.phase = PROFILED if profiled else (WARMUP if untimed else (AFTER if after else TRUE))
        call.site, call.function = site, function
        call.place = self.resolver.place(frame, user) if profiled else None  # the site's name, for runinfo
        call.name = (self._range_prefix(entry.op, site) + str(call.call_id)) if profiled or self._nvtx_on else ""
        call.device = _cuda_index(args, kwargs)
        if call.device is not None and self._cuda_device is None:
            self._cuda_device = call.device
        call.clock = clock
        call.events = None
        call.timed = call.phase != WARMUP
        if not call.timed:
            clock.timing.warmup_calls += 1
        if self._nvtx_on:
            _nvtx_push(call.name)
        call.ncu = ncu_select.enter(call.step >= w.warmup, self.resolver) if self._ncu else False
        if call.timed and call.device is not None:
            try:
                call.events = self.timer.pair(call.device)
            except Exception as e:
                call.timed = False
                self._note_error("could not time an attention call", e)
        return call

    def _exit(self, entry: EntryPoint, original: Any, call: _Call, args: tuple, kwargs: dict, result: Any,
              us: float | None) -> None:
        try:
            if call.events is not None and call.device is not None:
                start, end, _, _ = call.events
                self.timer.events_done(call.device, start, end, call.clock, call.phase)
            elif us is not None:
                self.timer.host_done(call.clock, call.phase, us)
        except Exception as e:
            self._note_error("could not time an attention call", e)
        if self._nvtx_on:
            _nvtx_pop()
        if call.ncu:
            ncu_select.exit(True)
        try:
            if call.phase == PROFILED:
                self._record(entry, original, call, args, kwargs, result)
            self._arm_backward(entry, call, args, kwargs, result)
        finally:
            self.timer.tick()
            self._exit_window()

    def _exit_window(self) -> None:
        """`exit_call` under the lock, when it may open the window: a call in the step before the window's first
        while it waits. Read first without the lock: a call in any other step leaves the window as it is, and the
        call that ends that step checks for itself."""
        w = self.window
        if w.state is WindowState.WAITING and w.step == w.first - 1:
            with w.lock:
                w.exit_call()

    def _abort(self, call: _Call) -> None:
        try:
            if call.events is not None and call.device is not None:
                start, end, _, _ = call.events
                self.timer.release(call.device, start, end)
            if self._nvtx_on:
                _nvtx_pop()
            ncu_select.exit(call.ncu)
            self._exit_window()
        except Exception as e:
            self._note_error("could not close an attention call that raised", e,
                             "its timing and NVTX range may be left open")

    def _record(self, entry: EntryPoint, original: Any, call: _Call, args: tuple, kwargs: dict,
                result: Any) -> None:
        info = CallInfo(id=call.call_id, op=entry.op, library=entry.library, site=call.site, function=call.function,
                        step=call.step, range_name=range_name(entry.op, call.site, call.call_id), layout="unknown")
        try:
            binder = self._binders.get(id(original))
            if binder is None:
                binder = self._binders[id(original)] = Binder(entry, original)
            with torch._C.DisableTorchFunction():  # our own reads must not go through the source-line mode
                described = describe_call(entry, binder, args, kwargs, result)
            described.apply(info)
            if call.place is not None:
                info.caller, info.module, info.module_class = call.place
        except Exception as e:
            info.extra = {"error": f"could not read the arguments: {failure_reason(e)}"}
        self.calls.append(info)

    def _arm_backward(self, entry: EntryPoint, call: _Call, args: tuple, kwargs: dict, result: Any) -> None:
        out = result if type(result) is torch.Tensor else first_tensor(result)
        if out is None or out.grad_fn is None:  # no grad_fn: no backward (also under no_grad / inference_mode)
            return
        clock = self.timer.clock(call.site, entry.op, "bwd")
        if call.phase == WARMUP:
            self.timer.count_backward(out, clock)
            return
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        inputs += [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        self.timer.arm_backward(out, inputs, clock, call.phase, call.device)

    # --- records ----------------------------------------------------------------------------------------------------

    def runinfo(self, exit_code: int, outcome: str) -> RunInfo:
        w = self.window
        device, capability = device_name(torch.device("cpu")), None  # "cpu (<model>)": the ceilings' key too
        cuda_device = self._cuda_device
        if cuda_device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
            # no wrapped call ran on CUDA (hand-written or compiled attention only), but the script used the GPU
            cuda_device = torch.cuda.current_device()
        if cuda_device is not None:
            try:
                device = torch.cuda.get_device_name(cuda_device)
                major, minor = torch.cuda.get_device_capability(cuda_device)
                capability = f"{major}.{minor}"
            except Exception:
                device = f"cuda:{cuda_device}"
        steps = StepInfo(unit=w.unit_name, warmup=w.warmup, timed=w.timed, active=w.active, seen=w.seen,
                         profiled=list(w.profiled), profiled_calls=w.profiled_calls, stopped_early=w.stopped_early,
                         boundary=w.boundary, first_timed_call=w.first_timed_call)
        return RunInfo(
            version=RUNINFO_VERSION, attnprof_version=__version__, torch_version=str(torch.__version__),
            cuda_version=torch.version.cuda, device=device, device_capability=capability,
            hostname=socket.gethostname(), pid=os.getpid(), command=list(self.target.command),
            started_at=self.started_at.astimezone().isoformat(timespec="seconds"),
            trace_files=[p.name for p in self.trace_files], steps=steps, calls=list(self.calls),
            sites=self.timer.timings(), exit_code=exit_code, outcome=outcome, note=self._note(outcome),
            copy_writes=self.sources.mode.written.copy() if self.sources is not None else {},
            rank=self.job.rank if self.job else None, world_size=self.job.world_size if self.job else None,
        )

    def _note(self, outcome: str) -> str | None:
        w = self.window
        notes = []
        if outcome == "running":
            notes.append("written when the profiled window closed: the process did not get to the end of the run "
                         "(killed?)")
        elif w.active == 0:
            notes.append("no profiler (--active 0): NVTX ranges and CUDA-event timings only")
        elif not self.trace_files and not w.is_open:
            if w.calls == 0 and w.unwrapped_calls == 0 and w.unit_name != "optimizer":
                notes.append("the script made no attention call that attnprof wraps (torch SDPA, "
                             "nn.MultiheadAttention, flash-attn 2/3/4, xformers): there was nothing to profile")
            elif not w.tried:
                seen = w.seen
                notes.append(
                    f"the script ran {seen} step{'' if seen == 1 else 's'} (one step = {w.boundary}); profiling "
                    f"starts after {w.first} (--warmup {w.warmup} --timed {w.timed}): rerun with --warmup 0 "
                    f"--timed 0")
        if w.cold and w.profiled:
            first, last = w.profiled[0], w.profiled[-1]
            steps = f"step {first} was" if first == last else f"steps {first}-{last} were"
            notes.append(
                f"cold start: the script showed no loop around its first step, so {steps} profiled from the start: "
                f"the numbers include the cold first step (allocation, kernel selection, compilation), there are no "
                f"true (unprofiled) times, and layout copies made before the first attention call are not in the "
                f"trace")
        elif w.profiled and w.profiled[0] == 0:
            notes.append("step 0 was profiled (--warmup 0 --timed 0): its numbers are from a cold first step "
                         "(allocation, kernel selection, compilation included)")
        if w.unwrapped_calls:
            n = w.unwrapped_calls
            notes.append(f"{n} call{'' if n == 1 else 's'} of torch.compile'd code or of TransformerEncoderLayer's "
                         f"fused inference op: the attention inside runs unwrapped (found in the trace by its aten "
                         f"ops; no CUDA-event times)")
        notes.extend(self.notes)
        notes.extend(self.errors)
        return "; ".join(notes) if notes else None

    # --- messages ---------------------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if not self.options.quiet:
            say(f"attnprof: {message}")  # the script may have closed stderr

    def _tell(self, message: str) -> None:
        """What attnprof did instead of what was asked: said once on stderr (even with --quiet), kept in runinfo's
        note."""
        if message in self.notes:
            return
        self.notes.append(message)
        say(f"attnprof: {message}")

    def _note_error(self, what: str, e: BaseException, then: str | None = None) -> None:
        """An attnprof failure during the run, `<what>: <why>[; <then>]` (then: what it costs the run): said once
        per `what` on stderr, kept in runinfo's note; the run goes on."""
        self._note_failure(f"{what}: {failure_reason(e)}" + (f"; {then}" if then else ""), key=what)

    def _note_failure(self, line: str, key: str | None = None) -> None:
        key = line if key is None else key
        if key in self._warned:
            return
        self._warned.add(key)
        self.errors.append(line)
        say(f"attnprof: {line}")  # the script may have closed stderr


def _all_threads_config() -> Any:
    """A profiler config that records the ops of every thread, not only the one that starts it (torch >= 2.7);
    None where torch has no such option."""
    try:
        return torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except (AttributeError, TypeError):
        return None


_ALL_THREADS = _all_threads_config()
#: Set on a thread while it runs one of attnprof's own profiler actions (so the watch lets it through).
_own = threading.local()


def _new_profiler(teardown: bool) -> Any:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        if teardown:
            os.environ["TEARDOWN_CUPTI"] = "1"
    extra = {} if _ALL_THREADS is None else {"experimental_config": _all_threads_config()}
    prof = torch.profiler.profile(activities=activities, record_shapes=True, with_stack=True, **extra)
    with warnings.catch_warnings():  # torch >= 2.11 warns that one start/stop cycle keeps one cycle
        warnings.filterwarnings("ignore", message=".*Profiler clears events.*")
        with quiet_kineto():  # libkineto's USDT profiler_start/stop lines
            prof.start()
    return prof


def _stop(prof: Any) -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    prof.stop()


#: How long closing the window waits for profiled calls still running on other threads.
IN_FLIGHT_WAIT_S = 5.0


class InFlight:
    """The profiled attention calls running now, per thread (a context manager around each)."""

    def __init__(self) -> None:
        self._running: dict[int, int] = {}
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            me = threading.get_ident()
            self._running[me] = self._running.get(me, 0) + 1

    def __exit__(self, *exc) -> None:
        with self._changed:
            me = threading.get_ident()
            self._running[me] -= 1
            if not self._running[me]:
                del self._running[me]
            self._changed.notify_all()

    def wait_others(self, timeout: float) -> bool:
        """Until no other thread runs one (the calling thread may be inside one of its own); False on timeout."""
        me = threading.get_ident()
        with self._changed:
            return self._changed.wait_for(lambda: not (self._running.keys() - {me}), timeout=timeout)


class _Job:
    __slots__ = ("fn", "done", "result", "error")

    def __init__(self, fn: Callable[[], Any]):
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None


class ProfilerThread:
    """The one thread that starts, stops and exports attnprof's profiler, whichever of the script's threads opens or
    closes the window: a session started on one thread and stopped on another is left running (torch's profiler
    state is per thread unless `profile_all_threads`) and the process crashes (issue 8). The script's threads hand
    each action here and wait for it. Its first start makes libkineto print, once, a harmless "External init
    callback must run in same thread as registerClient" (torch's client init is empty)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="attnprof-profiler", daemon=True)
                self._thread.start()
        job = _Job(fn)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn()
            except BaseException as e:  # noqa: BLE001 - handed to the thread that asked
                job.error = e
            finally:
                job.done.set()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout=30)


class UserProfilerWatch:
    """Sees the script's own profilers take and release the profiler: torch.profiler.profile and
    torch.autograd.profiler.profile (both go through the latter's `_prepare_trace` / `_start_trace` / `__exit__`),
    emit_nvtx and emit_itt. record_function needs no profiler of its own and is left alone."""

    def __init__(self, takes: Callable[[Any, str], None], releases: Callable[[Any], None] | None = None,
                 on_error: Callable[[str, BaseException, str], None] | None = None):
        self._takes, self._releases = takes, releases
        self._on_error = on_error  # (what, exception, what it costs): never raised into the script's profiler
        self._saved: list[tuple[type, str, Any]] = []

    def install(self) -> None:
        import torch.autograd.profiler as autograd_profiler

        if self._saved:
            return
        kinds: dict[type, tuple[str, tuple[str, ...]]] = {
            autograd_profiler.profile: ("torch.profiler", ("_prepare_trace", "_start_trace"))}
        for name in ("emit_nvtx", "emit_itt"):
            cls = getattr(autograd_profiler, name, None)
            if cls is not None:
                kinds[cls] = (name, ("__enter__",))
        for cls, (kind, takers) in kinds.items():
            for attr in takers:
                self._patch(cls, attr, self._taking(cls.__dict__[attr], kind))
            self._patch(cls, "__exit__", self._releasing(cls.__dict__["__exit__"]))

    def uninstall(self) -> None:
        for cls, attr, original in reversed(self._saved):
            setattr(cls, attr, original)
        self._saved.clear()

    def _patch(self, cls: type, attr: str, wrapper: Any) -> None:
        self._saved.append((cls, attr, cls.__dict__[attr]))
        setattr(cls, attr, wrapper)

    def _taking(self, original: Any, kind: str) -> Any:
        takes, on_error = self._takes, self._on_error

        def taking(profiler, *args, **kwargs):
            try:
                takes(profiler, kind)
            except Exception as e:  # never keep the script's profiler from starting
                if on_error is not None:
                    on_error(f"could not make way for the script's own profiler ({kind})", e,
                             "attnprof's window may still have been open when it started")
            return original(profiler, *args, **kwargs)

        return functools.wraps(original)(taking)

    def _releasing(self, original: Any) -> Any:
        watch = self

        def releasing(profiler, *args, **kwargs):
            try:
                return original(profiler, *args, **kwargs)
            finally:
                if watch._releases is not None:
                    try:
                        watch._releases(profiler)
                    except Exception as e:
                        if watch._on_error is not None:
                            watch._on_error("could not see the script's own profiler stop", e,
                                            "attnprof's window does not open after it")

        return functools.wraps(original)(releasing)


def _cuda_index(args: tuple, kwargs: dict) -> int | None:
    """Device index of the first tensor argument if it is on CUDA (where the call's events go)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.get_device() if a.is_cuda else None
    for a in kwargs.values():
        if isinstance(a, torch.Tensor):
            return a.get_device() if a.is_cuda else None
    return None


def _nvtx_push(message: str) -> None:
    if _nvtx is not None:
        _nvtx.push_range(message=message, domain=NVTX_DOMAIN)
    elif _TORCH_NVTX:
        torch.cuda.nvtx.range_push(RANGE_PREFIX + message)


def _nvtx_pop() -> None:
    if _nvtx is not None:
        _nvtx.pop_range(domain=NVTX_DOMAIN)
    elif _TORCH_NVTX:
        torch.cuda.nvtx.range_pop()


_TORCH_NVTX = _nvtx is None and torch.cuda.is_available()


def _nvtx_listening() -> bool:
    """Whether an NVTX range goes anywhere: a tool (nsys, ncu) attached to NVTX. Without one the nvtx package hands
    out a dummy domain, and pushing a range would cost about 1 µs per call (on a loaded CPU) for nothing. torch's
    NVTX (no nvtx package) cannot tell: its ranges are always pushed."""
    if _nvtx is not None:
        try:
            return bool(_nvtx.enabled()) and isinstance(_nvtx.get_domain(NVTX_DOMAIN), _nvtx.Domain)
        except Exception:
            return True
    return _TORCH_NVTX



def _after_fork_in_child() -> None:
    """A forked child (DataLoader worker, multiprocessing) runs user code with the wrappers in place: inert there."""
    session = _active
    if session is not None:
        session._enabled = False
        patching.set_dispatch(None)
        session.window.disable()  # no profiler in the child, whatever its hooks see
        restore_default_sigterm()  # Pool.terminate() SIGTERMs its workers: they must die quietly, as under python


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
