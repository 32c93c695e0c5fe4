"""Stand-in for xformers.ops: re-exports the fmha entry points, like the real package."""
from .fmha import LowerTriangularMask, memory_efficient_attention, memory_efficient_attention_forward  # noqa: F401
