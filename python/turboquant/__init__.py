"""TurboQuant KV-cache compression in Python: the C++ library's KV specs, quantizers, paged cache and
engine (docs/python.md).

    import turboquant as tq
    tq.kv_size("fp16,k3v2", layers=32, kv_heads=8, head_dim=128, context=[32768])
    q = tq.Quantizer(dim=128, bits=3); codes = q.quantize(x); y = q.dequantize(codes)
    llm = tq.LLM("model.gguf", kv_spec="k3v2"); print(llm.generate("Once upon a time", max_tokens=40))
"""

from __future__ import annotations

import operator
from typing import Iterable, List, Optional, Sequence, Union

from . import _C
from ._C import DEFAULT_KV_SPEC, HAVE_CUDA, Error, KvCache, KvSpec, Quantizer
from .llm import LLM

__all__ = [
    "DEFAULT_KV_SPEC",
    "HAVE_CUDA",
    "Error",
    "KvCache",
    "KvSpec",
    "LLM",
    "Quantizer",
    "distortion",
    "kv_size",
    "model_shapes",
    "parse_kv_specs",
]

__version__ = "0.1.0"

SpecLike = Union[str, KvSpec]


def parse_kv_specs(specs: Union[SpecLike, Iterable[SpecLike]]) -> List[KvSpec]:
    """A comma-separated string ("fp16,k3v2,default"), a KvSpec, or a list of either -> [KvSpec].
    Raises ValueError naming the bad part ("default" is tq run's spec)."""
    if isinstance(specs, KvSpec):
        return [specs]
    if isinstance(specs, str):
        items: Sequence[SpecLike] = specs.split(",")
    else:
        items = list(specs)
    out = []
    for s in items:
        if isinstance(s, KvSpec):
            out.append(s)
        elif isinstance(s, str):
            out.append(KvSpec(s.strip()))
        else:
            raise TypeError(f"a KV spec is a str or KvSpec, got {type(s).__name__}")
    if not out:
        raise ValueError("no KV spec given")
    return out


def _positive_int(name: str, value, lo: int = 1, hi: int = 1 << 30) -> int:
    # an int or what stands for one (numpy's integers: operator.index), never a bool, a float or a
    # str, which int() would read as 1, 1 and 7 for True, 1.5 and "7"
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be {lo}..{hi}, got {value}")
    return value


def kv_size(
    kv: Union[SpecLike, Iterable[SpecLike]] = "fp16,fp8,default",
    layers: Optional[int] = None,
    kv_heads: Optional[int] = None,
    head_dim: Optional[int] = None,
    context: Iterable[int] = (),
    shape: Optional[str] = None,
    swa_full: bool = False,
) -> List[dict]:
    """What `tq kv-size --json` reports, one dict per spec, from the same C++: kv (canonical),
    bits_per_element, bytes_per_token, ratio_vs_fp16, page_size, page_bytes, side_kib (the fp16
    sink/window buffer per sequence), centre_kib (the fp32 key centres of `centre`, per cache) and
    mib_at_<N> for each context length N (whole pages plus the side buffer). The shape: layers,
    kv_heads, head_dim (default Llama-3-8B's: 32, 8, 128), or `shape`, a known model's
    (model_shapes()), whose sliding-window layers then count at their window rings in mib_at_<N>
    as the engines keep them (swa_full=True: every position), as `tq kv-size --shape`. Default
    specs: fp16, fp8 and tq run's default."""
    windows: List[int] = []
    if swa_full and shape is None:
        raise ValueError("kv_size: swa_full counts a model's sliding-window layers: give its shape= (layers/kv_heads/head_dim have none)")
    if shape is not None:
        if layers is not None or kv_heads is not None or head_dim is not None:
            raise ValueError("kv_size: give shape= or layers/kv_heads/head_dim, not both")
        if not isinstance(shape, str):
            raise TypeError(f"kv_size: shape must be a model's name (model_shapes()), got {shape!r}")
        s = _C.model_shape(shape)
        layers, kv_heads, head_dim = s["layers"], s["kv_heads"], s["head_dim"]
        windows = [] if swa_full or not any(s["windows"]) else list(s["windows"])
    layers = _positive_int("layers", 32 if layers is None else layers, 1, 1024)
    kv_heads = _positive_int("kv_heads", 8 if kv_heads is None else kv_heads, 1, 1024)
    head_dim = _positive_int("head_dim", 128 if head_dim is None else head_dim, 1, 1024)
    if isinstance(context, (str, bytes)) or not isinstance(context, Iterable):
        raise TypeError(f"context must be a list of token counts, got {context!r}")
    contexts = [_positive_int("context", n, 1, 1 << 40) for n in context]
    rows = []
    for spec in parse_kv_specs(kv):
        k = _C.kv_size(spec, layers, kv_heads, head_dim, windows, contexts)
        row = {key: k[key] for key in ("kv", "bits_per_element", "bytes_per_token", "ratio_vs_fp16", "page_size", "page_bytes")}
        row["side_kib"] = k["side_bytes"] / 1024
        row["centre_kib"] = k["centre_bytes"] / 1024
        for n, b in zip(contexts, k["seq_bytes"]):
            row[f"mib_at_{n}"] = b / (1024.0 * 1024.0)
        rows.append(row)
    return rows


def model_shapes() -> List[str]:
    """The known models' shapes kv_size(shape=...) and `tq kv-size --shape` take."""
    return list(_C.model_shapes())


def distortion(
    dim: int = 128,
    bits: Iterable[int] = (1, 2, 3, 4),
    method: str = "mse",
    rotation: str = "auto",
    samples: int = 20000,
    seed: int = 1,
) -> List[dict]:
    """The rows of `tq distortion --json` (the paper's distortion table, measured): TurboQuant on
    `samples` random unit vectors per bit width, with the same seeds as the command, so the same
    arguments give the same numbers. method: "mse", "prod" or "both". Keys: method, bits, dim,
    rotation, samples, mse, mse_stderr, ip_bias, ip_bias_stderr, ip_ratio, ip_var (times dim),
    mse_lower, mse_upper; MSE rows mse_expected (and mse_paper for 1..4 bits), prod rows
    ip_var_bound (times dim)."""
    if method not in ("mse", "prod", "both"):
        raise ValueError(f"method must be mse, prod or both, got {method!r}")
    if rotation not in ("auto", "hadamard", "dense"):
        raise ValueError(f"rotation must be auto, hadamard or dense, got {rotation!r}")
    dim = _positive_int("dim", dim, 2, 1024)  # a unit vector of 1 is +-1: nothing random to measure (tq distortion's range)
    samples = _positive_int("samples", samples, 100, 10_000_000)
    seed = _positive_int("seed", seed, 0, (1 << 64) - 1 - 1000 * 8)  # each width seeds seed + 1000 * bits, a uint64
    bits = [_positive_int("bits", b, 1, 8) for b in ([bits] if isinstance(bits, int) else bits)]
    prods = ([False] if method != "prod" else []) + ([True] if method != "mse" else [])
    rows = []
    for prod in prods:
        for b in bits:
            r = _C.distortion_row(dim, b, prod, rotation, samples, seed, seed + 1000 * b)
            row = {k: r[k] for k in ("method", "bits", "dim", "rotation", "samples", "mse", "mse_stderr", "ip_bias",
                                     "ip_bias_stderr", "ip_ratio", "mse_lower", "mse_upper")}
            row["ip_var"] = r["ip_var"] * dim  # as the table prints it: variance times d
            if prod:
                row["ip_var_bound"] = r["ip_var_bound"] * dim
            else:
                if r["mse_expected"] > 0:  # none where the dimension is padded to a multiple of 32 (as tq distortion)
                    row["mse_expected"] = r["mse_expected"]
                if r["mse_paper"] > 0:
                    row["mse_paper"] = r["mse_paper"]
            rows.append(row)
    return rows

