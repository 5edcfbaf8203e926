"""Export: the real packed ``.ravn`` file, and where it is written."""

from ravn.files import check_writable, write_atomically
from ravn.export.ravnfile import (
    BUNDLED_FACTORIES,
    FORMAT,
    SUFFIX,
    RavnFile,
    file_bytes,
    load,
    read,
    save,
    size_report,
)

__all__ = ["BUNDLED_FACTORIES", "FORMAT", "SUFFIX", "RavnFile", "check_writable", "file_bytes", "load", "read",
           "save", "size_report", "write_atomically"]
