"""Zoo: real transformers models (built from tiny configs, nothing downloaded), each in "eager" and "sdpa", trained a
few steps with an optimizer under attnprof, and GPT-2's generate() with a KV cache.

Every expectation comes from the model's structure: layers x profiled steps, T5's encoder layers + 2 x decoder
layers, the lengths generate() feeds, the source lines of the installed transformers (found by their text here, not
by attnprof). GPT-2 runs through the real CLI (`python -m attnprof trace`, attnprof.json); the others in-process
through the same trace_script + analysis, sharing one run per model family and implementation.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from trace_truth import events as trace_events

from attnprof.capture.session import TraceOptions, trace_script
from attnprof.pipeline import analyze_run

# transformers is imported by the tests, not at collection: test_capture_entrypoints's stand-in transformers
# packages need it absent from sys.modules.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")

IMPLEMENTATIONS = ("eager", "sdpa")
OP = {"eager": "hf.eager_attention_forward", "sdpa": "hf.sdpa"}
LAYERS = 2
BATCH, SEQ, TARGET = 2, 16, 8
ROOT = Path(__file__).resolve().parents[1]

TRAIN = """\
import sys
import torch
import transformers
torch.manual_seed(0)
config = transformers.{config}
model = transformers.{model}._from_config(config, attn_implementation=sys.argv[1])
optimizer = torch.optim.{optimizer}(model.parameters(), lr=1e-3)
x = torch.randint(1, 100, ({batch}, {seq}))
{inputs}
for step in range(3):
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print("trained", model.config._attn_implementation)
"""

FAMILIES = {
    "gpt2": dict(config=f"GPT2Config(n_layer={LAYERS}, n_embd=64, n_head=4, vocab_size=100, n_positions=32)",
                 model="GPT2LMHeadModel", optimizer="AdamW", inputs="inputs = dict(input_ids=x, labels=x)"),
    # GQA: 4 query heads share 2 key/value heads
    "llama": dict(config=f"LlamaConfig(num_hidden_layers={LAYERS}, hidden_size=64, intermediate_size=128, "
                         "num_attention_heads=4, num_key_value_heads=2, vocab_size=100, max_position_embeddings=32)",
                  model="LlamaForCausalLM", optimizer="AdamW", inputs="inputs = dict(input_ids=x, labels=x)"),
    # padding: the second sequence's last 6 tokens are masked out
    "bert": dict(config=f"BertConfig(num_hidden_layers={LAYERS}, hidden_size=64, intermediate_size=128, "
                        "num_attention_heads=4, vocab_size=100, max_position_embeddings=32)",
                 model="BertForMaskedLM", optimizer="SGD",
                 inputs="mask = torch.ones_like(x)\nmask[1, 10:] = 0\n"
                        "inputs = dict(input_ids=x, attention_mask=mask, labels=x)"),
    "t5": dict(config=f"T5Config(num_layers={LAYERS}, num_decoder_layers={LAYERS}, d_model=64, d_ff=128, d_kv=16, "
                      "num_heads=4, vocab_size=100, decoder_start_token_id=0)",
               model="T5ForConditionalGeneration", optimizer="AdamW",
               inputs=f"y = torch.randint(1, 100, ({BATCH}, {TARGET}))\ninputs = dict(input_ids=x, labels=y)"),
}

GENERATE = f"""\
import torch
import transformers
torch.manual_seed(0)
config = transformers.GPT2Config(n_layer={LAYERS}, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                 bos_token_id=0, eos_token_id=0, pad_token_id=0)
model = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()
x = torch.randint(1, 100, ({BATCH}, 8))
out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, min_new_tokens=4, do_sample=False)
print(out.shape)
"""


@dataclass
class Run:
    runinfo: dict  # runinfo.json
    report: dict  # attnprof.json
    folder: Path | None = None  # the run folder

    def trace_file(self) -> Path:
        assert self.folder is not None
        (path,) = [p for p in self.folder.glob("*.pt.trace.json*") if ".attnprof." not in p.name]
        return path

    def calls(self, phase: str) -> list[dict]:
        return [c for c in self.report["calls"] if c["phase"] == phase]


def cli_run(folder: Path, script: str, *args: str, options=("--warmup", "1", "--timed", "1", "--active", "1")) -> Run:
    """`python -m attnprof trace` as a user runs it; reads the run folder's runinfo.json and attnprof.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "script.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "attnprof", "trace", *options, "--out", "run", "script.py", *args],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "trained" in p.stdout or "torch.Size" in p.stdout  # the script's own output, unchanged
    return Run(json.loads((folder / "run" / "runinfo.json").read_text()),
               json.loads((folder / "run" / "attnprof.json").read_text()), folder / "run")


def in_process_run(folder: Path, script: str, *args: str, warmup=1, timed=1, active=1) -> Run:
    """The same trace and analysis in this process (no interpreter and transformers start-up per run)."""
    from dataclasses import asdict

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "script.py").write_text(script)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = trace_script(TraceOptions(target="script.py", is_module=False, args=list(args), out=folder / "run",
                                           warmup=warmup, timed=timed, active=active, quiet=True))
    assert (result.exit_code, result.outcome) == (0, "completed")
    analyzed = analyze_run(folder / "run")
    return Run(json.loads((folder / "run" / "runinfo.json").read_text()), asdict(analyzed.report), folder / "run")


@pytest.fixture(scope="module", autouse=True)
def models_imported():
    """The model modules imported before the in-process runs: their import is not what these tests profile (a
    --warmup 0 window would hold it). The CLI runs import them under attnprof, as they load."""
    import transformers

    for name in ("GPT2LMHeadModel", "LlamaForCausalLM", "BertForMaskedLM", "T5ForConditionalGeneration",
                 "AttentionInterface"):
        getattr(transformers, name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One traced training run per (family, implementation), made on first use."""
    cache: dict = {}

    def get(family: str, impl: str) -> Run:
        if (family, impl) not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{impl}")
            script = TRAIN.format(batch=BATCH, seq=SEQ, **FAMILIES[family])
            make = cli_run if family == "gpt2" else in_process_run
            cache[family, impl] = make(folder, script, impl)
        return cache[family, impl]

    return get


# --- what the installed transformers says, read here ---------------------------------------------------------------


def line_of(function, text: str) -> int:
    """The line of `function`'s source (in the installed transformers) where `text` first appears."""
    lines, first = inspect.getsourcelines(function)
    return first + next(i for i, line in enumerate(lines) if text in line)


def model_path(module) -> str:
    return "transformers/" + Path(module.__file__).resolve().as_posix().split("/transformers/", 1)[1]


def site(attention_forward, layer_forward, layer_text: str) -> str:
    """`path:line via :line`: the attention module's call of the attention function, and the layer line that called
    the attention module."""
    module = sys.modules[attention_forward.__module__]
    return (f"{model_path(module)}:{line_of(attention_forward, '= attention_interface(')} "
            f"via :{line_of(layer_forward, layer_text)}")


def check_cpu_calls(calls: list[dict]) -> None:
    """CPU calls: launch is null (no device to wait for). That compute + copy + other = window is checked by the
    analysis itself (decomposition.check_call) on every call it builds."""
    for c in calls:
        assert c["launch_us"] is None and c["device"] == "cpu"


def check_training(run: Run, impl: str, calls_per_step: int) -> None:
    """The window is one optimizer step (--warmup 1 --timed 1 --active 1 of 3 steps: step 2), holding
    calls_per_step forward calls and as many backward ones, each named after the implementation the model uses."""
    steps = run.runinfo["steps"]
    assert (steps["unit"], steps["seen"], steps["profiled"]) == ("optimizer", 3, [2, 2])
    fwd, bwd = run.calls("fwd"), run.calls("bwd")
    assert len(fwd) == len(bwd) == calls_per_step
    assert {c["op"] for c in run.report["calls"]} == {OP[impl]}
    assert {c["step"] for c in run.report["calls"]} == {2}
    assert len(run.runinfo["calls"]) == calls_per_step  # one record per call: HF's glue and torch's SDPA inside it
    check_cpu_calls(fwd + bwd)


# --- GPT-2 ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_trained_a_few_steps(runs, impl):
    from transformers.models.gpt2 import modeling_gpt2 as m

    run = runs("gpt2", impl)
    check_training(run, impl, LAYERS)
    expected_site = site(m.GPT2Attention.forward, m.GPT2Block.forward, "= self.attn(")
    assert {c["site"] for c in run.report["calls"]} == {expected_site}
    for c in run.runinfo["calls"]:  # (B, H, L, D) as GPT2Attention hands them over
        assert (c["batch"], c["heads_q"], c["heads_kv"], c["seqlen_q"], c["seqlen_k"], c["head_dim"]) == (
            BATCH, 4, 4, SEQ, SEQ, 16)
        assert c["scale"] == pytest.approx(16 ** -0.5) and c["dropout_p"] == pytest.approx(0.1)  # config defaults
        assert "lse" not in c["tensors"]  # eager returns the attention weights, not a log-sum-exp


def _outermost(evs: list[dict], outer: dict, name: str) -> list[dict]:
    """The events named `name` within `outer`'s span and not inside another of them."""
    found: list[dict] = []
    for e in evs:
        inside = e["name"] == name and outer["ts"] <= e["ts"] and e["ts"] + e["dur"] <= outer["ts"] + outer["dur"]
        if inside and (not found or e["ts"] >= found[-1]["ts"] + found[-1]["dur"]):
            found.append(e)
    return found


def test_gpt2_eager_forward_compute_holds_its_two_matmuls(runs):
    """Eager attention is q·kᵀ and ·v as two aten::matmul inside the call's range (read from the trace file with
    json): the call's compute holds both of them and fits its window."""
    run = runs("gpt2", "eager")
    evs = trace_events(run.trace_file())
    ranges = {int(e["name"].rsplit("#", 1)[1]): e for e in evs if e["name"].startswith("attnprof:")}
    for c in run.calls("fwd"):
        matmuls = _outermost(evs, ranges[c["id"]], "aten::matmul")
        assert len(matmuls) == 2, [m["name"] for m in matmuls]
        assert sum(m["dur"] for m in matmuls) * (1 - 1e-6) <= c["compute_us"] <= c["window_us"]


def test_gpt2_eager_output_copy_is_charged_with_its_line(runs):
    """GPT2Attention.forward copies the attention output: `attn_output.reshape(...).contiguous()`."""
    from transformers.models.gpt2 import modeling_gpt2 as m

    line = f"{model_path(m)}:{line_of(m.GPT2Attention.forward, 'attn_output = attn_output.reshape(')}"
    for c in runs("gpt2", "eager").calls("fwd"):
        assert line in {cp["site"] for cp in c["copies"] if cp["position"] == "after"}, c["copies"]
    # its time: the copy op inside that line's first range after the call, read from the trace file with json
    run = runs("gpt2", "eager")
    evs = trace_events(run.trace_file())
    ranges = {int(e["name"].rsplit("#", 1)[1]): e for e in evs if e["name"].startswith("attnprof:")}
    sources = [e for e in evs if e["name"].startswith(f"attnprof.src:{line} ") or e["name"] == f"attnprof.src:{line}"]
    for c in run.calls("fwd"):
        call = ranges[c["id"]]
        src = min((s for s in sources if s["ts"] >= call["ts"] + call["dur"]), key=lambda s: s["ts"])
        (copy,) = _outermost(evs, src, "aten::copy_")
        (charged,) = [cp["dur_us"] for cp in c["copies"] if cp["site"] == line and cp["position"] == "after"]
        assert copy["dur"] * (1 - 1e-6) <= charged <= src["dur"] * (1 + 1e-6)


# --- Llama (GQA) ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_llama_gqa_trained_a_few_steps(runs, impl):
    from transformers.models.llama import modeling_llama as m

    run = runs("llama", impl)
    check_training(run, impl, LAYERS)
    expected_site = site(m.LlamaAttention.forward, m.LlamaDecoderLayer.forward, "= self.self_attn(")
    assert {c["site"] for c in run.report["calls"]} == {expected_site}
    for c in run.runinfo["calls"]:  # 4 query heads, 2 key/value heads: the function gets k/v unexpanded
        assert (c["heads_q"], c["heads_kv"], c["gqa_ratio"], c["causal"]) == (4, 2, 2.0, None if impl == "eager"
                                                                               else True)


def test_llama_eager_repeat_kv_copy_is_charged_with_its_line(runs):
    from transformers.models.llama import modeling_llama as m

    line = f"{model_path(m)}:{line_of(m.repeat_kv, 'return hidden_states.reshape(')}"
    for c in runs("llama", "eager").calls("fwd"):
        assert [cp["site"] for cp in c["copies"]].count(line) == 2, c["copies"]  # k and v


# --- BERT (padding mask) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_padding_mask_trained_a_few_steps(runs, impl):
    from transformers.models.bert import modeling_bert as m

    run = runs("bert", impl)
    check_training(run, impl, LAYERS)
    expected_site = site(m.BertSelfAttention.forward, m.BertAttention.forward, "= self.self(")
    assert {c["site"] for c in run.report["calls"]} == {expected_site}
    for c in run.runinfo["calls"]:  # the padding mask reaches the call, which is then not causal by flag
        mask = c["tensors"]["mask"]
        assert (mask["shape"][0], mask["shape"][-1], c["causal"]) == (BATCH, SEQ, None)


# --- T5 (encoder-decoder) ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_t5_self_and_cross_attention_trained_a_few_steps(runs, impl):
    from transformers.models.t5 import modeling_t5 as m

    run = runs("t5", impl)
    check_training(run, impl, LAYERS + 2 * LAYERS)  # encoder self; decoder self and cross
    self_site = site(m.T5Attention.forward, m.T5LayerSelfAttention.forward, "= self.SelfAttention(")
    cross_site = site(m.T5Attention.forward, m.T5LayerCrossAttention.forward, "= self.EncDecAttention(")
    for phase in ("fwd", "bwd"):
        sites = [c["site"] for c in run.calls(phase)]
        assert (sites.count(self_site), sites.count(cross_site)) == (2 * LAYERS, LAYERS)
    lengths = sorted((c["seqlen_q"], c["seqlen_k"]) for c in run.runinfo["calls"])
    assert lengths == sorted([(SEQ, SEQ)] * LAYERS + [(TARGET, TARGET)] * LAYERS + [(TARGET, SEQ)] * LAYERS)


# --- generate() with a KV cache ------------------------------------------------------------------------------------


def test_generate_with_kv_cache(tmp_path):
    """4 new tokens: a prefill forward over the 8 prompt tokens, then 3 forwards of one token each over a cache
    one longer each time; every forward is a step (no optimizer), all 4 profiled, no backward."""
    run = in_process_run(tmp_path, GENERATE, warmup=0, timed=0, active=4)
    steps = run.runinfo["steps"]
    assert (steps["unit"], steps["seen"], steps["profiled"]) == ("iteration", 4, [0, 3])
    assert run.calls("bwd") == []
    by_step = {}
    for c in run.runinfo["calls"]:
        by_step.setdefault(c["step"], set()).add((c["op"], c["seqlen_q"], c["seqlen_k"]))
    assert by_step == {0: {("hf.sdpa", 8, 8)}, 1: {("hf.sdpa", 1, 9)}, 2: {("hf.sdpa", 1, 10)},
                       3: {("hf.sdpa", 1, 11)}}
    assert len(run.calls("fwd")) == 4 * LAYERS
    check_cpu_calls(run.calls("fwd"))


# --- the attention-interface registry ------------------------------------------------------------------------------


def test_a_registered_attention_function_is_one_call_named_after_its_key(tmp_path):
    """A user's function registered with AttentionInterface under two keys (as transformers registers one function
    as "flash_attention_2" and "_3"), selected as attn_implementation: one call per layer, named after the key the
    model asked for, though it dispatches to torch SDPA (itself an entry point)."""
    script = textwrap.dedent(f"""\
        import torch
        import torch.nn.functional as F
        import transformers
        from transformers import AttentionInterface

        def my_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
            return out.transpose(1, 2), None

        AttentionInterface.register("my_attention", my_attention)
        AttentionInterface.register("my_other_attention", my_attention)
        config = transformers.GPT2Config(n_layer={LAYERS}, n_embd=64, n_head=4, vocab_size=100, n_positions=32)
        x = torch.randint(1, 100, (2, 16))
        with torch.no_grad():
            for key in ("my_attention", "my_other_attention"):
                transformers.GPT2LMHeadModel._from_config(config, attn_implementation=key).eval()(x)
        """)
    run = in_process_run(tmp_path, script, warmup=0, timed=0, active=2)
    calls = run.runinfo["calls"]
    assert [(c["op"], c["library"]) for c in calls] == (
        [("hf.my_attention", "user")] * LAYERS + [("hf.my_other_attention", "user")] * LAYERS)
    assert [c["extra"]["attn_implementation"] for c in calls] == ["my_attention"] * 2 + ["my_other_attention"] * 2
    # all unpatched after the run
    import transformers
    from transformers.models.gpt2 import modeling_gpt2

    from attnprof.capture import patching

    assert "__getitem__" not in vars(transformers.AttentionInterface)
    assert not patching.is_wrapper(modeling_gpt2.eager_attention_forward)
    assert modeling_gpt2.eager_attention_forward.__module__ == modeling_gpt2.__name__


def test_flash_attention_3_through_transformers_is_one_call_named_after_it(tmp_path, stubs):
    """attn_implementation="flash_attention_3" runs transformers' flash_attention_forward, which calls FA3's
    flash_attn_func (tests/stubs: FA3 needs a Hopper GPU; transformers' availability check is skipped by setting the
    config's implementation after building): one call per layer, hf.flash_attention_3, not a second fa3 call."""
    script = textwrap.dedent(f"""\
        import torch
        import transformers
        config = transformers.LlamaConfig(num_hidden_layers={LAYERS}, hidden_size=64, intermediate_size=128,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
        model = transformers.LlamaForCausalLM._from_config(config, attn_implementation="sdpa").eval()
        model.config._attn_implementation = "flash_attention_3"
        with torch.no_grad():
            model(torch.randint(1, 100, ({BATCH}, {SEQ})))
        import flash_attn_interface
        assert flash_attn_interface.__file__.startswith({str(stubs)!r})
        """)
    run = in_process_run(tmp_path, script, warmup=0, timed=0, active=1)
    calls = run.runinfo["calls"]
    assert [(c["op"], c["library"], c["heads_q"], c["heads_kv"], c["causal"]) for c in calls] == [
        ("hf.flash_attention_3", "flash_attn_interface", 4, 2, True)] * LAYERS
    assert [c["backend"] for c in run.calls("fwd")] == ["fa3"] * LAYERS
