"""A closed set of words, typed: members are their text in comparisons, JSON (msgspec, json), f-strings and str().

enum.StrEnum does this from Python 3.11 on; attnprof supports 3.10. A `str, Enum` member prints as `Phase.FWD`
unless __str__ says otherwise (format() follows __str__ once it is overridden, on every version).
"""
from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)
