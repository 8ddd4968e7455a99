"""The library's version (its own module, so saved models can record it without importing the package root)."""

__version__ = "0.1.0"
