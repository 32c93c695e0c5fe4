"""Site names a person can read (module path and class in a model, the calling functions outside one) and the
selectors `explain` takes: every documented form, functions, modules, unique prefixes, and ambiguity as an error
that lists the candidates."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.analysis.records import CopySummary, SiteSummary
from attnprof.analysis.sites import collapse_paths, resolve_sites
from attnprof.errors import AttnprofError

REPO = Path(__file__).resolve().parents[1]


def test_layers_collapse_into_one_path_with_their_index_range():
    paths = [f"model.layers.{i}.self_attn" for i in (2, 0, 3, 1, 0)]
    assert collapse_paths(paths) == "model.layers.{0..3}.self_attn"
    assert collapse_paths(["h.0.attn", "h.2.attn", "h.5.attn"]) == "h.{0,2,5}.attn"
    assert collapse_paths(["encoder.block.1.attn"] * 3) == "encoder.block.1.attn"
    # two different modules are not one site's layers
    assert collapse_paths(["enc.0.attn", "enc.0.attn", "dec.0.cross"]) == "enc.0.attn (+1 more)"


def _site(site: str, label: str, function=None, caller=None, module=None, module_class=None, copies=(),
          phase="fwd") -> SiteSummary:
    return SiteSummary(site=site, op="sdpa", phase=phase, backend="cpu-flash", calls=2, shapes={}, dtype=None,
                       layout=None, true_us=None, profiled_us=None, inflation=None, timed_calls=0, after_us=None,
                       window_us=10.0, compute_us=10.0, copy_us=0.0, launch_us=None, launch_true_us=None,
                       other_us=0.0, interleaved_us=0.0, window_true_us=None,
                       copies=[CopySummary(site=c, op="aten::contiguous", bytes=1, dur_us=1.0, count=2)
                               for c in copies],
                       label=label, function=function, caller=caller, module=module, module_class=module_class)


SEED = _site("examples/seed_case.py:37 via :47", "seed_wrapper → flash_attention", "flash_attention", "seed_wrapper",
             copies=[f"examples/seed_case.py:{n}" for n in (44, 45, 46, 48)])
SEED_BWD = _site(SEED.site, SEED.label, "flash_attention", "seed_wrapper", phase="bwd")
NATIVE = _site("examples/seed_case.py:37 via :84", "main → flash_attention", "flash_attention", "main")
SDPA = _site("examples/seed_case.py:52 via :86", "main → sdpa", "sdpa", "main")
LLAMA = _site("transformers/models/llama/modeling_llama.py:250", "model.layers.{0..3}.self_attn (LlamaAttention)",
              "LlamaAttention.forward", "LlamaDecoderLayer.forward", "model.layers.{0..3}.self_attn", "LlamaAttention")
SITES = [SEED, SEED_BWD, NATIVE, SDPA, LLAMA]


@pytest.mark.parametrize("selector, expected", [
    ("seed_wrapper → flash_attention", [SEED, SEED_BWD]),  # the label
    ("examples/seed_case.py:37 via :47", [SEED, SEED_BWD]),  # the full site
    ("seed_case.py:37 via :47", [SEED, SEED_BWD]),  # the site without its folder (README)
    ("seed_case.py:47", [SEED, SEED_BWD]),  # the line calling the site's function (--help: ::seed_case.py:47)
    ("seed_case.py:84", [NATIVE]),  # --help: --site-a seed_case.py:84
    ("seed_case.py:44", [SEED, SEED_BWD]),  # a layout copy of the site (README: ::seed_case.py:44)
    ("seed_case.py", [SEED, SEED_BWD, NATIVE, SDPA]),  # every site of a file
    ("seed_wrapper", [SEED, SEED_BWD]),  # a function
    ("sdpa", [SDPA]),
    ("layers.0.self_attn", [LLAMA]),  # one layer names the model's layers' site
    ("model.layers.3.self_attn", [LLAMA]),
    ("self_attn", [LLAMA]),
    ("LlamaAttention", [LLAMA]),
    ("seed_w", [SEED, SEED_BWD]),  # a unique prefix
    ("model.layers", [LLAMA]),
])
def test_every_selector_form_names_its_site(selector, expected):
    assert resolve_sites(SITES, selector) == expected


@pytest.mark.parametrize("selector, candidates", [
    ("seed_case.py:37", ["seed_wrapper → flash_attention [seed_case.py:37 via :47]",
                         "main → flash_attention [seed_case.py:37 via :84]"]),
    ("main", ["main → flash_attention", "main → sdpa"]),
    ("flash_attention", ["seed_wrapper → flash_attention", "main → flash_attention"]),
])
def test_an_ambiguous_selector_lists_its_candidates(selector, candidates):
    with pytest.raises(AttnprofError) as e:
        resolve_sites(SITES, selector, "run")
    message = str(e.value)
    assert "\n" not in message and e.value.exit_code == 2
    assert message.startswith(f"'{selector}' names {len(candidates)} sites of run")
    assert all(c in message for c in candidates)
    assert "LlamaAttention" not in message


def test_a_selector_naming_nothing_lists_the_sites():
    with pytest.raises(AttnprofError, match=r"run has no site seed_case.py:99; its sites: .*main → sdpa "
                                            r"\[seed_case.py:52 via :86\]"):
        resolve_sites(SITES, "seed_case.py:99", "run")
    with pytest.raises(AttnprofError, match="has no site case.py"):  # a file name is matched whole
        resolve_sites(SITES, "case.py", "run")


SEED_SCRIPT = """\
import torch
import torch.nn.functional as F


def attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def wrapped(q, k, v):
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return attend(q, k, v).transpose(1, 2).contiguous()


def main():
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    for _ in range(3):
        wrapped(q, k, v)
        attend(q, k, v)


main()
"""


def test_sites_outside_a_model_are_named_by_their_functions(trace):
    from attnprof.pipeline import analyze_run

    result = trace(SEED_SCRIPT, active=1)
    report = analyze_run(result.folder).report
    labels = {s.site: s.label for s in report.sites}
    # attend is called from wrapped (line 11) and from main (line 18): two sites, each named by who calls it
    assert labels == {"script.py:6 via :11": "wrapped → attend", "script.py:6 via :18": "main → attend"}
    assert {(s.function, s.caller, s.module) for s in report.sites} == {("attend", "wrapped", None),
                                                                         ("attend", "main", None)}
    # through the CLI: two functions as two sides; a name both sites answer to, and two names of one site, fail
    r = _cli("explain", f"{result.folder}::wrapped", "::main")
    assert r.returncode == 0, r.stderr
    assert f"{result.folder}::wrapped" in r.stdout and f"{result.folder}::main" in r.stdout
    r = _cli("explain", f"{result.folder}::attend")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "'attend' names 2 sites" in r.stderr and "main → attend [script.py:6 via :18]" in r.stderr
    r = _cli("explain", f"{result.folder}::wrapped", "::script.py:11")
    assert r.returncode == 2 and "name the same calls" in r.stderr


needs_transformers = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                        reason="transformers not installed")

GPT2_SCRIPT = """\
import torch
import transformers
torch.manual_seed(0)
config = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
model = transformers.GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()
x = torch.randint(1, 50, (1, 8))
with torch.no_grad():
    for _ in range(2):
        model(input_ids=x)
"""


@needs_transformers
def test_a_models_layers_are_one_site_named_by_module_path(trace, tmp_path):
    from attnprof.pipeline import analyze_run

    result = trace(GPT2_SCRIPT, active=1)
    report = analyze_run(result.folder).report
    [site] = report.sites
    # GPT2LMHeadModel.transformer.h[i].attn, for the 3 layers of the config
    assert site.label == "transformer.h.{0..2}.attn (GPT2Attention)"
    assert site.module == "transformer.h.{0..2}.attn" and site.module_class == "GPT2Attention"
    assert site.calls == 3
    info = json.loads((result.folder / "runinfo.json").read_text())
    assert sorted(c["module"] for c in info["calls"]) == [f"transformer.h.{i}.attn" for i in range(3)]
    # the full site stays in attnprof.json beside the label
    from attnprof.render.json_report import JsonRenderer

    saved = json.loads(JsonRenderer().render(report))["sites"][0]
    assert saved["label"] == site.label and saved["site"].startswith("transformers/models/gpt2/modeling_gpt2.py:")
    # and the CLI resolves a layer, the module name and the class to it; an unknown name fails in one line
    for selector in ("h.1.attn", "attn", "GPT2Attention", saved["site"]):
        r = _cli("explain", f"{result.folder}::{selector}")
        assert r.returncode == 0, (selector, r.stderr)
        assert f"::{selector}" in r.stdout
    r = _cli("explain", f"{result.folder}::mlp")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "has no site mlp; its sites: transformer.h.{0..2}.attn (GPT2Attention)" in r.stderr


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "attnprof", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


def test_torch_modules_are_named_by_their_path(trace):
    from attnprof.pipeline import analyze_run

    result = trace("""\
        import torch
        layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
        encoder = torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).train()
        x = torch.randn(2, 5, 16)
        for _ in range(2):
            encoder(x)
        """, active=1)
    report = analyze_run(result.folder).report
    assert [s.label for s in report.sites] == ["layers.{0..1}.self_attn (MultiheadAttention)"]
