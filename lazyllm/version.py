"""The library's version (also written into saved configs)."""

__version__ = "0.2.0"
