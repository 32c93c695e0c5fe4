"""Replacing every attention entry point with a wrapper, now and for modules imported later, and undoing it.

A wrapper is inert unless a session has set the dispatch function: it then hands (entry, original, args, kwargs)
to it. One wrapper per original function, whatever module holds it. Under torch.compile tracing the wrapper calls
the original directly, so compiled graphs see the real op.

Besides the fixed table (entrypoints.ENTRY_POINTS), transformers is covered without a list of models: every
`transformers.models.*` module has its attention functions (entrypoints.is_hf_attention_function) wrapped as it
loads, and `AttentionInterface` lookups (how a model reaches "sdpa", "flash_attention_2", a registered function)
return a wrapper named after the key looked up.
"""
from __future__ import annotations

import functools
import importlib.abc
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from attnprof.capture.entrypoints import (
    ENTRY_POINTS,
    HF_INTERFACE_MODULE,
    HF_MODELS_PACKAGE,
    TORCHSCRIPT_BUILTINS,
    EntryPoint,
    hf_function_entry,
    hf_implementation_entry,
    is_hf_attention_function,
)
from attnprof.errors import failure_reason

Dispatch = Callable[[EntryPoint, Any, tuple, dict], Any]

#: Set by the running session; None means every wrapper calls straight through.
_dispatch: Dispatch | None = None
#: id(original) -> (original, wrapper); id(wrapper) -> original. Wrappers live as long as the process.
_wrappers: dict[int, tuple[Any, Any]] = {}
_originals: dict[int, Any] = {}
_lock = threading.Lock()

_is_compiling = torch.compiler.is_compiling
_compiler = torch.compiler
#: Whether the wrapper runs under a tracer: dynamo folds `is_dynamo_compiling()` to True where it traces (and its
#: runtime body is `return False`, one call instead of is_compiling's two); export's non-strict tracing runs the
#: wrapper for real with `torch.compiler._is_compiling_flag` set. Together they are `is_compiling()` (whose third
#: case, TorchScript, never reaches a wrapper's body: the wrappers are TorchScript builtins). The order matters:
#: dynamo must stop at `is_dynamo_compiling()`, or it reads the flag (True while it compiles, on torch 2.13) and
#: may guard the graph on that value, false when the graph runs. Older torch without them: is_compiling itself.
_FAST_COMPILING_TEST = (callable(getattr(_compiler, "is_dynamo_compiling", None))
                        and isinstance(getattr(_compiler, "_is_compiling_flag", None), bool))
_is_dynamo_compiling = _compiler.is_dynamo_compiling if _FAST_COMPILING_TEST else _is_compiling


class _NoCompilingFlag:
    _is_compiling_flag = False


_flag_owner: Any = _compiler if _FAST_COMPILING_TEST else _NoCompilingFlag


def set_dispatch(dispatch: Dispatch | None) -> None:
    global _dispatch
    _dispatch = dispatch


def is_wrapper(obj: Any) -> bool:
    return type(obj) is _WatchedPacket or _originals.get(id(obj)) is not None


#: id(packet) -> wrapper, for the torch.ops packets turned into _WatchedPacket.
_packet_wrappers: dict[int, Any] = {}


class _WatchedPacket(torch._ops.OpOverloadPacket):
    """A torch.ops packet whose calls go through attnprof's wrapper. A packet becomes one by `__class__` assignment,
    so it stays the very object torch and its registries know (identity, hash, isinstance); replacing the attribute
    with another object breaks modules that register the op at import (torch.utils.flop_counter, which
    torch.compile imports)."""

    def __call__(self, /, *args, **kwargs):
        wrapper = _packet_wrappers.get(id(self))
        if wrapper is None:
            return torch._ops.OpOverloadPacket.__call__(self, *args, **kwargs)
        return wrapper(*args, **kwargs)


def wrapper_for(entry: EntryPoint, original: Any, on_failure: Callable[[str], None] | None = None) -> Any:
    with _lock:
        found = _wrappers.get(id(original))
        if found is not None and found[0] is original:
            return found[1]
        wrapper = _make_wrapper(entry, original, on_failure)
        _wrappers[id(original)] = (original, wrapper)
        _originals[id(wrapper)] = original
        return wrapper


#: (key, id(function)) -> (function, wrapper) for AttentionInterface lookups: one function can sit under several
#: keys ("flash_attention_2" and "_3"), and each call is named after the key the model asked for.
_implementation_wrappers: dict[tuple[str, int], tuple[Any, Any]] = {}


def implementation_wrapper(key: Any, fn: Any) -> Any:
    """What `AttentionInterface[key]` returns while patched: `fn` wrapped as `hf.<key>`; `fn` itself when it is
    already a wrapper (a model's eager function registered under another key) or not a function."""
    if not isinstance(key, str) or not callable(fn) or is_wrapper(fn):
        return fn
    with _lock:
        found = _implementation_wrappers.get((key, id(fn)))
        if found is not None and found[0] is fn:
            return found[1]
        wrapper = _make_wrapper(hf_implementation_entry(key, fn), fn)
        _implementation_wrappers[(key, id(fn))] = (fn, wrapper)
        _originals[id(wrapper)] = fn
        return wrapper


def _make_wrapper(entry: EntryPoint, original: Any, on_failure: Callable[[str], None] | None = None) -> Any:
    def wrapper(*args, **kwargs):
        dispatch = _dispatch
        # the cheap test first: the other two are a Python call and a module attribute
        if dispatch is None or _is_dynamo_compiling() or _flag_owner._is_compiling_flag:
            return original(*args, **kwargs)
        return dispatch(entry, original, args, kwargs)

    try:
        functools.update_wrapper(wrapper, original)
    except Exception:
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]  # a function takes any attribute
    op = TORCHSCRIPT_BUILTINS.get(entry.attr) if entry.library == "torch" else None
    if op is not None:
        try:
            from torch.jit._builtins import _register_builtin

            _register_builtin(wrapper, op)
        except Exception as e:
            if on_failure is not None:
                on_failure(f"{entry.op}'s wrapper not registered with TorchScript as {op}: {failure_reason(e)}; "
                           f"torch.jit.script of code that calls it may fail under attnprof")
    return wrapper


def _namespace(name: str) -> Any:
    if name == "torch.ops.aten":
        return torch.ops.aten
    return sys.modules.get(name)


def _skip_module(name: str) -> bool:
    return name.startswith(("attnprof.", "torch._C")) or name == "attnprof"


class Patcher:
    """Installs the wrappers (attributes of the defining modules, references in other modules' globals, and a
    post-import hook for modules not imported yet) and removes all of it again.

    Patching never breaks an import or the run: what could not be done is handed to `on_failure` as one line (what
    was not done, why, what it costs) and kept in `failures`."""

    def __init__(self, entries: tuple[EntryPoint, ...] = ENTRY_POINTS,
                 on_failure: Callable[[str], None] | None = None):
        self.by_module: dict[str, list[EntryPoint]] = defaultdict(list)
        for e in entries:
            for m in e.modules:
                self.by_module[m].append(e)
        self._patched: list[tuple[Any, str, Any, Any]] = []  # (namespace, attr, original, wrapper)
        self._replaced: list[tuple[dict, str, Any, Any]] = []  # (module globals, name, original, wrapper)
        self._finder: _PostImportFinder | None = None
        self._packets: list[Any] = []
        self._interface: tuple[type, Any, Any] | None = None  # (AttentionInterface, its own __getitem__, ours)
        self._on_failure = on_failure
        self.failures: list[str] = []

    def _failed(self, line: str) -> None:
        self.failures.append(line)
        if self._on_failure is not None:
            self._on_failure(line)

    def install(self) -> None:
        for name in self.by_module:
            ns = _namespace(name)
            if ns is not None:
                self.patch_namespace(name, ns)
        for name, module in list(sys.modules.items()):
            if name.startswith(HF_MODELS_PACKAGE) and module is not None:
                self.patch_hf_model_module(module)
        self.patch_hf_interface(sys.modules.get(HF_INTERFACE_MODULE))
        self._replace_globals()
        self._finder = _PostImportFinder(frozenset(self.by_module) | {HF_INTERFACE_MODULE}, self._on_import,
                                         prefixes=(HF_MODELS_PACKAGE,))
        sys.meta_path.insert(0, self._finder)

    def patch_namespace(self, name: str, ns: Any) -> None:
        for entry in self.by_module.get(name, ()):
            self._patch_entry(name, ns, entry)

    def _patch_entry(self, name: str, ns: Any, entry: EntryPoint) -> None:
        try:
            current = getattr(ns, entry.attr, None)
            if type(current) is torch._ops.OpOverloadPacket:
                self._watch_packet(entry, current)
                return
            if current is None or not callable(current) or id(current) in _originals:
                return
            wrapper = wrapper_for(entry, current, self._failed)
            setattr(ns, entry.attr, wrapper)
            self._patched.append((ns, entry.attr, current, wrapper))
        except Exception as e:  # never break an import or the run
            self._failed(f"{name}.{entry.attr} not wrapped: {failure_reason(e)}; its calls are not profiled")

    def patch_hf_model_module(self, module: Any) -> None:
        """A transformers model module: the attention functions it defines, found by what they are."""
        name = module.__name__
        try:
            found = [attr for attr, value in list(vars(module).items()) if is_hf_attention_function(name, attr, value)]
        except Exception as e:
            self._failed(f"the attention functions of {name} not looked for: {failure_reason(e)}; their calls are "
                         f"not profiled")
            return
        for attr in found:
            self._patch_entry(name, module, hf_function_entry(name, attr))

    def patch_hf_interface(self, module: Any) -> None:
        """`AttentionInterface[key]` (what `get_interface` and every model use) returns a wrapper named after key."""
        cls: type[Any] | None = getattr(module, "AttentionInterface", None)
        if not isinstance(cls, type) or self._interface is not None:
            return
        try:
            own = cls.__dict__.get("__getitem__")
            lookup = cls.__getitem__

            def __getitem__(interface, key):
                return implementation_wrapper(key, lookup(interface, key))

            cls.__getitem__ = __getitem__
            self._interface = (cls, own, __getitem__)
        except Exception as e:
            self._failed(f"{HF_INTERFACE_MODULE}.AttentionInterface lookups not wrapped: {failure_reason(e)}; "
                         f"attention that models reach through it is not profiled")

    def _watch_packet(self, entry: EntryPoint, packet: Any) -> None:
        call = functools.partial(torch._ops.OpOverloadPacket.__call__, packet)
        _packet_wrappers[id(packet)] = _make_wrapper(entry, call)
        packet.__class__ = _WatchedPacket
        self._packets.append(packet)

    def _on_import(self, module: Any) -> None:
        name = getattr(module, "__name__", "?")
        try:
            self.patch_namespace(name, module)
            if name.startswith(HF_MODELS_PACKAGE):
                self.patch_hf_model_module(module)
            elif name == HF_INTERFACE_MODULE:
                self.patch_hf_interface(module)
        except Exception as e:  # never break the script's import
            self._failed(f"{name}, imported during the run, not patched: {failure_reason(e)}; its attention calls "
                         f"are not profiled")

    def _replace_globals(self) -> None:
        """`from torch.nn.functional import scaled_dot_product_attention as sdpa` done before we started."""
        originals = {id(o): w for _, _, o, w in self._patched}
        if not originals:
            return
        for name, module in list(sys.modules.items()):
            if _skip_module(name):
                continue
            d = getattr(module, "__dict__", None)
            if not isinstance(d, dict):
                continue
            for key, value in list(d.items()):
                w = originals.get(id(value))
                if w is not None and _originals.get(id(w)) is value:
                    d[key] = w
                    self._replaced.append((d, key, value, w))

    def uninstall(self) -> None:
        if self._finder is not None:
            try:
                sys.meta_path.remove(self._finder)
            except ValueError:
                pass
            self._finder = None
        if self._interface is not None:
            cls, own, ours = self._interface
            if cls.__dict__.get("__getitem__") is ours:
                if own is None:
                    del cls.__getitem__  # type: ignore[index]  # the class attribute, not an item
                else:
                    cls.__getitem__ = own  # type: ignore[index]
            self._interface = None
        for ns, attr, original, wrapper in reversed(self._patched):
            try:
                if getattr(ns, attr, None) is wrapper:
                    setattr(ns, attr, original)
            except Exception as e:
                where = getattr(ns, "__name__", type(ns).__name__)
                self._failed(f"{where}.{attr} not restored after the run: {failure_reason(e)}; its wrapper stays "
                             f"(it calls the original straight through)")
        for d, key, original, wrapper in reversed(self._replaced):
            if d.get(key) is wrapper:
                d[key] = original
        # modules imported during the run that took a wrapper (`from flash_attn import flash_attn_func`)
        wrapped = {id(w): o for _, _, o, w in self._patched}
        if wrapped:
            for name, module in list(sys.modules.items()):
                d = getattr(module, "__dict__", None)
                if not isinstance(d, dict) or _skip_module(name):
                    continue
                for key, value in list(d.items()):
                    o = wrapped.get(id(value))
                    if o is not None and _originals.get(id(value)) is o:
                        d[key] = o
        for packet in self._packets:
            if type(packet) is _WatchedPacket:
                packet.__class__ = torch._ops.OpOverloadPacket  # type: ignore[assignment]  # back to what it was
            _packet_wrappers.pop(id(packet), None)
        self._packets.clear()
        self._patched.clear()
        self._replaced.clear()


class _PostImportLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module right after it executed."""

    def __init__(self, loader: Any, on_loaded: Callable[[Any], None]):
        self._loader = loader
        self._on_loaded = on_loaded

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        loader = self._loader
        try:  # the module sees its real loader, during and after its execution
            module.__loader__ = loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = loader
        except Exception:
            pass
        loader.exec_module(module)
        self._on_loaded(module)  # Patcher._on_import: never raises, reports what it could not do

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds watched modules (by name, or every module under a package prefix) with the other finders and wraps
    their loader."""

    def __init__(self, names: frozenset[str], on_loaded: Callable[[Any], None], prefixes: tuple[str, ...] = ()):
        self.names = names
        self.prefixes = prefixes
        self.on_loaded = on_loaded

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names and not fullname.startswith(self.prefixes):
            return None
        spec = None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _PostImportFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PostImportLoader(spec.loader, self.on_loaded)
        return spec
