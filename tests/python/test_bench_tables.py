"""The GPU benchmarks' tables on synthetic runs: bench/gpu/ab_table.py (two_trees.sh's A/B: medians
and ratios, runs of two devices refused) and bench/gpu/targets.py (issue 15's targets, met, not met
or missing); bench/gpu/prefill_dense_probe.py's chunking, ab_packs.sh's refusals and
sass_loops.py's loops of a SASS listing and their paths, on the CPU."""

import json
import os
import subprocess
import sys

import pytest

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
            {"whole_prompt": 4096, "kv": "torch + bf16 cache written", "graph_ms": torch + 0.5},  # not torch's row
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


def test_whole_prompts_and_the_bulk_store_of_the_rounds(tmp_path):
    # ab_packs.sh with ARGS="--prefill-only --no-prefill --whole 4096 --dense": no decode rows
    gpu = "NVIDIA H100 80GB HBM3"
    for tree, round_, dense, store, bulk in (("base", 1, 0.280, 0.036, 2.2), ("base", 2, 0.290, 0.034, 2.3),
                                             ("h200", 1, 0.270, 0.028, 1.7), ("h200", 2, 0.272, 0.030, 1.8)):
        _write(tmp_path, f"decode_{tree}_r{round_}.json", gpu, [
            {"whole_prompt": 4096, "kv": "torch-sdpa-bf16 (causal)", "graph_ms": 0.26},
            {"whole_prompt": 4096, "kv": "k3v2 dense + store", "graph_ms": 0.3, "store_ms": store},
            {"whole_prompt": 4096, "kv": "k3v2 dense | store, dense first", "graph_ms": dense},
            {"kv": "k3v2", "quantize_store_bulk_tokens": 262144, "ms": bulk, "mtokens_per_s": 262144 / bulk / 1e3},
        ])
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "| shape | kv | base r1 | base r2 | head r1 | head r2 | head / base (medians) |" in lines
    assert "| whole 4K | torch-sdpa-bf16 (causal) | 260.0 | 260.0 | 260.0 | 260.0 | 1.000 |" in lines
    assert "| whole 4K | k3v2 store alone | 36.0 | 34.0 | 28.0 | 30.0 | 0.829 |" in lines  # 29 / 35
    assert "| whole 4K | k3v2 dense \\| store, dense first | 280.0 | 290.0 | 270.0 | 272.0 | 0.951 |" in lines  # 271 / 285
    assert "| bulk store, 262144 tokens | k3v2 | 2200.0 | 2300.0 | 1700.0 | 1800.0 | 0.778 |" in lines  # 1750 / 2250
    assert not any("16 × 32K" in l for l in lines)  # no decode table without decode rows


def test_two_devices_are_refused(tmp_path):
    _write(tmp_path, "decode_base_1.json", "NVIDIA H100 80GB HBM3", [_decode_row("k3v2", 130.0)])
    _write(tmp_path, "decode_h200_1.json", "NVIDIA H200", [_decode_row("k3v2", 120.0)])
    r = _run(tmp_path)
    assert r.returncode != 0
    assert "different devices" in r.stderr and "NVIDIA H200" in r.stderr


def test_an_empty_folder_is_refused(tmp_path):
    r = _run(tmp_path)
    assert r.returncode != 0 and "no decode_*.json" in r.stderr


TARGETS = ROOT / "bench" / "gpu" / "targets.py"


def _bench(path, device, rows):
    path.write_text(json.dumps({"device": device, "rows": rows}))
    return str(path)


def _dec(batch, context, kv, us, head_dim=128, of_limit=0.5):
    return {"batch": batch, "context": context, "kv": kv, "graph_ms": us / 1e3, "head_dim": head_dim, "of_limit": of_limit}


def test_targets_met_and_not(tmp_path):
    rows = [_dec(16, 32768, "torch-sdpa-bf16", 500.0), _dec(16, 32768, "k3v2", 110.0), _dec(16, 32768, "fp8", 200.0),
            _dec(4, 131072, "torch-sdpa-bf16", 500.0), _dec(4, 131072, "k3v2", 130.0),
            _dec(8, 32768, "torch-sdpa-bf16", 300.0), _dec(8, 32768, "k3v2", 110.0),
            _dec(1, 1024, "torch-sdpa-bf16", 7.0), _dec(1, 1024, "k3v2", 7.5), _dec(1, 131072, "torch-sdpa-bf16", 180.0),
            _dec(1, 131072, "k3v2", 45.0),
            {"prefill_prefix": 8192, "prefill_chunk": 512, "kv": "torch-sdpa-bf16 (enable_gqa)", "graph_ms": 0.24},
            {"prefill_prefix": 8192, "prefill_chunk": 512, "kv": "k3v2", "graph_ms": 0.20},
            {"whole_prompt": 4096, "kv": "torch-sdpa-bf16 (causal)", "graph_ms": 0.26}, {"whole_prompt": 4096, "kv": "k3v2", "graph_ms": 0.52},
            {"whole_prompt": 4096, "kv": "torch + bf16 cache written", "graph_ms": 0.30, "write_ms": 0.04},
            {"whole_prompt": 4096, "kv": "k3v2 dense + store", "graph_ms": 0.28, "store_ms": 0.02},
            {"whole_prompt": 4096, "kv": "k3v2 dense | store, dense first", "graph_ms": 0.3}]
    r = subprocess.run([sys.executable, str(TARGETS), _bench(tmp_path / "b.json", "GPU", rows)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| k3v2 ≥ 4× torch at 16 × 32K | 4.55× (torch 500.0 µs, k3v2 110.0) | **met** |" in out
    assert "| k3v2 ≥ 4× torch at 4 × 128K | 3.85× (torch 500.0 µs, k3v2 130.0) | not met |" in out
    assert "| k3v2 ≤ 120 µs (an H200's figure) at 4 × 128K | 130.0 µs | not met |" in out
    assert "| k3v2 ≥ 2× fp8 at 16 × 32K | 1.82× (fp8 200.0 µs, k3v2 110.0) | not met |" in out
    assert "| k3v2 ≥ 2× fp8 at 4 × 128K | missing (k3v2 or fp8 not run) | |" in out
    assert "| k3v2 ≥ 3× torch at 32 × 8K | missing (k3v2 or torch not run) | |" in out
    assert "1K 0.93×, 128K 4.00× (worst 1K) | not met |" in out  # batch 1: slower than torch at 1K
    assert "| prefill 512 tokens on 8K: k3v2 ≥ 0.9× torch | 1.20× (200.0 µs, torch 240.0) | **met** |" in out
    assert "| prefill whole 4K prompt: k3v2 ≥ 0.9× torch | 0.50× (520.0 µs, torch 260.0) | not met |" in out
    # against torch's attention alone, not the row with its cache written that follows it
    assert ("| prefill whole 4K prompt, dense + store: k3v2 ≥ 0.9× torch | 0.93× (280.0 µs, torch 260.0; 1.07× torch with its bf16 "
            "cache written) | **met** |") in out
    assert ("| prefill whole 4K prompt, dense \\| store, dense first: k3v2 ≥ 0.9× torch | 0.87× (300.0 µs, torch 260.0; 1.00× torch "
            "with its bf16 cache written) | not met |") in out  # the bar escaped: one cell


def test_targets_need_one_device_and_head_dim_128(tmp_path):
    a = _bench(tmp_path / "a.json", "GPU A", [_dec(16, 32768, "k3v2", 110.0)])
    b = _bench(tmp_path / "b.json", "GPU B", [_dec(16, 32768, "k3v2", 110.0, head_dim=64)])
    r = subprocess.run([sys.executable, str(TARGETS), a, b], capture_output=True, text=True)
    assert r.returncode != 0 and "different devices" in r.stderr
    c = _bench(tmp_path / "c.json", "GPU B", [_dec(16, 32768, "k3v2", 110.0)])
    r = subprocess.run([sys.executable, str(TARGETS), b, _bench(tmp_path / "d.json", "GPU B", [_dec(1, 1024, "k3v2", 7.0, head_dim=64)])],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "no head-dim 128 file" in r.stderr
    assert subprocess.run([sys.executable, str(TARGETS), b, c], capture_output=True, text=True).returncode == 0


def test_target_shapes_are_the_targets_decode_shapes():
    # what run_h200.sh and run_prebuilt.sh pass to bench_decode.py --shapes at the other head dims:
    # every decode shape the table checks (RATIO4, then RATIO3), as BATCHxCONTEXT pairs
    r = subprocess.run([sys.executable, str(TARGETS), "--shapes"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "16x32768,4x131072,8x32768,32x8192,64x4096"


def test_dense_probe_chunks_give_the_whole_prompts_attention():
    # bench/gpu/prefill_dense_probe.py on the CPU with a timer that runs each call once: its
    # chunks (lower-right causal masks over each chunk's prefix) must give the whole prompt's causal
    # attention, at prompt lengths a chunk divides and does not, and shorter than one chunk. (With
    # top-left masks instead, this fails.)
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench" / "gpu"))
    try:
        import prefill_dense_probe as probe
    finally:
        sys.path.pop(0)
    calls = []

    def once(fn, reps, iters):
        fn()
        calls.append(fn)
        return 1.0

    def lse_attention(q, k, v, causal):  # what cuDNN's op returns, in fp32 on the CPU
        s = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5
        if causal:
            s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        return (torch.softmax(s, -1) @ v.float()).to(q.dtype), torch.logsumexp(s, -1)

    for length in (96, 100, 20):
        row = probe.whole_and_chunked(length, 64, 32, device="cpu", timer=once, lse_attention=lse_attention)
        assert row["rel_diff"] < 2**-8, row  # bf16 outputs of the same sums in another order: a last bit at most
        # the cuDNN column's chunks: prefix and diagonal merged by their log-sum-exp (a merge that
        # dropped either part or weighed them wrong would be off by far more)
        assert row["chunked_cudnn_rel_diff"] < 2**-7, row
        assert row["whole_prompt"] == length and row["chunk"] == 32
        # cuDNN's backend is CUDA's: on the CPU it is refused, and the row says so (torch's CPU has a flash one)
        assert row["whole_cudnn_ms"] is None and "whole_cudnn_error" in row
    assert len(calls) == 15  # whole, chunked, + scratch, whole on flash, chunked on "cuDNN": each length


AB_PACKS = ROOT / "bench" / "gpu" / "ab_packs.sh"


@pytest.mark.parametrize("env, message", [
    ({}, "the baseline pack"),                                          # BASE unset
    ({"BASE": "p", "HEAD": "p", "ROUNDS": "two"}, "ROUNDS is a whole number of rounds, not 'two'"),
    ({"BASE": "no-such-pack", "HEAD": "p"}, "no libtq_capi.so in no-such-pack"),
])
def test_ab_packs_refuses_what_it_cannot_run(tmp_path, env, message):
    # bench/gpu/ab_packs.sh: its refusals come before anything runs (no GPU needed to reach them)
    r = subprocess.run(["bash", str(AB_PACKS)], capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"], "OUT": str(tmp_path), **env})
    assert r.returncode != 0
    assert message in r.stdout + r.stderr


def _sass_loops():
    """bench/gpu/sass_loops.py as a module (a script, not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sass_loops", ROOT / "bench" / "gpu" / "sass_loops.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


def test_sass_loops_counts_each_backward_branch_body():
    m = _sass_loops()
    listing = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
        /*0010*/                   ISETP.GE.AND P0, PT, R0, R1, PT ;        /* 0x000000010000720c */
        /*0020*/              @!P0 IMAD.WIDE.U32 R2, R3, R4, RZ ;
        /*0030*/              @P1 BRA P0, 0x70 ;
        /*0040*/                   LOP3.LUT R5, R2, 0x3, RZ, 0xc0, !PT ;
        /*0050*/              @!P0 BRA 0x10 ;
        /*0060*/                   FADD R6, R6, R7 ;
        /*0070*/              @P2 BRA P3, 0x60 ;
        /*0080*/                   EXIT ;
"""
    instrs = m.instructions(listing)
    assert [a for a, _ in instrs] == list(range(0, 0x90, 0x10))
    assert m.opcode("@!P0 IMAD.WIDE.U32 R2, R3, R4, RZ") == "IMAD"
    got = [(size, first, last, dict(ops)) for size, first, last, ops in m.loops(instrs)]
    # 0x30's forward branch is no loop; 0x50 -> 0x10 and the predicated 0x70 -> 0x60 are
    assert got == [(5, 0x10, 0x50, {"ISETP": 1, "IMAD": 1, "BRA": 2, "LOP3": 1}), (2, 0x60, 0x70, {"FADD": 1, "BRA": 1})]
    # 0x30 -> 0x70 leaves the loop 0x10-0x50, so its path is the whole body
    assert [a for a, _ in m.taken_path(instrs, 0x10, 0x50)] == [0x10, 0x20, 0x30, 0x40, 0x50]


def test_sass_loops_path_takes_the_forward_branches_within_a_loop():
    m = _sass_loops()
    listing = """
        /*0000*/                   ISETP.GE.AND P0, PT, R0, R1, PT ;
        /*0010*/              @!P0 BRA 0x40 ;
        /*0020*/                   FADD R6, R6, R7 ;
        /*0030*/                   BRA 0x60 ;
        /*0040*/                   LOP3.LUT R5, R2, 0x3, RZ, 0xc0, !PT ;
        /*0050*/               @P1 BRA P2, 0x70 ;
        /*0060*/                   FMUL R6, R6, R7 ;
        /*0070*/              @!P3 BRA 0x0 ;
        /*0080*/              @!P4 BRA 0x10 ;
        /*0090*/                   EXIT ;
"""
    instrs = m.instructions(listing)
    # the loop 0x0-0x70 takes 0x10 -> 0x40 and 0x50 -> 0x70, never reaching 0x20, 0x30 or 0x60
    assert [a for a, _ in m.taken_path(instrs, 0x0, 0x70)] == [0x0, 0x10, 0x40, 0x50, 0x70]
    # the loop 0x10-0x80 holds the backward branch 0x70 -> 0x0, which the path does not take
    assert [a for a, _ in m.taken_path(instrs, 0x10, 0x80)] == [0x10, 0x40, 0x50, 0x70, 0x80]
