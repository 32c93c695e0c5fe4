"""Attention inside torch.compile'd graphs, where attnprof's wrappers do not run.

The graph still calls the attention ops (aten::_scaled_dot_product_flash_attention_for_cpu, the flash / cuDNN /
efficient ops on GPU; FlexAttention's generated Triton template, which a GPU trace shows as an op of the kernel's
name), so calls.py finds them by name; what the trace lacks is the autograd link: ops inside a
graph carry no sequence number. The forward graph runs inside CompiledFunction and its backward inside the node
CompiledFunctionBackward, both numbered alike; autograd runs a graph's backward in reverse, so the i-th of n
attention ops of the forward pairs with the (n-1-i)-th of n attention backward ops there. When the counts differ
nothing is paired: a backward not attributed is better than one charged to the wrong call.
"""
from __future__ import annotations

from attnprof.analysis import taxonomy as tx
from attnprof.analysis.index import TraceIndex
from attnprof.analysis.records import FoundBy
from attnprof.trace.model import NO_ID


def graph_call(ix: TraceIndex, row: int) -> int | None:
    """The CompiledFunction op (one run of a compiled forward graph) that `row` ran inside, if any."""
    return next((a for a in ix.ancestors(row) if ix.name(a) == tx.COMPILED_FWD), None)


def in_backward(ix: TraceIndex, row: int) -> bool:
    return any(ix.name(a).startswith(tx.AUTOGRAD_NODE_PREFIX) or ix.name(a) == tx.COMPILED_BWD
               for a in ix.ancestors(row))


def found_by(ix: TraceIndex, row: int) -> FoundBy:
    """COMPILED for an op of a compiled graph, else ATEN (found by op name)."""
    return FoundBy.COMPILED if graph_call(ix, row) is not None else FoundBy.ATEN


def _outermost(ix: TraceIndex, rows: list[int], match) -> list[int]:
    return [r for r in rows if match(ix.name(r)) and not any(match(ix.name(a)) for a in ix.ancestors(r))]


def backward_ops(ix: TraceIndex, nodes_by_seq: dict[int, list[int]], anchor: int) -> list[int]:
    """The attention backward op paired with the forward attention op `anchor` of a compiled graph ([] if none)."""
    graph = graph_call(ix, anchor)
    seq = int(ix.trace.host.seq[graph]) if graph is not None else NO_ID
    if graph is None or seq == NO_ID:
        return []
    forwards = _outermost(ix, ix.subtree(graph).tolist(), tx.is_attention_fwd_op)
    if anchor not in forwards:
        return []
    for node in nodes_by_seq.get(seq, ()):
        if not ix.name(node).endswith(tx.COMPILED_BWD):
            continue
        backwards = _outermost(ix, ix.subtree(node).tolist(),
                               lambda n: tx.is_attention_bwd_op(n) and not n.startswith(tx.AUTOGRAD_NODE_PREFIX))
        if len(backwards) == len(forwards):
            return [backwards[len(forwards) - 1 - forwards.index(anchor)]]
    return []
