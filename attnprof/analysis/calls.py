"""Find every attention call in a trace and split it: the heart of attnprof.

For each call (an attnprof range, or else the outermost attention op):
1. walk its siblings on the thread back and forth to the layout-prep ops that feed it (the seed's
   `transpose(1, 2).contiguous()` on q, k, v before, on the output after), skipping views, stopping at real work;
   a copy is the call's by the storages capture recorded (what it writes the call reads, or it reads the call's
   output), else by what the trace shows (layouts, op order, Python frames); a copy two calls could equally own is
   charged to neither (unattributed);
2. attach the device work each op launched through correlation ids, and classify it compute / copy / other;
3. follow autograd sequence numbers to the backward nodes of the attention op and of its prep ops (phase bwd);
4. split each phase's window (decomposition.split_window).
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from attnprof.analysis import compiled
from attnprof.analysis import taxonomy as tx
from attnprof.analysis.decomposition import FOREIGN, IDLE, check_call, split_window
from attnprof.analysis.index import TraceIndex
from attnprof.analysis.records import (
    COMPUTE,
    COPY,
    OTHER,
    CallSplit,
    Category,
    CopyRecord,
    FoundBy,
    KernelSlice,
    Part,
    Phase,
    Position,
    Segment,
    UnattributedCopy,
)
from attnprof.textenum import TextEnum
from attnprof.trace.model import NO_ID, DeviceKind, HostKind, Trace
from attnprof.trace.runinfo import (
    RANGE_PREFIX,
    RANGE_RE,
    SOURCE_PREFIX,
    CallInfo,
    RunInfo,
    SourceRange,
    unescape_name,
)

#: How far to walk from a call to find its prep ops (siblings), so a pathological thread cannot stall analysis.
MAX_WALK = 64
_FILL_OPS = frozenset(("aten::fill_", "aten::zero_", "aten::zeros", "aten::zeros_like", "aten::ones", "aten::full"))
_CPU_DATA_OPS = frozenset(("aten::copy_", "aten::cat", "aten::stack", "aten::index_select", "aten::constant_pad_nd",
                           "aten::repeat_interleave", "aten::_unsafe_index", "aten::index"))
_GROWING_PREP = frozenset(("aten::repeat", "aten::repeat_interleave", "aten::expand_copy", "aten::_unsafe_index",
                           "aten::index_select", "aten::cat", "aten::stack", "aten::reshape", "aten::flatten"))
_PAD_OPS = frozenset(("aten::constant_pad_nd", "aten::pad"))
_SHAPE_KEEPING = frozenset(("aten::contiguous", "aten::clone", "aten::copy_", "aten::_to_copy", "aten::to",
                            "aten::type_as"))
_GPU_PRIORITY = (COMPUTE, COPY, OTHER, FOREIGN)
# plain ints for the per-row tests: an enum member's lookup costs more than the test
_ANNOTATION, _MEMSET, _MEMCPY = int(HostKind.ANNOTATION), int(DeviceKind.MEMSET), int(DeviceKind.MEMCPY)
_CPU_PRIORITY = (COPY, OTHER, COMPUTE, FOREIGN)  # host ops nest: the innermost, more specific category wins


class Evidence(IntEnum):
    """What says a copy is a call's, strongest last. From the Python frames: see CallFinder._evidence. From the
    storages capture recorded: IDENTITY, the copy writes what the call reads / reads the call's output; CHAINED,
    through another of the call's copies (`.contiguous().to(dtype)`)."""

    UNSURE = -1
    ELSEWHERE = 0
    NO_FRAMES = 1
    NEAR = 2
    OWN = 3
    CHAINED = 4
    IDENTITY = 5


UNSURE, ELSEWHERE, NO_FRAMES, NEAR, OWN, CHAINED, IDENTITY = Evidence  # short names for the walk's comparisons


class Verdict(TextEnum):
    """What an op next to a call is to the walk that looks for the call's layout copies."""

    VIEW = "view"  # moves no data: walked past
    PREP = "prep"  # a copy that may feed the call (or read its output)
    BARRIER = "barrier"  # real work: the walk stops


class Sibling(NamedTuple):
    verdict: Verdict
    mover: int  # the op that moved data (inside an attnprof.src range when there is one), else the row itself


_EDGE_US = 1.0  # a Python frame starting or ending this close to the trace's first or last frame was cut off


@dataclass
class _Prep:
    row: int  # the op that moved data (inside an attnprof.src range when there is one)
    top: int  # the sibling row it was found as (the range itself, or the op)
    position: Position  # before | after
    evidence: Evidence = IDENTITY  # why it is the call's (IDENTITY ... NO_FRAMES); data flow (nsys) is IDENTITY


@dataclass
class _Claim:
    """A copy found by the walk before a call: the call, the list it sits in (a later walk may take it out)."""

    anchor: int
    preps: list[_Prep]
    prep: _Prep


@dataclass
class _Phase:
    """The host rows of one phase of one call, before it is split."""

    anchor_rows: list[int]  # the attention op (fwd) or its autograd nodes (bwd)
    preps: list[_Prep] = field(default_factory=list)
    views: list[int] = field(default_factory=list)  # views between the prep ops and the call: its, not foreign


@dataclass
class _Anchor:
    """A call as found (its range, or its outermost attention op), before its copies are looked for."""

    row: int
    call_id: int
    op: str
    site: str
    found_by: FoundBy
    info: CallInfo | None  # capture's record of it (attnprof range), else None
    attn_ops: list[int]  # the attention ops inside it
    inputs: list[_Layout]  # its tensors, to match layout copies against
    outputs: list[_Layout]


class _Work(NamedTuple):
    """One piece of device work of a phase of a call."""

    row: int  # device row
    category: Category
    position: Position
    op_row: int | None  # the host op that launched it, for copies (their lines); else None


@dataclass
class _CopyTotal:
    """One copy op's device work, summed over its kernels."""

    position: Position
    dur_us: float = 0.0
    nbytes: int = 0


class _HostCopy(NamedTuple):
    """A copy op of a CPU-only call."""

    row: int
    position: Position
    own_line: bool = False  # made by the entry point's own code (repeat_kv): reported at its line, as inside


def _numel(dims) -> int:
    return math.prod(dims) if dims else 0


def _stride_at(strides: list, i: int) -> list[int] | None:
    if i < len(strides) and isinstance(strides[i], list) and strides[i]:
        return strides[i]
    return None


def _shape_argument(concrete: list, numel: int) -> list[int] | None:
    """reshape's target shape from the profiler's "Concrete Inputs" text ("[2, 4, -1]"), with -1 resolved."""
    for text in concrete[1:]:
        if isinstance(text, str) and text.startswith("["):
            try:
                shape = [int(x) for x in text.strip("[]").split(",") if x.strip()]
            except ValueError:
                return None
            if shape.count(-1) == 1:
                known = _numel([x for x in shape if x != -1])
                shape = [numel // known if x == -1 else x for x in shape] if known else shape
            return shape if _numel(shape) == numel else None
    return None


@dataclass
class _Layout:
    """A tensor's shape and strides (None: contiguous)."""

    dims: list[int]
    strides: list[int] | None

    @property
    def numel(self) -> int:
        return _numel(self.dims)

    def memory_shape(self) -> tuple[int, ...]:
        """The sizes in memory order (outermost first), size-1 dims dropped: equal for a tensor and its permuted
        views, different for a tensor and a copy laid out in another order."""
        pairs = list(zip(self.dims, self.strides if self.strides and len(self.strides) == len(self.dims)
                         else _contiguous_strides(self.dims)))
        pairs.sort(key=lambda p: -p[1])  # stable: equal strides keep their order
        return tuple(d for d, _ in pairs if d != 1)

    def same_memory_shape(self, other: _Layout) -> bool:
        return self.numel == other.numel and self.memory_shape() == other.memory_shape()


def _contiguous_strides(dims: list[int]) -> list[int]:
    out, acc = [], 1
    for d in reversed(dims):
        out.append(acc)
        acc *= max(d, 1)
    return out[::-1]


def _tensor_dims(dims: list) -> list[list[int]]:
    return [d for d in dims if isinstance(d, list) and len(d) >= 2 and all(isinstance(x, int) for x in d)]


class CallFinder:
    def __init__(self, trace: Trace, runinfo: RunInfo | None):
        self.trace = trace
        self.ix = TraceIndex(trace)
        self.on_device = trace.has_device_activity
        self.call_info = {c.id: c for c in runinfo.calls} if runinfo else {}
        self.copy_writes = runinfo.copy_writes if runinfo else {}
        #: copies that could be one of several calls' (or are in code the trace cuts off): top row -> the calls
        self.unsure: dict[int, set[int]] = {}
        self.unattributed: list[UnattributedCopy] = []
        self._anchor_rows: list[int] = []
        self._anchor_starts: list[float] = []
        h = trace.host
        strings = trace.strings
        self.range_ids = set(strings.ids_where(lambda s: s.startswith(RANGE_PREFIX)).tolist())
        self.fwd_ids = set(strings.ids_where(tx.is_attention_fwd_op).tolist())
        # Where the tool numbers ops and records which op produced each input (Nsight Systems with PyTorch's
        # autograd NVTX ranges), the copies feeding a call are read off the data flow, not guessed from shapes.
        self.row_by_op: dict[int, int] = {}
        self.consumers: dict[int, list[int]] = {}
        if h.op_id is not None and h.input_ops is not None:
            for row in np.flatnonzero(h.op_id != NO_ID).tolist():
                self.row_by_op[int(h.op_id[row])] = row
            for row, inputs in enumerate(h.input_ops):
                for producer, _ in inputs or ():
                    self.consumers.setdefault(producer, []).append(row)
        node_ids = strings.ids_where(lambda s: s.startswith(tx.AUTOGRAD_NODE_PREFIX))
        nodes = np.flatnonzero(np.isin(h.name, node_ids) & (h.kind == HostKind.OP) & (h.seq != NO_ID))
        self.nodes_by_seq: dict[int, list[int]] = {}
        for r, s in zip(nodes.tolist(), h.seq[nodes].tolist()):
            self.nodes_by_seq.setdefault(s, []).append(r)

    # --- anchors -----------------------------------------------------------------------------------------------

    def anchors(self) -> list[int]:
        h = self.trace.host
        names = h.name
        ranges = np.flatnonzero(np.isin(names, list(self.range_ids)) & (h.kind == HostKind.ANNOTATION))
        ops = np.flatnonzero(np.isin(names, list(self.fwd_ids)) & (h.kind == HostKind.OP))
        marks = self.range_ids | self.fwd_ids
        out = ranges.tolist()
        for r in ops.tolist():
            if not any(int(names[a]) in marks for a in self.ix.ancestors(r)):
                out.append(r)
        out.sort(key=lambda r: self.ix.start_of[r])
        return out

    # --- classification of host rows -----------------------------------------------------------------------------

    def _moves_data(self, row: int) -> bool:
        if self.on_device:
            return bool(self.ix.launches(row))
        name = self.ix.name(row)
        return name in _CPU_DATA_OPS or any(self.ix.name(r) in _CPU_DATA_OPS for r in self.ix.subtree(row).tolist())

    def _classify_sibling(self, row: int) -> Sibling:
        name = self.ix.name(row)
        if self.ix.kind_of[row] == _ANNOTATION:
            if not name.startswith(SOURCE_PREFIX):
                return Sibling(Verdict.BARRIER, row)
            children = self.ix.children(row)
            verdicts = [self._classify_sibling(c) for c in children]
            preps = [v for v in verdicts if v.verdict == Verdict.PREP]
            if preps:
                return preps[0]
            if all(v.verdict == Verdict.VIEW for v in verdicts):
                return Sibling(Verdict.VIEW, row)
            return Sibling(Verdict.BARRIER, row)
        if self.ix.name_id_of[row] in self.fwd_ids:
            return Sibling(Verdict.BARRIER, row)
        if tx.is_view_op(name):
            return Sibling(Verdict.VIEW, row)
        if tx.is_prep_op(name):
            return Sibling(Verdict.PREP if self._moves_data(row) else Verdict.VIEW, row)
        return Sibling(Verdict.BARRIER, row)

    def _feeds(self, prep_row: int, targets: list[_Layout], position: Position) -> bool:
        """Could this copy produce one of the call's inputs (before) / read the call's output (after)?

        A trace records each op's input shapes and strides, not its tensors, so this compares layouts in memory
        order: a copy feeds the call if the tensor it writes, laid out as in memory, is the one the call reads
        (possibly through views), and reads the output if what it reads is the output seen through views. The
        output copy of one call and the input copies of the next, side by side in a loop, differ exactly there.
        """
        if not targets:
            return True  # nothing known about the call's tensors: trust adjacency
        h = self.trace.host
        name = self.ix.name(prep_row)
        dims = _tensor_dims(h.dims(prep_row))
        if not dims:
            return False
        strides = h.strides(prep_row)
        if position == Position.AFTER:
            src = 1 if name == "aten::copy_" else 0  # copy_(dst, src) reads src
            if src >= len(dims):
                return False
            read = _Layout(dims[src], _stride_at(strides, src))
            return any(read.same_memory_shape(t) for t in targets)
        written = self._written_layout(prep_row, name, dims, strides)
        for t in targets:
            if written is not None and written.same_memory_shape(t):
                return True
            n, first = _numel(dims[0]), dims[0]
            if name in _GROWING_PREP and n and t.numel % n == 0 and first[-1] == t.dims[-1]:
                return True
            if name in _PAD_OPS and len(first) == len(t.dims) and first[:-1] == t.dims[:-1]:
                return True
        return False

    def _written_layout(self, row: int, name: str, dims: list, strides: list) -> _Layout | None:
        """The layout of the tensor a copy op produces, from its inputs (None when the trace cannot tell)."""
        if name == "aten::copy_":
            return _Layout(dims[0], _stride_at(strides, 0))
        if name == "aten::contiguous":
            return _Layout(dims[0], None)  # contiguous in its own dims
        if name in ("aten::reshape", "aten::flatten"):
            target = _shape_argument(self.trace.host.concrete(row), _numel(dims[0]))
            return _Layout(target, None) if target else None
        if name in _SHAPE_KEEPING:  # clone / _to_copy keep the input's memory order (preserve_format)
            return _Layout(dims[0], _stride_at(strides, 0))
        return None

    def _evidence(self, anchor: int, call_stack: list[int], prep_row: int) -> Evidence:
        """How strongly the Python frames (with_stack) say a copy was made by the code that made the call.

        OWN: the copy ran in a function on the call's own stack (the seed wrapper's copies). NEAR: in a helper
        called from the function that made the call or from its caller (HF's repeat_kv, a `to_bhld(out)`), a
        helper that makes no attention call of its own. ELSEWHERE: anywhere else. UNSURE: in such a helper that
        makes another attention call (the copy may be that call's: another wrapper's output copy), or that the
        trace cuts off (still running when the profiler started or stopped: whether it makes a call is unknown).
        NO_FRAMES: the trace recorded no frames."""
        if not call_stack:
            return NO_FRAMES
        chain = self.ix.python_chain(prep_row)
        if not chain:
            return NO_FRAMES
        on_stack = set(call_stack)
        own = next((f for f in chain if self.ix.is_user_frame(f)), None)
        if (own is not None and own in on_stack) or chain[0] in on_stack:
            return OWN
        callers = [f for f in call_stack if self.ix.is_user_frame(f)][:2]  # the call's line, and what called it
        shared = next((i for i, f in enumerate(chain) if f in on_stack), None)
        if shared is None or chain[shared] not in callers:
            return ELSEWHERE
        helper = chain[shared - 1]  # the invocation, called from a frame the call shares, that made the copy
        if self._makes_another_call(helper, anchor) or self._cut_off(helper):
            return UNSURE
        return NEAR

    def _makes_another_call(self, frame: int, anchor: int) -> bool:
        tid = self.ix.tid_of[frame]
        lo = bisect.bisect_left(self._anchor_starts, self.ix.start_of[frame])
        hi = bisect.bisect_right(self._anchor_starts, self.ix.end_of[frame])
        return any(a != anchor and self.ix.tid_of[a] == tid for a in self._anchor_rows[lo:hi])

    def _cut_off(self, frame: int) -> bool:
        first, last = self.ix.python_span(self.ix.tid_of[frame])
        return self.ix.start_of[frame] <= first + _EDGE_US or self.ix.end_of[frame] >= last - _EDGE_US

    def _source(self, row: int) -> SourceRange | None:
        return self.ix.source_annotation(row) if self.ix.kind_of[row] == _ANNOTATION else None

    def _identity(self, row: int, position: Position, storages: dict[int, Evidence] | None) -> Evidence | None:
        """IDENTITY when this copy writes a storage the call reads (before) / reads one the call wrote (after),
        CHAINED when it does so for another of the call's copies, else ELSEWHERE; None when capture did not record
        both sides. `storages` (address -> IDENTITY | CHAINED) grows along the chain as the walk finds copies."""
        src = self._source(row)
        if src is None or storages is None:
            return None
        written = self.copy_writes.get(src.number) if src.number is not None else None
        mine, theirs = (written, src.read) if position == Position.BEFORE else (src.read, written)
        if mine is None:
            return None
        found = storages.get(mine)
        if found is None:
            return ELSEWHERE
        if position == Position.BEFORE:
            del storages[mine]  # its latest writer found: an earlier one wrote a storage since freed
        if theirs is not None:
            storages.setdefault(theirs, CHAINED)
        return found

    def _walk(self, anchor: int, direction: int, targets: list[_Layout], storages: set[int],
              claims: dict[int, _Claim] | None = None) -> tuple[list[_Prep], list[int]]:
        """(the prep ops found, the views between them and the call). Before the call (claims None) every copy
        found is claimed in `claims`; after it, a copy already claimed by the next call's walk is settled here."""
        call_stack = self.ix.python_chain(anchor)
        sib, _, pos = self.ix.siblings(anchor)
        found: list[_Prep] = []
        views: list[int] = []
        pending_views: list[int] = []
        position = Position.BEFORE if direction < 0 else Position.AFTER
        identities = dict.fromkeys(storages, IDENTITY) if storages else None  # None: capture recorded none
        unsure = False
        i = pos + direction
        steps = 0
        while 0 <= i < len(sib) and steps < MAX_WALK:
            row = int(sib[i])
            verdict, mover = self._classify_sibling(row)
            if verdict == Verdict.BARRIER:
                break
            if verdict == Verdict.VIEW:
                pending_views.append(row)
                i += direction
                steps += 1
                continue
            evidence = self._identity(row, position, identities)
            if evidence is None:
                evidence = self._evidence(anchor, call_stack, mover) if self._feeds(mover, targets, position) \
                    else ELSEWHERE
            claim = claims.get(row) if claims is not None else None
            if claim is not None and not self._settle(claim, anchor, evidence, mover):
                break
            if position == Position.AFTER and evidence == ELSEWHERE:
                break  # what follows the call without reading its output ends its after-copies
            if evidence == UNSURE or (unsure and NO_FRAMES <= evidence <= OWN):
                self.unsure.setdefault(row, set()).add(anchor)
                unsure = position == Position.AFTER  # past a copy of unknown owner, what else follows is unknown too
            elif evidence != ELSEWHERE:
                found.append(_Prep(row=mover, top=row, position=position, evidence=evidence))
                views.extend(pending_views)
                pending_views.clear()
            # before the call, a copy of some other tensor (a mask, position ids) does not end the walk
            i += direction
            steps += 1
        if direction < 0:
            found.reverse()
        return found, views

    def _settle(self, claim: _Claim, anchor: int, evidence: Evidence, row: int) -> bool:
        """A copy between two calls, claimed as input by the later one, read by the earlier one's walk: whose is it?
        The stronger evidence wins. A copy of the earlier call's output that the later call reads (IDENTITY both
        ways) is the code's that made it, by the frames. As strong on both sides (only shapes, or both in the same
        function), neither call gets it: it is reported unattributed. True when the earlier call (`anchor`) takes it."""
        if claim.prep not in claim.preps or evidence in (ELSEWHERE, UNSURE):
            return False
        theirs = claim.prep.evidence
        if evidence == theirs == IDENTITY:
            evidence = self._evidence(anchor, self.ix.python_chain(anchor), row)
            theirs = self._evidence(claim.anchor, self.ix.python_chain(claim.anchor), row)
        if theirs > evidence:
            return False
        claim.preps.remove(claim.prep)
        if evidence == theirs:
            self.unsure.setdefault(claim.prep.top, set()).update((anchor, claim.anchor))
            return False
        return True

    # --- data flow, where the trace records it ---------------------------------------------------------------------

    def _has_flow(self, attn_ops: list[int]) -> bool:
        op_id = self.trace.host.op_id
        return bool(attn_ops) and bool(self.row_by_op) and op_id is not None and op_id[attn_ops[0]] != NO_ID

    def _flow_walk(self, start: list[int], step, position: Position) -> list[_Prep]:
        """Follow the data flow from `start` through views and copies: the copies found are the call's."""
        found: list[_Prep] = []
        seen: set[int] = set()
        frontier = list(start)
        while frontier and len(seen) < MAX_WALK:
            row = frontier.pop()
            if row in seen:
                continue
            seen.add(row)
            name = self.ix.name(row)
            parent = self.ix.parent_of[row]
            if parent >= 0 and (tx.is_prep_op(self.ix.name(parent)) or tx.is_view_op(self.ix.name(parent))):
                continue  # clone and copy_ inside contiguous(): the outer op is the one the code called
            if tx.is_view_op(name):
                frontier.extend(step(row))
            elif tx.is_prep_op(name) and self._moves_data(row):
                found.append(_Prep(row=row, top=row, position=position))
                frontier.extend(step(row))
        found.sort(key=lambda p: self.ix.start_of[p.row])
        return found

    def _inputs_of(self, row: int) -> list[int]:
        assert self.trace.host.input_ops is not None, "walked only where the trace records data flow"
        inputs = self.trace.host.input_ops[row] or ()
        return [self.row_by_op[p] for p, _ in inputs if p in self.row_by_op]

    def _outputs_of(self, row: int) -> list[int]:
        tid, op_id = self.ix.tid_of[row], self.trace.host.op_id
        assert op_id is not None, "walked only where the trace records data flow"
        return [c for c in self.consumers.get(int(op_id[row]), ()) if self.ix.tid_of[c] == tid]

    def _producers(self, attn_op: int) -> list[_Prep]:
        return self._flow_walk(self._inputs_of(attn_op), self._inputs_of, Position.BEFORE)

    def _consumers(self, attn_op: int) -> list[_Prep]:
        return self._flow_walk(self._outputs_of(attn_op), self._outputs_of, Position.AFTER)

    # --- inputs and outputs of a call ------------------------------------------------------------------------------

    def _attention_ops(self, anchor: int) -> list[int]:
        return [r for r in self.ix.subtree(anchor).tolist() if self.ix.name_id_of[r] in self.fwd_ids]

    def _io_layouts(self, info: CallInfo | None, attn_ops: list[int]) -> tuple[list[_Layout], list[_Layout]]:
        """(the call's input tensors, its output tensors), to match prep copies against."""
        if info and info.tensors:
            ins = [_Layout(t.shape, t.stride) for k, t in info.tensors.items() if k not in ("out", "lse")]
            outs = [_Layout(t.shape, t.stride) for k, t in info.tensors.items() if k == "out"]
        elif attn_ops:
            h = self.trace.host
            row = attn_ops[0]
            dims = h.dims(row)
            strides = h.strides(row)
            ins = [_Layout(d, _stride_at(strides, i)) for i, d in enumerate(dims[:3]) if d in _tensor_dims([d])]
            outs = []
        else:
            ins, outs = [], []
        if not outs and len(ins) >= 3:
            q, v = ins[0], ins[2]
            dims = q.dims[:-1] + v.dims[-1:]
            outs = [_Layout(dims, None)]  # a fresh tensor: contiguous, or laid out in memory like q (flash kernels)
            if q.strides and dims == q.dims:
                outs.append(_Layout(dims, q.strides))
        return ins, outs

    # --- splitting ---------------------------------------------------------------------------------------------------

    def _anchor(self, row: int, next_id: int) -> _Anchor:
        """The call at `row`: by its attnprof range, else numbered `next_id`."""
        m = RANGE_RE.match(self.ix.name(row))
        if m:
            call_id, op, site, found_by = int(m["id"]), m["op"], unescape_name(m["site"]), FoundBy.ATTNPROF
            info = self.call_info.get(call_id)
        else:
            call_id, op, found_by, info = next_id, self.ix.name(row), compiled.found_by(self.ix, row), None
            located = self.ix.python_site(row)
            site = located[0] if located else "unknown"
        attn_ops = self._attention_ops(row)
        inputs, outputs = self._io_layouts(info, attn_ops)
        return _Anchor(row=row, call_id=call_id, op=op, site=site, found_by=found_by, info=info, attn_ops=attn_ops,
                       inputs=inputs, outputs=outputs)

    def build(self) -> list[CallSplit]:
        anchors: list[_Anchor] = []
        next_id = max(self.call_info, default=0) + 1
        for row in self.anchors():
            anchors.append(self._anchor(row, next_id))
            if anchors[-1].found_by != FoundBy.ATTNPROF:
                next_id += 1
        self._anchor_rows = [a.row for a in anchors]
        self._anchor_starts = [self.ix.start_of[a] for a in self._anchor_rows]
        # Copies feeding a call are claimed first; the walk after the previous call then settles each copy both
        # could own (its output's copy, the next call's input copies: alike in shape when they run back to back).
        claims: dict[int, _Claim] = {}
        before: dict[int, tuple[list[_Prep], list[int]]] = {}
        for a in anchors:
            if self._has_flow(a.attn_ops):
                before[a.row] = (self._producers(a.attn_ops[0]), [])
            else:
                before[a.row] = self._walk(a.row, -1, a.inputs, _storages(a.info, "in"))
            for prep in before[a.row][0]:
                claims[prep.top] = _Claim(anchor=a.row, preps=before[a.row][0], prep=prep)
        calls: list[CallSplit] = []
        phases: list[_Phase] = []
        for a in anchors:
            after, after_views = (self._consumers(a.attn_ops[0]), []) if self._has_flow(a.attn_ops) else \
                self._walk(a.row, +1, a.outputs, _storages(a.info, "out"), claims)
            fwd = _Phase(anchor_rows=[a.row], preps=before[a.row][0] + after, views=before[a.row][1] + after_views)
            phases.append(fwd)
            base = self._base_record(a.call_id, a.op, a.site, a.found_by, a.info, a.attn_ops)
            calls.append(self._split(base, Phase.FWD, fwd, a.attn_ops, a.info))
            bwd = self._backward_phase([a.row], fwd)
            if bwd is not None:
                calls.append(self._split(base, Phase.BWD, bwd, a.attn_ops, a.info))
        ids = {a.row: a.call_id for a in anchors}
        owned = {p.top for phase in phases for p in phase.preps}
        unsure = [(row, between)
                  for row, between in sorted(self.unsure.items(), key=lambda kv: self.ix.start_of[kv[0]])
                  if row not in owned]
        self.unattributed = [self._unattributed(row, sorted(ids[a] for a in between)) for row, between in unsure]
        from attnprof.analysis.manual import manual_calls  # manual.py builds on this module

        # hand-written attention last: copies charged to a call above, or left to none, are not its
        return calls + manual_calls(self, owned | {row for row, _ in unsure}, next_id)

    def _unattributed(self, top: int, call_ids: list[int]) -> UnattributedCopy:
        _, row = self._classify_sibling(top)
        if self.on_device:
            d = self.trace.device
            work = [drow for _, drow in self.ix.launches(row)]
            dur = float(sum(d.dur[r] for r in work))
            nbytes = int(sum(d.nbytes[r] for r in work))
        else:
            dur, nbytes = self.ix.end_of[row] - self.ix.start_of[row], 0
        return UnattributedCopy(site=self._copy_site(row), op=self.ix.name(row),
                                bytes=nbytes or self._copy_bytes(row), dur_us=dur, start_us=self.ix.start_of[top],
                                calls=call_ids)

    def _base_record(self, call_id: int, op: str, site: str, found_by: FoundBy, info: CallInfo | None,
                     attn_ops: list[int]) -> CallSplit:
        h = self.trace.host
        if info is not None:
            shapes = {k: list(t.shape) for k, t in info.tensors.items()}
            tensor = next(iter(info.tensors.values()), None)
            dtype = tensor.dtype if tensor else None
            device = tensor.device if tensor else ("cuda" if self.on_device else "cpu")
            return CallSplit(id=call_id, op=op, backend="unknown", phase=Phase.FWD, site=site, found_by=found_by,
                             device=device, step=info.step, shapes=shapes, dtype=dtype, layout=info.layout, causal=info.causal,
                             gqa_ratio=info.gqa_ratio)
        shapes, dtype, gqa = {}, None, None
        # a generated kernel's inputs are whatever inductor fused into it (FlexAttention's: the qkv projection)
        if attn_ops and not tx.is_generated_kernel(self.ix.name(attn_ops[0])):
            dims = _tensor_dims(h.dims(attn_ops[0]))
            shapes = dict(zip(("q", "k", "v"), dims[:3]))
            types = h.types(attn_ops[0])
            dtype = tx.dtype_name(types[0]) if types else None
            if len(dims) >= 2 and len(dims[0]) == 4 and dims[1][1]:
                heads_axis = 1 if self.ix.name(attn_ops[0]) not in ("aten::_flash_attention_forward",) else 2
                gqa = dims[0][heads_axis] / dims[1][heads_axis]
        return CallSplit(id=call_id, op=op, backend="unknown", phase=Phase.FWD, site=site, found_by=found_by,
                         device="cuda" if self.on_device else "cpu", shapes=shapes, dtype=dtype, gqa_ratio=gqa,
                         layout=None)

    def _backward_phase(self, anchors: list[int], fwd: _Phase) -> _Phase | None:
        h = self.trace.host
        attn_seqs = {int(h.seq[r]) for a in anchors for r in self.ix.subtree(a).tolist() if h.seq[r] != NO_ID}
        attn_nodes = sorted({n for s in attn_seqs for n in self.nodes_by_seq.get(s, ())},
                            key=lambda r: self.ix.start_of[r])
        if not attn_nodes and len(anchors) == 1:  # ops of a compiled graph carry no sequence number
            attn_nodes = compiled.backward_ops(self.ix, self.nodes_by_seq, anchors[0])
        if not attn_nodes:
            return None
        phase = _Phase(anchor_rows=attn_nodes)
        for prep in fwd.preps:
            seqs = {int(h.seq[r]) for r in self.ix.subtree(prep.row).tolist() if h.seq[r] != NO_ID}
            for s in seqs:
                for node in self.nodes_by_seq.get(s, ()):
                    if self._moves_data(node):
                        before = self.ix.start_of[node] < self.ix.start_of[attn_nodes[0]]
                        position = Position.BEFORE if before else Position.AFTER
                        phase.preps.append(_Prep(row=node, top=node, position=position))
        return phase

    def _device_work(self, phase: _Phase) -> list[_Work]:
        """Every piece of device work of the phase."""
        out = []
        d = self.trace.device
        strings = self.trace.strings.values
        for anchor in phase.anchor_rows:
            sub = self.ix.subtree(anchor)
            for runtime, drow in self.ix.launches(anchor):
                kname = strings[d.name[drow]]
                launcher = self.ix.innermost_op(sub, self.ix.start_of[runtime])
                lname = self.ix.name(launcher) if launcher >= 0 else ""
                if d.kind[drow] == _MEMSET or lname in _FILL_OPS:
                    cat = OTHER
                elif d.kind[drow] == _MEMCPY or tx.is_copy_op(lname) or tx.is_copy_kernel_name(kname):
                    cat = COPY
                else:
                    cat = COMPUTE
                out.append(_Work(drow, cat, Position.INSIDE, launcher if cat == COPY else None))
        for prep in phase.preps:
            for _, drow in self.ix.launches(prep.row):
                out.append(_Work(drow, OTHER if d.kind[drow] == _MEMSET else COPY, prep.position, prep.row))
        return out

    def _split(self, base: CallSplit, phase_name: Phase, phase: _Phase, attn_ops: list[int],
               info: CallInfo | None) -> CallSplit:
        call = dataclasses.replace(base, phase=phase_name, kernels=[], copies=[])
        ix = self.ix
        # a copy starts at its own op, not at the attnprof.src range around it (attnprof's cost of opening it)
        host_rows = phase.anchor_rows + [p.row for p in phase.preps]
        host_start = min(ix.start_of[r] for r in host_rows)
        host_end = max(ix.end_of[r] for r in host_rows)
        op_names = [ix.name(r) for a in phase.anchor_rows for r in ix.subtree(a).tolist()]
        work = self._device_work(phase) if self.on_device else []
        if work:
            self._split_device(call, work, host_start)
        else:
            outermost = [r for r in attn_ops if not any(a in attn_ops for a in ix.ancestors(r))]
            own_copies: list[int] = []
            if phase_name != Phase.FWD:
                compute = phase.anchor_rows
            elif outermost:
                compute = outermost
            else:  # an entry point that computes attention itself (HF eager, a user's function): its own ops
                compute, own_copies = self._entry_work(phase.anchor_rows)
            self._split_host(call, phase, compute, host_start, host_end, own_copies)
        compute_kernels = [k.name for k in call.kernels if k.category == COMPUTE]
        backend = next(filter(None, map(tx.backend_from_kernel, compute_kernels)), None)
        backend = backend or tx.backend_from_library(info.library if info else None) or tx.backend_from_ops(op_names)
        if backend is None and compute_kernels:
            backend = "math"
        call.backend = backend or "unknown"
        return call

    def _copy_site(self, row: int) -> str | None:
        annotated = self.ix.source_annotation(row)
        if annotated:
            return annotated[0]
        located = self.ix.python_site(row)
        return located[0] if located else None

    def _copy_bytes(self, row: int) -> int:
        h = self.trace.host
        dims = _tensor_dims(h.dims(row))
        types = h.types(row)
        if not dims or not types:
            return 0
        return 2 * _numel(dims[0]) * tx.itemsize(types[0])

    def _split_device(self, call: CallSplit, work: list[_Work], host_start: float) -> None:
        d = self.trace.device
        strings = self.trace.strings.values
        ours = {w.row for w in work}
        first = float(min(d.ts[w.row] for w in work))
        end = float(max(d.ts[w.row] + d.dur[w.row] for w in work))
        device = int(d.device[work[0].row])
        # The GPU may still be busy with earlier work when the first prep op is issued: that wait is not launch time.
        busy_until = self.ix.last_device_end_before(first, device)
        start = min(max(host_start, busy_until), first)
        intervals: list[tuple[float, float, str]] = [(float(d.ts[w.row]), float(d.ts[w.row] + d.dur[w.row]), w.category)
                                                     for w in work]
        for r in self.ix.device_rows_between(start, end, device).tolist():
            if r not in ours:
                intervals.append((float(d.ts[r]), float(d.ts[r] + d.dur[r]), FOREIGN))
        s = split_window(start, end, intervals, _GPU_PRIORITY)
        call.segments = _segments(s, idle=Part.LAUNCH)
        call.device = f"cuda:{device}"
        call.start_us, call.window_us = float(start), s.window_us
        call.compute_us, call.copy_us, call.other_us, call.launch_us = s.compute_us, s.copy_us, s.other_us, s.idle_us
        call.interleaved_us = s.span_us - s.window_us
        inside = [(float(d.ts[w.row]), float(d.ts[w.row] + d.dur[w.row]), w.category) for w in work
                  if w.position == Position.INSIDE]
        if inside:
            first_op, last_end = min(a for a, _, _ in inside), max(b for _, b, _ in inside)
            busy = split_window(first_op, last_end, inside, _GPU_PRIORITY)
            call.entry_busy_us = busy.compute_us + busy.copy_us + busy.other_us
            call.projected_us = last_end - first_op
        call.kernels = [KernelSlice(name=strings[d.name[w.row]], category=w.category, start_us=float(d.ts[w.row]),
                                    dur_us=float(d.dur[w.row]), stream=int(d.stream[w.row]))
                        for w in sorted(work, key=lambda w: d.ts[w.row])]
        by_op: dict[int, _CopyTotal] = {}
        for w in work:
            if w.category == COPY and w.op_row is not None:
                total = by_op.setdefault(w.op_row, _CopyTotal(w.position))
                total.dur_us += float(d.dur[w.row])
                total.nbytes += int(d.nbytes[w.row])
        for op_row, total in sorted(by_op.items(), key=lambda kv: self.ix.start_of[kv[0]]):
            call.copies.append(CopyRecord(
                site=call.site if total.position == Position.INSIDE else self._copy_site(op_row),
                op=self.ix.name(op_row), bytes=total.nbytes or self._copy_bytes(op_row), dur_us=total.dur_us,
                position=total.position))

    def _entry_work(self, anchors: list[int]) -> tuple[list[int], list[int]]:
        """(compute rows, copy rows) of entry points with no attention op inside: each op the entry point runs
        directly is its compute, except the copies it makes (repeat_kv's reshape, a dtype cast), which are copies
        with their own source lines; views are neither."""
        compute, copies = [], []
        for anchor in anchors:
            for child in self.ix.subtree(anchor).tolist():
                if self.ix.parent_of[child] != anchor:
                    continue
                verdict, mover = self._classify_sibling(child)
                if verdict == Verdict.PREP:
                    copies.append(mover)
                elif verdict == Verdict.BARRIER:
                    compute.append(child)
        return compute, copies

    def _split_host(self, call: CallSplit, phase: _Phase, compute_rows: list[int], host_start: float,
                    host_end: float, own_copies: Sequence[int] = ()) -> None:
        """CPU-only: the ops are the work; gaps between them (Python, dispatcher) count as other. `own_copies`:
        copies the entry point made itself, reported with their own lines."""
        ix = self.ix
        intervals: list[tuple[float, float, str]] = []
        kernels = []
        copy_rows = [_HostCopy(r, Position.INSIDE, own_line=True) for r in own_copies]
        intervals += [(ix.start_of[r], ix.end_of[r], COPY) for r in own_copies]
        for r in compute_rows:
            intervals.append((ix.start_of[r], ix.end_of[r], COMPUTE))
            kernels.append((r, COMPUTE))
            for inner in ix.subtree(r).tolist():
                n = ix.name(inner)
                outermost_copy = tx.is_copy_op(n) and not tx.is_copy_op(ix.name(ix.parent_of[inner]))
                # a Python scalar wrapped as a 0-d tensor (x * 0.125) is no layout copy
                scalar = not _tensor_dims(ix.trace.host.dims(inner))
                if inner != r and outermost_copy and self._moves_data(inner) and not scalar:
                    intervals.append((ix.start_of[inner], ix.end_of[inner], COPY))
                    copy_rows.append(_HostCopy(inner, Position.INSIDE))
                elif inner != r and n in _FILL_OPS:
                    intervals.append((ix.start_of[inner], ix.end_of[inner], OTHER))
        for p in phase.preps:
            # the op's own time, not its attnprof.src range
            intervals.append((ix.start_of[p.row], ix.end_of[p.row], COPY))
            copy_rows.append(_HostCopy(p.row, p.position))
        ours = set(phase.anchor_rows) | {p.top for p in phase.preps} | set(phase.views)
        for anchor in phase.anchor_rows:
            sib, starts, _ = ix.siblings(anchor)
            # siblings never overlap each other: only the one starting last before host_start can reach into it
            lo = max(int(np.searchsorted(starts, host_start, side="right")) - 1, 0)
            hi = int(np.searchsorted(starts, host_end, side="left"))
            for r in sib[lo:hi].tolist():
                if r not in ours and ix.end_of[r] > host_start:
                    intervals.append((ix.start_of[r], ix.end_of[r], FOREIGN))
        s = split_window(host_start, host_end, intervals, _CPU_PRIORITY)
        call.segments = _segments(s, idle=Part.OTHER)  # CPU: time between ops is other, there is no launch
        call.device = "cpu"
        call.start_us, call.window_us = float(host_start), s.window_us
        call.compute_us, call.copy_us = s.compute_us, s.copy_us
        call.other_us, call.launch_us = s.other_us + s.idle_us, None
        call.interleaved_us = s.span_us - s.window_us
        call.kernels = [KernelSlice(name=ix.name(r), category=cat, start_us=ix.start_of[r],
                                    dur_us=ix.end_of[r] - ix.start_of[r]) for r, cat in kernels]
        for r, position, own_line in copy_rows:
            call.kernels.append(KernelSlice(name=ix.name(r), category=COPY, start_us=ix.start_of[r],
                                            dur_us=ix.end_of[r] - ix.start_of[r]))
            inside_op = position == Position.INSIDE and not own_line  # the attention op's own copy: the call's line
            call.copies.append(CopyRecord(site=call.site if inside_op else (self._copy_site(r) or call.site),
                                          op=ix.name(r), bytes=self._copy_bytes(r),
                                          dur_us=ix.end_of[r] - ix.start_of[r], position=position))
        call.kernels.sort(key=lambda k: k.start_us)


def _segments(split, idle: Part) -> list[Segment]:
    names = {FOREIGN: Part.INTERLEAVED, IDLE: idle}
    return [Segment(start_us=float(a), dur_us=float(b - a), part=names.get(c) or Part(c)) for a, b, c in split.segments]


def _storages(info: CallInfo | None, which: str) -> set[int]:
    """Addresses of the storages a call read ("in") or wrote ("out"), as capture recorded them."""
    if info is None:
        return set()
    outputs = ("out", "lse")
    return {t.storage for k, t in info.tensors.items() if t.storage and ((k in outputs) == (which == "out"))}


def find_calls(trace: Trace, runinfo: RunInfo | None) -> tuple[list[CallSplit], list[UnattributedCopy]]:
    """(every call's split, the layout copies no call could be shown to own)."""
    finder = CallFinder(trace, runinfo)
    calls = finder.build()
    for call in calls:
        check_call(call)
    return calls, finder.unattributed
