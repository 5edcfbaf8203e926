"""The summary ``ravn quantize`` prints: accuracy, size and bits, before and after."""

from __future__ import annotations

import math

from ravn.errors import few


def render_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{s['model']} -> {s['file']} ({s['method']})")
    for col in ("", "float", "quantized"):
        table.add_column(col, justify="right")
    table.add_row("test top-1 %", f"{s['float_test_top1']:.2f}", f"{s['test_top1']:.2f}")
    table.add_row("file bytes", f"{s['float_file_bytes']:,}", f"{s['file_bytes']:,}")
    table.add_row("avg weight bits", "32", f"{s['avg_bits']:.3f}")
    console = Console()
    console.print(table)
    console.print(f"{s['test_n']} test images; compression x{s['float_file_bytes'] / s['file_bytes']:.2f}; "
                  f"quantized in {s['quantize_seconds']:.1f} s; the file rebuilds exactly the measured weights")
    if floats := s["size"].get("float_weights"):
        console.print(left_in_float(floats))


def left_in_float(floats: dict[str, list[int]]) -> str:
    """One line naming the weights a file keeps in float (``float_weights`` of its size report), largest first."""
    sizes = {k: math.prod(shape) for k, shape in floats.items()}
    named = few([f"{k} ({'x'.join(map(str, floats[k]))})" for k in sorted(sizes, key=lambda k: -sizes[k])], 3)
    return (f"left in float: {sum(sizes.values()):,} weights in {len(sizes)} tensors, e.g. {named}; ravn quantizes "
            "the weights of convolutions (transposed ones too) and Linear layers")
