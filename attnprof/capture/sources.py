"""Where a call comes from in the user's code, and the source-line ranges put around layout copies.

The call site of an attention call is the first frame outside attnprof, torch, the attention libraries, einops
and the import machinery. Frames are classified once per code object and a call's site is found once per path of
frames to it (`SitePath`): a later call on the same path compares code objects by identity, one dictionary lookup in
all.
"""
from __future__ import annotations

import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from attnprof.trace.runinfo import SOURCE_NUMBER, SOURCE_PREFIX, SOURCE_STORAGE, ascii_name

USER, SKIP, ATTENTION = 0, 1, 2

#: Top-level packages whose frames are never a call site.
SKIPPED_PACKAGES = frozenset({"attnprof", "torch", "einops", "importlib", "runpy"})
#: Attention libraries: never a call site either, and torch calls made from them are the op's own business.
ATTENTION_PACKAGES = frozenset({"flash_attn", "flash_attn_interface", "xformers"})

#: HF transformers' glue, never a site: modules that only dispatch to an attention kernel (the site is the model
#: line above them), and the decorators and layer base class between a model's layer and its attention module (the
#: site's "via" is the layer's line).
SKIPPED_MODULES = frozenset({
    "transformers.integrations.sdpa_attention", "transformers.integrations.flash_attention",
    "transformers.integrations.flex_attention", "transformers.integrations.sdpa_paged",
    "transformers.integrations.flash_paged", "transformers.integrations.npu_flash_attention",
    "transformers.modeling_flash_attention_utils",
    "transformers.utils.deprecation", "transformers.utils.generic", "transformers.utils.output_capturing",
    "transformers.modeling_layers",
})

_is_compiling = torch.compiler.is_compiling


def _warm_record_function() -> None:
    """Open and close one record_function range now, with no profiler running: its first use imports modules
    (torch.profiler._cupti_monitor, ~5 ms on CPU), which must not land inside the first profiled copy's range."""
    with torch.profiler.record_function("attnprof.warmup"):
        pass


_warm_record_function()
_ATTNPROF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
UNKNOWN_SITE = "<unknown>"


def storage_of(t: torch.Tensor) -> int:
    """Address of the memory a tensor (or any view of it) lives in."""
    return t.untyped_storage().data_ptr()


def short_path(filename: str, cwd: str) -> str:
    """site-packages/x/y.py -> x/y.py; under cwd -> relative; else absolute."""
    if filename.startswith("<"):
        return filename
    path = filename if os.path.isabs(filename) else os.path.join(cwd, filename)
    path = os.path.normpath(path)
    for marker in ("site-packages", "dist-packages"):
        i = path.rfind(os.sep + marker + os.sep)
        if i >= 0:
            return path[i + len(marker) + 2:]
    rel = os.path.relpath(path, cwd)
    if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
        return rel
    return path


def _classify(frame: FrameType) -> int:
    code = frame.f_code
    if code.co_filename.startswith(_ATTNPROF_DIR):
        return SKIP
    name = frame.f_globals.get("__name__")
    if not isinstance(name, str):
        return USER
    top = name.partition(".")[0]
    if top in ATTENTION_PACKAGES:
        return ATTENTION
    if top in SKIPPED_PACKAGES or name in SKIPPED_MODULES or code.co_filename.startswith("<frozen importlib"):
        return SKIP
    return USER


class Place(NamedTuple):
    """What a call site is in the user's program, beyond its line: for the label a person reads."""

    caller: str | None  # the function that called the site's function (None at module level)
    module: str | None  # dotted path of the innermost nn.Module running the call, in its model ("" = the model)
    module_class: str | None  # that module's class


class SitePath:
    """One way out from a call's first frame (`code`) to its site: the frames further out, each as (code, instruction
    offset or -1 where any will do), up to the user frame's caller or to where the search for it stops (code None:
    the end of the stack), and the site it names."""

    __slots__ = ("code", "function", "memo", "next", "site", "steps", "user_at")

    def __init__(self, code: CodeType, user_at: int, steps: tuple, site: str, function: str):
        self.code, self.user_at, self.steps, self.site, self.function = code, user_at, steps, site, function
        self.memo: Any = None  # what the session keeps per path (its quiet path's counters), None until it does
        self.next: SitePath | None = None  # the path found before it from the same instruction offset


class SiteResolver:
    """Finds the user frame behind a call and names it `path:line` (cached)."""

    def __init__(self, cwd: str | None = None):
        self.cwd = cwd or os.getcwd()
        # Per-call caches are keyed by id(code), each entry holding the code to check it is still the same one:
        # hashing a code object hashes its bytecode and constants on every lookup (several us per frame).
        self._kinds: dict[int, tuple[CodeType, int]] = {}
        self._sites: dict[tuple[CodeType, int], tuple[str, str]] = {}
        #: instruction offset of a call's first frame -> the last path seen from there, the others through its `next`
        #: (see site_path)
        self._site_paths: dict[int, SitePath] = {}
        self.site_path = self._make_site_path()
        self._paths: dict[str, str] = {}
        #: module -> (its model, its dotted path there): named_modules() is walked once per model
        self._module_paths: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def user_frame(self, frame: FrameType | None, through_attention: bool = True) -> FrameType | None:
        """The first user frame from `frame` outwards; None if there is none (or, unless `through_attention`,
        if an attention library's frame comes first)."""
        while frame is not None:
            kind = self._kind(frame)
            if kind == USER:
                return frame
            if kind == ATTENTION and not through_attention:
                return None
            frame = frame.f_back
        return None

    def _caller(self, frame: FrameType | None) -> FrameType | None:
        """The user frame that called the call site's function, stopping at attnprof's runner: frames below the
        script are not the user's (whoever ran `attnprof trace`)."""
        while frame is not None:
            if frame.f_code.co_filename.startswith(_ATTNPROF_DIR):
                return None
            if self._kind(frame) == USER:
                return frame
            frame = frame.f_back
        return None

    def site(self, frame: FrameType) -> tuple[str, str]:
        """(`path:line`, function) of a frame."""
        code = frame.f_code
        line = frame.f_lineno or code.co_firstlineno
        key = (code, line)
        found = self._sites.get(key)
        if found is None:
            path = self._paths.get(code.co_filename)
            if path is None:
                path = self._paths[code.co_filename] = short_path(code.co_filename, self.cwd)
            found = self._sites[key] = (f"{path}:{line}", getattr(code, "co_qualname", code.co_name))
        return found

    def call_site(self, frame: FrameType | None) -> tuple[str, str, FrameType | None]:
        """(site, function, frame) of an attention call: its line and the user line that called that function
        (`model.py:40 via :55`), so one helper used for two variants gives two sites, while the layers of a model,
        which all come through the same two lines, share one."""
        if frame is None:
            return UNKNOWN_SITE, "?", None
        path = self.site_path(frame)
        if path is None:
            return UNKNOWN_SITE, "?", None
        return path.site, path.function, self.user_of(path, frame)

    def _make_site_path(self) -> Callable[[FrameType], SitePath | None]:
        """`site_path(frame)`: the path from `frame` to its call site (None: no user frame). Found once per path: a
        later call on the same path compares code objects by identity and instruction offsets, one dictionary lookup
        in all. A closure over the table it reads: it runs on every attention call."""
        paths = self._site_paths
        add_path = self._add_path

        def site_path(frame: FrameType) -> SitePath | None:
            lasti = frame.f_lasti  # the key: hashing a code object costs microseconds, an offset nothing
            try:
                path: SitePath | None = paths[lasti]
            except KeyError:
                return add_path(frame, lasti)
            code = frame.f_code
            while path is not None:
                if path.code is code:
                    steps = path.steps
                    if not steps:  # the call's first frame is its site, at module level
                        return path
                    f = frame.f_back
                    for step_code, step_lasti in steps:
                        if f is None:
                            if step_code is None:  # the path ran off the stack there too
                                return path
                            break
                        if f.f_code is not step_code or (step_lasti >= 0 and f.f_lasti != step_lasti):
                            break
                        f = f.f_back
                    else:
                        return path
                path = path.next
            return add_path(frame, lasti)

        return site_path

    def _add_path(self, frame: FrameType, lasti: int) -> SitePath | None:
        user = self.user_frame(frame)
        if user is None:
            return None
        path = self._new_path(frame, user)
        # the chain is never changed, only a new head put in front: other threads may be walking it
        path.next = self._site_paths.get(lasti)
        self._site_paths[lasti] = path
        return path

    @staticmethod
    def user_of(path: SitePath, frame: FrameType) -> FrameType | None:
        """The user frame of `path`, from the frame it was found from."""
        f: FrameType | None = frame
        for _ in range(path.user_at):
            f = f.f_back if f is not None else None
        return f

    def _kind(self, frame: FrameType) -> int:
        code = frame.f_code
        found = self._kinds.get(id(code))
        if found is None or found[0] is not code:
            found = self._kinds[id(code)] = (code, _classify(frame))
        return found[1]

    def _new_path(self, frame: FrameType, user: FrameType) -> SitePath:
        """The path from `frame` to its site, as `site_path` compares it: every frame up to the user frame `user`,
        then up to the user frame's caller (or to where `_caller` stops: attnprof's runner, the end of the stack)."""
        steps: list[tuple[CodeType | None, int]] = []
        f: FrameType | None = frame
        while f is not user and f is not None:
            f = f.f_back
            steps.append((f.f_code if f is not None else None, -1))
        if steps:
            steps[-1] = (user.f_code, user.f_lasti)
        user_at = len(steps)
        caller = None
        if user.f_code.co_name != "<module>":
            f = user.f_back
            while True:
                if f is None:
                    steps.append((None, -1))
                    break
                code = f.f_code
                if code.co_filename.startswith(_ATTNPROF_DIR):
                    steps.append((code, -1))
                    break
                if self._kind(f) == USER:
                    caller = f
                    steps.append((code, f.f_lasti))
                    break
                steps.append((code, -1))
                f = f.f_back
        site, function = self.site(user)
        if caller is not None:
            caller_site = self.site(caller)[0]
            path = site.rpartition(":")[0]
            caller_path, _, caller_line = caller_site.rpartition(":")
            site += f" via :{caller_line}" if caller_path == path else f" via {caller_site}"
        return SitePath(frame.f_code, user_at, tuple(steps), site, function)

    def place(self, frame: FrameType | None, user: FrameType | None) -> Place:
        """The caller of the site's function (`user`, call_site's frame) and the innermost nn.Module running the call
        from `frame` outwards (torch's own modules count: nn.MultiheadAttention inside a TransformerEncoderLayer).
        Reads frame locals: for profiled calls only. Never raises: a name is not worth a lost call."""
        try:
            return self._place(frame, user)
        except Exception:
            return Place(None, None, None)

    def _place(self, frame: FrameType | None, user: FrameType | None) -> Place:
        caller = None
        if user is not None and user.f_code.co_name != "<module>":
            caller = self._caller(user.f_back)
        caller_name = getattr(caller.f_code, "co_qualname", caller.f_code.co_name) if caller else None
        modules: list[torch.nn.Module] = []
        while frame is not None:
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                obj = frame.f_locals.get("self")
                if isinstance(obj, torch.nn.Module) and (not modules or modules[-1] is not obj):
                    modules.append(obj)
            frame = frame.f_back
        if not modules:
            return Place(caller_name, None, None)
        inner, root = modules[0], modules[-1]
        known = self._module_paths.get(inner)
        if known is None or known[0]() is not root:
            path = next((name for name, m in root.named_modules() if m is inner), None)
            known = (weakref.ref(root), path)
            self._module_paths[inner] = known
        return Place(caller_name, known[1], type(inner).__name__)


def _copy_functions() -> frozenset:
    """torch functions that can copy memory (the layout-prep calls whose source line is worth naming)."""
    T = torch.Tensor
    F = torch.nn.functional
    names = [
        (T, "contiguous"), (T, "clone"), (torch, "clone"), (T, "to"), (T, "type"), (T, "float"), (T, "half"),
        (T, "bfloat16"), (T, "double"), (T, "reshape"), (torch, "reshape"), (T, "flatten"), (torch, "flatten"),
        (T, "repeat"), (T, "repeat_interleave"), (torch, "repeat_interleave"), (F, "pad"), (torch, "cat"),
        (torch, "concat"), (torch, "concatenate"), (torch, "stack"), (T, "copy_"),
    ]
    out = set()
    for owner, name in names:
        fn = getattr(owner, name, None)
        if fn is not None:
            out.add(fn)
    return frozenset(out)


class SourceLineMode(TorchFunctionMode):
    """While the profiler runs: a `attnprof.src:<site>` range around each memory-copying torch call made from user
    code. Everything else passes straight through, exceptions included."""

    def __init__(self, resolver: SiteResolver):
        super().__init__()
        self.resolver = resolver
        self.active = True
        self.copies = _copy_functions()
        #: copy number (in its range name) -> storage the copy wrote: known only once it ran, so kept aside for
        #: runinfo.json (RunInfo.copy_writes)
        self.written: dict[int, int] = {}
        self._numbers = itertools.count(1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        if _is_compiling():  # dynamo traces modes: reading our state there fails its guards (flex_attention, compile)
            return func(*args, **kwargs)
        if self.active:
            named = self._range_name(func, args)
            if named is not None:
                name, number = named
                with torch.profiler.record_function(name):
                    result = func(*args, **kwargs)
                self._note_written(number, result)
                return result
        return func(*args, **kwargs)

    def _range_name(self, func: Any, args: tuple) -> tuple[str, int] | None:
        """(`attnprof.src:<site> in=<storage> #<n>`, n): the line, the storage the copy reads and the copy's number,
        so analysis can tell whose tensor a copy reads and writes instead of guessing from shapes."""
        try:
            if func not in self.copies:
                return None
            user = self.resolver.user_frame(sys._getframe(2), through_attention=False)
            if user is None:
                return None
            name = SOURCE_PREFIX + ascii_name(self.resolver.site(user)[0])  # the profiler keeps ASCII names
            source = args[0] if args else None
            if isinstance(source, (list, tuple)) and source:  # torch.cat / stack: a list of tensors
                source = source[0]
            if isinstance(source, torch.Tensor):
                with torch._C.DisableTorchFunction():
                    name += f" {SOURCE_STORAGE}{storage_of(source):x}"
            number = next(self._numbers)
            return f"{name} {SOURCE_NUMBER}{number}", number
        except Exception:
            return None

    def _note_written(self, number: int, result: Any) -> None:
        try:
            if isinstance(result, torch.Tensor):
                with torch._C.DisableTorchFunction():
                    self.written[number] = storage_of(result)
        except Exception:
            pass


class SourceLines:
    """Pushes the mode when the profiler starts and takes it off when it stops, without corrupting a user's mode
    stack: if ours is not on top then (a mode the user pushed since sits above it, or torch has it popped for the
    duration of one of our own pass-through calls), it stays, inert, and comes off at a later attnprof event (an
    attention call, an optimizer step, the end of the run) that finds it on top.

    While it is on the stack, `torch.overrides.has_torch_function` is shimmed so that our mode alone does not count:
    otherwise nn.MultiheadAttention and TransformerEncoderLayer would leave their inference fast path (their check
    asks whether any torch-function override is active) and the profiled steps would run different code.
    """

    def __init__(self, resolver: SiteResolver):
        self.mode = SourceLineMode(resolver)
        self.pending = False  # inert, waiting to come off the stack
        self._thread: int | None = None
        self._original_htf: Any = None  # torch.overrides.has_torch_function while it is shimmed

    def push(self) -> None:
        self.mode.active = True
        self.mode.__enter__()
        self._thread = threading.get_ident()
        self._install_shim()

    def pop(self) -> None:
        if self._thread is None:
            return
        self.mode.active = False
        self.pending = True
        self.retry()

    def retry(self) -> None:
        if not self.pending or threading.get_ident() != self._thread:
            return
        n = torch._C._len_torch_function_stack()
        if n and torch._C._get_function_stack_at(n - 1) is self.mode:
            self.mode.__exit__(None, None, None)
            self.pending = False
            self._thread = None
            self._remove_shim()

    def cleanup(self) -> None:
        """The run is over: off the stack if possible, and has_torch_function is torch's own again."""
        self.retry()
        self._remove_shim()

    def _install_shim(self) -> None:
        original = torch.overrides.has_torch_function
        mode = self.mode

        def has_torch_function(relevant_args):
            n = torch._C._len_torch_function_stack()
            if n and torch._C._get_function_stack_at(n - 1) is mode:
                torch._C._pop_torch_function_stack()
                try:
                    return original(relevant_args)
                finally:
                    torch._C._push_on_torch_function_stack(mode)
            return original(relevant_args)

        has_torch_function.__doc__ = original.__doc__
        self._original_htf = original
        torch.overrides.has_torch_function = has_torch_function

    def _remove_shim(self) -> None:
        if self._original_htf is not None:
            torch.overrides.has_torch_function = self._original_htf
            self._original_htf = None
