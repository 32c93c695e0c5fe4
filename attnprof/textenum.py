"""A closed set of words, typed: members are their text in comparisons, JSON (msgspec, json), f-strings and str().

enum.StrEnum does this from Python 3.11 on; attnprof supports 3.10, where a `str, Enum` member prints as
`Phase.FWD` in an f-string: hence this base.
"""
from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
