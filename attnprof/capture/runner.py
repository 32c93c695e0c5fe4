"""Running the user's script in this process exactly as `python script.py args` (or `python -m mod args`) would.

`resolve_target` checks the input before anything runs (bad input is an AttnprofError); `run_target` runs it and
turns however it ended into (exit code, outcome), printing what python would print (tracebacks without attnprof's
or runpy's frames). The script's module is `__main__` in sys.modules while it runs, so pickling its functions
(multiprocessing) works as under python.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib.machinery
import importlib.util
import os
import runpy
import signal
import sys
import threading
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from attnprof.errors import AttnprofError
from attnprof.files import run_folder_stem

_ATTNPROF_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_RUNPY_FILE = os.path.abspath(runpy.__file__)


class ScriptTerminated(BaseException):
    """SIGTERM arrived while the script ran (raised by attnprof's handler so the run can be saved)."""

    def __init__(self) -> None:
        super().__init__("SIGTERM")


@dataclass
class Target:
    kind: str  # "script" | "module" | "archive" (a directory or zip file with __main__.py)
    name: str  # as given: path or module name
    stem: str  # run folder prefix
    display: str  # how messages name it
    command: list[str] = field(default_factory=list)
    path: str | None = None  # absolute path of the script / archive
    code: types.CodeType | None = None
    syntax_error: SyntaxError | None = None


# --- bad input ----------------------------------------------------------------------------------------------------


def resolve_target(name: str, is_module: bool, args: list[str]) -> Target:
    if is_module:
        return _resolve_module(name, args)
    return _resolve_script(name, args)


def _resolve_script(name: str, args: list[str]) -> Target:
    path = os.path.abspath(name)
    target = Target(kind="script", name=name, stem=run_folder_stem(name, is_module=False), display=Path(name).name,
                    command=[name, *args], path=path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "__main__.py")):
            raise AttnprofError(f"can't find '__main__' module in '{name}'")
        target.kind = "archive"
        return target
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise AttnprofError(f"can't open file '{name}': [Errno {e.errno}] {e.strerror}") from None
    try:
        target.code = compile(source, path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        if not name.endswith((".py", ".pyw")):
            if zipfile.is_zipfile(path):
                target.kind = "archive"
                return target
            raise AttnprofError(f"{name} is not a Python script") from None
        target.syntax_error = _as_syntax_error(e, path, source)
    return target


def _as_syntax_error(e: Exception, path: str, source: bytes) -> SyntaxError:
    if isinstance(e, SyntaxError) and e.filename:
        return e
    # null bytes: python names the file and line; compile() does not
    line = source[: source.find(b"\x00")].count(b"\n") + 1 if b"\x00" in source else 1
    return SyntaxError("source code cannot contain null bytes", (path, line, None, None))


def _resolve_module(name: str, args: list[str]) -> Target:
    """Like `python -m`: the parent packages are imported to find the module; a package runs its __main__."""
    target = Target(kind="module", name=name, stem=run_folder_stem(name, is_module=True), display=f"-m {name}",
                    command=["-m", name, *args])
    if name.startswith("."):
        raise AttnprofError("Relative module names not supported")
    with _cwd_on_path():
        spec = _find_spec(name)
        if spec.submodule_search_locations is not None:
            if name == "__main__" or name.endswith(".__main__"):
                raise AttnprofError("Cannot use package as __main__ module")
            try:
                main = _find_spec(name + ".__main__")
            except AttnprofError as e:
                raise AttnprofError(f"{e}; '{name}' is a package and cannot be directly executed") from None
            spec = main
        if spec.loader is None:
            raise AttnprofError(f"No code object available for {name}")
        try:  # compile now: a syntax error is printed like python's, and nothing runs
            spec.loader.get_code(spec.name)
        except SyntaxError as e:
            target.syntax_error = e
        except Exception:
            pass  # runpy will say it, as the script's own error
    target.path = spec.origin
    return target


def _find_spec(name: str):
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise AttnprofError(f"No module named {name}") from None
        raise AttnprofError(f"Error while finding module specification for {name!r} "
                            f"({type(e).__name__}: {e})") from None
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        raise AttnprofError(f"Error while finding module specification for {name!r} "
                            f"({type(e).__name__}: {e})") from None
    if spec is None:
        raise AttnprofError(f"No module named {name}")
    return spec


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    saved = sys.path[:]
    sys.path[:] = [os.getcwd(), *sys.path[1:]] if sys.path else [os.getcwd()]
    try:
        yield
    finally:
        sys.path[:] = saved


# --- running ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def script_environment(target: Target, args: list[str]) -> Iterator[None]:
    """sys.argv and sys.path[0] as python sets them; restored afterwards."""
    saved_argv, saved_path = sys.argv, sys.path[:]
    if target.kind == "module":
        first, argv0 = os.getcwd(), target.name  # runpy puts the module's file in argv[0] while it runs
    else:
        assert target.path is not None, "a script or an archive is resolved to its path"
        first, argv0 = os.path.dirname(os.path.realpath(target.path)), target.name
        if target.kind == "archive":
            first = target.path
    sys.argv = [argv0, *args]
    if sys.path:
        sys.path[0] = first
    else:
        sys.path.append(first)
    try:
        yield
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path


def _execute(target: Target) -> None:
    if target.kind == "module":
        runpy.run_module(target.name, run_name="__main__", alter_sys=True)
        return
    assert target.path is not None, "a script or an archive is resolved to its path"
    if target.kind == "archive":
        runpy.run_path(target.path, run_name="__main__")
        return
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=target.path, __cached__=None, __package__=None, __spec__=None, __builtins__=builtins,
        __loader__=importlib.machinery.SourceFileLoader("__main__", target.path),
    )
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    assert target.code is not None, "a script that did not compile is never run"
    try:
        exec(target.code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
        else:
            sys.modules.pop("__main__", None)


def run_target(target: Target, args: list[str], before: Callable[[], None] | None = None) -> tuple[int, str]:
    """Run the script; (exit code, outcome) where outcome is completed | exited | raised | interrupted. `before`
    runs first (the profiler starting): a Ctrl-C or SIGTERM that lands there ends the run as one in the script's
    first line would."""
    try:
        if before is not None:
            before()
        with script_environment(target, args):
            _execute(target)
    except SystemExit as e:
        return _exit_code(e), "exited"
    except KeyboardInterrupt as e:
        print_script_exception(e)
        return 130, "interrupted"
    except ScriptTerminated:
        _flush()
        return 143, "interrupted"
    except BaseException as e:  # noqa: BLE001 - the script's own exception, printed as python would
        print_script_exception(e)
        return 1, "raised"
    _flush()
    return 0, "completed"


def _exit_code(e: SystemExit) -> int:
    code = e.code
    if code is None:
        _flush()
        return 0
    if isinstance(code, int):
        _flush()
        return int(code)
    _flush()
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _internal(filename: str) -> bool:
    return (filename.startswith(_ATTNPROF_DIR) or filename.startswith("<frozen importlib")
            or filename == "<frozen runpy>" or filename == _RUNPY_FILE)


def strip_traceback(tb: types.TracebackType | None) -> types.TracebackType | None:
    kept = []
    while tb is not None:
        if not _internal(tb.tb_frame.f_code.co_filename):
            kept.append(tb)
        tb = tb.tb_next
    out = None
    for t in reversed(kept):
        out = types.TracebackType(out, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return out


def _strip_all(e: BaseException, seen: set[int]) -> None:
    if id(e) in seen:
        return
    seen.add(id(e))
    try:
        e.__traceback__ = strip_traceback(e.__traceback__)
    except Exception:
        pass
    for inner in (e.__cause__, e.__context__, *getattr(e, "exceptions", ())):
        if isinstance(inner, BaseException):
            _strip_all(inner, seen)


def print_script_exception(e: BaseException) -> None:
    """What python prints for an uncaught exception, through sys.excepthook (the script may have set its own),
    without attnprof's frames."""
    _flush()
    _strip_all(e, set())
    try:
        sys.excepthook(type(e), e, e.__traceback__)
    except Exception:
        sys.__excepthook__(type(e), e, e.__traceback__)
    _flush()


def print_syntax_error(e: SyntaxError) -> None:
    e.__traceback__ = None
    e.__context__ = None
    print_script_exception(e)


# --- signals ------------------------------------------------------------------------------------------------------


def _raise_terminated(signum, frame):
    raise ScriptTerminated()


def restore_default_sigterm() -> None:
    """Undo `sigterm_raises` (in a forked child, where the script's run is not ours to save)."""
    try:
        if signal.getsignal(signal.SIGTERM) is _raise_terminated:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While the script runs, SIGTERM raises ScriptTerminated so the run is saved; only if its disposition is the
    default one (and only in the main thread, where handlers can be set)."""
    installed = False
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _raise_terminated)
                installed = True
        except (ValueError, OSError):
            installed = False
    try:
        yield
    finally:
        if installed:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            except (ValueError, OSError):
                pass


@contextlib.contextmanager
def signals_held(redeliver: bool) -> Iterator[list[int]]:
    """SIGINT and SIGTERM are noted, not acted on, inside the block (saving a trace must not be cut in half).
    With `redeliver`, they are raised again after it, under the handlers that were in place."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old = signal.getsignal(sig)
            if old is None:
                continue
            signal.signal(sig, lambda signum, frame: got.append(signum))
            saved[sig] = old
        except (ValueError, OSError):
            continue
    try:
        yield got
    finally:
        _restore_handlers(saved)
        if redeliver:
            for signum in dict.fromkeys(got):
                signal.raise_signal(signum)


class AttnprofInterrupted(BaseException):
    """SIGINT or SIGTERM while attnprof works for itself after the script (the analysis): stop that work; the exit
    code stays the script's."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_attnprof_interrupted(signum, frame):
    raise AttnprofInterrupted(signum)


@contextlib.contextmanager
def signals_stop_attnprof() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise AttnprofInterrupted (main thread, default handlers only)."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            try:
                if signal.getsignal(sig) == default:
                    signal.signal(sig, _raise_attnprof_interrupted)
                    saved[sig] = default
            except (ValueError, OSError):
                continue
    try:
        yield
    finally:
        _restore_handlers(saved)


def _restore_handlers(saved: dict) -> None:
    """Put back the handlers a block replaced (signal number -> the handler it had)."""
    for sig, old in saved.items():
        try:
            signal.signal(sig, old)
        except (ValueError, OSError):
            pass
