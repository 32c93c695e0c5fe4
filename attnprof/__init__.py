"""attnprof: where the time of every attention call goes (copy / launch / compute / other)."""

__version__ = "0.1.0"
