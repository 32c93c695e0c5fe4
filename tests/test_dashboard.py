"""Dashboards: the figures and their numbers (from the JSON the page embeds), the page being self-contained,
`attnprof dashboard` for run folders, trace files and compare folders, and the gallery."""
from __future__ import annotations

import dataclasses
import json

import pytest
from hand_records import CEILINGS, call, compare_doc, compare_rows, report, seed_vs_sdpa
from seed_runs import H100_TRACES, bare_trace, h100_run_folders, seed_runs

from attnprof.analysis import diagnosis as dg
from attnprof.analysis.insights import insights, roofline_points, site_splits
from attnprof.analysis.records import KernelSlice
from attnprof.cli.dashboard_cmd import write_for_path
from attnprof.gallery import build_gallery, gallery_pairs, load_gallery_runs, run_identity
from attnprof.pipeline import analyze_path, analyze_run, read_compare, write_dashboard_for
from attnprof.render import dashboard as db


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    return seed_runs(tmp_path_factory.getbasetemp())


def traces_by_name(fig: dict) -> dict[str, dict]:
    return {t.get("name"): t for t in fig["data"]}


# --- figures from hand-built records (exact numbers) -------------------------------------------------------------


def test_site_bars_split_true_and_profiled():
    r, _, _ = seed_vs_sdpa()
    fig = db.site_bars_figure(r, site_splits(r)).to_plotly_json()
    t = traces_by_name(fig)
    assert list(t) == ["compute", "copy", "launch (GPU idle)", "other", "true µs (end-to-end, median)",
                       "profiled µs (end-to-end, median)"]
    assert list(t["compute"]["y"]) == ["model.py:9 · fwd", "seed.py:47 · fwd"]
    assert list(t["compute"]["x"]) == pytest.approx([41.0, 69.0])
    assert list(t["copy"]["x"]) == pytest.approx([0.0, 152.0])
    # the parts add up to the true estimate; the rest of the window is the profiler's, written beside the bar
    assert list(t["launch (GPU idle)"]["x"]) == pytest.approx([60.0 - 42.0, 81.0 + 152.0 - 221.0])
    notes = [(a["y"], a["text"].strip()) for a in fig["layout"]["annotations"]]
    assert notes == [(-0.5, "profiler +42.0 µs"), (0.5, "profiler +888.0 µs")]  # 102 - 60, 1121 - 233
    # the axis is set by the user's time (the longest bar, 233 µs), not by the 1,121 µs profiled window
    assert fig["layout"]["xaxis"]["range"] == pytest.approx([0.0, 233.0 * 1.4])
    assert list(t["true µs (end-to-end, median)"]["x"]) == pytest.approx([60.0, 81.0])
    assert list(t["profiled µs (end-to-end, median)"]["x"]) == pytest.approx([100.0, 240.0])
    assert "cudnn" in json.dumps(t["compute"]["customdata"]) and "x-thin-open" in json.dumps(fig)
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("µs per call")


def test_site_bars_on_cpu_have_no_launch():
    r = report([call("a.py:1", "cpu-flash", launch=None, other=5.0, device="cpu")], device="cpu")
    names = [t["name"] for t in db.site_bars_figure(r, site_splits(r)).to_plotly_json()["data"]]
    assert names == ["compute", "copy", "other"]


def test_waterfall_walks_from_a_through_the_causes_to_b():
    _, a, b = seed_vs_sdpa()
    e = dg.explain(a, b)
    w = db.waterfall_figure(e).to_plotly_json()["data"][0]
    assert w["type"] == "waterfall"
    assert list(w["x"]) == ["A"] + [dg.KIND_TITLES[c.kind] for c in e.causes] + ["unexplained", "B"]
    assert list(w["measure"]) == ["absolute"] + ["relative"] * (len(e.causes) + 1) + ["total"]
    # by hand (test_diagnosis): A 60, layout copies 152, kernel 28, other -1, launch -6, nothing unexplained, B 233
    assert list(w["y"]) == pytest.approx([60.0, 152.0, 28.0, -1.0, -6.0, 0.0, 233.0])
    assert w["x"][1] == "layout copies" and "seed.py:44" in w["hovertext"][1]


def test_timeline_bars_are_the_kernels_relative_to_the_window():
    c = call("m.py:3", "cudnn", compute=30.0, launch=20.0)
    c.start_us = 1000.0
    c.kernels = [KernelSlice("copy_kernel", "copy", 1005.0, 10.0),
                 KernelSlice("cudnn_fprop", "compute", 1030.0, 30.0)]
    fig = db.timeline_figure(report([c])).to_plotly_json()
    t = traces_by_name(fig)
    assert list(t["compute"]["base"]) == [30.0] and list(t["compute"]["x"]) == [30.0]
    assert list(t["copy"]["base"]) == [5.0] and list(t["copy"]["customdata"]) == ["copy_kernel"]
    window = next(v for k, v in t.items() if k.startswith("window"))
    assert list(window["x"]) == [60.0] and "GPU idle" in window["name"]  # the gaps show against it


def test_timeline_picks_the_median_call_of_each_site():
    calls = [call("m.py:3", "cudnn", id=i, compute=float(us)) for i, us in ((1, 10), (2, 50), (3, 30))]
    assert [c.id for c in db.representative_calls(report(calls))] == [3]


def test_roofline_points_and_ceilings():
    r, _, _ = seed_vs_sdpa()
    points = roofline_points(r, CEILINGS)
    kernels = next(p for p in points if p.site == "model.py:9" and p.basis == "kernels")
    # q, k, v (B, H, L, D) = (2, 16, 256, 64) in float16, not causal, the kernel 41 µs: by hand
    flops = 4 * 2 * 16 * 256 * 256 * 64  # QK^T and PV: 2 matmuls of 2·B·H·Lq·Lk·D
    nbytes = 4 * (2 * 16 * 256 * 64) * 2  # q, k, v read and out written once, 2 bytes each
    assert flops / nbytes == 128.0 and kernels.intensity == pytest.approx(128.0)
    assert kernels.tflops == pytest.approx(flops / 41.0 / 1e6)  # 13.09 TFLOP/s
    fig = db.roofline_figure(points, CEILINGS).to_plotly_json()
    ceiling = next(t for t in fig["data"] if t["name"].startswith("ceilings"))
    assert max(ceiling["y"]) == pytest.approx(790.0)
    assert fig["layout"]["xaxis"]["type"] == "log" and "FLOP / byte" in fig["layout"]["xaxis"]["title"]["text"]


def test_compare_sweep_and_table():
    rows = compare_rows()
    ((dim, fig),) = db.sweep_figures(rows)  # only L varies
    assert dim == "L"
    lines = traces_by_name(fig.to_plotly_json())
    assert set(lines) == {"sdpa-auto native fwd", "aten-flash native fwd"}  # the unsupported row draws nothing
    assert list(lines["sdpa-auto native fwd"]["x"]) == [256, 1024, 4096]
    assert list(lines["aten-flash native fwd"]["y"]) == pytest.approx([70.0, 280.0, 1120.0])
    assert all(t["mode"] == "lines+markers" for t in lines.values())
    table = db.compare_table_html(rows)
    assert table.count("<tr>") == 1 + 6  # the heading and the six rows that ran
    assert "not run here: fa3 native (flash_attn_interface missing)" in table


def test_compare_of_shapes_that_differ_in_every_dimension_is_no_sweep():
    """traces/h100/compare: 12x64x256x64 and 16x128x784x128 differ in B, H, L and D, so no chart varies L alone;
    the per-shape bars hold one bar per shape for each of the 9 backend/variant pairs that ran."""
    rows = read_compare(H100_TRACES / "compare").rows
    assert db.sweep_figures(rows) == []
    fig = db.shapes_figure(rows).to_plotly_json()
    bars = traces_by_name(fig)
    assert set(bars) == {"12×64×256×64 float16", "16×128×784×128 float16"}
    assert all(len(b["x"]) == 9 for b in bars.values())
    cudnn = {name: dict(zip(b["y"], b["x"]))["sdpa-cudnn native fwd"] for name, b in bars.items()}
    assert cudnn == {"12×64×256×64 float16": 44.256, "16×128×784×128 float16": 1470.128}  # compare.json's medians


def test_sweep_of_two_dimensions_draws_one_chart_each():
    rows = [dataclasses.replace(r, shape=[8, 16, 256, D]) for r, D in zip(compare_rows()[:3], (32, 64, 128))]
    rows += compare_rows()
    assert [dim for dim, _ in db.sweep_figures(rows)] == ["L", "D"]



def test_fix_of_copies_inside_hf_eager_attention_names_the_op():
    """hf-llama-eager's copies are aten::copy_ made inside HF's eager attention, not a .contiguous() of the user's."""
    run = analyze_run(H100_TRACES / "hf-llama-eager")
    (d,) = dg.diagnose_sites(run.report, run.call_info)
    (copy,) = [c for c in d.causes if c.kind == dg.LAYOUT_COPY]
    assert "aten::copy_" in copy.fix and ".contiguous()" not in copy.fix
    assert 'attn_implementation="sdpa"' in copy.fix


def test_forward_only_pages_say_per_call_without_fwd_bwd(tmp_path):
    """traces/h100/seed-fwd has no backward: no "(fwd + bwd)" and no "µs µs" anywhere on its page."""
    run = analyze_run(H100_TRACES / "seed-fwd")
    text = write_dashboard_for(run.report, tmp_path, call_info=run.call_info).read_text()
    assert "fwd + bwd" not in text and "µs µs" not in text
    assert "µs per attention call" in text


def test_headline_is_the_gap_and_its_causes():
    """seed-fwd: the seed wrapper's site against SDPA's: B is 178.4 µs slower, layout copies 151.4 µs and kernel
    choice 28.2 µs (traces/h100/README.md's numbers: CUDA-event true times, four contiguous copies)."""
    run = analyze_run(H100_TRACES / "seed-fwd")
    lines = db.headlines(run.report, insights(run.report, run.call_info), None)
    # sites named by their function (two share `flash_attention`, so theirs keeps its line) and location
    assert lines[0] == ("flash_attention seed_case.py:34 via :47 is 178.4 µs slower per attention call than "
                        "sdpa [seed_case.py:52 via :86]: layout copies 151.4 µs, kernel choice 28.2 µs")


def test_compare_headline_per_case():
    assert db.compare_headlines(read_compare(H100_TRACES / "compare").rows) == [
        "12×64×256×64 float16 fwd: fastest sdpa-cudnn native 44.3 µs; the seed's wrapper makes sdpa-blhd 155.9 µs "
        "slower (44.8 µs → 200.7 µs); slowest sdpa-math native 1,209 µs",
        "16×128×784×128 float16 fwd: fastest sdpa-blhd native 1,460 µs; the seed's wrapper makes sdpa-blhd "
        "2,260 µs slower (1,460 µs → 3,719 µs); slowest sdpa-math native 33,408 µs"]


# --- the page -----------------------------------------------------------------------------------------------------


def test_written_page_embeds_every_figure_and_plotly_js(tmp_path):
    r, _, _ = seed_vs_sdpa()
    (tmp_path / "compare.json").write_text(json.dumps(compare_doc()))
    path = write_dashboard_for(r, tmp_path)
    assert path == tmp_path / "dashboard.html"
    html = path.read_text()
    data = db.read_dashboard_data(path)
    assert list(data["figures"]) == ["sites", "waterfall-0", "timeline", "roofline", "sweep-L"]
    assert "id=compare-rows" in html  # the compare rows are an HTML table, no figure
    assert set(data["templates"]) == {"light", "dark"}
    assert data["templates"]["dark"]["layout"]["paper_bgcolor"] != data["templates"]["light"]["layout"][
        "paper_bgcolor"]
    assert all("template" not in f["layout"] for f in data["figures"].values())  # the page applies the theme
    # roofline under compare.json's ceilings
    ceiling = next(t for t in data["figures"]["roofline"]["data"] if t["name"].startswith("ceilings"))
    assert max(ceiling["y"]) == pytest.approx(790.0)
    # self-contained: plotly.js inline, nothing fetched
    assert "<script src" not in html and "cdn.plot.ly/plotly" not in html
    assert "Plotly.newPlot" in html and len(html) > 3_000_000
    assert 'id="fig-sites"' in html and "causes and fixes per site" in html


def test_empty_folder_page_says_so(tmp_path):
    path = write_dashboard_for(None, tmp_path)
    assert db.read_dashboard_data(path)["figures"] == {} and "nothing to chart" in path.read_text()


# --- real CPU runs, the command, the gallery -----------------------------------------------------------------------


def test_dashboard_of_a_cpu_run_folder(cpu_runs):
    path = write_for_path(cpu_runs["all"])
    assert path == cpu_runs["all"] / "dashboard.html"
    figures = db.read_dashboard_data(path)["figures"]
    assert {"sites", "waterfall-0", "timeline", "roofline"} <= set(figures)
    r = analyze_path(cpu_runs["all"])
    labels = set(traces_by_name(figures["sites"])["compute"]["y"])
    assert labels == {f"{s.site} · {s.phase}" for s in r.sites}
    waterfall = figures["waterfall-0"]["data"][0]
    # which cause is biggest on a CPU depends on the machine's load; that the copies are a step is not
    assert "layout copies" in waterfall["x"]


def test_dashboard_of_a_trace_file_goes_next_to_it(cpu_runs):
    trace = bare_trace(cpu_runs["seed"])
    path = write_for_path(trace)
    assert path.parent == trace.parent and path.name.endswith(".attnprof.dashboard.html")
    assert "sites" in db.read_dashboard_data(path)["figures"]


def test_dashboard_of_a_compare_folder(tmp_path):
    (tmp_path / "compare.json").write_text(json.dumps(compare_doc()))
    figures = db.read_dashboard_data(write_for_path(tmp_path))["figures"]
    assert list(figures) == ["sweep-L"]


def test_run_identity_from_command_or_folder_name(tmp_path):
    assert run_identity(tmp_path / "x", ["examples/seed_case.py", "--variant", "seed", "--backward"]) == (
        "seed_case", "seed", "--backward")
    assert run_identity(tmp_path / "x", ["-m", "llama", "--attn=eager"]) == ("llama", "eager", "")
    assert run_identity(tmp_path / "hf_llama-sdpa-20261125-130200", None) == ("hf_llama", "sdpa", "")


def test_gallery_of_cpu_runs(cpu_runs, tmp_path):
    root = cpu_runs["all"].parent
    out = tmp_path / "dashboards"
    entries = build_gallery(root, out)
    names = {e.path.name for e in entries}
    # runs that are one side of a pair are shown on the pair's page only
    assert {"seed_case-all.html", "seed_case-seed-vs-sdpa.html", "seed_case-seed-vs-native.html"} == names
    pair = db.read_dashboard_data(out / "seed_case-seed-vs-native.html")["figures"]
    assert "layout copies" in pair["waterfall-0"]["data"][0]["x"]
    sites = traces_by_name(pair["sites"])["compute"]["y"]
    assert any(y.startswith("seed_case-native::") for y in sites) and any(y.startswith("seed_case-seed::")
                                                                           for y in sites)
    readme = (out / "README.md").read_text()
    assert "attnprof dashboard --gallery" in readme
    for name in names:
        assert f"]({name})" in readme
    assert "layout copies" in readme and "examples/seed_case.py:44" in readme


# --- the H100 reference runs (traces/h100/, recorded later): skipped while absent -------------------------------

H100_FOLDERS = h100_run_folders()


@pytest.mark.skipif(not H100_FOLDERS, reason="no H100 reference runs under traces/h100/")
def test_h100_gallery(tmp_path):
    entries = build_gallery(H100_TRACES, tmp_path)
    runs = load_gallery_runs(H100_TRACES)
    pairs = gallery_pairs(runs)
    paired = {r.name for pair in pairs for r in pair}
    assert len(entries) == len(runs) - len(paired) + len(pairs)
    assert {"seed-fwd.html", "seed-train.html", "compare.html", "hf-llama-eager-vs-sdpa.html",
            "train-seed-vs-sdpa.html"} <= {e.path.name for e in entries}
    for run in runs:
        if run.name in paired:
            continue
        figures = db.read_dashboard_data(tmp_path / f"{run.name}.html")["figures"]
        if run.report is not None and run.report.sites:
            assert {"sites", "timeline"} <= set(figures)
            if run.report.device.startswith("NVIDIA"):
                names = [t["name"] for t in figures["sites"]["data"]]
                assert "launch (GPU idle)" in names
        if run.compare:  # two shapes that differ in every dimension: per-shape bars, no sweep; the rows' table
            assert "shapes" in figures and not any(k.startswith("sweep") for k in figures)
            assert "id=compare-rows" in (tmp_path / f"{run.name}.html").read_text()
