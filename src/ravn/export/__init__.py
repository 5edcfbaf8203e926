"""Export: the real packed ``.ravn`` file, and where it is written; deployment: lazy loading
(:mod:`ravn.export.lazy`) and ONNX that keeps the codes (:mod:`ravn.export.onnx`, needs ``ravn[onnx]``)."""

from ravn.export.layout import BUNDLED_FACTORIES, FORMAT, SUFFIX, size_report
from ravn.export.reader import RavnFile, load, read
from ravn.export.writer import file_bytes, save
from ravn.files import check_writable, write_atomically

__all__ = ["BUNDLED_FACTORIES", "FORMAT", "SUFFIX", "RavnFile", "check_writable", "file_bytes", "load", "read",
           "save", "size_report", "write_atomically"]
