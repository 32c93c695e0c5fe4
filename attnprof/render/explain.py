"""`attnprof explain` output: an Explanation (B against A) or Diagnoses (where a call's time goes), as a rich
table with the fix next to every cause, or as JSON (the records as they are, floats rounded).

What counts as explained, or within the noise, the analysis decided (analysis/diagnosis): this module prints it."""
from __future__ import annotations

import io

import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnprof.analysis.diagnosis import EXPLAINED_TOLERANCE, KIND_TITLES, Cause, Diagnosis, Explanation, Side
from attnprof.render.base import Renderer
from attnprof.render.console import PIPE_WIDTH
from attnprof.render.json_report import round_floats
from attnprof.units import us_text


def _us(v: float | None, signed: bool = False) -> str:
    """A table cell: µs without the unit (the column says it)."""
    return us_text(v, unit=False, signed=signed)


def explanation_json(e: Explanation) -> str:
    return msgspec.json.format(msgspec.json.encode(round_floats(msgspec.to_builtins(e))), indent=1).decode()


def diagnoses_json(diagnoses: list[Diagnosis]) -> str:
    doc = {"diagnoses": round_floats(msgspec.to_builtins(diagnoses))}
    return msgspec.json.format(msgspec.json.encode(doc), indent=1).decode()


def _side_line(tag: str, s: Side) -> Text:
    t = Text(f"  {tag}  ", style="bold")
    t.append(s.label, style="bold")
    t.append(f"   {_us(s.us)} µs   {' / '.join(s.backends) or '?'}   {s.calls} call{'s' * (s.calls != 1)}   "
             f"compute {_us(s.compute_us)}  copy {_us(s.copy_us)}  launch {_us(s.launch_us)}  other {_us(s.other_us)}")
    return t


def measured_text(c: Cause) -> str:
    """A cause's measured saving as the table shows it: µs and what achieved it, nothing measurable, or not
    measured."""
    if c.measured_saving_us is None:
        return "not measured" if c.measured_note else ""
    if c.measured_saving_us == 0:
        return "nothing measurable"
    return f"{_us(c.measured_saving_us)} ({c.measured_by})"


def _causes_table(causes: list[Cause], total: float, share_label: str, signed: bool, shares: bool = True) -> Table:
    """Ranked causes, then those within the noise (unranked, no share: they may be nothing at all). `shares`
    False: the total is itself noise, so no share of it is shown."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("cause", no_wrap=True)
    table.add_column("µs", justify="right", no_wrap=True)
    table.add_column(share_label, justify="right", no_wrap=True)
    verified = any(c.measured_note or c.measured_saving_us is not None for c in causes)
    if verified:  # explain --verify
        table.add_column("saved, measured", justify="right", ratio=1, overflow="fold")
    table.add_column("what", ratio=3, overflow="fold")  # long paths fold rather than end in "…"
    table.add_column("fix", ratio=3, overflow="fold")
    ranked = [c for c in causes if not c.within_noise]
    for i, c in enumerate(ranked, 1):
        share = f"{100 * c.us / total:.0f}%" if total and shares else "—"
        measured = [measured_text(c)] if verified else []
        table.add_row(str(i), KIND_TITLES.get(c.kind, c.kind), _us(c.us, signed), share, *measured, c.detail, c.fix)
    for c in causes:
        if c.within_noise:
            measured = [measured_text(c)] if verified else []
            table.add_row("", Text(KIND_TITLES.get(c.kind, c.kind), style="dim"), _us(c.us, signed),
                          Text("within noise", style="dim"), *measured, c.detail, c.fix)
    return table


def _measured_notes(console: Console, causes: list[Cause]) -> None:
    for c in causes:
        if c.measured_note:
            console.print(Text(f"  measured, {KIND_TITLES.get(c.kind, c.kind)}: {c.measured_note}", style="cyan"))


def print_explanation(console: Console, e: Explanation) -> None:
    console.print(Text("attnprof explain: why B is slower than A", style="bold"))
    console.print(_side_line("A", e.a))
    console.print(_side_line("B", e.b))
    ratio = f" ({e.b.us / e.a.us:.2f}x)" if e.a.us > 0 else ""
    noise = f", noise ±{_us(e.noise_us)}" if e.noise_us is not None else ""
    if e.distinguishable:
        console.print(Text(f"  B is slower by {_us(e.gap_us)} {e.unit}{ratio}{noise}", style="bold"))
    else:
        console.print(Text(f"  A and B cannot be told apart: B is slower by {_us(e.gap_us)} {e.unit}, within the "
                           f"noise of the timed calls (±{_us(e.noise_us)}): time more steps (--timed) on a quieter "
                           "machine",
                           style="bold yellow"))
    console.print(Text(f"  numbers: {e.basis_detail}", style="dim"))
    for note in e.notes:
        console.print(Text(f"  note: {note}", style="yellow"))
    table = _causes_table(e.causes, e.gap_us, "of gap", signed=True, shares=e.distinguishable)
    noisy_rest = e.unexplained_within_noise
    pct = (f"{100 * e.unexplained_us / e.gap_us:.0f}%" if e.gap_us and e.distinguishable and not noisy_rest
           else "within noise" if noisy_rest else "—")
    what = ("what the causes do not cover: kernel time beyond the true time, negligible causes"
            if e.explained else f"more than {EXPLAINED_TOLERANCE:.0%} of the gap is not covered by the causes: the "
                                "traced kernels took longer than the true time allows (the profiler stretched host "
                                "ops, or the true times are noisy: time more steps)")
    table.add_row("", Text("unexplained", style="dim" if e.explained else "bold red"), _us(e.unexplained_us, True),
                  pct, what, "")
    console.print(table)


def print_diagnoses(console: Console, diagnoses: list[Diagnosis]) -> None:
    for d in diagnoses:
        s = d.subject
        head = Text(f"{s.label}", style="bold")
        head.append(f" — {_us(s.us)} {d.unit}, {' / '.join(s.backends) or '?'}, {s.calls} call"
                    f"{'s' * (s.calls != 1)}")
        console.print(head)
        console.print(Text(f"  numbers: {d.basis_detail}", style="dim"))
        table = _causes_table(d.causes, s.us, "share", signed=False)
        if not d.explained:
            verified = [""] * (len(table.columns) - 6)
            table.add_row("", Text("unexplained", style="bold red"), _us(d.unexplained_us, True),
                          f"{100 * d.unexplained_us / s.us:.0f}%" if s.us else "—", *verified,
                          "the traced kernels took longer than the true time allows", "")
        console.print(table)
        _measured_notes(console, d.causes)
        for note in d.notes:
            console.print(Text(f"  note: {note}", style="yellow"))
        console.print()



def _table_text(print_to, subject, width: int | None) -> str:
    buf = io.StringIO()
    print_to(Console(file=buf, width=width or PIPE_WIDTH, highlight=False), subject)
    return buf.getvalue()


class ExplanationRenderer(Renderer[Explanation]):
    """Why B is slower than A: the sides, the gap, the ranked causes with their fixes; JSON with `as_json`.
    `render` gives the text (`width` columns); `print_to` prints the tables on a console (the CLI's terminal)."""

    def __init__(self, as_json: bool = False, width: int | None = None):
        self.as_json = as_json
        self.width = width

    def render(self, subject: Explanation) -> str:
        return explanation_json(subject) if self.as_json else _table_text(self.print_to, subject, self.width)

    def print_to(self, console: Console, subject: Explanation) -> None:
        print_explanation(console, subject)


class DiagnosesRenderer(Renderer[list[Diagnosis]]):
    """Where each call site's time goes: per site, the ranked causes with their fixes; JSON with `as_json`."""

    def __init__(self, as_json: bool = False, width: int | None = None):
        self.as_json = as_json
        self.width = width

    def render(self, subject: list[Diagnosis]) -> str:
        return diagnoses_json(subject) if self.as_json else _table_text(self.print_to, subject, self.width)

    def print_to(self, console: Console, subject: list[Diagnosis]) -> None:
        print_diagnoses(console, subject)
