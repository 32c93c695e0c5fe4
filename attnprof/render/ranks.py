"""The `ranks` section of a job's report on the console (a compact cross-rank table) and in the dashboard (a rank x
site heatmap of attention µs and a per-rank split)."""
from __future__ import annotations

from rich.text import Text

from attnprof.analysis.ranks import RanksSummary
from attnprof.render.console import grid, short_site, us_text

#: Up to this many ranks the table has a column per rank; beyond, min / median / max only.
RANK_COLUMNS = 8


def _site_label(site: str, op: str, small: bool) -> str:
    return f"{short_site(site) if small else site}\n  {op}"


def console_renderables(summary: RanksSummary, small: bool = False) -> list:
    """What the console prints for a job: sites across ranks, then each rank's step, the critical path, overlaps."""
    out: list = []
    ranks = [r.rank for r in summary.ranks]
    per_rank = len(ranks) <= RANK_COLUMNS
    rows = []
    for s in summary.sites:
        by_rank = {r.rank: r for r in s.per_rank}
        cells = [us_text(by_rank[r].window_us) if r in by_rank else "—" for r in ranks] if per_rank else []
        straggler = (f"rank {s.straggler_rank} {s.straggler_extra_us:+,.0f}" if s.straggler_rank is not None else "—")
        rows.append([_site_label(s.site, s.op, small), s.phase, str(max(r.calls for r in s.per_rank)), *cells,
                     us_text(s.min_us), us_text(s.median_us), us_text(s.max_us), straggler])
    headers = [("site / op", "text"), ("phase", "word"), ("calls", "num")]
    headers += [(f"rank {r}", "num") for r in ranks] if per_rank else []
    headers += [("min", "num"), ("median", "num"), ("max", "num"), ("straggler µs", "word")]
    out.append(Text(f"\nacross {summary.world_size} ranks: window µs per call on each rank", style="bold"))
    out.append(grid(rows, headers))
    cp = summary.critical_path
    rows = [[str(r.rank) + (" ◀ critical" if cp and r.rank == cp.slowest_rank else ""), str(r.steps),
             us_text(r.step_us), us_text(r.attention_us), f"{r.attention_pct:.1f}%", us_text(r.collective_us),
             us_text(r.busy_us), us_text(r.overlap_us)] for r in summary.ranks]
    out.append(grid(rows, [("rank", "word"), ("steps", "num"), ("step µs", "num"), ("attention µs", "num"),
                           ("of step", "num"), ("collectives µs", "num"), ("outside µs", "num"),
                           ("in attention µs", "num")],
                    title="per rank, per profiled step"))
    if cp is not None:
        out.append(Text(
            f"critical path: the others wait for rank {cp.slowest_rank} ({us_text(cp.busy_us)} µs per step outside "
            f"collectives, the other ranks {us_text(cp.others_busy_us)}); attention is {cp.attention_pct:.1f}% of its "
            f"{us_text(cp.step_us)} µs step ({us_text(cp.attention_us)} µs, {cp.attention_extra_us:+,.0f} µs "
            f"against the other ranks)."))
    for o in summary.overlaps:
        out.append(Text(f"collective overlap: {o.detail}", style="bold"))
        out.append(Text(f"  fix: {o.fix}", style="dim"))
    return out


def heatmap_figure(summary: RanksSummary):
    """Rank x site: attention µs per call (the traced window) on each rank; the straggler stands out."""
    import plotly.graph_objects as go

    ranks = [r.rank for r in summary.ranks]
    labels = [f"{short_site(s.site)} {s.op} {s.phase}" for s in summary.sites]
    z = []
    for s in summary.sites:
        by_rank = {r.rank: r.window_us for r in s.per_rank}
        z.append([by_rank.get(r) for r in ranks])
    fig = go.Figure(go.Heatmap(z=z, x=[f"rank {r}" for r in ranks], y=labels, colorscale="Viridis",
                               colorbar={"title": "µs per call"},
                               hovertemplate="%{y}<br>%{x}: %{z:,.1f} µs per call<extra></extra>"))
    fig.update_layout(title="attention µs per call, rank × site", height=max(260, 60 + 40 * len(labels)),
                      yaxis={"autorange": "reversed"}, margin={"l": 260})
    return fig


def rank_split_figure(summary: RanksSummary):
    """Per rank, per profiled step: attention (its compute / copy / other / launch) and the rest of the step."""
    import plotly.graph_objects as go

    ranks = [f"rank {r.rank}" for r in summary.ranks]
    parts: dict[str, list[float]] = {"compute": [], "copy": [], "launch": [], "other": []}
    for r in summary.ranks:
        totals = dict.fromkeys(parts, 0.0)
        for s in summary.sites:
            for pr in s.per_rank:
                if pr.rank == r.rank:
                    n = pr.calls / max(r.steps, 1)
                    totals["compute"] += pr.compute_us * n
                    totals["copy"] += pr.copy_us * n
                    totals["launch"] += (pr.launch_us or 0.0) * n
                    totals["other"] += pr.other_us * n
        for k in parts:
            parts[k].append(totals[k])
    fig = go.Figure()
    for k, values in parts.items():
        if any(values):
            fig.add_bar(name=f"attention {k}", x=ranks, y=values)
    rest = [max(r.step_us - r.attention_us, 0.0) for r in summary.ranks]
    fig.add_bar(name="rest of the step", x=ranks, y=rest, marker={"color": "rgba(150,150,150,0.45)"})
    fig.update_layout(barmode="stack", title="per rank: one profiled step, attention split and the rest",
                      yaxis={"title": "µs per step"})
    return fig
