"""Stand-in for xformers (tests only)."""
__version__ = "0.0.32"
