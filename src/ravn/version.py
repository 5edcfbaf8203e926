"""The version of ravn (one place: the package, its files and its results read it here)."""

__version__ = "0.1.0"
