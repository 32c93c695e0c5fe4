"""`attnprof compare`: time every attention backend this machine has on the same shapes, and profile one call of
each so the core analysis splits it like any traced call.

Backends: SDPA (auto, and each backend forced with `sdpa_kernel`), SDPA called on (B, L, H, D) tensors through
transpose views, PyTorch's own FlashAttention-2 (`aten::_flash_attention_forward`), flash-attn 2, FA3, FA4 and
xformers when importable. Every backend that takes (B, L, H, D) runs twice: on inputs already in that layout
("native"), and through the seed case's wrapper ("seed-wrapper": (B, H, L, D) inputs copied with
`transpose(1, 2).contiguous()`, and the output copied back), the mistake that made FlashAttention look slow.

Timing: per repetition (CUDA events on a GPU, the host clock on CPU), median over many, after warm-up, with the
inputs rotated among enough sets to exceed twice the last-level cache so small shapes are not flattered by it.
Then one more repetition runs under torch.profiler with the backend's call inside a `record_function` range named
like attnprof's own call ranges; the layout copies of the seed wrapper sit right outside it, where the analysis
looks for them. What cannot run is kept, with torch's or the library's own reason.
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from attnprof.capture.bench import median_us
from attnprof.capture.ceilings import device_name
from attnprof.capture.kineto import export_trace, quiet_kineto
from attnprof.errors import AttnprofError, failure_reason, short_line
from attnprof.files import create_run_folder, now
from attnprof.trace.compare import BWD, FWD, NATIVE, SEED_WRAPPER, CompareCase, CompareRun, Measurement
from attnprof.trace.runinfo import range_name

BHLD, BLHD = "BHLD", "BLHD"
TRACE_SUFFIX = ".pt.trace.json.gz"
#: Inputs are rotated among sets totalling at least this many times the last-level cache (H100 L2: 50 MB).
CACHE_MULTIPLE = 2

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


@dataclass
class Backend:
    name: str
    layout: str  # BHLD | BLHD: how its q, k, v (and output) are laid out
    op: str  # entry point named in its attnprof range, as `attnprof trace` names it (capture/entrypoints.py)
    call: Attention | None  # (q, k, v, causal) -> out, all in `layout`
    unavailable: str | None = None  # why it cannot be called at all (import error)
    version: str | None = None  # the library's version, when it has one
    # torch's own verdict before running, for backends torch can judge (SDPA's fused kernels on CUDA)
    precheck: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], str | None] | None = None
    context: Callable[[], AbstractContextManager] = nullcontext  # entered around timing and profiling, outside the range


@dataclass
class CompareOptions:
    cases: list[CompareCase]
    device: str = "cuda"  # cuda | cpu
    warmup: int = 10
    reps: int = 100
    backends: list[str] | None = None  # names to run; None: all
    out: Path | None = None  # run folder to create; None: <root>/compare-<timestamp>/
    root: Path = Path("traces")
    command: list[str] = field(default_factory=list)


# --- backends -----------------------------------------------------------------------------------------------------

def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """SDPA on (B, H, L, D); GQA (fewer k/v heads) through enable_gqa."""
    gqa: dict[str, Any] = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, **gqa)


def _sdpa_on_blhd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """SDPA on (B, L, H, D) tensors through transpose views: SDPA takes strided inputs, no copy needed."""
    return _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal).transpose(1, 2)


def _aten_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """PyTorch's own FlashAttention-2 kernels on (B, L, H, D); differentiable (FlashAttentionBackward0)."""
    return torch.ops.aten._flash_attention_forward(q, k, v, None, None, q.shape[1], k.shape[1], 0.0, causal,
                                                   False)[0]


def _sdpa_params(q, k, v, causal):
    """torch.backends.cuda.SDPAParams: (q, k, v, mask, dropout, is_causal, enable_gqa) since torch 2.5, before
    that without enable_gqa."""
    try:
        return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, causal, q.shape[1] != k.shape[1])
    except TypeError:
        return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, causal)  # type: ignore[call-arg]  # torch < 2.5


def _sdpa_precheck(predicate_name: str):
    predicate = getattr(torch.backends.cuda, predicate_name, None)
    if predicate is None:
        return None

    def check(q, k, v, causal) -> str | None:
        if not q.is_cuda:
            return None  # these predicates judge the CUDA kernels; CPU support shows when the call runs
        params = _sdpa_params(q, k, v, causal)
        with warnings.catch_warnings(record=True) as caught, _native_warnings() as printed:
            warnings.simplefilter("always")
            ok = predicate(params, debug=True)  # debug=True: torch says why not
        if ok:
            return None
        return "; ".join(_messages(caught, printed)) or f"torch.backends.cuda.{predicate_name} returned False"
    return check


_NATIVE_WARNING_RE = re.compile(r"^\[W[^\]]*\] Warning: (?P<message>.*?)(?: \(function \w+\))?$")


@contextmanager
def _native_warnings():
    """Collects, into the list it yields (filled on exit), the c10 warnings (`[W... file.h:123] Warning: ...`)
    printed to file descriptor 2 inside the block: SDPA's reasons why a kernel cannot run come that way, not as
    Python warnings. Anything else printed there is passed on."""
    messages: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    captured = tempfile.TemporaryFile()  # noqa: SIM115  # closed in the finally, once fd 2 is restored
    os.dup2(captured.fileno(), 2)
    try:
        yield messages
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
        captured.close()
        for line in text.splitlines():
            m = _NATIVE_WARNING_RE.match(line.strip())
            if m:
                messages.append(m["message"])
            elif line.strip():
                sys.stderr.write(line + "\n")


def _forced_sdpa(name: str, member: str, predicate: str | None) -> Backend:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    choice = getattr(SDPBackend, member)
    return Backend(name=name, layout=BHLD, op="sdpa", call=_sdpa, context=lambda: sdpa_kernel([choice]),
                   precheck=_sdpa_precheck(predicate) if predicate else None)


def _first_output(result):
    """FA3 returns out or (out, lse) depending on its version, FA4 (out, lse), flash-attn 2 out."""
    return result[0] if isinstance(result, (tuple, list)) else result


def _library_backend(name: str, module: str, attr: str, op: str,
                     adapt: Callable[[Callable, object], Attention]) -> Backend:
    """A BLHD backend from an optional package; its import error is the reason when it is missing."""
    try:
        mod = importlib.import_module(module)
        fn = getattr(mod, attr)
    except Exception as e:  # third-party CUDA extensions fail to import in many ways (OSError, RuntimeError, ...)
        return Backend(name=name, layout=BLHD, op=op, call=None, unavailable=failure_reason(e))
    top = importlib.import_module(module.split(".")[0])
    return Backend(name=name, layout=BLHD, op=op, call=adapt(fn, mod),
                   version=getattr(mod, "__version__", None) or getattr(top, "__version__", None))


def _xformers_call(fn, mod) -> Attention:
    def call(q, k, v, causal):
        return fn(q, k, v, attn_bias=mod.LowerTriangularMask() if causal else None)
    return call


def _flash_style_call(fn, _mod) -> Attention:
    def call(q, k, v, causal):
        return _first_output(fn(q, k, v, causal=causal))
    return call


#: Every backend compare knows, in table order. Built on demand: building one imports its library.
_BACKENDS: tuple[tuple[str, Callable[[], Backend]], ...] = (
    ("sdpa-auto", lambda: Backend(name="sdpa-auto", layout=BHLD, op="sdpa", call=_sdpa)),
    ("sdpa-flash", lambda: _forced_sdpa("sdpa-flash", "FLASH_ATTENTION", "can_use_flash_attention")),
    ("sdpa-efficient", lambda: _forced_sdpa("sdpa-efficient", "EFFICIENT_ATTENTION", "can_use_efficient_attention")),
    ("sdpa-cudnn", lambda: _forced_sdpa("sdpa-cudnn", "CUDNN_ATTENTION", "can_use_cudnn_attention")),
    ("sdpa-math", lambda: _forced_sdpa("sdpa-math", "MATH", None)),
    ("sdpa-blhd", lambda: Backend(name="sdpa-blhd", layout=BLHD, op="sdpa", call=_sdpa_on_blhd)),
    ("aten-flash", lambda: Backend(name="aten-flash", layout=BLHD, op="aten._flash_attention_forward",
                                   call=_aten_flash)),
    ("flash-attn2", lambda: _library_backend("flash-attn2", "flash_attn", "flash_attn_func", "flash_attn_func",
                                             _flash_style_call)),
    ("fa3", lambda: _library_backend("fa3", "flash_attn_interface", "flash_attn_func", "fa3.flash_attn_func",
                                     _flash_style_call)),
    ("fa4", lambda: _library_backend("fa4", "flash_attn.cute", "flash_attn_func", "fa4.flash_attn_func",
                                     _flash_style_call)),
    ("xformers", lambda: _library_backend("xformers", "xformers.ops", "memory_efficient_attention",
                                          "xformers.memory_efficient_attention", _xformers_call)),
)
BACKEND_NAMES = tuple(name for name, _ in _BACKENDS)


def backends(names: list[str] | None = None) -> list[Backend]:
    """The backends named (all when None), in table order; one that cannot be imported carries the reason."""
    unknown = sorted(set(names or ()) - set(BACKEND_NAMES))
    if unknown:
        raise AttnprofError(f"unknown backend {', '.join(unknown)} (known: {', '.join(BACKEND_NAMES)})")
    return [make() for name, make in _BACKENDS if not names or name in names]


def variants_of(backend: Backend) -> tuple[str, ...]:
    return (NATIVE, SEED_WRAPPER) if backend.layout == BLHD else (NATIVE,)


def _variant(backend: Backend, variant: str, causal: bool):
    """(q, k, v, around_call) -> out: the backend called as a user would; `around_call` wraps only the call."""
    call = backend.call
    assert call is not None, f"{backend.name} is unavailable: it is never run"
    if variant == NATIVE:
        def run(q, k, v, around_call):
            with around_call():
                return call(q, k, v, causal)
    else:
        def run(q, k, v, around_call):
            # the seed's wrapper: (B, H, L, D) copied to (B, L, H, D) for the kernel, and the output copied back
            q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
            with around_call():
                out = call(q, k, v, causal)
            return out.transpose(1, 2).contiguous()
    return run


# --- reasons ------------------------------------------------------------------------------------------------------

def _messages(caught: Sequence = (), printed: Sequence[str] = ()) -> list[str]:
    """Python warnings and printed c10 warnings, shortened, each once."""
    texts = [short_line(w.message) for w in caught] + [short_line(m) for m in printed]
    return list(dict.fromkeys(t for t in texts if t))


def _failure(error: BaseException, caught: Sequence = (), printed: Sequence[str] = ()) -> str:
    """The error in torch's (or the library's) own words, after the warnings torch gave on the way."""
    return "; ".join([*_messages(caught, printed), failure_reason(error)])


def _attempt(fn: Callable[[], object]) -> str | None:
    """Run once; None if it worked, else why not."""
    error = None
    with warnings.catch_warnings(record=True) as caught, _native_warnings() as printed:
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as e:  # any failure of a backend on this case is a row of the table, not a crash
            error = e
    return None if error is None else _failure(error, caught, printed)


# --- inputs -------------------------------------------------------------------------------------------------------

@dataclass
class _Inputs:
    sets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    grads: list[torch.Tensor]  # dout per set (empty without backward)


def _dims(case: CompareCase, layout: str, heads: int) -> tuple[int, ...]:
    if layout == BHLD:
        return case.batch, heads, case.seqlen, case.head_dim
    return case.batch, case.seqlen, heads, case.head_dim


def _last_level_cache_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=0)


def input_sets_needed(set_bytes: int, cache_bytes: int) -> int:
    """Sets to rotate so that, between two uses of one set, more than the cache was read."""
    return max(1, math.ceil(CACHE_MULTIPLE * cache_bytes / set_bytes)) if set_bytes else 1


def _make_inputs(case: CompareCase, layout: str, device: torch.device, n_sets: int) -> _Inputs:
    dtype = getattr(torch, case.dtype)
    # one allocation per role, sliced into sets: thousands of tiny sets cost one allocation, not thousands
    q_all, k_all, v_all = (torch.randn((n_sets, *_dims(case, layout, h)), device=device, dtype=dtype)
                           for h in (case.heads_q, case.heads_kv, case.heads_kv))
    sets = []
    for i in range(n_sets):
        q, k, v = q_all[i], k_all[i], v_all[i]
        if case.backward:  # each set its own leaf, so autograd.grad stops at it
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        sets.append((q, k, v))
    grads = list(torch.randn((n_sets, *_dims(case, layout, case.heads_q)), device=device, dtype=dtype).unbind(0)) \
        if case.backward else []
    return _Inputs(sets=sets, grads=grads)


def free_memory_bytes(device: torch.device) -> int | None:
    """What can still be allocated on `device`: the GPU's free memory, on CPU the RAM the kernel says is available;
    None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_shortfall(case: CompareCase, n_sets: int, device: torch.device) -> str | None:
    """Why a case cannot run here at all, before allocating: its inputs and output alone do not fit."""
    free = free_memory_bytes(device)
    needed = n_sets * _set_bytes(case) + case.heads_q * _per_head_bytes(case)  # + one output
    if free is None or needed <= free:
        return None
    where = "free on the GPU" if device.type == "cuda" else "of RAM available"
    return (f"its inputs and output need {needed / 2**30:,.1f} GiB, {free / 2**30:,.1f} GiB {where}: "
            "not run (a smaller shape, or a larger device)")


def _per_head_bytes(case: CompareCase) -> int:
    itemsize = torch.empty(0, dtype=getattr(torch, case.dtype)).element_size()
    return case.batch * case.seqlen * case.head_dim * itemsize


def _set_bytes(case: CompareCase) -> int:
    per_head = _per_head_bytes(case)
    roles = 2 * case.heads_q + 2 * case.heads_kv if case.backward else case.heads_q + 2 * case.heads_kv
    return roles * per_head


# --- the run ------------------------------------------------------------------------------------------------------

def _case_label(case: CompareCase) -> str:
    bits = ["x".join(map(str, case.shape)), case.dtype]
    if case.causal:
        bits.append("causal")
    return ".".join(bits)


class _Runner:
    def __init__(self, options: CompareOptions, device: torch.device, folder: Path):
        self.options = options
        self.device = device
        self.folder = folder
        self.cache_bytes = _last_level_cache_bytes(device)
        self.next_id = 1

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _with_inputs(self, case: CompareCase, backend: Backend, variant: str, n_sets: int,
                     work: Callable[[_Inputs], list[Measurement]], phases_failed) -> list[Measurement]:
        """`work` on fresh input sets inside the backend's context; running out of memory is a reason too."""
        layout = BHLD if variant == SEED_WRAPPER else backend.layout
        try:
            inputs = _make_inputs(case, layout, self.device, n_sets)
            with backend.context():
                return work(inputs)
        except torch.OutOfMemoryError as e:  # a shape too large for this backend (math materialises L×L)
            return phases_failed(failure_reason(e))
        except RuntimeError as e:
            if "can't allocate memory" not in str(e):  # the CPU allocator's out-of-memory is a RuntimeError
                raise
            return phases_failed(failure_reason(e))
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def time(self, index: int, case: CompareCase, backend: Backend, variant: str) -> list[Measurement]:
        """One measurement per phase: the median time, or why it cannot run."""
        def unsupported(reason: str) -> list[Measurement]:
            return [Measurement(case=index, backend=backend.name, variant=variant, phase=p, unsupported=reason)
                    for p in case.phases]

        if backend.unavailable:
            return unsupported(backend.unavailable)
        n_sets = input_sets_needed(_set_bytes(case), self.cache_bytes)
        too_big = _memory_shortfall(case, n_sets, self.device)
        if too_big:
            return unsupported(too_big)
        return self._with_inputs(case, backend, variant, n_sets,
                                 lambda inputs: self._time(index, case, backend, variant, inputs), unsupported)

    def _time(self, index: int, case: CompareCase, backend: Backend, variant: str,
              inputs: _Inputs) -> list[Measurement]:
        o = self.options
        run = _variant(backend, variant, case.causal)
        sets, grads, n = inputs.sets, inputs.grads, len(inputs.sets)
        base: dict[str, Any] = dict(case=index, backend=backend.name, variant=variant, reps=o.reps, input_sets=n)
        reason = backend.precheck(*sets[0], case.causal) if backend.precheck else None
        reason = reason or _attempt(lambda: run(*sets[0], nullcontext))
        if reason:
            return [Measurement(phase=p, unsupported=reason, **base) for p in case.phases]
        bwd_reason = _attempt(lambda: torch.autograd.grad(run(*sets[0], nullcontext), sets[0], grads[0])) \
            if case.backward else None
        self._sync()

        out = [Measurement(phase=FWD, median_us=median_us(lambda i: run(*sets[i % n], nullcontext), self.device,
                                                           o.warmup, o.reps), **base)]
        if bwd_reason:
            out.append(Measurement(phase=BWD, unsupported=bwd_reason, **base))
        elif case.backward:
            held: dict[str, torch.Tensor] = {}

            def forward(i):  # untimed: the backward of this repetition's graph is what is timed
                held["out"] = run(*sets[i % n], nullcontext)

            def backward(i):
                return torch.autograd.grad(held.pop("out"), sets[i % n], grads[i % n])

            out.append(Measurement(phase=BWD, median_us=median_us(backward, self.device, o.warmup, o.reps,
                                                                  setup=forward), **base))
        return out

    def profile(self, case: CompareCase, backend: Backend, variant: str, measured: list[Measurement]) -> None:
        """Profile one repetition of a variant that ran, and point its measurements at the trace and call."""
        ran = [m for m in measured if m.unsupported is None]
        if not ran:
            return
        # two sets (one for the profiler's warm-up step) unless one set alone already outgrows the cache
        n_sets = min(2, input_sets_needed(_set_bytes(case), self.cache_bytes))
        with_backward = any(m.phase == BWD for m in ran)

        def record(inputs: _Inputs) -> list[Measurement]:
            trace, call_id = self._profile(case, backend, variant, inputs, with_backward)
            for m in ran:
                m.trace, m.call_id = trace, call_id
            return ran

        def out_of_memory(reason: str) -> list[Measurement]:
            for m in ran:
                m.unsupported = f"profiling: {reason}"
            return ran

        self._with_inputs(case, backend, variant, n_sets, record, out_of_memory)

    def _profile(self, case: CompareCase, backend: Backend, variant: str, inputs: _Inputs,
                 with_backward: bool) -> tuple[str, int]:
        """One repetition under torch.profiler, after one unrecorded step: the profiler's first step pays its own
        set-up, which would show inside the range. The two steps use different input sets (when there are two),
        so the recorded one does not find its inputs in the cache the warm-up step just filled."""
        call_id, self.next_id = self.next_id, self.next_id + 1
        name = range_name(backend.op, f"{backend.name}/{variant}", call_id)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        run = _variant(backend, variant, case.causal)

        def repetition(i: int, around_call) -> None:
            out = run(*inputs.sets[i], around_call)
            if with_backward:
                torch.autograd.grad(out, inputs.sets[i], inputs.grads[i])
            self._sync()

        self._sync()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Profiler clears events.*")  # that is what we want
            with quiet_kineto(), profile(activities=activities, record_shapes=True,
                                         schedule=torch.profiler.schedule(wait=0, warmup=1, active=1)) as prof:
                repetition(len(inputs.sets) - 1, nullcontext)
                prof.step()
                repetition(0, lambda: record_function(name))
        file = f"{_case_label(case)}.{backend.name}.{variant}{TRACE_SUFFIX}"
        export_trace(prof, self.folder / file)
        return file, call_id


def _versions(backends: list[Backend]) -> dict[str, str]:
    versions = {"torch": str(torch.__version__)}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        versions["cudnn"] = str(torch.backends.cudnn.version())
    for b in backends:
        if b.version:
            versions[b.name] = str(b.version)
    return versions


def run_compare(options: CompareOptions, progress: Callable[[str, int, int], None] | None = None) -> CompareRun:
    """Time and profile every backend and variant on every case; traces go to a new run folder."""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise AttnprofError("no CUDA device here: use --device cpu")
    if options.warmup < 0 or options.reps < 1:
        raise AttnprofError("--warmup must be >= 0 and --reps >= 1")
    chosen = backends(options.backends)
    device = torch.device(options.device)
    created = options.out is None or not Path(options.out).exists()
    started = now()
    folder = create_run_folder(options.out, options.root, "compare", started, empty_ok=True)
    try:
        return _run_all(options, chosen, device, folder, started, progress)
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a failed compare leaves nothing behind that would block a rerun with the same --out
        raise


def _run_all(options: CompareOptions, chosen: list[Backend], device: torch.device, folder: Path,
             started: datetime, progress: Callable[[str, int, int], None] | None) -> CompareRun:
    runner = _Runner(options, device, folder)
    clock = ("a CUDA event pair on the stream, the host given a head start (GPU time)" if device.type == "cuda"
             else "the host clock (time.perf_counter)")
    cache = "L2" if device.type == "cuda" else "last-level"
    run = CompareRun(
        folder=str(folder), device=device_name(device),
        started_at=started.astimezone().isoformat(timespec="seconds"), command=list(options.command),
        versions=_versions(chosen),
        method=(f"median of {options.reps} repetitions after {options.warmup} warm-up, each timed alone with "
                f"{clock}; inputs rotated among sets totalling >= {CACHE_MULTIPLE}x the {cache} cache "
                f"({runner.cache_bytes / 2**20:.1f} MiB); one more repetition profiled (torch.profiler, "
                f"record_shapes) for the split"),
        cases=list(options.cases),
    )
    torch.manual_seed(0)
    plan = [(index, case, backend, variant) for index, case in enumerate(options.cases) for backend in chosen
            for variant in variants_of(backend)]
    # every timing first, every profile after: no timing depends on what a profiler session leaves behind in the
    # process (its buffers, CUPTI's state), whatever the torch version
    # progress(what is running, steps done, steps in all): a backend that is not importable costs no step
    to_time = sum(1 for _, _, backend, _ in plan if not backend.unavailable)
    done, total = 0, to_time
    measured = []
    for index, case, backend, variant in plan:
        if progress and not backend.unavailable:
            progress(f"timing {_case_label(case)} {backend.name} {variant}", done, total)
            done += 1
        measured.append(runner.time(index, case, backend, variant))
    total += sum(1 for ms in measured if any(m.unsupported is None for m in ms))
    for (_index, case, backend, variant), ms in zip(plan, measured):
        if any(m.unsupported is None for m in ms):
            if progress:
                progress(f"profiling {_case_label(case)} {backend.name} {variant}", done, total)
            done += 1
        runner.profile(case, backend, variant, ms)
        run.measurements.extend(ms)
    if progress:
        progress("done", done, total)
    return run
