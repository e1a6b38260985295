"""Builds cuDNN's plan of a dense prompt (tq_dense_prompt_workspace, C API 3) in a fresh process,
with or without torch loaded and used first, and prints the CUDA runtime, NVRTC and cuDNN files
the process has mapped before the build (libstdc++ among them). On 2026-12-06 the build crashed
(SIGSEGV) inside a process that had loaded torch, while the C++ tests and `tq bench --dense-prompts`
ran it: in libstdc++ code that the library carried and exported
(bench/results/2026-12-06-h100-ragged-dense.md); since the library exports only its own functions
it builds there (bench/results/2026-12-06-h100-crash-fix-and-suites.md). Run both ways, on a GPU
machine:

    python3 bench/gpu/dense_prompt_probe.py build/h200/bindings/c/libtq_capi.so none
    python3 bench/gpu/dense_prompt_probe.py build/h200/bindings/c/libtq_capi.so torch

(with LD_LIBRARY_PATH holding torch's cuDNN folder, as run_h200.sh sets it); under
`cuda-gdb -batch -ex run -ex bt --args python3 ...` for the native stack of a crash."""

import ctypes
import sys
import time


def main(lib_path, first):
    if first not in ("none", "torch"):
        sys.exit(f"second argument: 'none' or 'torch', got {first!r}")
    if first == "torch":
        import torch
        q = torch.randn(1, 8, 256, 128, dtype=torch.bfloat16, device="cuda")
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)  # torch's own cuDNN attention first
        torch.cuda.synchronize()
    c = ctypes
    lib = c.CDLL(lib_path)
    if lib.tq_capi_version() < 3:
        sys.exit(f"{lib_path}: C API {lib.tq_capi_version()}, before tq_dense_prompt (3)")
    lib.tq_dense_prompt_available.argtypes = [c.c_char_p, c.c_int]
    lib.tq_dense_prompt_workspace.restype = c.c_int64
    lib.tq_dense_prompt_workspace.argtypes = [c.c_uint32] * 5 + [c.c_int, c.c_float, c.c_char_p, c.c_int]
    err = c.create_string_buffer(512)
    print("available:", lib.tq_dense_prompt_available(err, 512), err.value.decode(), flush=True)
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if any(n in line for n in ("libcudart", "libnvrtc", "libcudnn", "libstdc++"))})
    print("mapped:", *libs, sep="\n  ", flush=True)
    need = lib.tq_dense_prompt_workspace(1, 4096, 32, 8, 128, 2, 0.0, err, 512)  # one 4K prompt, 32/8 heads of 128, bf16
    print("workspace:", need, err.value.decode(), flush=True)
    # What a new shape's plan costs (each prompt length builds one): the first call of each shape
    # builds, the second finds it cached.
    print("plan builds (sequences x tokens: first call ms, cached call ms, workspace bytes):", flush=True)
    for b, t in ((1, 4097), (1, 1000), (1, 8192), (1, 32768), (4, 2048), (1, 4096)):
        ms = []
        for _ in range(2):
            t0 = time.perf_counter()
            need = lib.tq_dense_prompt_workspace(b, t, 32, 8, 128, 2, 0.0, err, 512)
            ms.append(1e3 * (time.perf_counter() - t0))
        print(f"  {b} x {t}: {ms[0]:.1f}, {ms[1]:.3f}, {need} {err.value.decode() if need < 0 else ''}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
