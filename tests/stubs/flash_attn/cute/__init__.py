"""Stand-in for FA4 (package flash-attn-4): `from flash_attn.cute import flash_attn_func, flash_attn_varlen_func`."""
from .interface import flash_attn_func, flash_attn_varlen_func  # noqa: F401
