"""One interface for every view attnprof writes: console tables, attnprof.json, dashboards, trace overlays,
TensorBoard summaries, explanations and comparison tables.

A renderer turns one typed subject (a Report, an Explanation, a Comparison, ...) into text; `write` puts that text
into a run folder atomically under the renderer's `output_name`. Renderers whose output is not one text (a
TensorBoard event file, a trace overlay) override `write` and leave `render` to what they can show as text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

from attnprof.files import atomic_write

Subject = TypeVar("Subject")


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
