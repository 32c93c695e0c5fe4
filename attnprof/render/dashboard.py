"""dashboard.html: one self-contained, offline HTML page of Plotly charts for a run folder.

Panels (each only when there is data for it):
- per-site stacked bars: compute / copy / launch / other, µs per call, the profiler's own cost hatched apart, with
  the true and profiled end-to-end times as markers;
- waterfalls from the faster to the slower variant through the ranked causes (diagnosis.explain), for
  explanations given or for comparable call sites found in the report;
- a kernel timeline of representative calls (Gantt bars from CallSplit.kernels), the window behind them, so the
  launch gaps show as empty space;
- the roofline: achieved TFLOP/s against arithmetic intensity, under the measured ceilings when known;
- `attnprof compare`'s sweep (time against sequence length per backend) and its table, when compare.json is there.

plotly.js is embedded (what `include_plotlyjs=True` embeds: plotly.offline.get_plotlyjs()), so the file works
offline. The figures travel as JSON in `<script id="attnprof-data" type="application/json">` without a template;
the page applies a light or a dark Plotly template (prefers-color-scheme, then the toggle), so both read well.

Every number comes in computed: the report, its Insights (analysis/insights.py: splits, diagnoses, explanations,
roofline points, the ceilings used) and compare.json's document. This module only lays them out.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from attnprof.analysis.diagnosis import KIND_TITLES, Cause, Explanation, SiteSplit
from attnprof.analysis.insights import Insights
from attnprof.analysis.kernel_counters import CEILING_PCT, KernelCountersSection, kernel_label, tensor_path
from attnprof.analysis.records import CallSplit, Report, SiteSummary
from attnprof.files import atomic_write
from attnprof.render.base import Renderer
from attnprof.trace.ceilings import Ceilings

DASHBOARD_FILE = "dashboard.html"
DATA_ELEMENT_ID = "attnprof-data"
THEMES = {"light": "plotly_white", "dark": "plotly_dark"}

#: Mid-tone colours that read on white and on near-black alike.
COLORS = {"compute": "#4C78A8", "copy": "#F58518", "launch": "#9D9DA6", "other": "#54A24B",
          "inflation": "#9D9DA6", "true": "#E45756", "profiled": "#B279A2", "window": "rgba(157,157,166,0.22)"}
MAX_TIMELINE_ROWS = 12


@dataclass
class Panel:
    key: str  # stable id: the figure's key in the embedded JSON and its element id
    title: str
    description: str
    figure: go.Figure
    table_html: str = ""  # e.g. the causes with their fixes, under the chart


# --- labels and hover text -----------------------------------------------------------------------------------


def _dims(shape) -> str:
    return "x".join(map(str, shape)) if shape else "?"


def _shape_label(shapes: dict[str, list[int]], dtype: str | None, layout: str | None) -> str:
    main = shapes.get("q") or shapes.get("qkv") or next(iter(shapes.values()), None)
    return " ".join(b for b in (_dims(main), dtype or "", layout or "") if b)


def _site_shape(s: SiteSummary | CallSplit) -> str:
    return _shape_label(s.shapes, s.dtype, s.layout)


def _row_label(s: SiteSummary) -> str:
    return f"{s.site} · {s.phase}"


def _us(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:,.1f} µs" if abs(v) < 1000 else f"{v:,.0f} µs")


def _figure(**layout) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.02, yanchor="bottom",
                                                                        x=0, xanchor="left"), **layout)
    return fig


# --- per-site stacked bars ----------------------------------------------------------------------------------------


def site_bars_figure(report: Report, splits: dict[tuple[str, str, str], SiteSplit]) -> go.Figure | None:
    """`splits`: Insights.splits, each site's parts per call on the basis it is shown on."""
    sites = list(report.sites)
    if not sites:
        return None
    sites.sort(key=lambda s: (s.site, s.phase != "fwd"))
    labels = [_row_label(s) for s in sites]
    hover = [[s.site, s.phase, f"{s.op} → {s.backend}", _site_shape(s), s.calls, _us(s.window_us), _us(s.true_us),
              _us(s.profiled_us), f"x{s.inflation:.2f}" if s.inflation else "n/a"] for s in sites]
    template = ("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]}<br>%{customdata[3]}<br>"
                "%{customdata[4]} calls · window %{customdata[5]}<br>true %{customdata[6]} · profiled "
                "%{customdata[7]} (%{customdata[8]})<br><b>%{fullData.name}: %{x:,.1f} µs</b><extra></extra>")
    fig = _figure(barmode="stack", height=160 + 46 * len(sites), legend_traceorder="normal",
                  xaxis_title="µs per call (mean of the profiled calls; markers: medians)",
                  yaxis=dict(title="call site · phase", autorange="reversed", automargin=True))
    on_gpu = any(s.launch_us is not None for s in sites)
    shown = [splits[(s.site, s.op, s.phase)] for s in sites]
    parts = [("compute", [x.compute for x in shown]), ("copy", [x.copy for x in shown])]
    if on_gpu:
        parts.append(("launch", [x.launch or 0.0 for x in shown]))
    parts.append(("other", [x.other for x in shown]))
    if any(x.profiler_us for x in shown):
        parts.append(("inflation", [x.profiler_us for x in shown]))
    names = {"compute": "compute", "copy": "copy", "launch": "launch (GPU idle)", "other": "other",
             "inflation": "profiler's own cost (left out)"}
    for key, values in parts:
        marker = dict(color=COLORS[key])
        if key == "inflation":
            marker["pattern"] = dict(shape="/", fgcolor=COLORS["inflation"], solidity=0.3)
            marker["color"] = "rgba(0,0,0,0)"
            marker["line"] = dict(color=COLORS["inflation"], width=1)
        fig.add_trace(go.Bar(name=names[key], x=values, y=labels, orientation="h", marker=marker,
                             customdata=hover, hovertemplate=template))
    for key, attr, symbol in (("true", "true_us", "diamond"), ("profiled", "profiled_us", "x-thin-open")):
        # without a true time, profiled_us is only the window's mean (not a measurement): no marker
        xs = [getattr(s, attr) if s.true_us is not None else None for s in sites]
        if any(v is not None for v in xs):
            fig.add_trace(go.Scatter(
                name=f"{key} µs (end-to-end, median)", x=xs, y=labels, mode="markers",
                marker=dict(symbol=symbol, size=13, color=COLORS[key], line=dict(width=2, color=COLORS[key])),
                customdata=hover, hovertemplate=template))
    return fig


def _short_kernel(label: str, width: int = 60) -> str:
    return label if len(label) <= width else label[:width - 3] + "..."


def speed_of_light_figure(section: KernelCountersSection | None) -> go.Figure | None:
    """Nsight Compute's speed of light per kernel, grouped by site: SM and DRAM throughput in % of peak (medians
    over the site's profiled calls), with ncu's 60% line."""
    rows = [s for s in (section.sites if section else []) if s.sm_pct is not None or s.dram_pct is not None]
    if not rows:
        return None
    labels = [f"{s.site} · {_short_kernel(kernel_label(s))}" for s in rows]
    hover = [[html.escape(s.site), html.escape(kernel_label(s)), _us(s.duration_us), s.bound or "?", _html_text(_wrap(s.bound_evidence, 70)),
              html.escape(tensor_path(s))] for s in rows]
    template = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]} under ncu · %{customdata[5]}<br>"
                "%{customdata[3]}-bound: %{customdata[4]}<br><b>%{fullData.name}: %{x:.1f}% of peak</b><extra></extra>")
    fig = _figure(barmode="group", height=160 + 56 * len(rows), xaxis=dict(title="% of peak", range=[0, 100]),
                  yaxis=dict(title="call site · kernel", autorange="reversed", automargin=True))
    for name, values, color in (("SM throughput", [s.sm_pct for s in rows], COLORS["compute"]),
                                ("DRAM throughput", [s.dram_pct for s in rows], COLORS["copy"])):
        fig.add_trace(go.Bar(name=name, x=values, y=labels, orientation="h", marker=dict(color=color),
                             customdata=hover, hovertemplate=template))
    fig.add_vline(x=CEILING_PCT, line_dash="dash", line_color="gray",
                  annotation_text=f"{CEILING_PCT:.0f}%: under it on both, latency or occupancy",
                  annotation_position="top right")
    return fig


def site_bars_description(report: Report) -> str:
    on_gpu = any(s.launch_us is not None for s in report.sites)
    has_true = any(s.true_us is not None for s in report.sites)
    text = ("Each bar is one call site and phase, µs per call: the attention kernels (compute), the layout copies "
            "feeding it (copy), ")
    text += ("the GPU idle in the call's window (launch) " if on_gpu
             else "no launch (a CPU run: time between ops is in other) ")
    text += "and other work. "
    if has_true:
        text += ("Where the site has a true time, the solid parts add up to it plus the prep copies' busy time, and "
                 "the hatched rest of the profiled window is the profiler's own cost, left out. ")
    text += ("Diamonds: true µs (CUDA events around the attention entry point, outside the profiler); crosses: "
             "profiled µs (the same inside it). They time the entry point only: copies made before it are in the "
             "bar, not in the markers.")
    return text


# --- waterfall -------------------------------------------------------------------------------------------------


def waterfall_figure(e: Explanation) -> go.Figure:
    causes = list(e.causes)
    x = ["A"] + [KIND_TITLES.get(c.kind, c.kind) for c in causes] + ["unexplained", "B"]
    y = [e.a.us] + [c.us for c in causes] + [e.unexplained_us, e.b.us]
    measure = ["absolute"] + ["relative"] * (len(causes) + 1) + ["total"]
    hover = ([f"<b>A</b>: {html.escape(e.a.label)}<br>{' / '.join(e.a.backends)} · {_us(e.a.us)}"]
             + [f"<b>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</b> {c.us:+,.1f} µs<br>"
                f"{_html_text(_wrap(c.detail))}<br><i>fix:</i> {_html_text(_wrap(c.fix))}" for c in causes]
             + [f"<b>unexplained</b> {e.unexplained_us:+,.1f} µs<br>{_html_text(_wrap(e.basis_detail))}",
                f"<b>B</b>: {html.escape(e.b.label)}<br>{' / '.join(e.b.backends)} · {_us(e.b.us)}"])
    text = [_us(e.a.us)] + [f"{c.us:+,.1f}" for c in causes] + [f"{e.unexplained_us:+,.1f}", _us(e.b.us)]
    fig = _figure(height=440, yaxis_title=e.unit, xaxis_title="from A through the causes to B",
                  showlegend=False)
    fig.add_trace(go.Waterfall(
        name="gap", x=x, y=y, measure=measure, text=text, textposition="outside", hovertext=hover,
        hoverinfo="text", connector=dict(line=dict(width=1, dash="dot", color=COLORS["launch"])),
        increasing=dict(marker=dict(color=COLORS["true"])), decreasing=dict(marker=dict(color=COLORS["other"])),
        totals=dict(marker=dict(color=COLORS["compute"]))))
    return fig


def _wrap(text: str, width: int = 90) -> str:
    """Hover labels do not wrap by themselves: break long texts at spaces (newlines become <br> once escaped)."""
    words, lines, line = text.split(" "), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "\n".join(lines)


def causes_table_html(causes: list[Cause], total: float, unexplained: float | None, share: str) -> str:
    rows = []
    for i, c in enumerate(causes, 1):
        pct = f"{100 * c.us / total:.0f}%" if total else "—"
        rows.append(f"<tr><td>{i}</td><td>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</td>"
                    f"<td class=num>{c.us:+,.1f}</td><td class=num>{pct}</td><td>{html.escape(c.detail)}</td>"
                    f"<td>{html.escape(c.fix)}</td></tr>")
    if unexplained is not None:
        pct = f"{100 * unexplained / total:.0f}%" if total else "—"
        rows.append(f"<tr class=dim><td></td><td>unexplained</td><td class=num>{unexplained:+,.1f}</td>"
                    f"<td class=num>{pct}</td><td colspan=2>what the causes do not cover</td></tr>")
    return ("<table class=causes><thead><tr><th>#</th><th>cause</th><th>µs</th><th>" + share + "</th><th>what</th>"
            "<th>fix</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


# --- kernel timeline ---------------------------------------------------------------------------------------------


def representative_calls(report: Report, limit: int = MAX_TIMELINE_ROWS) -> list[CallSplit]:
    """Per site and phase, the call whose window is the median one: what a typical call looks like."""
    groups: dict[tuple, list[CallSplit]] = {}
    for c in report.calls:
        if c.kernels:
            groups.setdefault((c.site, c.op, c.phase), []).append(c)
    picked = []
    for calls in groups.values():
        calls = sorted(calls, key=lambda c: c.window_us)
        picked.append(calls[(len(calls) - 1) // 2])
    picked.sort(key=lambda c: (c.site, c.phase != "fwd"))
    return picked[:limit]


def timeline_figure(report: Report) -> go.Figure | None:
    calls = representative_calls(report)
    if not calls:
        return None
    on_cpu = all(c.launch_us is None for c in calls)
    labels = [f"{c.site} · {c.phase} · #{c.id}" for c in calls]
    fig = _figure(barmode="overlay", height=170 + 44 * len(calls),
                  xaxis_title="µs from the start of the call's window",
                  yaxis=dict(title="call (site · phase · id)", autorange="reversed", automargin=True))
    spans = [max([c.window_us] + [k.start_us + k.dur_us - c.start_us for k in c.kernels]) for c in calls]
    fig.add_trace(go.Bar(
        name="window (empty: host time between ops)" if on_cpu else "window (empty: GPU idle, launch)",
        x=spans, y=labels, base=[0.0] * len(calls), orientation="h", width=0.8,
        marker=dict(color=COLORS["window"], line=dict(width=0)),
        customdata=[[c.backend, _site_shape(c), _us(c.window_us), _us(c.compute_us), _us(c.copy_us),
                     _us(c.launch_us), _us(c.other_us)] for c in calls],
        hovertemplate=("<b>%{y}</b><br>%{customdata[0]} · %{customdata[1]}<br>window %{customdata[2]}: compute "
                       "%{customdata[3]}, copy %{customdata[4]}, launch %{customdata[5]}, other %{customdata[6]}"
                       "<extra></extra>")))
    for category in ("compute", "copy", "other"):
        xs, ys, bases, names = [], [], [], []
        for c, label in zip(calls, labels, strict=True):
            for k in c.kernels:
                if k.category == category:
                    xs.append(k.dur_us)
                    ys.append(label)
                    bases.append(k.start_us - c.start_us)
                    names.append(k.name if len(k.name) <= 140 else k.name[:137] + "...")
        if xs:
            fig.add_trace(go.Bar(
                name=category, x=xs, y=ys, base=bases, orientation="h", width=0.5,
                marker=dict(color=COLORS[category], line=dict(width=0)), customdata=names,
                hovertemplate=("%{customdata}<br>" + category + ": %{x:,.2f} µs from %{base:,.2f} µs"
                               "<extra></extra>")))
    return fig


# --- roofline ----------------------------------------------------------------------------------------------------


def roofline_figure(points: list[dict], ceilings: Ceilings | None = None) -> go.Figure | None:
    """`points`: Insights.roofline; `ceilings`: those the points were computed under (dashed lines)."""
    if not points:
        return None
    fig = _figure(height=480, xaxis=dict(title="arithmetic intensity (FLOP / byte, minimum bytes)", type="log"),
                  yaxis=dict(title="achieved TFLOP/s", type="log"))
    for what, symbol in (("kernels", "circle"), ("whole call", "square-open")):
        pts = [p for p in points if p["what"] == what]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            name=f"{what} ({'compute_us' if what == 'kernels' else 'true or window µs'})",
            x=[p["intensity"] for p in pts], y=[p["tflops"] for p in pts], mode="markers",
            marker=dict(symbol=symbol, size=12, color=COLORS["compute" if what == "kernels" else "copy"],
                        line=dict(width=2, color=COLORS["compute" if what == "kernels" else "copy"])),
            customdata=[[p["site"], p["phase"], p["backend"], _shape_label(p["shapes"], p["dtype"], p["layout"]),
                         _us(p["us"]), p["gbps"],
                         "n/a" if p["pct_of_peak"] is None else f"{p['pct_of_peak']:.0f}% ({p['bound']}-bound)"]
                        for p in pts],
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]} · %{customdata[3]}<br>"
                           "%{customdata[4]}: %{y:,.2f} TFLOP/s, %{customdata[5]:,.0f} GB/s<br>intensity "
                           "%{x:,.1f} FLOP/B · %{customdata[6]} of peak<extra></extra>")))
    if ceilings is not None and ceilings.matmul_tflops > 0 and ceilings.copy_gbps > 0:
        ridge = ceilings.matmul_tflops * 1e3 / ceilings.copy_gbps  # FLOP/byte where the two ceilings meet
        xs = [p["intensity"] for p in points]
        lo, hi = min(xs + [ridge]) / 4, max(xs + [ridge]) * 4
        fig.add_trace(go.Scatter(
            name=f"ceilings: {ceilings.copy_gbps:,.0f} GB/s copy, {ceilings.matmul_tflops:,.0f} TFLOP/s "
                 f"{ceilings.dtype} matmul (measured)",
            x=[lo, ridge, hi], y=[lo * ceilings.copy_gbps / 1e3, ceilings.matmul_tflops, ceilings.matmul_tflops],
            mode="lines", line=dict(color=COLORS["true"], width=2, dash="dash"),
            hovertemplate="ceiling: %{y:,.1f} TFLOP/s at %{x:,.1f} FLOP/B<extra></extra>"))
    return fig


# --- compare sweep and table -------------------------------------------------------------------------------------


def _seqlen(row: dict) -> int | None:
    shape = row.get("shape") or []
    return shape[-2] if len(shape) >= 4 else None  # [B, H, L, D] or [B, Hq, Hkv, L, D]


def sweep_figure(rows: list[dict]) -> go.Figure | None:
    """Median µs against sequence length, one line per backend, variant and phase (the other dims fixed)."""
    ran = [r for r in rows if not r.get("unsupported") and r.get("median_us") and _seqlen(r)]
    if len({_seqlen(r) for r in ran}) < 2:
        return None
    fig = _figure(height=460, xaxis=dict(title="sequence length L (tokens)", type="log"),
                  yaxis=dict(title="median µs per call (outside the profiler)", type="log"))
    lines: dict[tuple, list[dict]] = {}
    for r in ran:
        others = tuple(d for i, d in enumerate(r["shape"]) if i != len(r["shape"]) - 2)
        lines.setdefault((r["backend"], r["variant"], r["phase"], r["dtype"], bool(r.get("causal")), others),
                         []).append(r)
    for (backend, variant, phase, dtype, causal, _others), group in sorted(lines.items()):
        group.sort(key=_seqlen)
        fig.add_trace(go.Scatter(
            name=f"{backend} {variant} {phase}" + (" causal" if causal else ""),
            x=[_seqlen(r) for r in group], y=[r["median_us"] for r in group], mode="lines+markers",
            line=dict(dash="solid" if phase == "fwd" else "dot"),
            customdata=[[backend, variant, phase, _dims(r["shape"]), dtype,
                         "n/a" if r.get("tflops") is None else f"{r['tflops']:,.1f}",
                         "n/a" if r.get("pct_of_peak") is None else f"{r['pct_of_peak']:.0f}%"] for r in group],
            hovertemplate=("<b>%{customdata[0]}</b> %{customdata[1]} %{customdata[2]}<br>%{customdata[3]} "
                           "%{customdata[4]}<br>%{y:,.1f} µs · %{customdata[5]} TFLOP/s · %{customdata[6]} of peak"
                           "<extra></extra>")))
    return fig


_TABLE_COLUMNS = ("backend", "variant", "shape", "dtype", "phase", "causal", "median_us", "compute_us", "copy_us",
                  "launch_us", "other_us", "tflops", "gbps", "pct_of_peak", "unsupported")


def compare_table_figure(rows: list[dict]) -> go.Figure | None:
    if not rows:
        return None

    def cell(r, col):
        v = r.get(col)
        if v is None:
            return "—"
        if col == "shape":
            return _dims(v)
        if isinstance(v, float):
            return f"{v:,.1f}"
        return str(v)

    fig = _figure(height=120 + 26 * min(len(rows), 30))
    fig.add_trace(go.Table(
        header=dict(values=[c.replace("_us", " µs").replace("_", " ") for c in _TABLE_COLUMNS], align="left"),
        cells=dict(values=[[cell(r, c) for r in rows] for c in _TABLE_COLUMNS], align="left")))
    return fig


# --- assembling the page -------------------------------------------------------------------------------------------


def build_panels(report: Report | None, insights: Insights | None = None,
                 compare: dict | None = None) -> list[Panel]:
    """Every panel there is data for: the report's with its `insights` (analysis.insights.insights(report, ...)),
    compare.json's with `compare` (its document)."""
    insights = insights or Insights()
    ceilings = insights.ceilings
    panels: list[Panel] = []
    if report is not None and report.sites:
        fig = site_bars_figure(report, insights.splits)
        tables = "".join(
            f"<h4>{html.escape(d.subject.label)} — {_us(d.subject.us)} {html.escape(d.unit)}</h4>"
            + causes_table_html(d.causes, d.subject.us, None, "share") for d in insights.diagnoses)
        panels.append(Panel("sites", "Where each call site's time goes", site_bars_description(report), fig,
                            f"<details><summary>causes and fixes per site</summary>{tables}</details>"))
    for i, e in enumerate(insights.explanations):
        desc = (f"A = {e.a.label} ({' / '.join(e.a.backends)}), B = {e.b.label} ({' / '.join(e.b.backends)}): "
                f"B is slower by {_us(e.gap_us)} {e.unit}. Numbers: {e.basis_detail}."
                + "".join(f" Note: {n}." for n in e.notes))
        panels.append(Panel(f"waterfall-{i}", f"From {_short(e.a.label)} to {_short(e.b.label)}: the gap, cause by "
                                              "cause", desc, waterfall_figure(e),
                            causes_table_html(e.causes, e.gap_us, e.unexplained_us, "of gap")))
    if report is not None:
        fig = timeline_figure(report)
        if fig is not None:
            on_cpu = all(c.launch_us is None for c in report.calls)
            panels.append(Panel("timeline", "Kernel timeline of a typical call per site",
                                "One row per site and phase: the call with the median window. Bars are its "
                                + ("host ops (a CPU run)" if on_cpu else "kernels") + ", by category, over its "
                                "window; the empty stretches are " + ("host time between ops." if on_cpu else
                                                                      "the GPU waiting for the CPU (launch)."), fig))
        fig = roofline_figure(insights.roofline, ceilings)
        if fig is not None:
            where = (f"measured ceilings of {ceilings.device} ({ceilings.method}, {ceilings.measured_at})"
                     if ceilings is not None else "no measured ceilings for this device: points only")
            panels.append(Panel("roofline", "Roofline", "Achieved TFLOP/s against arithmetic intensity (FLOPs over "
                                "the minimum bytes), per site and phase: filled, the attention kernels alone; open, "
                                f"the whole call. Dashed: {where}.", fig))
    if report is not None:
        fig = speed_of_light_figure(report.kernel_counters)
        if fig is not None:
            panels.append(Panel("speed-of-light", "Nsight Compute: speed of light per kernel",
                                "SM and DRAM throughput of each attention kernel in % of the device's peak, median "
                                "over the site's profiled calls (attnprof ncu). Hover: the tensor-core path (wgmma "
                                "vs mma.sync) and the bound from the counters.", fig))
    if report is not None and report.ranks is not None:
        panels.extend(rank_panels(report.ranks))
    if compare:
        rows = compare["rows"]
        fig = sweep_figure(rows)
        if fig is not None:
            panels.append(Panel("sweep", "attnprof compare: time against sequence length",
                                "Median µs per call outside the profiler, per backend, variant (native inputs or "
                                "the seed's wrapper) and phase (dotted: backward).", fig))
        fig = compare_table_figure(rows)
        if fig is not None:
            panels.append(Panel("compare-table", "attnprof compare: every row",
                                "Each backend, variant and phase as compare.json holds it.", fig))
    return panels


def rank_panels(summary) -> list[Panel]:
    """A job of several ranks: the rank x site heatmap and the per-rank split (render/ranks.py)."""
    from attnprof.render.ranks import heatmap_figure, rank_split_figure

    cp = summary.critical_path
    slowest = (f" The others wait for rank {cp.slowest_rank} (the most time outside collectives); its step "
               f"{_us(cp.step_us)} µs is {cp.attention_pct:.1f}% attention."
               if cp is not None else "")
    stragglers = "; ".join(f"{_short(s.site)} {s.phase}: rank {s.straggler_rank} {s.straggler_extra_us:+,.0f} µs"
                           for s in summary.sites if s.straggler_rank is not None)
    return [
        Panel("ranks-heatmap", f"Attention across {summary.world_size} ranks",
              "Traced window µs per call of each site on each rank. Straggler per site (its µs less the median of "
              f"the other ranks): {stragglers or 'none'}.", heatmap_figure(summary)),
        Panel("ranks-split", "Each rank's step", "Per profiled step and rank: attention's compute / copy / launch / "
              f"other and the rest of the step.{slowest}", rank_split_figure(summary)),
    ]


def _short(label: str, width: int = 48) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1):]


def _figure_json(fig: go.Figure) -> dict:
    doc = fig.to_plotly_json()
    doc.get("layout", {}).pop("template", None)  # the page applies the theme's template
    return doc


def dashboard_data(panels: list[Panel]) -> dict:
    return {
        "figures": {p.key: _figure_json(p.figure) for p in panels},
        "templates": {name: pio.templates[t].to_plotly_json() for name, t in THEMES.items()},
    }


_CSS = """
:root { color-scheme: light; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --panel: #f6f8fa; }
:root[data-theme="dark"] { color-scheme: dark; --bg: #111111; --fg: #e6edf3; --muted: #9198a1; --line: #3d444d;
  --panel: #1a1a1a; }
body { background: var(--bg); color: var(--fg); font: 14px/1.45 system-ui, sans-serif; margin: 0 auto;
  max-width: 1280px; padding: 16px 24px; }
header { display: flex; justify-content: space-between; align-items: baseline; gap: 16px;
  border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 8px 0; } h2 { font-size: 16px; margin: 28px 0 4px; } h4 { margin: 14px 0 4px; }
.meta, .desc, .dim { color: var(--muted); } .meta { margin: 4px 0 10px; }
button#theme { background: var(--panel); color: var(--fg); border: 1px solid var(--line); border-radius: 6px;
  padding: 4px 10px; cursor: pointer; }
table.causes { border-collapse: collapse; width: 100%; margin: 6px 0; font-size: 13px; }
table.causes th, table.causes td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left;
  vertical-align: top; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
details { margin: 6px 0; } summary { cursor: pointer; color: var(--muted); }
.notes li { color: #c69026; }
"""

_JS = """
(function () {
  const data = JSON.parse(document.getElementById("%(data_id)s").textContent);
  const root = document.documentElement;
  const stored = window.localStorage ? localStorage.getItem("attnprof-theme") : null;
  let theme = stored || (window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  const config = {responsive: true, displaylogo: false};
  function layoutFor(fig) { return Object.assign({}, fig.layout || {}, {template: data.templates[theme]}); }
  function apply() {
    root.dataset.theme = theme;
    document.getElementById("theme").textContent = theme === "dark" ? "light theme" : "dark theme";
  }
  apply();
  for (const [key, fig] of Object.entries(data.figures)) {
    Plotly.newPlot(document.getElementById("fig-" + key), fig.data, layoutFor(fig), config);
  }
  document.getElementById("theme").addEventListener("click", function () {
    theme = theme === "dark" ? "light" : "dark";
    if (window.localStorage) localStorage.setItem("attnprof-theme", theme);
    apply();
    for (const key of Object.keys(data.figures)) {
      Plotly.relayout(document.getElementById("fig-" + key), {template: data.templates[theme]});
    }
  });
})();
"""


def _json_for_script(doc: dict) -> str:
    text = pio.json.to_json_plotly(doc)
    return text.replace("</", "<\\/")  # never close the script element early


def render_dashboard(panels: list[Panel], title: str, meta: list[str], notes: list[str] | None = None) -> str:
    sections = []
    for p in panels:
        sections.append(
            f'<section id="{p.key}"><h2>{html.escape(p.title)}</h2><p class=desc>{html.escape(p.description)}</p>'
            f'<div class="figure" id="fig-{p.key}"></div>{p.table_html}</section>')
    if not panels:
        sections.append("<p class=desc>No attention call and no compare.json here: nothing to chart.</p>")
    notes_html = ("<ul class=notes>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<header><h1>{html.escape(title)}</h1><button id="theme" type="button">dark theme</button></header>
<p class=meta>{" · ".join(html.escape(m) for m in meta)}</p>
{notes_html}
{"".join(sections)}
<script id="{DATA_ELEMENT_ID}" type="application/json">{_json_for_script(dashboard_data(panels))}</script>
<script>{_JS % {"data_id": DATA_ELEMENT_ID}}</script>
</body>
</html>
"""


def read_dashboard_data(path: Path) -> dict:
    """The figures (and templates) a dashboard embeds, as Plotly JSON: for tests and tools."""
    text = Path(path).read_text()
    start_tag = f'<script id="{DATA_ELEMENT_ID}" type="application/json">'
    start = text.index(start_tag) + len(start_tag)
    end = text.index("</script>", start)
    return json.loads(text[start:end].replace("<\\/", "</"))


def _meta(report: Report | None, compare: dict | None) -> list[str]:
    meta = []
    if report is not None:
        meta.append(report.source)
        meta.append(report.device + (f", torch {report.torch_version}" if report.torch_version else ""))
        if report.run:
            steps = report.run.get("steps") or {}
            meta.append(f"{' '.join(report.run.get('command') or [])} ({report.run.get('outcome')}, "
                        f"{steps.get('profiled_calls', '?')} calls profiled)")
        meta.append(f"{len(report.calls)} calls, {len({s.site for s in report.sites})} sites")
    if compare:
        run = compare.get("run") or {}
        meta.append(f"compare: {run.get('device', '?')}, {len(compare['rows'])} rows")
    return meta


def write_dashboard(report: Report | None, insights: Insights | None, folder: Path, compare: dict | None = None,
                    name: str = DASHBOARD_FILE, title: str | None = None) -> Path:
    """Write `folder/name` (dashboard.html) for a report with its insights and/or a compare.json document; returns
    its path. Nothing is read here: pipeline.write_dashboard_for finds compare.json and the ceilings and computes
    the insights."""
    folder = Path(folder)
    renderer = DashboardRenderer(insights, compare, title or f"attnprof — {folder.resolve().name}")
    return atomic_write(folder / name, renderer.render(report))


class DashboardRenderer(Renderer):
    """The dashboard as a Report view (render/base.py); write_dashboard is what most callers want."""

    output_name = DASHBOARD_FILE

    def __init__(self, insights: Insights | None = None, compare: dict | None = None, title: str = "attnprof"):
        self.insights = insights
        self.compare = compare
        self.title = title

    def render(self, report: Report | None) -> str:
        panels = build_panels(report, self.insights, self.compare)
        notes = list(report.notes) if report is not None else []
        if self.compare:
            notes += list(self.compare.get("notes") or [])
        return render_dashboard(panels, self.title, _meta(report, self.compare), notes)


# --- explain --verify: after the fixes, measured ----------------------------------------------------------------


def measured_fixes_figure(d) -> go.Figure | None:
    """A site's waterfall from its µs per call through each measured saving to the "after the fixes, measured"
    bar (explain --verify); None when no fix was measured."""
    from attnprof.analysis.verification import measured_after_fixes_us

    after = measured_after_fixes_us(d)
    if after is None:
        return None
    measured = [c for c in d.causes if c.measured_saving_us is not None]
    x = ["now"] + [KIND_TITLES.get(c.kind, c.kind) for c in measured] + ["after the fixes, measured"]
    y = [d.subject.us] + [-c.measured_saving_us for c in measured] + [after]
    hover = ([f"<b>now</b> {_us(d.subject.us)}"]
             + [f"<b>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</b> predicted {c.us:,.1f} µs, measured "
                f"{-c.measured_saving_us:+,.1f} µs" + (f" ({html.escape(c.measured_by)})" if c.measured_by else "")
                + (f"<br>{_html_text(_wrap(c.measured_note))}" if c.measured_note else "") for c in measured]
             + [f"<b>after the fixes, measured</b> {_us(after)}"])
    fig = _figure(height=400, yaxis_title=d.unit, showlegend=False)
    fig.add_trace(go.Waterfall(
        name="measured", x=x, y=y, measure=["absolute"] + ["relative"] * len(measured) + ["total"],
        text=[_us(v) if i in (0, len(y) - 1) else f"{v:+,.1f}" for i, v in enumerate(y)], textposition="outside",
        hovertext=hover, hoverinfo="text", decreasing=dict(marker=dict(color=COLORS["other"])),
        totals=dict(marker=dict(color=COLORS["compute"]))))
    return fig


def write_verify_dashboard(diagnoses: list, path: Path) -> Path:
    """One panel per verified site: its measured-fixes waterfall and its causes."""
    panels = []
    for i, d in enumerate(diagnoses):
        fig = measured_fixes_figure(d)
        if fig is not None:
            panels.append(Panel(f"verify-{i}", f"{_short(d.subject.label)}: after the fixes, measured",
                                " ".join(d.notes), fig, causes_table_html(d.causes, d.subject.us, None, "share")))
    return atomic_write(Path(path), render_dashboard(panels, "attnprof verify", [d.subject.label for d in diagnoses]))
