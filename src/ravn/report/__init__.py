"""Reports: what a quantized model gained and what it cost, as tables, JSON and plots."""
