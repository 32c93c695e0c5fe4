"""Hand-written attention, found by its op pattern in any trace: softmax(q @ kᵀ * scale + mask) @ v.

On one thread, among the ops of one parent (what the model's code called): a GEMM of q and kᵀ (matmul, bmm, einsum,
baddbmm), any scale / mask ops, a softmax, any dropout / casts, a GEMM of the probabilities and v. The shapes must
chain: scores (…, Lq, Lk) from q (…, Lq, D) and k (…, Lk, D); the second GEMM reads (…, Lq, Lk) and v (…, Lk, Dv).
Each match is a call with op and backend "manual", split like a fused call (calls.py): its ops are its work (what
they copy inside, like matmul's reshape of kᵀ, is copy), the layout copies around it are found by the same walk,
its backward by autograd sequence numbers.

In a torch.compile'd forward graph inductor fuses scale, mask and softmax into generated kernels: a GPU trace shows
them as ops of the kernel's name (triton_per_fused__softmax_...), a CPU trace not at all. There two chained batched
GEMMs with only such kernels between them are the call (found_by "compiled", backend "manual-fused"): its work is
the GEMMs and the generated kernels between them, its output copy the generated copy kernel that reads its output
(GPU), and no copy is invented where the trace shows none. Ops inside an attnprof range or
a fused attention op are never matched: those calls are found already.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnprof.analysis import compiled
from attnprof.analysis import taxonomy as tx
from attnprof.analysis.calls import CallFinder, Verdict, _Layout, _numel, _Phase, _Prep, _stride_at, _tensor_dims
from attnprof.analysis.records import CallSplit, FoundBy, Phase, Position
from attnprof.trace.model import HostKind
from attnprof.trace.runinfo import RANGE_PREFIX

OP = "manual"
BACKEND = "manual"
#: the backend of a compiled match: the GEMMs are visible, the softmax and what surrounds it ran in generated code
FUSED_BACKEND = "manual-fused"
#: ops looked at between a softmax and each of its GEMMs (scale, mask, dropout, casts)
MAX_GAP = 16


@dataclass
class _Gemm:
    a: _Layout
    b: _Layout
    out: list[int] | None  # None for einsum: the trace does not record its equation


@dataclass
class Match:
    rows: list[int]  # sibling ops from the q·kᵀ GEMM to the ·v GEMM
    q: _Layout
    k: _Layout  # as (…, Lk, D)
    v: _Layout
    out: _Layout
    scores: list[int]
    fused: bool  # softmax not visible: fused into a compiled graph's generated kernels


def _broadcast(x: list[int], y: list[int]) -> list[int]:
    x, y = [1] * (len(y) - len(x)) + x, [1] * (len(x) - len(y)) + y
    return [max(a, b) for a, b in zip(x, y)]


def _gemm(finder: CallFinder, row: int) -> _Gemm | None:
    h = finder.trace.host
    name = finder.ix.name(row)
    dims = h.dims(row)
    if name == "aten::einsum":  # einsum(equation, [a, b])
        operands = _tensor_dims(dims[1]) if len(dims) > 1 and isinstance(dims[1], list) else []
        return _Gemm(_Layout(operands[0], None), _Layout(operands[1], None), None) if len(operands) == 2 else None
    first = 1 if name == "aten::baddbmm" else 0
    a, b = (dims[first:first + 2] + [None, None])[:2]
    if not (_tensor_dims([a]) and _tensor_dims([b])):
        return None
    strides = h.strides(row)
    return _Gemm(_Layout(a, _stride_at(strides, first)), _Layout(b, _stride_at(strides, first + 1)),
                 _broadcast(a[:-2], b[:-2]) + [a[-2], b[-1]])


def _transposed(t: _Layout) -> _Layout:
    dims = t.dims[:-2] + [t.dims[-1], t.dims[-2]]
    strides = t.strides[:-2] + [t.strides[-1], t.strides[-2]] if t.strides and len(t.strides) == len(t.dims) else None
    return _Layout(dims, strides)


def _qk(g: _Gemm, scores: list[int]) -> tuple[_Layout, _Layout] | None:
    """(q, k) if this GEMM makes the scores."""
    lq, lk, n = scores[-2], scores[-1], _numel(scores)
    if g.out is not None:  # q (…, Lq, D) @ kᵀ (…, D, Lk)
        if g.out[-2:] != [lq, lk] or _numel(g.out) != n or g.a.dims[-1] != g.b.dims[-2]:
            return None
        return g.a, _transposed(g.b)
    # einsum: q (…, Lq, D) and k (…, Lk, D), told apart by their element counts
    batch = n // (lq * lk)
    d = g.a.numel // (batch * lq) if batch and lq else 0
    if not d or g.a.numel != batch * lq * d or g.b.numel != batch * lk * d or lq not in g.a.dims or lk not in g.b.dims:
        return None
    return g.a, g.b


def _pv(g: _Gemm, scores: list[int]) -> tuple[_Layout, _Layout] | None:
    """(v, output) if this GEMM reads the probabilities and v."""
    lq, lk, n = scores[-2], scores[-1], _numel(scores)
    if g.out is not None:
        if g.a.dims[-2:] != [lq, lk] or g.a.numel != n or g.b.dims[-2] != lk:
            return None
        return g.b, _Layout(g.out, None)
    batch = n // (lq * lk)
    dv = g.b.numel // (batch * lk) if batch and lk else 0
    if g.a.numel != n or not dv or g.b.numel != batch * lk * dv or lk not in g.b.dims:
        return None
    return g.b, _Layout(scores[:-1] + [dv], None)


class _Scanner:
    def __init__(self, finder: CallFinder):
        self.finder = finder
        self.ix = finder.ix
        self.stop_ids = finder.range_ids | finder.fwd_ids  # attention found already

    def claimed_elsewhere(self, row: int) -> bool:
        """Inside an attnprof range, a fused attention op or a backward node: not a hand-written forward."""
        names = self.finder.trace.host.name
        return any(int(names[a]) in self.stop_ids for a in self.ix.ancestors(row)) or \
            compiled.in_backward(self.ix, row)

    def nearest_gemm(self, sib: np.ndarray, pos: int, direction: int) -> int | None:
        """Position of the nearest GEMM sibling within MAX_GAP, unless another softmax or call comes first."""
        i = pos + direction
        while 0 <= i < len(sib) and abs(i - pos) <= MAX_GAP:
            name = self.ix.name(int(sib[i]))
            if tx.is_gemm_op(name):
                return i
            if tx.is_softmax_op(name) or tx.is_attention_fwd_op(name) or name.startswith(RANGE_PREFIX):
                return None
            i += direction
        return None

    def match_softmax(self, s: int) -> Match | None:
        h = self.finder.trace.host
        scores = next(iter(_tensor_dims(h.dims(s))), None)
        if scores is None:
            return None
        sib, _, pos = self.ix.siblings(s)
        i1, i2 = self.nearest_gemm(sib, pos, -1), self.nearest_gemm(sib, pos, +1)
        if i1 is None or i2 is None:
            return None
        g1, g2 = _gemm(self.finder, int(sib[i1])), _gemm(self.finder, int(sib[i2]))
        qk = _qk(g1, scores) if g1 else None
        pv = _pv(g2, scores) if g2 else None
        if qk is None or pv is None:
            return None
        return Match(rows=sib[i1:i2 + 1].tolist(), q=qk[0], k=qk[1], v=pv[0], out=pv[1], scores=scores, fused=False)

    def match_fused(self, g: int) -> Match | None:
        """q·kᵀ then ·v in a compiled forward graph, the softmax between them in generated code: a kernel the
        trace names (GPU: triton_per_fused__softmax_...) or none at all (CPU: inductor's C++ kernels)."""
        if compiled.graph_call(self.ix, g) is None:
            return None
        sib, _, pos = self.ix.siblings(g)
        j, generated = pos + 1, []
        while j < len(sib) and (tx.is_view_op(self.ix.name(int(sib[j]))) or
                                tx.is_generated_kernel(self.ix.name(int(sib[j])))):
            if tx.is_generated_kernel(self.ix.name(int(sib[j]))):
                generated.append(self.ix.name(int(sib[j])))
            j += 1
        if j >= len(sib) or not tx.is_gemm_op(self.ix.name(int(sib[j]))):
            return None
        if generated and not any("softmax" in n for n in generated):
            return None  # the kernels between say what they compute, and it is no softmax
        g1, g2 = _gemm(self.finder, g), _gemm(self.finder, int(sib[j]))
        if not g1 or not g2 or g1.out is None or g2.a.dims != g1.out:
            return None
        qk, pv = _qk(g1, g1.out), _pv(g2, g1.out)
        if qk is None or pv is None:
            return None
        return Match(rows=sib[pos:j + 1].tolist(), q=qk[0], k=qk[1], v=pv[0], out=pv[1], scores=g1.out, fused=True)


def find_matches(finder: CallFinder) -> list[Match]:
    """Every hand-written attention forward in the trace, in time order."""
    ix, h = finder.ix, finder.trace.host
    scan = _Scanner(finder)
    matches: list[Match] = []
    used: set[int] = set()

    def outermost(match_name) -> list[int]:
        ids = finder.trace.strings.ids_where(match_name)
        rows = np.flatnonzero(np.isin(h.name, ids) & (h.kind == HostKind.OP)).tolist()
        return [r for r in rows if not (ix.parent[r] >= 0 and match_name(ix.name(ix.parent[r])))]

    for s in outermost(tx.is_softmax_op):
        if scan.claimed_elsewhere(s):
            continue
        m = scan.match_softmax(s)
        if m is not None and not used.intersection(m.rows):
            matches.append(m)
            used.update(m.rows)
    for g in outermost(tx.is_gemm_op):
        if g in used or scan.claimed_elsewhere(g):
            continue
        m = scan.match_fused(g)
        if m is not None and not used.intersection(m.rows):
            matches.append(m)
            used.update(m.rows)
    matches.sort(key=lambda m: ix.ts[m.rows[0]])
    return matches


def _dtype(finder: CallFinder, rows: list[int]) -> str | None:
    for r in rows:
        for t in finder.trace.host.types(r):
            if isinstance(t, str) and tx.itemsize(t):
                return tx.dtype_name(t)
    return None


def _generated_output_copy(finder: CallFinder, m: Match) -> list[_Prep]:
    """In a compiled graph, the generated kernel right after the ·v GEMM that copies its output into another
    layout (GPU: triton_poi_fused_clone_transpose_view_...): the call's output copy, fused into generated code."""
    sib, _, pos = finder.ix.siblings(m.rows[-1])
    if pos + 1 >= len(sib):
        return []
    row = int(sib[pos + 1])
    name = finder.ix.name(row)
    dims = _tensor_dims(finder.trace.host.dims(row))
    if tx.is_generated_kernel(name) and tx.is_copy_kernel_name(name) and dims and dims[0] == m.out.dims:
        return [_Prep(row=row, top=row, position=Position.AFTER)]
    return []


def _layout(m: Match) -> str | None:
    """BHLD when q and k are (B, H, L, D) (an einsum's operands may be (B, L, H, D): its equation is not recorded)."""
    ordered = m.q.dims[-2] == m.scores[-2] and m.k.dims[-2] == m.scores[-1] and m.q.dims[:-2] == m.scores[:-2]
    return "BHLD" if len(m.q.dims) == 4 and ordered else None


def manual_calls(finder: CallFinder, claimed: set[int], first_id: int) -> list[CallSplit]:
    """The calls (fwd, and bwd where autograd ran one) of every hand-written attention in the trace.

    `claimed`: the copies already charged to other calls (extended with this function's own).
    """
    ix = finder.ix
    calls: list[CallSplit] = []
    for n, m in enumerate(find_matches(finder)):
        work, inside, views = [], [], []
        for r in m.rows:  # between its GEMMs: its ops, the copies its code made (a v.contiguous()), views
            verdict, mover = finder._classify_sibling(r)
            if verdict == Verdict.VIEW:
                views.append(r)
            elif verdict == Verdict.PREP:
                inside.append(_Prep(row=mover, top=r, position=Position.BEFORE))
            else:
                work.append(r)
        # no storages recorded for a pattern (capture never saw it as a call): the walk decides on the trace's
        # evidence; copies some other call already has are not its
        before, before_views = finder._walk(m.rows[0], -1, [m.q, m.k, m.v], set())
        before = [p for p in before if p.top not in claimed]
        claimed.update(p.top for p in before)
        after, after_views = finder._walk(m.rows[-1], +1, [m.out], set())
        after = [p for p in after if p.top not in claimed]
        if m.fused:
            after += _generated_output_copy(finder, m)
        claimed.update(p.top for p in after)
        fwd = _Phase(anchor_rows=work, preps=before + inside + after, views=before_views + views + after_views)
        located = ix.python_site(m.rows[0])
        shapes = {"q": m.q.dims, "k": m.k.dims, "v": m.v.dims, "scores": m.scores}
        base = CallSplit(id=first_id + n, op=OP, backend=BACKEND, phase=Phase.FWD,
                         site=located[0] if located else "unknown",
                         found_by=FoundBy.COMPILED if m.fused else FoundBy.PATTERN,
                         device="cuda" if finder.on_device else "cpu", shapes=shapes,
                         dtype=_dtype(finder, m.rows), layout=_layout(m))
        backend = FUSED_BACKEND if m.fused else BACKEND
        call = finder._split(base, Phase.FWD, fwd, work, None)
        call.backend = backend
        calls.append(call)
        bwd = finder._backward_phase(work + views, fwd)
        if bwd is not None:
            call = finder._split(base, Phase.BWD, bwd, work, None)
            call.backend = backend
            calls.append(call)
    return calls
