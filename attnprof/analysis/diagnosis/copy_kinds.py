"""What a copy op is for: a layout copy, a dtype cast, padding, or the expansion of grouped k/v heads."""
from __future__ import annotations

from attnprof.analysis.diagnosis.records import CAST, GQA_EXPAND, LAYOUT_COPY, PAD

_CAST_OPS = frozenset(("aten::_to_copy", "aten::to", "aten::type_as"))
_PAD_OPS = frozenset(("aten::constant_pad_nd", "aten::pad"))
_GQA_OPS = frozenset(("aten::repeat_interleave", "aten::repeat", "aten::expand_copy", "aten::_unsafe_index",
                      "aten::index_select"))

_NODE_PREFIX = "autograd::engine::evaluate_function: "
#: Backward nodes of copy ops (their own copies in backward), by what the forward op was for.
_NODE_KINDS = (("ToCopyBackward", CAST), ("ConstantPadNdBackward", PAD), ("PadBackward", PAD),
               ("RepeatInterleaveBackward", GQA_EXPAND), ("RepeatBackward", GQA_EXPAND),
               ("IndexSelectBackward", GQA_EXPAND), ("UnsafeIndexBackward", GQA_EXPAND), ("ExpandBackward", GQA_EXPAND))


def short_op(op: str) -> str:
    """'autograd::engine::evaluate_function: ToCopyBackward0' -> 'ToCopyBackward0'."""
    return op.removeprefix(_NODE_PREFIX)


def copy_kind(op: str) -> str:
    """What a copy op is for. expand + reshape (Hugging Face's repeat_kv) reaches here as a reshape: a layout copy."""
    if op in _CAST_OPS:
        return CAST
    if op in _PAD_OPS:
        return PAD
    if op in _GQA_OPS:
        return GQA_EXPAND
    node = short_op(op)
    return next((kind for prefix, kind in _NODE_KINDS if node.startswith(prefix)), LAYOUT_COPY)
