"""benchmarks/weight_checks.py: Deep Compression's sparse layout counted by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "weight_checks", Path(__file__).resolve().parents[2] / "benchmarks" / "weight_checks.py")
weight_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(weight_checks)


def test_sparse_layout_counts_an_entry_per_kept_weight_and_fillers_for_long_gaps():
    per_entry = 3 + weight_checks.CSR_INDEX_BITS
    assert weight_checks.csr_bits(np.ones(10, dtype=bool), 3) == 10 * per_entry  # dense: every distance 1
    keep = np.zeros(100, dtype=bool)
    keep[[15, 16, 40, 99]] = True  # distances 16 (fits), 1, 24 (one filler), 59 (three fillers)
    assert weight_checks.csr_bits(keep, 3) == (1 + 1 + 2 + 4) * per_entry
    assert weight_checks.csr_bits(np.zeros(5, dtype=bool), 3) == 0
