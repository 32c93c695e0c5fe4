"""The typed records between stages: a call's description reaches its CallInfo whole; enums are their text."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgspec
import pytest

from attnprof.analysis.records import Category, FoundBy, Part, Phase, Position
from attnprof.capture.entrypoints import CallDescription
from attnprof.trace.runinfo import CallInfo, TensorInfo

SEED_FWD = Path(__file__).resolve().parent.parent / "traces" / "h100" / "seed-fwd"


def _call_info() -> CallInfo:
    return CallInfo(id=1, op="sdpa", library="torch", site="m.py:1", function="f", step=0, range_name="r",
                    layout="unknown")


def test_a_description_reaches_every_field_of_the_call_it_describes():
    q = TensorInfo(shape=[1, 3, 8, 64], stride=[1536, 512, 64, 1], dtype="float16", device="cpu", storage=None)
    described = CallDescription(layout="BLHD", tensors={"q": q}, batch=1, heads_q=8, heads_kv=2, seqlen_q=3,
                                seqlen_k=5, head_dim=64, head_dim_v=32, gqa_ratio=4.0, causal=True, dropout_p=0.1,
                                scale=0.125, mask="bool[1, 1, 3, 5]", extra={"softcap": "30.0"})
    fields = [f.name for f in dataclasses.fields(CallDescription)]
    fresh = _call_info()
    # every value differs from CallInfo's default, so a field apply() forgets shows here
    assert [f for f in fields if getattr(fresh, f) == getattr(described, f)] == []
    info = _call_info()
    described.apply(info)
    assert {f: getattr(info, f) for f in fields} == {f: getattr(described, f) for f in fields}
    assert (info.id, info.op, info.site) == (1, "sdpa", "m.py:1")  # what capture knew before stays


def test_a_misspelt_description_field_is_an_error_not_a_new_attribute():
    with pytest.raises(AttributeError):
        CallDescription().head_dims = 64  # type: ignore[attr-defined]


@pytest.mark.parametrize("member, text", [(Phase.BWD, "bwd"), (Part.INTERLEAVED, "interleaved"),
                                          (Position.BEFORE, "before"), (Category.COPY, "copy"),
                                          (FoundBy.PATTERN, "pattern")])
def test_an_enum_member_is_its_text(member, text):
    assert member == text and {text: 1}[member] == 1
    assert f"{member}" == text and str(member) == text and f"{member:>12}" == text.rjust(12)
    assert json.dumps(member) == msgspec.json.encode(member).decode() == f'"{text}"'


@pytest.mark.skipif(not SEED_FWD.is_dir(), reason="no recorded H100 runs")
def test_attnprof_json_keeps_the_words_of_the_seed_run():
    from attnprof.pipeline import analyze_path, render_json

    doc = json.loads(render_json(analyze_path(SEED_FWD)))
    wrapped = [c for c in doc["calls"] if c["copies"]]
    # the seed wrapper: transpose(1, 2).contiguous() on q, k, v before the call and on its output after it
    assert wrapped and all([cp["position"] for cp in c["copies"]] == ["before"] * 3 + ["after"] for c in wrapped)
    assert {c["phase"] for c in doc["calls"]} == {"fwd"} and {c["found_by"] for c in doc["calls"]} == {"attnprof"}
    assert {k["category"] for c in wrapped for k in c["kernels"]} == {"compute", "copy"}
    assert {s["part"] for c in doc["calls"] for s in c["segments"]} <= {"compute", "copy", "other", "launch",
                                                                       "interleaved"}
