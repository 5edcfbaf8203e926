"""``ravn inspect``: per-layer bits, cluster shares and bytes of a ``.ravn`` file."""

from __future__ import annotations

from ravn.export.layout import size_report
from ravn.export.reader import RavnFile


def describe(f: RavnFile) -> dict:
    """Plain-data description of a file: totals measured from its codes and its byte count."""
    layers = []
    codings = f.codings
    payloads = f.payload_bytes  # as stored: not coded again
    for name, q in f.weights.items():
        counts, cost = q.counts, q.cost
        coding = codings[name]
        layers.append({
            "name": name,
            "shape": list(q.shape),
            "weights": q.numel,
            "clusters": q.clusters,
            "bits": list(q.bits),
            "shares": [c / q.numel for c in counts],
            "coding": coding,
            "avg_bits": cost.stored_bits(q.bits, payloads.get(name)) / q.numel,
            "id_bits": q.id_bits(),
            "code_bits": q.code_bits(),
            "bytes": cost.stored_bytes(q.bits, payloads.get(name)) + cost.table_bytes(q.bits),
        })
    totals = size_report(f.weights, codings, payloads)
    state_bytes = sum(t.numel() * t.element_size() for t in f.state.values())
    return {
        "file": str(f.path),
        "file_bytes": f.file_bytes,
        "header_bytes": f.header_bytes,
        "state_bytes": state_bytes,
        "codings": sorted(set(codings.values())),
        **{k: totals[k] for k in ("avg_bits", "quantized_weights", "id_bits", "code_bits", "stream_bytes",
                                  "table_bytes")},
        "model": f.meta["model"]["name"],
        "method": f.meta.get("method", ""),
        "config": f.meta.get("config", {}),
        "metrics": f.meta.get("metrics", {}),
        "versions": f.meta.get("versions", {}),
        "layers": layers,
    }


def render(info: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{info['file']}  ({info['model']}, method {info['method'] or '?'})",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    # Names are what a user types in --exclude: compact columns leave them whole on an 80-column terminal.
    table.add_column("layer", no_wrap=True)
    table.add_column("shape")
    for col in ("weights", "bits per cluster", "shares %", "avg bits", "bytes"):
        table.add_column(col, justify="right")
    for layer in info["layers"]:
        table.add_row(layer["name"], "x".join(map(str, layer["shape"])), f"{layer['weights']:,}",
                      " ".join(map(str, layer["bits"])), " ".join(f"{100 * s:.1f}" for s in layer["shares"]),
                      f"{layer['avg_bits']:.3f}", f"{layer['bytes']:,}")
    console = Console()
    console.print(table)
    console.print(
        f"average bits {info['avg_bits']:.4f} over {info['quantized_weights']:,} weights "
        + (f"(ids {info['id_bits']:,} + codes {info['code_bits']:,} bits)\n" if info["codings"] == ["fixed"]
           else f"(coded {'/'.join(info['codings'])}, frequency models included)\n")
        + f"file {info['file_bytes']:,} B = streams {info['stream_bytes']:,} + tables {info['table_bytes']:,} "
        f"+ float state {info['state_bytes']:,} + header {info['header_bytes']:,}"
    )
    if info["metrics"]:
        console.print("metrics: " + ", ".join(f"{k} {v}" for k, v in info["metrics"].items()))
