#!/usr/bin/env python3
"""A copy of a GGUF file with its quantized matrices in another ggml type, to run models of types one
cannot download here (the weight types without integer kernels on the CPU: docs/engine.md).

  --to q5_1    every block-quantized 2-D tensor dequantized and quantized again as q5_1 through the
               gguf package (a real model: quality and speed)
  --to iq4_nl  random codes under the tensor's own scale magnitudes (speed only: the text is noise)
  --to q3_K    the same, for tensors whose rows are whole 256-element blocks (others kept)

Metadata and the other tensors are copied as they are.

  .venv/bin/python bench/cpu/retype_gguf.py models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-q5_1.gguf --to q5_1
"""
import argparse
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

# Byte offsets of the fp16 scales in a block of the random-code types, and the block's elements.
RANDOM = {"iq4_nl": (T.IQ4_NL, [0]), "q3_K": (T.Q3_K, [108]), "q2_K": (T.Q2_K, [80, 82]), "iq4_xs": (T.IQ4_XS, [0])}
BLOCKED = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K}


def random_codes(t, offsets, rows, cols, scale, rng):
    elems, nbytes = gguf.GGML_QUANT_SIZES[t]
    raw = rng.integers(0, 256, size=(rows, cols // elems, nbytes), dtype=np.uint8)
    for off in offsets:  # scales of the tensor's magnitude over the levels' range, either sign
        d = (rng.uniform(0.5, 1.5, size=raw.shape[:2]) * scale * rng.choice([-1, 1], size=raw.shape[:2])).astype(np.float16)
        raw[:, :, off:off + 2] = d.view(np.uint8).reshape(rows, cols // elems, 2)
    return raw.reshape(rows, -1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--to", required=True, choices=["q5_1", *RANDOM])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    r = gguf.GGUFReader(a.src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(a.dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = f.types[1] if len(f.types) > 1 else None
        w.add_key_value(name, f.contents(), f.types[0], sub)
    rng = np.random.default_rng(a.seed)
    changed = 0
    for t in r.tensors:
        shape = [int(x) for x in t.shape]  # ggml order: [cols, rows]
        raw = np.asarray(t.data)
        if t.tensor_type in BLOCKED and len(shape) == 2:
            cols, rows = shape
            if a.to == "q5_1":
                x = dequantize(raw, t.tensor_type).reshape(rows, cols).astype(np.float32)
                w.add_tensor(t.name, quantize(x, T.Q5_1), raw_dtype=T.Q5_1)  # (the bytes' shape gives the elements')
                changed += 1
                continue
            qt, offsets = RANDOM[a.to]
            if cols % gguf.GGML_QUANT_SIZES[qt][0] == 0:
                x = dequantize(raw, t.tensor_type)
                scale = float(np.abs(x).mean()) / 64.0  # levels up to ~127 (iq4) or ~32 (K-quant scales x codes)
                w.add_tensor(t.name, random_codes(qt, offsets, rows, cols, scale, rng), raw_dtype=qt)
                changed += 1
                continue
        w.add_tensor(t.name, raw, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.dst}: {changed} tensors as {a.to}", file=sys.stderr)


if __name__ == "__main__":
    main()
