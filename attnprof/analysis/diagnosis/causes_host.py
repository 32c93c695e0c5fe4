"""Host-side causes: launch (the GPU idle, waiting for the CPU) and other (memsets and fills on a GPU; the host
time between ops on a CPU), and their fixes."""
from __future__ import annotations

from attnprof.analysis.diagnosis.accumulate import CauseSums, cause_sum
from attnprof.analysis.diagnosis.parts import PhaseParts
from attnprof.analysis.diagnosis.records import LAUNCH, OTHER
from attnprof.units import us_text


def pair_launch_and_other(sums: CauseSums, phase: str, A: PhaseParts, B: PhaseParts) -> None:
    """B's GPU idle less A's (when either side ran on a GPU), and B's other time less A's."""
    if A.launch is not None or B.launch is not None:
        d = (B.launch or 0.0) - (A.launch or 0.0)
        acc = cause_sum(sums, LAUNCH)
        acc.add(phase, d, f"{phase}: GPU idle {us_text(B.launch or 0.0)} in B vs {us_text(A.launch or 0.0)} in A")
        acc.fix = launch_fix(B.backend if d >= 0 else A.backend)
    acc = cause_sum(sums, OTHER)
    acc.add(phase, B.other - A.other, f"{phase}: {us_text(B.other)} in B vs {us_text(A.other)} in A")
    acc.fix = other_fix(B.launch is None and A.launch is None)


def single_launch_and_other(sums: CauseSums, phase: str, p: PhaseParts) -> None:
    if p.launch is not None:
        acc = cause_sum(sums, LAUNCH)
        acc.add(phase, p.launch, f"{phase}: GPU idle between the call's kernels, waiting for the CPU")
        acc.fix = launch_fix(p.backend)
    acc = cause_sum(sums, OTHER)
    acc.add(phase, p.other, f"{phase}: {'host time between ops' if p.launch is None else 'memsets and fills'}")
    acc.fix = other_fix(p.launch is None)


def launch_fix(backend: str | None) -> str:
    fix = ("capture the step in CUDA graphs (torch.compile(mode=\"reduce-overhead\") or torch.cuda.graphs), fuse "
           "the small ops around the call, or give each call more work (larger batches)")
    if backend == "cudnn":
        return ("cuDNN's CPU-side cost per call (graph and plan lookup) is exposed in small steps: for small shapes "
                "select FLASH_ATTENTION with torch.nn.attention.sdpa_kernel, or " + fix)
    return fix


def other_fix(on_cpu: bool) -> str:
    if on_cpu:
        return ("host time between the call's ops (Python, dispatcher): fewer small ops around the call, or "
                "torch.compile")
    return "memsets and fills the call launches: preallocate outputs, or a backend that needs no workspace memset"
