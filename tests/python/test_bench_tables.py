"""bench/gpu/ab_table.py, the A/B tables of two_trees.sh's runs: medians and ratios from the JSON
files of a synthetic run, and a refusal of runs from two devices."""

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu" / "ab_table.py"


def _write(folder, name, device, rows):
    (folder / name).write_text(json.dumps({"device": device, "rows": rows}))


def _decode_row(kv, us):
    return {"batch": 16, "context": 32768, "head_dim": 128, "kv": kv, "graph_ms": us / 1e3}


def _run(folder):
    return subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True)


def test_medians_and_ratios(tmp_path):
    gpu = "NVIDIA H200"
    for tree, round_, us in (("base", 1, 100.0), ("base", 2, 110.0), ("h200", 1, 90.0), ("h200", 2, 80.0)):
        _write(tmp_path, f"decode_{tree}_{round_}.json", gpu, [_decode_row("k3v2", us), _decode_row("torch-sdpa-bf16", 500.0)])
    for tree, ms, torch in (("base", 2.0, 1.0), ("h200", 1.6, 1.0)):
        _write(tmp_path, f"prefill_{tree}.json", gpu, [
            {"whole_prompt": 4096, "kv": "torch-sdpa-bf16 (causal)", "graph_ms": torch},
            {"whole_prompt": 4096, "kv": "k3v2", "graph_ms": ms},
            {"kv": "k3v2", "quantize_store_bulk_tokens": 262144, "mtokens_per_s": 46.0},  # no shape: left out
        ])
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"Device: {gpu}"
    # head / base = median(90, 80) / median(100, 110) = 85 / 105
    assert "| 16 × 32K | k3v2 | 100.0 | 110.0 | 90.0 | 80.0 | 0.810 |" in lines
    assert "| 16 × 32K | torch-sdpa-bf16 | 500.0 | 500.0 | 500.0 | 500.0 | 1.000 |" in lines
    assert "| whole 4K | k3v2 | 2.000 | 1.600 | 0.800 | 0.50× → 0.62× |" in lines


def test_two_devices_are_refused(tmp_path):
    _write(tmp_path, "decode_base_1.json", "NVIDIA H100 80GB HBM3", [_decode_row("k3v2", 130.0)])
    _write(tmp_path, "decode_h200_1.json", "NVIDIA H200", [_decode_row("k3v2", 120.0)])
    r = _run(tmp_path)
    assert r.returncode != 0
    assert "different devices" in r.stderr and "NVIDIA H200" in r.stderr


def test_an_empty_folder_is_refused(tmp_path):
    r = _run(tmp_path)
    assert r.returncode != 0 and "no decode_*.json" in r.stderr
