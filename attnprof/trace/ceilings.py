"""This device's measured ceilings (copy bandwidth, dense matmul throughput): the record and its cache file.

The roofline's "% of peak" divides by these. They are measured once on the device itself (capture/ceilings.py),
never taken from a datasheet, and cached in `$XDG_CACHE_HOME/attnprof/ceilings.json` (default
`~/.cache/attnprof/ceilings.json`), one entry per device name and torch version. No torch import here: analysis and
dashboards read the cache on machines without a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from attnprof.files import atomic_write

CEILINGS_FILE = "ceilings.json"
CEILINGS_VERSION = 1


@dataclass
class Ceilings:
    device: str  # "NVIDIA H100 80GB HBM3", or "cpu (<model name>)"
    copy_gbps: float  # device-to-device copy, bytes read + written per second / 1e9
    matmul_tflops: float  # dense matmul in `dtype`, 2·n³ flops per n×n×n product
    dtype: str  # matmul dtype: "bfloat16" on CUDA, "float32" on CPU
    measured_at: str  # ISO 8601
    method: str  # sizes and repetitions, in words
    torch_version: str = ""  # ceilings move with the kernels torch ships, so the cache is keyed by it too


@dataclass
class _CacheFile:
    version: int
    entries: list[Ceilings]


def ceilings_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "attnprof" / CEILINGS_FILE


def _read(path: Path) -> list[Ceilings]:
    if not path.is_file():
        return []
    try:
        cache = msgspec.json.decode(path.read_bytes(), type=_CacheFile)
    except (msgspec.DecodeError, msgspec.ValidationError, OSError):
        return []  # a damaged or older cache is re-measured, not an error
    return cache.entries if cache.version == CEILINGS_VERSION else []


def load_ceilings(device: str, torch_version: str | None = None, path: Path | None = None) -> Ceilings | None:
    """The cached ceilings of `device` measured under `torch_version` (any version, latest measured, when None)."""
    entries = [c for c in _read(path or ceilings_path()) if c.device == device
               and (torch_version is None or c.torch_version == torch_version)]
    return max(entries, key=lambda c: c.measured_at) if entries else None


def save_ceilings(ceilings: Ceilings, path: Path | None = None) -> Path:
    """Add or replace the entry for (device, torch version); written atomically so concurrent runs never see half."""
    path = path or ceilings_path()
    entries = [c for c in _read(path)
               if (c.device, c.torch_version) != (ceilings.device, ceilings.torch_version)]
    entries.append(ceilings)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, msgspec.json.format(msgspec.json.encode(_CacheFile(CEILINGS_VERSION, entries)), indent=1))
