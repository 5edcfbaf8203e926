"""The summary ``ravn quantize`` prints: accuracy, size and bits, before and after."""

from __future__ import annotations


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
