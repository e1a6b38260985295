"""What the GPU benchmark tables share about bench_decode.py's rows (targets.py, ab_table.py)."""


def torch_key(kv):
    """torch's attention alone ("torch-sdpa-bf16 ..."), that with its bf16 cache written
    ("torch + bf16 cache written"), or one of ours as named."""
    return "torch" if kv.startswith("torch-sdpa") else "torch + cache" if kv.startswith("torch + ") else kv


def cell(text):
    """Text for a Markdown table's cell: its bars escaped (row names such as "k3v2 dense | store")."""
    return text.replace("|", "\\|")
