"""Export: the real packed ``.ravn`` file."""

from ravn.export.ravnfile import FORMAT, SUFFIX, RavnFile, load, read, save, size_report

__all__ = ["FORMAT", "SUFFIX", "RavnFile", "load", "read", "save", "size_report"]
