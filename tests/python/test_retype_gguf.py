"""bench/cpu/retype_gguf.py (the weight-type results' files, bench/results/2026-12-06-cpu-weight-types.md)
on a small GGUF written here: q5_1 requantizes every block-quantized matrix to values near the
original's, the random-code types keep their shapes and scales finite, the rest is copied."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

SCRIPT = ROOT / "bench" / "cpu" / "retype_gguf.py"


def _source(path):
    rng = np.random.default_rng(1)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_string("general.name", "tiny")
    m = rng.standard_normal((8, 512)).astype(np.float32)
    w.add_tensor("blk.0.ffn_down.weight", quantize(m, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(512, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return m


@pytest.mark.parametrize("to", ["q5_1", "q3_K", "iq4_xs"])
def test_retyped_copy(tmp_path, to):
    src, dst = tmp_path / "a.gguf", tmp_path / "b.gguf"
    m = _source(src)
    r = subprocess.run([sys.executable, str(SCRIPT), str(src), str(dst), "--to", to], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = {t.name: t for t in gguf.GGUFReader(str(dst)).tensors}
    fields = gguf.GGUFReader(str(dst)).fields
    assert fields["general.name"].contents() == "tiny" and fields["llama.block_count"].contents() == 1
    w = out["blk.0.ffn_down.weight"]
    assert w.tensor_type.name.lower() == to.lower()
    x = dequantize(np.asarray(w.data), w.tensor_type).reshape(8, 512)
    assert np.isfinite(x).all()
    if to == "q5_1":  # a real requantization: within q5_1's step (a 31st of a block's range) of the q8_0 values
        orig = dequantize(quantize(m, T.Q8_0), T.Q8_0).reshape(8, 512)
        step = (orig.reshape(-1, 32).max(1) - orig.reshape(-1, 32).min(1)) / 31
        assert (np.abs(x - orig).reshape(-1, 32).max(1) <= 0.51 * step + 1e-3).all()
    np.testing.assert_array_equal(np.asarray(out["blk.0.attn_norm.weight"].data), np.ones(512, np.float32))
