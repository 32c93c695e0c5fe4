"""dashboard.html: one self-contained, offline HTML page of Plotly charts for a run folder.

Panels (each only when there is data for it):
- per-site stacked bars: compute / copy / launch / other, µs per call, the profiler's own cost hatched apart, with
  the true and profiled end-to-end times as markers;
- waterfalls from the faster to the slower variant through the ranked causes (diagnosis.explain), for
  explanations given or for comparable call sites found in the report;
- a kernel timeline of representative calls (Gantt bars from CallSplit.kernels), the window behind them, so the
  launch gaps show as empty space;
- the roofline: achieved TFLOP/s against arithmetic intensity, under the measured ceilings when known;
- `attnprof compare`'s sweeps (time against each dimension that varies alone, per backend) or, for shapes that
  differ in several dimensions, each backend's time at each shape; and its table, when compare.json is there.

plotly.js is embedded (what `include_plotlyjs=True` embeds: plotly.offline.get_plotlyjs()), so the file works
offline (the gallery's pages load one shared plotly.min.js beside them instead). The page's CSS and script are
package files (assets/dashboard.css, assets/dashboard.js), inlined too. The figures travel as JSON in
`<script id="attnprof-data" type="application/json">` without a template; the script applies a light or a dark
Plotly template (prefers-color-scheme, then the toggle), so both read well.

Every number comes in computed: the report, its Insights (analysis/insights.py: splits, diagnoses, explanations,
roofline points, the ceilings used) and compare.json's document. This module only lays them out; pipeline.py's
dashboard_html / write_dashboard_for find compare.json and the ceilings and compute the insights.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from attnprof.analysis.compare import CompareDocument, CompareRow
from attnprof.analysis.diagnosis import KIND_TITLES, Cause, Diagnosis, Explanation, SiteSplit
from attnprof.analysis.insights import Basis, Insights, RooflinePoint
from attnprof.analysis.kernel_counters import CEILING_PCT, KernelCountersSection, kernel_label, tensor_path
from attnprof.analysis.records import CallSplit, Phase, Report, SiteSummary
from attnprof.files import atomic_write
from attnprof.render.base import Renderer
from attnprof.trace.ceilings import Ceilings
from attnprof.units import us_text

DASHBOARD_FILE = "dashboard.html"
#: plotly.js beside pages that share one copy (the gallery), instead of inlining 4.6 MB into each
SHARED_PLOTLY_FILE = "plotly.min.js"
DATA_ELEMENT_ID = "attnprof-data"  # assets/dashboard.js reads the figures from the element with this id
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
    figure: go.Figure | None  # None: a table only
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


def _figure(**layout) -> go.Figure:
    """A figure whose legend sits under the chart: at the top it runs under Plotly's toolbar on narrow pages."""
    fig = go.Figure()
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yref="container", y=0, yanchor="bottom", xref="container", x=0,
                                  xanchor="left"),
                      **layout)
    return fig


def signed(v: float) -> str:
    """+151.4, -0.8; what rounds to zero reads 0.0, not -0.0."""
    return "0.0" if abs(v) < 0.05 else f"{v:+,.1f}"


def unit_text(unit: str, report: Report | None) -> str:
    """diagnosis' unit, without "(fwd + bwd)" where the report has no backward."""
    if report is not None and not any(s.phase == "bwd" for s in report.sites):
        return unit.replace(" (fwd + bwd)", "")
    return unit


# --- per-site stacked bars ----------------------------------------------------------------------------------------


def site_bars_figure(report: Report, splits: dict[tuple[str, str, str], SiteSplit]) -> go.Figure | None:
    """`splits`: Insights.splits, each site's parts per call on the basis it is shown on."""
    sites = list(report.sites)
    if not sites:
        return None
    sites.sort(key=lambda s: (s.site, s.phase != "fwd"))
    labels = [_row_label(s) for s in sites]
    hover = [[s.site, s.phase, f"{s.op} → {s.backend}", _site_shape(s), s.calls, us_text(s.window_us),
              us_text(s.true_us), us_text(s.profiled_us), f"x{s.inflation:.2f}" if s.inflation else "n/a"]
             for s in sites]
    template = ("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]}<br>%{customdata[3]}<br>"
                "%{customdata[4]} calls · window %{customdata[5]}<br>true %{customdata[6]} · profiled "
                "%{customdata[7]} (%{customdata[8]})<br><b>%{fullData.name}: %{x:,.1f} µs</b><extra></extra>")
    fig = _figure(barmode="stack", height=220 + 46 * len(sites), legend_traceorder="normal",
                  xaxis_title="µs per call (mean of the profiled calls; markers: medians)",
                  yaxis=dict(title="call site · phase", autorange="reversed", automargin=True,
                             categoryorder="array", categoryarray=labels))
    on_gpu = any(s.launch_us is not None for s in sites)
    shown = [splits[(s.site, s.op, s.phase)] for s in sites]
    parts = [("compute", [x.compute for x in shown]), ("copy", [x.copy for x in shown])]
    if on_gpu:
        parts.append(("launch", [x.launch or 0.0 for x in shown]))
    parts.append(("other", [x.other for x in shown]))
    names = {"compute": "compute", "copy": "copy", "launch": "launch (GPU idle)", "other": "other"}
    for key, values in parts:
        fig.add_trace(go.Bar(name=names[key], x=values, y=labels, orientation="h", marker=dict(color=COLORS[key]),
                             width=0.55, customdata=hover, hovertemplate=template))
    ends = [sum(values[i] for _, values in parts) for i in range(len(sites))]
    for key, attr, symbol in (("true", "true_us", "diamond"), ("profiled", "profiled_us", "x-thin-open")):
        # without a true time, profiled_us is only the window's mean (not a measurement): no marker
        xs = [getattr(s, attr) if s.true_us is not None else None for s in sites]
        if any(v is not None for v in xs):
            fig.add_trace(go.Scatter(
                name=f"{key} µs (end-to-end, median)", x=xs, y=labels, mode="markers", cliponaxis=True,
                marker=dict(symbol=symbol, size=13, color=COLORS[key], line=dict(width=2, color=COLORS[key])),
                customdata=hover, hovertemplate=template))
    # the axis is the user's time: the bars and the true times set it, the profiler's own cost does not
    user_max = max(ends + [s.true_us for s in sites if s.true_us is not None] + [1e-9])
    top = user_max * (1.4 if any(x.profiler_us for x in shown) else 1.05)  # room for the annotations
    fig.update_xaxes(range=[0, top])
    for trace in fig.data:  # a profiled time past the axis is the profiler's cost again: the annotation says it
        if trace.type == "scatter":
            trace.x = [x if x is None or x <= top else None for x in trace.x]
    for row, (end, split) in enumerate(zip(ends, shown, strict=True)):
        if split.profiler_us:  # in the gap above the bar's end (rows are category indices), clear of the markers
            fig.add_annotation(x=end, y=row - 0.5, xanchor="left", showarrow=False, font=dict(color=COLORS["inflation"],
                                                                                               size=11),
                               text=f"  profiler +{us_text(split.profiler_us)}", hovertext=(
                                   f"the profiler's own cost, {us_text(split.profiler_us)} per call: in the profiled "
                                   "window, left out of the bar"))
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
    hover = [[html.escape(s.site), html.escape(kernel_label(s)), us_text(s.duration_us), s.bound or "?",
              _html_text(_wrap(s.bound_evidence, 70)), html.escape(tensor_path(s))] for s in rows]
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
        text += ("Where the site has a true time, the parts add up to it plus the prep copies' busy time; the rest "
                 "of the profiled window is the profiler's own cost, left out of the bar and written beside it. ")
    if has_true:
        clock = "CUDA events" if on_gpu else "the host clock"
        text += (f"Diamonds: true µs ({clock} around the attention entry point, outside the profiler); crosses: "
                 "profiled µs (the same inside it; past the axis when the profiler's cost is larger). They time the "
                 "entry point only: copies made before it are in the bar, not in the markers.")
    return text


# --- waterfall -------------------------------------------------------------------------------------------------


def waterfall_figure(e: Explanation, unit: str | None = None) -> go.Figure:
    """`unit`: the y axis title (default e.unit; unit_text drops "(fwd + bwd)" for a forward-only report)."""
    unit = unit or e.unit
    causes = list(e.causes)
    x = ["A"] + [KIND_TITLES.get(c.kind, c.kind) for c in causes] + ["unexplained", "B"]
    y = [e.a.us] + [c.us for c in causes] + [e.unexplained_us, e.b.us]
    measure = ["absolute"] + ["relative"] * (len(causes) + 1) + ["total"]
    hover = ([f"<b>A</b>: {html.escape(e.a.label)}<br>{' / '.join(e.a.backends)} · {us_text(e.a.us)}"]
             + [f"<b>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</b> {c.us:+,.1f} µs<br>"
                f"{_html_text(_wrap(c.detail))}<br><i>fix:</i> {_html_text(_wrap(c.fix))}" for c in causes]
             + [f"<b>unexplained</b> {e.unexplained_us:+,.1f} µs<br>{_html_text(_wrap(e.basis_detail))}",
                f"<b>B</b>: {html.escape(e.b.label)}<br>{' / '.join(e.b.backends)} · {us_text(e.b.us)}"])
    text = [us_text(e.a.us)] + [signed(c.us) for c in causes] + [signed(e.unexplained_us), us_text(e.b.us)]
    fig = _figure(height=440, yaxis_title=unit, xaxis_title="from A through the causes to B",
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
        pct = _pct(c.us, total)
        rows.append(f"<tr><td>{i}</td><td>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</td>"
                    f"<td class=num>{signed(c.us)}</td><td class=num>{pct}</td><td>{html.escape(c.detail)}</td>"
                    f"<td>{html.escape(c.fix)}</td></tr>")
    if unexplained is not None:
        pct = _pct(unexplained, total)
        rows.append(f"<tr class=dim><td></td><td>unexplained</td><td class=num>{signed(unexplained)}</td>"
                    f"<td class=num>{pct}</td><td colspan=2>what the causes do not cover</td></tr>")
    return ("<table class=causes><thead><tr><th>#</th><th>cause</th><th>µs</th><th>" + share + "</th><th>what</th>"
            "<th>fix</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _pct(v: float, total: float) -> str:
    if not total:
        return "—"
    pct = round(100 * v / total)
    return f"{pct:,}%" if pct else "0%"


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def explanation_headline(e: Explanation, unit: str | None = None) -> str:
    """The answer in one line: "B is 178 µs slower per call: layout copies 151 µs, kernel choice 28 µs"."""
    per = (unit or e.unit).replace("µs ", "", 1)  # "per attention call ..."
    big = [c for c in e.causes if c.us > 0 and c.us >= 0.05 * e.gap_us]
    causes = ", ".join(f"{KIND_TITLES.get(c.kind, c.kind)} {us_text(c.us)}" for c in sorted(big, key=lambda c: -c.us))
    return (f"{_short(e.b.label)} is {us_text(e.gap_us)} slower {per} than {_short(e.a.label)}"
            + (f": {causes}" if causes else ""))


def compare_headlines(rows: list[CompareRow]) -> list[str]:
    """Per compare case: the fastest backend, and what the seed's wrapper and the slowest cost against it."""
    out = []
    cases: dict[tuple, list[CompareRow]] = {}
    for r in _ran(rows):
        cases.setdefault((tuple(r.shape), r.dtype, bool(r.causal), r.phase), []).append(r)
    for (shape, dtype, causal, phase), group in cases.items():
        group.sort(key=lambda r: r.median_us or 0.0)  # rows that ran have their median
        best, worst = group[0], group[-1]
        text = (f"{'×'.join(map(str, shape))} {dtype}{' causal' if causal else ''} {phase}: fastest {best.backend} "
                f"{best.variant} {us_text(best.median_us)}")
        wrapped = [r for r in group if r.variant == "seed-wrapper"]
        if wrapped:
            w = wrapped[0]
            native = next((r for r in group if r.backend == w.backend and r.variant == "native"), None)
            if native and native.median_us is not None and w.median_us is not None:
                text += (f"; the seed's wrapper makes {w.backend} {us_text(w.median_us - native.median_us)} "
                         f"slower ({us_text(native.median_us)} → {us_text(w.median_us)})")
        if worst is not best:
            text += f"; slowest {worst.backend} {worst.variant} {us_text(worst.median_us)}"
        out.append(text)
    return out


def site_headline(report: Report, splits: dict[tuple[str, str, str], SiteSplit]) -> str | None:
    """Where the time goes, for a run with nothing to compare: the costliest site and its biggest part."""
    if not report.sites:
        return None
    s = max(report.sites, key=lambda s: (s.true_us or s.window_us) * s.calls)
    split = splits.get((s.site, s.op, s.phase))
    if split is None:
        return None
    parts = {"compute": split.compute, "layout copies": split.copy, "launch (GPU idle)": split.launch or 0.0,
             "other": split.other}
    total = sum(parts.values())
    if total <= 0:
        return None
    name, us = max(parts.items(), key=lambda kv: kv[1])
    return (f"{_short(s.site)} ({s.phase}) costs {us_text(total)} per call, {100 * us / total:.0f}% of it {name}"
            + ("" if len(report.sites) == 1 else f" (of {len(report.sites)} sites, the most in total)"))


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
        customdata=[[c.backend, _site_shape(c), us_text(c.window_us), us_text(c.compute_us), us_text(c.copy_us),
                     us_text(c.launch_us), us_text(c.other_us)] for c in calls],
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


def _point_labels(points: list[RooflinePoint]) -> tuple[list[str], list[str]]:
    """Each point's name and where it goes. Points at one intensity (sites of one shape) get theirs above, beside
    and below, highest first, so the names do not print over each other; past three at one intensity, names would
    pile up: those points are named on hover only."""
    at: dict[float, list[int]] = {}
    for i, p in enumerate(points):
        at.setdefault(round(p.intensity, 6), []).append(i)
    texts, positions = [""] * len(points), ["middle right"] * len(points)
    for group in at.values():
        if len(group) > 3:
            continue
        for k, i in enumerate(sorted(group, key=lambda i: -points[i].tflops)):
            p = points[i]
            name = p.site if len(p.site) <= 32 else p.site[:31] + "…"
            texts[i] = name + ("" if p.phase == Phase.FWD else f" · {p.phase}")
            positions[i] = ("top right", "middle right", "bottom right")[k] if len(group) > 1 else "middle right"
    return texts, positions


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def roofline_figure(points: list[RooflinePoint], ceilings: Ceilings | None = None) -> go.Figure | None:
    """`points`: Insights.roofline; `ceilings`: those the points were computed under (dashed lines)."""
    if not points:
        return None
    fig = _figure(height=480, xaxis=dict(title="arithmetic intensity (FLOP / byte, minimum bytes)", type="log"),
                  yaxis=dict(title="achieved TFLOP/s", type="log"))
    for basis, symbol in ((Basis.KERNELS, "circle"), (Basis.WHOLE_CALL, "square-open")):
        pts = [p for p in points if p.basis == basis]
        if not pts:
            continue
        kernels = basis == Basis.KERNELS
        fig.add_trace(go.Scatter(
            name=f"{basis} ({'compute_us' if kernels else 'true or window µs'})",
            x=[p.intensity for p in pts], y=[p.tflops for p in pts],
            # the kernels' points carry the site's name; the whole call's point sits right under it
            mode="markers+text" if kernels else "markers",
            text=_point_labels(pts)[0], textposition=_point_labels(pts)[1], textfont=dict(size=11),
            marker=dict(symbol=symbol, size=12, color=COLORS["compute" if kernels else "copy"],
                        line=dict(width=2, color=COLORS["compute" if kernels else "copy"])),
            customdata=[[p.site, str(p.phase), p.backend, _shape_label(p.shapes, p.dtype, p.layout), us_text(p.us), p.gbps,
                         "n/a" if p.pct_of_peak is None else f"{p.pct_of_peak:.0f}% ({p.bound}-bound)"]
                        for p in pts],
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>%{customdata[2]} · %{customdata[3]}<br>"
                           "%{customdata[4]}: %{y:,.2f} TFLOP/s, %{customdata[5]:,.0f} GB/s<br>intensity "
                           "%{x:,.1f} FLOP/B · %{customdata[6]} of peak<extra></extra>")))
    if ceilings is not None and ceilings.matmul_tflops > 0 and ceilings.copy_gbps > 0:
        ridge = ceilings.matmul_tflops * 1e3 / ceilings.copy_gbps  # FLOP/byte where the two ceilings meet
        xs = [p.intensity for p in points]
        lo, hi = min(xs + [ridge]) / 4, max(xs + [ridge]) * 4
        fig.add_trace(go.Scatter(
            name=f"ceilings: {_rate(ceilings.copy_gbps)} GB/s copy, {_rate(ceilings.matmul_tflops)} TFLOP/s "
                 f"{ceilings.dtype} matmul (measured)",
            x=[lo, ridge, hi], y=[lo * ceilings.copy_gbps / 1e3, ceilings.matmul_tflops, ceilings.matmul_tflops],
            mode="lines", line=dict(color=COLORS["true"], width=2, dash="dash"),
            hovertemplate="ceiling: %{y:,.1f} TFLOP/s at %{x:,.1f} FLOP/B<extra></extra>"))
    return fig


# --- compare sweep and table -------------------------------------------------------------------------------------


#: The dimensions of a compare shape, by its length: [B, H, L, D] or [B, Hq, Hkv, L, D].
_DIM_NAMES = {4: ("B", "H", "L", "D"), 5: ("B", "Hq", "Hkv", "L", "D")}
_DIM_TITLES = {"B": "batch B", "H": "heads H", "Hq": "query heads Hq", "Hkv": "kv heads Hkv",
               "L": "sequence length L (tokens)", "D": "head dim D"}


def _ran(rows: list[CompareRow]) -> list[CompareRow]:
    return [r for r in rows if not r.unsupported and r.median_us and len(r.shape or []) in (4, 5)]


def _line_name(r: CompareRow) -> str:
    return f"{r.backend} {r.variant} {r.phase}" + (" causal" if r.causal else "")


def _compare_hover(group: list[CompareRow]) -> list[list[str]]:
    return [[r.backend, r.variant, r.phase, _dims(r.shape), r.dtype,
             "n/a" if r.tflops is None else f"{r.tflops:,.1f}",
             "n/a" if r.pct_of_peak is None else f"{r.pct_of_peak:.0f}%"] for r in group]


_COMPARE_HOVER = ("<b>%{customdata[0]}</b> %{customdata[1]} %{customdata[2]}<br>%{customdata[3]} %{customdata[4]}"
                  "<br>%{y:,.1f} µs · %{customdata[5]} TFLOP/s · %{customdata[6]} of peak<extra></extra>")


def sweep_figures(rows: list[CompareRow]) -> list[tuple[str, go.Figure]]:
    """Median µs against each dimension that varies alone (the others and dtype fixed): one chart per such
    dimension, one line per backend, variant and phase. Shapes that differ in several dimensions at once are not
    a sweep of any one (shapes_figure shows them)."""
    ran = _ran(rows)
    out = []
    for n_dims, names in _DIM_NAMES.items():
        for i, dim in enumerate(names):
            lines: dict[tuple, list[CompareRow]] = {}
            for r in ran:
                if len(r.shape) != n_dims:
                    continue
                fixed = tuple(d for j, d in enumerate(r.shape) if j != i)
                lines.setdefault((_line_name(r), r.dtype, fixed), []).append(r)
            lines = {k: g for k, g in lines.items() if len({r.shape[i] for r in g}) >= 2}
            if not lines:
                continue
            several_fixed = len({(dtype, fixed) for _, dtype, fixed in lines}) > 1
            fig = _figure(height=460, xaxis=dict(title=_DIM_TITLES[dim], type="log"),
                          yaxis=dict(title="median µs per call (outside the profiler)", type="log"))
            for (name, dtype, fixed), group in sorted(lines.items()):
                group.sort(key=lambda r: r.shape[i])
                others = ", ".join(f"{d}={v}" for d, v in zip((d for d in names if d != dim), fixed))
                fig.add_trace(go.Scatter(
                    name=name + (f" ({others} {dtype})" if several_fixed else ""),
                    x=[r.shape[i] for r in group], y=[r.median_us for r in group], mode="lines+markers",
                    line=dict(dash="solid" if group[0].phase == "fwd" else "dot"),
                    customdata=_compare_hover(group), hovertemplate=_COMPARE_HOVER))
            out.append((dim, fig))
    return out


def shapes_figure(rows: list[CompareRow]) -> go.Figure | None:
    """Median µs per backend, variant and phase, one bar per compare case: for cases that are no sweep."""
    ran = _ran(rows)
    cases = sorted({(tuple(r.shape), r.dtype, bool(r.causal)) for r in ran})
    if len(cases) < 2:
        return None
    order = list(dict.fromkeys(f"{r.backend} {r.variant} {r.phase}" for r in ran))
    fig = _figure(barmode="group", height=160 + 34 * len(order),
                  xaxis=dict(title="median µs per call (outside the profiler; log scale)", type="log"),
                  yaxis=dict(title="backend · variant · phase", autorange="reversed", automargin=True))
    for shape, dtype, causal in cases:
        group = [r for r in ran if (tuple(r.shape), r.dtype, bool(r.causal)) == (shape, dtype, causal)]
        fig.add_trace(go.Bar(
            name=f"{'×'.join(map(str, shape))} {dtype}" + (" causal" if causal else ""), orientation="h",
            x=[r.median_us for r in group], y=[f"{r.backend} {r.variant} {r.phase}" for r in group],
            customdata=_compare_hover(group),
            hovertemplate=_COMPARE_HOVER.replace("%{y:,.1f}", "%{x:,.1f}")))
    fig.update_yaxes(categoryorder="array", categoryarray=order)
    return fig


#: compare.json's row fields in the table, with their headings
_TABLE_COLUMNS = (("backend", "backend"), ("variant", "variant"), ("shape", "shape"), ("dtype", "dtype"),
                  ("phase", "phase"), ("causal", "causal"), ("median_us", "median µs"), ("compute_us", "compute µs"),
                  ("copy_us", "copy µs"), ("launch_us", "launch µs"), ("other_us", "other µs"),
                  ("tflops", "TFLOP/s"), ("gbps", "GB/s"), ("pct_of_peak", "% of peak"))


def _cell(r: CompareRow, col: str) -> str:
    v = getattr(r, col)
    if v is None:
        return "—"
    if col == "shape":
        return _dims(v)
    if col == "causal":
        return "causal" if v else ""
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def compare_table_html(rows: list[CompareRow]) -> str:
    """The rows that ran, as a table (scrolls sideways on a narrow page), and one line per backend and reason that
    could not run."""
    ran = [r for r in rows if not r.unsupported]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in _TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(
        f"<td{' class=num' if col.endswith(('_us', 'tflops', 'gbps', 'peak')) else ''}>{html.escape(_cell(r, col))}</td>"
        for col, _ in _TABLE_COLUMNS) + "</tr>" for r in ran)
    out = (f"<div class=scroll><table class=causes id=compare-rows><thead><tr>{head}</tr></thead>"
           f"<tbody>{body}</tbody></table></div>") if ran else ""
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if r.unsupported:
            skipped.setdefault(r.unsupported, [])
            name = f"{r.backend} {r.variant}"
            if name not in skipped[r.unsupported]:
                skipped[r.unsupported].append(name)
    if skipped:
        out += ("<p class=dim>not run here: " + "; ".join(
            f"{html.escape(', '.join(names))} ({html.escape(reason)})" for reason, names in skipped.items()) + "</p>")
    return out


# --- assembling the page -------------------------------------------------------------------------------------------


def build_panels(report: Report | None, insights: Insights | None = None,
                 compare: CompareDocument | None = None) -> list[Panel]:
    """Every panel there is data for: the report's with its `insights` (analysis.insights.insights(report, ...)),
    compare.json's with `compare` (its document)."""
    insights = insights or Insights()
    ceilings = insights.ceilings
    panels: list[Panel] = []
    if report is not None and report.sites:
        fig = site_bars_figure(report, insights.splits)
        tables = "".join(
            f"<h4>{html.escape(d.subject.label)} — {us_text(d.subject.us)} "
            f"{html.escape(unit_text(d.unit, report).replace('µs ', '', 1))}</h4>"
            + causes_table_html(d.causes, d.subject.us, None, "share") for d in insights.diagnoses)
        panels.append(Panel("sites", "Where each call site's time goes", site_bars_description(report), fig,
                            f"<details><summary>causes and fixes per site</summary>{tables}</details>"))
    for i, e in enumerate(insights.explanations):
        unit = unit_text(e.unit, report)
        desc = (f"A = {e.a.label} ({' / '.join(e.a.backends)}), B = {e.b.label} ({' / '.join(e.b.backends)}): "
                f"B is slower by {us_text(e.gap_us)} {unit.replace('µs ', '', 1)}. Numbers: {e.basis_detail}."
                + "".join(f" Note: {n}." for n in e.notes))
        panels.append(Panel(f"waterfall-{i}", f"From {_short(e.a.label)} to {_short(e.b.label)}: the gap, cause by "
                                              "cause", desc, waterfall_figure(e, unit),
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
        rows = compare.rows
        sweeps = sweep_figures(rows)
        for dim, fig in sweeps:
            panels.append(Panel(f"sweep-{dim}", f"attnprof compare: time against {_DIM_TITLES[dim]}",
                                f"Median µs per call outside the profiler as {dim} varies, every other dimension "
                                "and the dtype fixed; per backend, variant (native inputs or the seed's wrapper) and "
                                "phase (dotted: backward).", fig))
        fig = None if sweeps else shapes_figure(rows)
        if fig is not None:
            panels.append(Panel("shapes", "attnprof compare: each backend at each shape",
                                "Median µs per call outside the profiler, one bar per shape: the same backend and "
                                "variant across the cases compared.", fig))
        if rows:
            panels.append(Panel("compare-table", "attnprof compare: every row",
                                "Each backend, variant, shape and phase that ran, as compare.json holds it; compute, "
                                "copy, launch and other split the one profiled repetition.", None,
                                compare_table_html(rows)))
    return panels


def rank_panels(summary) -> list[Panel]:
    """A job of several ranks: the rank x site heatmap and the per-rank split (render/ranks.py)."""
    from attnprof.render.ranks import heatmap_figure, rank_split_figure

    cp = summary.critical_path
    slowest = (f" The others wait for rank {cp.slowest_rank} (the most time outside collectives); its step "
               f"{us_text(cp.step_us)} µs is {cp.attention_pct:.1f}% attention."
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
        "figures": {p.key: _figure_json(p.figure) for p in panels if p.figure is not None},
        "templates": {name: pio.templates[t].to_plotly_json() for name, t in THEMES.items()},
    }


def asset_text(name: str) -> str:
    """A file of attnprof/render/assets/ (the page's CSS and script), read from the installed package."""
    return resources.files("attnprof.render").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _json_for_script(doc: dict) -> str:
    text = pio.json.to_json_plotly(doc)
    return text.replace("</", "<\\/")  # never close the script element early


def headlines(report: Report | None, insights: Insights | None, compare: CompareDocument | None) -> list[str]:
    """What the page answers, first: each explanation's gap and its causes, else where the time goes; and per
    compare case, the fastest backend and what the seed's wrapper costs."""
    insights = insights or Insights()
    lines = [explanation_headline(e, unit_text(e.unit, report)) for e in insights.explanations]
    if not lines and report is not None:
        line = site_headline(report, insights.splits)
        lines += [line] if line else []
    if compare:
        lines += compare_headlines(compare.rows)
    return lines


def render_dashboard(panels: list[Panel], title: str, meta: list[str], notes: list[str] | None = None,
                     headline: list[str] | None = None, plotly_src: str | None = None) -> str:
    sections = []
    for p in panels:
        sections.append(
            f'<section id="{p.key}"><h2>{html.escape(p.title)}</h2><p class=desc>{html.escape(p.description)}</p>'
            + (f'<div class="figure" id="fig-{p.key}"></div>' if p.figure is not None else "")
            + f'{p.table_html}</section>')
    if not panels:
        sections.append("<p class=desc>No attention call and no compare.json here: nothing to chart.</p>")
    headline_html = ('<div id="headline">' + "".join(f"<p>{html.escape(h)}</p>" for h in headline) + "</div>"
                     if headline else "")
    notes_html = ("<ul class=notes>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>
{asset_text("dashboard.css")}</style>
{_plotly_script(plotly_src)}
</head>
<body>
<header><h1>{html.escape(title)}</h1><button id="theme" type="button">dark theme</button></header>
<p class=meta>{" · ".join(html.escape(m) for m in meta)}</p>
{headline_html}
{notes_html}
{"".join(sections)}
<script id="{DATA_ELEMENT_ID}" type="application/json">{_json_for_script(dashboard_data(panels))}</script>
<script>
{asset_text("dashboard.js")}</script>
</body>
</html>
"""


def write_shared_plotly(folder: Path) -> Path:
    """plotly.js as `folder/plotly.min.js`, for pages rendered with plotly_src=SHARED_PLOTLY_FILE beside it."""
    return atomic_write(Path(folder) / SHARED_PLOTLY_FILE, get_plotlyjs())


def _plotly_script(src: str | None) -> str:
    """plotly.js inlined (the page opens offline on its own), or loaded from `src` beside the page."""
    if src is None:
        return f"<script>{get_plotlyjs()}</script>"
    return f'<script src="{html.escape(src)}"></script>'


def read_dashboard_data(path: Path) -> dict:
    """The figures (and templates) a dashboard embeds, as Plotly JSON: for tests and tools."""
    text = Path(path).read_text()
    start_tag = f'<script id="{DATA_ELEMENT_ID}" type="application/json">'
    start = text.index(start_tag) + len(start_tag)
    end = text.index("</script>", start)
    return json.loads(text[start:end].replace("<\\/", "</"))


def _meta(report: Report | None, compare: CompareDocument | None) -> list[str]:
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
        meta.append(f"compare: {compare.run.get('device', '?')}, {len(compare.rows)} rows")
    return meta


class DashboardRenderer(Renderer[Report | None]):
    """The dashboard of a report and/or compare.json's document (`compare`); pipeline.dashboard_renderer makes one
    with the insights computed. `plotly_src`: plotly.js from that file beside the page instead of inlined (the
    gallery's pages share one copy)."""

    def __init__(self, insights: Insights | None = None, compare: CompareDocument | None = None, title: str = "attnprof",
                 output_name: str = DASHBOARD_FILE, plotly_src: str | None = None):
        self.insights = insights
        self.compare = compare if compare is not None and compare.rows else None  # no rows: nothing to show
        self.title = title
        self.output_name = output_name
        self.plotly_src = plotly_src

    def render(self, report: Report | None) -> str:
        panels = build_panels(report, self.insights, self.compare)
        notes = list(report.notes) if report is not None else []
        if self.compare:
            notes += list(self.compare.notes)
        return render_dashboard(panels, self.title, _meta(report, self.compare), notes,
                                headlines(report, self.insights, self.compare), self.plotly_src)


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
    hover = ([f"<b>now</b> {us_text(d.subject.us)}"]
             + [f"<b>{html.escape(KIND_TITLES.get(c.kind, c.kind))}</b> predicted {c.us:,.1f} µs, measured "
                f"{-c.measured_saving_us:+,.1f} µs" + (f" ({html.escape(c.measured_by)})" if c.measured_by else "")
                + (f"<br>{_html_text(_wrap(c.measured_note))}" if c.measured_note else "") for c in measured]
             + [f"<b>after the fixes, measured</b> {us_text(after)}"])
    fig = _figure(height=400, yaxis_title=d.unit, showlegend=False)
    fig.add_trace(go.Waterfall(
        name="measured", x=x, y=y, measure=["absolute"] + ["relative"] * len(measured) + ["total"],
        text=[us_text(v) if i in (0, len(y) - 1) else f"{v:+,.1f}" for i, v in enumerate(y)], textposition="outside",
        hovertext=hover, hoverinfo="text", decreasing=dict(marker=dict(color=COLORS["other"])),
        totals=dict(marker=dict(color=COLORS["compute"]))))
    return fig


class VerifyDashboardRenderer(Renderer[list[Diagnosis]]):
    """`explain --verify`'s page of the verified site diagnoses: per site, its measured-fixes waterfall and its
    causes."""

    def __init__(self, output_name: str):
        self.output_name = output_name

    def render(self, diagnoses: list[Diagnosis]) -> str:
        panels = []
        for i, d in enumerate(diagnoses):
            fig = measured_fixes_figure(d)
            if fig is not None:
                panels.append(Panel(f"verify-{i}", f"{_short(d.subject.label)}: after the fixes, measured",
                                    " ".join(d.notes), fig, causes_table_html(d.causes, d.subject.us, None, "share")))
        return render_dashboard(panels, "attnprof verify", [d.subject.label for d in diagnoses])
