"""Hostile use of the Python package: calls from several threads, huge counts, empty inputs, a
callback that calls back in or answers with any truthy value, a stream left open at exit. Each
ends in a result or a clear error, never a hang, a crash or a heap overflow. Scenarios that could
hang or crash run in a subprocess with a timeout, so a regression fails the test instead of pytest."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import turboquant as tq
from turboquant import _C


def run_python(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


def test_cpu_ops_from_two_threads_take_turns():
    # Both threads share the torch ops' CPU thread pool, which runs one job at a time (it hung or
    # crashed); each thread's pages must be the single-threaded result.
    r = run_python("""
        import threading, numpy as np, turboquant._C as C
        f = C.CpuFormat(C.KvSpec("k3v2"), 1, 2, 64)
        rng = np.random.default_rng(0)
        k = rng.standard_normal((512, 2, 64)).astype(np.float32)
        v = rng.standard_normal((512, 2, 64)).astype(np.float32)
        slots = np.arange(512, dtype=np.int64)
        ref = np.zeros((1, 32, 2, f.block_bytes), np.uint8)
        f.quantize_store(0, ref, k, v, slots, 1)
        bad = []
        def work(tid):
            for _ in range(100):
                pages = np.zeros_like(ref)
                f.quantize_store(0, pages, k, v, slots, 2 + tid % 2)  # two thread counts: the pool is remade between calls
                if not np.array_equal(pages, ref):
                    bad.append(tid)
                    return
        ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        print("bad", bad)
    """)
    assert r.returncode == 0, r.stderr
    assert "bad []" in r.stdout


def test_dequantize_refuses_more_rows_than_bytes():
    q = tq.Quantizer(dim=16, bits=3)
    codes = q.quantize(np.ones((2, 16), np.float32))
    with pytest.raises(Exception, match="cannot fit"):
        q.dequantize(codes, rows=2**60 + 1)  # bytes(rows) wrapped to a small number, then a heap overflow
    assert q.dequantize(codes, rows=2).shape == (2, 16)


def test_empty_arrays_are_empty_results():
    q = tq.Quantizer(dim=64, bits=3)
    codes = q.quantize(np.zeros((0, 64), np.float32))  # numpy 2 gives it strides of 0: not "non-contiguous"
    assert codes.size == 0
    assert q.dequantize(codes, rows=0).shape == (0, 64)


def test_a_callback_that_calls_generate_again_is_refused(stories):
    model, tok = stories
    llm = tq.LLM(str(model), tokenizer=str(tok), kv_spec="k3v2", threads=1)
    ids = llm.tokenize("Once upon a time")
    seen = []

    def again(_id, _piece):
        try:
            llm._engine.generate(ids, 2, 0.0, 0, 1.0, 0.0, 0, lambda *a: True)
        except RuntimeError as e:
            seen.append(str(e))
        return False

    llm._engine.generate(ids, 3, 0.0, 0, 1.0, 0.0, 0, again)
    assert seen and "its own on_token callback" in seen[0]
    assert llm.generate("Once upon a time", max_tokens=3, temperature=0)  # the engine is free again


@pytest.mark.parametrize("answer, tokens", [(None, 5), (True, 5), (1, 5), ("go", 5), (False, 1), (0, 1), (np.False_, 1), ("", 1), ([], 1)])
def test_callback_answers_are_read_for_their_truth(stories, answer, tokens):
    model, tok = stories
    e = _C.Engine(str(model), str(tok), "k3v2", 1, 0, "cpu", False, False)
    n, _ = e.generate(e.tokenize("Once upon a time"), 5, 0.0, 0, 1.0, 0.0, 0, lambda i, b: answer)
    assert n == tokens


def test_a_stream_left_open_at_exit_ends_cleanly(stories):
    model, tok = stories
    for read_one in (False, True):
        r = run_python(f"""
            import turboquant as tq
            llm = tq.LLM({str(model)!r}, tokenizer={str(tok)!r}, kv_spec="k3v2", threads=1)
            it = llm.generate("Once upon a time", max_tokens=100000, stream=True)
            if {read_one}:
                next(it)
            print("exiting")
        """)
        assert r.returncode == 0, (read_one, r.returncode, r.stderr[-2000:])
        assert "exiting" in r.stdout


def test_read_only_inputs_are_read():
    q = tq.Quantizer(dim=64, bits=3)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    codes = np.frombuffer(q.quantize(x).tobytes(), dtype=np.uint8)  # stored codes read back: read-only
    assert not codes.flags.writeable
    xr = x.copy()
    xr.flags.writeable = False
    np.testing.assert_array_equal(q.dequantize(codes), q.dequantize(q.quantize(xr)))
    assert q.dot(xr[0], codes).shape == (4,)


def test_a_stop_string_is_a_stop(stories):
    model, tok = stories
    llm = tq.LLM(str(model), tokenizer=str(tok), kv_spec="k3v2", threads=1)
    text = llm.generate("Once upon a time", max_tokens=60, stop=["."])
    assert "." not in text
    assert llm.last["finish_reason"] == "stop"
    llm.generate("Once upon a time", max_tokens=3)
    assert llm.last["finish_reason"] == "length"


try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


@pytest.mark.parametrize("setup, make, prefix", [
    ("import turboquant as tq", 'tq.KvCache(tq.KvSpec("k3v2"), layers, 8, 992, pages)', ""),
    # turboquant.torch_ops.new_cache on the CPU built the tables and then asked torch for the zeroed
    # pages, with no bound of its own; torch's first custom-op call (~3 s) comes before the timed ones
    pytest.param('import turboquant.torch_ops as ops\nops.new_cache("k3v2", 1, 1, 64, 1, "cpu")',
                 'ops.new_cache("k3v2", layers, 8, 992, pages, "cpu")', "new_cache: ",
                 marks=pytest.mark.skipif(not HAVE_TORCH, reason="the torch ops need torch"), id="torch_ops"),
])
def test_an_oversized_cache_is_refused_before_its_codec_tables_are_built(setup, make, prefix):
    # At head dim 992 each (layer, head, K or V) codec is a dense rotation, ~4 MiB built in ~1 s: the
    # 64 GiB check came after all of them (32 layers x 8 heads: minutes before refusing the pages),
    # and did not count them (4096 layers: 240 GiB of tables and hours of work for one page).
    r = run_python(setup + """
import time
for layers, pages in ((32, 2**31), (4096, 1)):
    t = time.monotonic()
    try:
        """ + make + """
    except ValueError as e:
        print(f"{time.monotonic() - t:.3f}", e)
""", timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    assert prefix + "the cache would take 5111809.9 GiB (5111808.0 GiB of pages, 1.9 GiB of codec tables); more than the 64 GiB" in lines[0]
    assert prefix + "the cache would take 240.6 GiB (0.3 GiB of pages, 240.2 GiB of codec tables)" in lines[1]
    assert all(float(line.split()[0]) < 2 for line in lines), r.stdout


SPEC = tq.KvSpec("k3v2:edge=1/k4v4")


@pytest.mark.parametrize("call, error, message", [
    # read as ints by nanobind (int() of them): "64" as 64, True as 1
    (lambda: tq.Quantizer(dim="64"), TypeError, r"Quantizer: dim must be an int, got '64'"),
    (lambda: tq.Quantizer(dim=True), TypeError, r"Quantizer: dim must be an int, got True"),
    (lambda: tq.Quantizer(dim=np.float32(64.5)), TypeError, r"Quantizer: dim must be an int, got (np\.float32\()?64\.5"),
    (lambda: SPEC.quantizer("64"), TypeError, r"KvSpec.quantizer: head_dim must be an int, got '64'"),
    # answered with nanobind's list of signatures
    (lambda: tq.Quantizer(dim=-1), ValueError, r"Quantizer: dim must be in \[0, 2\*\*32\), got -1"),
    (lambda: tq.Quantizer(dim=2**32), ValueError, r"Quantizer: dim must be in \[0, 2\*\*32\), got 4294967296"),
    (lambda: tq.Quantizer(dim=64, seed=2**64), ValueError, r"Quantizer: seed must be in \[0, 2\*\*64\), got 18446744073709551616"),
    (lambda: tq.Quantizer.baseline("int4", 64, group=-1), ValueError, r"Quantizer.baseline: group must be in \[0, 2\*\*32\), got -1"),
    (lambda: tq.Quantizer(dim=64).bytes(-1), ValueError, r"Quantizer.bytes: rows must be in \[0, 2\*\*64\), got -1"),
    (lambda: tq.Quantizer(dim=64).dequantize(np.zeros(34, np.uint8), rows=-1), ValueError, r"Quantizer.dequantize: rows must be in"),
    (lambda: tq.KvCache(tq.KvSpec("k3v2"), 1, 1, 64, -1), ValueError, r"KvCache: num_pages must be in \[0, 2\*\*32\), got -1"),
    (lambda: tq.KvCache(tq.KvSpec("k3v2"), 1, 1, 64, 1).read(2**32, np.zeros(1, np.int64)), ValueError,
     r"KvCache.read: layer must be in \[0, 2\*\*32\), got 4294967296"),
    (lambda: tq.KvCache(tq.KvSpec("k3v2"), 1, 1, 64, 1).write(-1, np.zeros(0, np.int64), np.zeros((0, 1, 64), np.float32),
                                                           np.zeros((0, 1, 64), np.float32)), ValueError, r"KvCache.write: layer must be in"),
    (lambda: SPEC.quantizer(64, layer=-1), ValueError, r"KvSpec.quantizer: layer must be in \[0, 2\*\*32\), got -1"),
    (lambda: SPEC.page_bytes(2**32, 1, 64), ValueError, r"KvSpec.page_bytes: layers must be in \[0, 2\*\*32\), got 4294967296"),
    (lambda: SPEC.is_edge_layer(-1, 3), ValueError, r"KvSpec.is_edge_layer: layer must be in \[0, 2\*\*32\), got -1"),
    (lambda: SPEC.bits_per_element(-64), ValueError, r"KvSpec.bits_per_element: head_dim must be in"),
])
def test_ints_are_refused_by_name(call, error, message):
    with pytest.raises(error, match=message) as e:
        call()
    assert "incompatible function arguments" not in str(e.value)


def test_ints_and_numpy_ints_are_taken():
    assert tq.Quantizer(dim=np.int64(64), bits=np.uint8(3)).dim == 64
    assert SPEC.layer_format(np.int32(2), 3) == "k4v4"


def test_llm_sizes_and_ids_are_refused_by_name(stories):
    model, tok = stories
    with pytest.raises(ValueError, match=r"threads must be an int in \[0, 2\*\*32\), got 4294967296"):
        tq.LLM(model, tokenizer=tok, threads=2**32)
    llm = tq.LLM(model, tokenizer=tok, kv_spec="k3v2", threads=1)
    for kwargs, message in [(dict(max_tokens=2**32), r"max_tokens must be an int in \[0, 2\*\*32\), got 4294967296"),
                            (dict(top_k=2**31), r"top_k must be in \[0, 2\*\*31\) \(0: off\), got 2147483648")]:
        with pytest.raises(ValueError, match=message) as e:
            llm.generate("Once upon a time", **kwargs)
        assert "incompatible function arguments" not in str(e.value)
    with pytest.raises(ValueError, match="prompt token 2147483648 at index 1 is outside the vocabulary"):
        llm.generate([1, 2**31])
    with pytest.raises(ValueError, match="token -2147483649 at index 0 is outside the vocabulary"):
        llm.detokenize([-2**31 - 1])
    with pytest.raises(TypeError, match="token '7' at index 0 is not an int"):
        llm.detokenize(["7"])


def test_the_module_exports_no_runtime_code_of_its_own():
    # A process that loaded another C++ runtime first (torch's libstdc++) would bind our exported
    # copy's calls piecemeal to it (a crash, 2026-12-06: bindings/c/CMakeLists.txt): the module
    # exports PyInit__C and no other strong symbol (tests/scripts/check_exports.cmake).
    if not sys.platform.startswith("linux"):
        pytest.skip("nm -D reads ELF libraries: Linux only")
    nm, cmake = shutil.which("nm"), shutil.which("cmake")
    if not nm or not cmake:
        pytest.skip(f"needs nm and cmake on PATH (nm: {nm}, cmake: {cmake})")
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_exports.cmake"
    r = subprocess.run([cmake, f"-DLIB={_C.__file__}", f"-DNM={nm}", "-DPREFIX=PyInit_", "-P", str(script)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
