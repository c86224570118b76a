"""The version of backprop-suite (the one place it is written; pyproject reads it)."""

__all__ = ["__version__"]

__version__ = "0.2.0"
