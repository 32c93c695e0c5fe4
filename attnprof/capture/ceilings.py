"""Measure this device's ceilings for the roofline: a large copy (bytes read + written) and a large dense matmul.

Measured, never taken from a datasheet: what a copy and a cuBLAS (or CPU BLAS) matmul actually reach on this
machine, clocks and drivers included. Cached per device name and torch version (trace/ceilings.py).
"""
from __future__ import annotations

import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from attnprof.capture.bench import median_us
from attnprof.trace.ceilings import Ceilings, load_ceilings, save_ceilings

#: Sizes far beyond any cache (H100 L2: 50 MB) and large enough for the matmul to reach its steady rate.
CUDA_COPY_BYTES, CUDA_MATMUL_N, CUDA_MATMUL_DTYPE = 1 << 30, 8192, torch.bfloat16
#: On CPU smaller, so a first `attnprof compare` stays within seconds; still far beyond a last-level cache.
CPU_COPY_BYTES, CPU_MATMUL_N, CPU_MATMUL_DTYPE = 256 << 20, 2048, torch.float32
WARMUP, REPS = 3, 10


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model})" if model else "cpu"


# One function per measurement: its tensors are freed when it returns, before the next one allocates its own.
def _copy_us(device: torch.device, copy_bytes: int, warmup: int, reps: int) -> float:
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    return median_us(lambda _: dst.copy_(src), device, warmup, reps)


def _matmul_us(device: torch.device, n: int, dtype: torch.dtype, warmup: int, reps: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    return median_us(lambda _: torch.matmul(a, b, out=c), device, warmup, reps)


def measure_ceilings(device: torch.device, copy_bytes: int | None = None, matmul_n: int | None = None,
                     warmup: int = WARMUP, reps: int = REPS) -> Ceilings:
    on_cuda = device.type == "cuda"
    copy_bytes = copy_bytes or (CUDA_COPY_BYTES if on_cuda else CPU_COPY_BYTES)
    n = matmul_n or (CUDA_MATMUL_N if on_cuda else CPU_MATMUL_N)
    dtype = CUDA_MATMUL_DTYPE if on_cuda else CPU_MATMUL_DTYPE

    copy_us = _copy_us(device, copy_bytes, warmup, reps)
    matmul_us = _matmul_us(device, n, dtype, warmup, reps)
    if on_cuda:
        torch.cuda.empty_cache()

    clock = "CUDA events" if on_cuda else "host clock"
    dtype_name = str(dtype).replace("torch.", "")
    return Ceilings(
        device=device_name(device),
        copy_gbps=2 * copy_bytes / copy_us / 1e3,  # read + written
        matmul_tflops=2 * n ** 3 / matmul_us / 1e6,
        dtype=dtype_name,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method=(f"median of {reps} reps after {warmup} warm-up ({clock}): copy_ of {copy_bytes / 2**20:.0f} MiB "
                f"counted as read + written; {n}x{n}x{n} {dtype_name} matmul counted as 2n^3 flops"),
        torch_version=str(torch.__version__),
    )


def device_ceilings(device: torch.device, remeasure: bool = False, path: Path | None = None,
                    progress: Callable[[str], None] | None = None) -> Ceilings:
    """The cached ceilings of this device and torch, measured (and cached) when missing or when asked to."""
    if not remeasure:
        cached = load_ceilings(device_name(device), str(torch.__version__), path)
        if cached is not None:
            return cached
    if progress:
        progress(f"measuring the copy and matmul ceilings of {device_name(device)} (once; then cached)")
    ceilings = measure_ceilings(device)
    saved = save_ceilings(ceilings, path)
    if progress:
        progress(f"ceilings cached in {saved}")
    return ceilings
