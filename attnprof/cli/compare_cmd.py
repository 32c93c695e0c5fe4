"""`attnprof compare --shape B,H,L,D ...`: every attention backend on this machine, same shapes, side by side."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="time every attention backend here (SDPA, FlashAttention, xformers...) on the same shapes",
        description=(
            "Times SDPA (auto and each forced backend), PyTorch's FlashAttention-2, flash-attn 2, FA3, FA4 and "
            "xformers when importable, each (B, L, H, D) backend both on native inputs and through the seed's "
            "transpose/contiguous wrapper; profiles one call of each and splits it into compute / copy / launch / "
            "other; reports TFLOP/s, GB/s and % of this device's measured peak. Writes a run folder "
            "(compare.json and one trace per variant)."
        ),
    )
    p.add_argument("--shape", action="append", type=_shape, metavar="B,H,L,D",
                   help="batch, heads, sequence length, head dim; B,Hq,Hkv,L,D for GQA; repeat for several "
                        "(default: 12,64,256,64 on CUDA, 2,4,128,32 on CPU)")
    p.add_argument("--dtype", action="append", choices=sorted(_DTYPES),
                   help="repeat for several (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--causal", action="store_true", help="causal mask")
    p.add_argument("--backward", action="store_true", help="also time and split the backward pass")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when there is one")
    p.add_argument("--backends", type=lambda s: [b.strip() for b in s.split(",") if b.strip()], metavar="A,B",
                   help="only these backends (default: all): sdpa-auto, sdpa-flash, sdpa-efficient, sdpa-cudnn, "
                        "sdpa-math, sdpa-blhd, aten-flash, flash-attn2, fa3, fa4, xformers")
    p.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed repetitions first (default: 10)")
    p.add_argument("--reps", type=int, default=100, metavar="N", help="timed repetitions (default: 100)")
    p.add_argument("--out", type=Path, help="run folder to create (default: <root>/compare-<timestamp>/)")
    p.add_argument("--root", type=Path, default=Path("traces"), help="where run folders go (default: traces/)")
    p.add_argument("--remeasure", action="store_true",
                   help="measure this device's copy and matmul ceilings again instead of using the cached ones")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of the table")
    p.set_defaults(run=run)


def _shape(text: str) -> tuple[int, int, int, int, int]:
    """(B, Hq, Hkv, L, D) from B,H,L,D or B,Hq,Hkv,L,D."""
    try:
        dims = [int(x) for x in text.split(",")]
    except ValueError:
        dims = []
    if len(dims) not in (4, 5) or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected B,H,L,D or B,Hq,Hkv,L,D (positive integers)")
    if len(dims) == 4:
        b, h, seqlen, d = dims
        return b, h, h, seqlen, d
    b, hq, hkv, seqlen, d = dims
    if hq % hkv:
        raise argparse.ArgumentTypeError(f"{text!r}: query heads ({hq}) must be a multiple of kv heads ({hkv})")
    return b, hq, hkv, seqlen, d


def _progress(message: str) -> None:
    print(f"attnprof compare: {message}", file=sys.stderr, flush=True)


@contextmanager
def _progress_bar():
    """A rich progress bar on stderr, gone when done; on a stderr that is no terminal, nothing."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("attnprof compare"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=None)

        def step(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield step


def run(ns: argparse.Namespace) -> int:
    from attnprof.files import check_run_folder_target

    check_run_folder_target(ns.out, ns.root, empty_ok=True)  # before importing torch and measuring anything

    import torch

    from attnprof.capture.compare import CompareOptions
    from attnprof.pipeline import run_comparison
    from attnprof.render.compare_table import CompareTableRenderer
    from attnprof.render.console import table_console
    from attnprof.trace.compare import CompareCase

    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shapes = ns.shape or [_shape("12,64,256,64" if device == "cuda" else "2,4,128,32")]
    dtypes = [_DTYPES[d] for d in (ns.dtype or ["fp16" if device == "cuda" else "fp32"])]
    cases = [CompareCase(batch=b, heads_q=hq, heads_kv=hkv, seqlen=seqlen, head_dim=d, dtype=dtype,
                         causal=ns.causal, backward=ns.backward)
             for (b, hq, hkv, seqlen, d) in shapes for dtype in dtypes]
    options = CompareOptions(cases=cases, device=device, warmup=ns.warmup, reps=ns.reps, backends=ns.backends,
                             out=ns.out, root=ns.root, command=["attnprof", *sys.argv[1:]])
    compared = run_comparison(options, ns.remeasure, progress_bar=_progress_bar, note=_progress)
    renderer = CompareTableRenderer(as_json=ns.json)
    if ns.json:
        sys.stdout.write(renderer.render(compared))
    else:
        renderer.print_to(table_console(), compared)
    return 0
