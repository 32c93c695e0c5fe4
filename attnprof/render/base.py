"""One interface for every view attnprof writes: console tables, attnprof.json, dashboards, trace overlays,
TensorBoard summaries, explanations and comparison tables.

A renderer turns one typed subject (a Report, an Explanation, a Comparison, ...) into text; `write` puts that text
into a run folder atomically under the renderer's `output_name`. Renderers whose output is not one text (a
TensorBoard event file, a trace overlay) override `write` and leave `render` to what they can show as text.
Renderers that draw on a terminal (rich tables) are ConsoleViews: `print_to` draws on a console, `render` is the
same drawing as text.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Generic, TypeVar

from rich.console import Console

from attnprof.files import atomic_write

Subject = TypeVar("Subject")

#: Piped or redirected output with no COLUMNS: wide enough that no table is squeezed (tables never pad to it).
PIPE_WIDTH = 240


class Renderer(Generic[Subject]):
    #: file name a renderer writes into a run folder, if it writes one
    output_name: str | None = None

    def render(self, subject: Subject) -> str:
        raise NotImplementedError

    def write(self, subject: Subject, folder: Path) -> Path:
        """Write the rendering into `folder` under `output_name`, atomically; returns the path."""
        if self.output_name is None:
            raise TypeError(f"{type(self).__name__} writes no file")
        return atomic_write(Path(folder) / self.output_name, self.render(subject))


class ConsoleView(Renderer[Subject]):
    """A renderer that draws on a rich console. `render` gives the drawing as text, `width` columns wide (default
    PIPE_WIDTH), with colour codes when `color` is True (None: none, as on a pipe)."""

    def __init__(self, width: int | None = None, color: bool | None = None):
        self.width = width
        self.color = color

    def print_to(self, console: Console, subject: Subject) -> None:
        raise NotImplementedError

    def render(self, subject: Subject) -> str:
        buf = io.StringIO()
        console = Console(file=buf, width=self.width or PIPE_WIDTH, force_terminal=self.color,
                          no_color=self.color is False, highlight=False)
        self.print_to(console, subject)
        return buf.getvalue()
