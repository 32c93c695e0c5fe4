"""Stand-in for flash-attn 2.x (tests only)."""
__version__ = "2.8.3"

from flash_attn.flash_attn_interface import (  # noqa: F401  (the real package re-exports these)
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)
