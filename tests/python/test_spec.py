"""KV specs, kv_size and the distortion table: the same numbers as the tq command's --json output."""

import copy
import pickle

import numpy as np
import pytest

import turboquant as tq


def test_spec_fields():
    s = tq.KvSpec("k3v2:prod:page=32")
    assert s.canonical.startswith("k3v2")
    assert (s.k_encoding, s.v_encoding) == ("tq_prod", "tq_mse")
    assert (s.k_bits, s.v_bits, s.page_size) == (3, 2, 32)
    d = tq.KvSpec("default")
    assert d == tq.KvSpec(tq.DEFAULT_KV_SPEC)
    assert (d.sink, d.window, d.edge_layers) == (4, 64, 2)
    assert d.policy == ["edge=2/k4v4", "sink=4", "window=64", "centre"]
    assert d.canonical.startswith("k3v2:ip")  # the unbiased norm is the format's, not a policy knob
    assert tq.KvSpec("k3v2").bits_per_element(128) == 2.625  # docs/format.md: 84 bytes per token per head
    assert [s.canonical for s in tq.parse_kv_specs("fp16, k4v4")] == ["fp16", "k4v4"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("k9v2", "K width must be 1..8 bits, got 9"),
        ("k3v0", "V width must be 1..8 bits, got 0"),
        ("q4", "unknown KV spec 'q4'"),
        ("k3v2:page=0", "page"),
        ("k3v2:bogus", "bogus"),
    ],
)
def test_bad_specs_name_the_part(text, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        tq.KvSpec(text)
    assert issubclass(tq.Error, ValueError)


def test_a_spec_pickles_and_copies():
    """pickle and copy (multiprocessing, copy.deepcopy of what holds one) rebuild it from its text."""
    for text in ("default", "k3v2:seed=5", "k3v2:layers=0-1+5/k4v4:sink=4"):
        s = tq.KvSpec(text)
        for again in (pickle.loads(pickle.dumps(s)), copy.deepcopy(s), copy.copy(s)):
            assert again == s and again.text == s.text and again.canonical == s.canonical


def test_a_seed_is_part_of_a_spec():
    """A seed names other rotations, other bytes: specs of two seeds differ, in equality, hash and
    text (the canonical text dropped the seed, so LLM(kv_spec=KvSpec('...:seed=5')) ran the default's)."""
    a, b = tq.KvSpec("k3v2:seed=5"), tq.KvSpec("k3v2")
    assert a != b and hash(a) != hash(b) and str(a) == "k3v2:seed=5"
    assert tq.KvSpec(str(a)).seed == 5
    assert tq.KvSpec(f"k3v2:seed={b.seed}") == b  # the default seed is not written out


def test_sizes_outside_their_range_are_refused():
    s = tq.KvSpec("k3v2:edge=1/k4v4")
    with pytest.raises(ValueError, match="head_dim must be 1..1024, got 0"):
        s.bits_per_element(0)
    with pytest.raises(ValueError, match="layer 10 is outside the model's 3 layers"):
        s.is_edge_layer(10, 3)
    assert s.is_edge_layer(2, 3) and not s.is_edge_layer(1, 3)
    q = tq.Quantizer(dim=128, bits=3)
    assert q.bytes(2) == 2 * q.bytes(1)
    with pytest.raises(ValueError, match="overflow 64 bits"):
        q.bytes(2**60)


def test_a_spec_compares_with_anything():
    """Against what is not a spec, == is False (NotImplemented), not a TypeError: None, its own
    text, a list or a dict holding both."""
    s = tq.KvSpec("k3v2")
    assert (s == None) is False and s != "k3v2"  # noqa: E711
    assert s in ["k3v2", s] and ["k3v2", s].index(s) == 1
    assert len({"k3v2": 1, s: 2}) == 2 and len({"k3v2", s}) == 2


def test_fractional_widths():
    s = tq.KvSpec("k3.5v2.5")
    assert s.canonical == "k3.5v2.5"
    assert (s.k_encoding, s.v_encoding) == ("tq_split", "tq_split")
    assert tq.KvSpec("k2.5v2.5").bits_per_element(128) == 2.75  # docs/format.md: 88 bytes per token per head
    with pytest.raises(ValueError, match="a fractional K width is a whole number and a half"):
        tq.KvSpec("k2.7v2")
    # Their outlier channels come from the prompt in the engine: the module's pages refuse them.
    with pytest.raises(ValueError, match="turboquant.KvCache does not take fractional widths"):
        tq.KvCache(tq.KvSpec("k2.5v2"), layers=1, kv_heads=2, head_dim=64, num_pages=4)
    with pytest.raises(ValueError, match="KvSpec.quantizer does not take fractional widths"):
        tq.KvSpec("k2.5v2").quantizer(64, "k", layer=0, head=0, layers=1, kv_heads=1)


def test_trellis_coded_widths():
    s = tq.KvSpec("k3tv2t:ip")
    assert s.canonical == "k3tv2t:ip"
    assert (s.k_encoding, s.v_encoding) == ("tq_tcq", "tq_tcq")
    assert s.bits_per_element(128) == tq.KvSpec("k3v2").bits_per_element(128)  # the same bytes, other codes
    with pytest.raises(ValueError, match="a trellis-coded K width must be 1t..7t"):
        tq.KvSpec("k8tv2")
    # The trellis buys squared error with the same bits (docs/kv-specs.md): the pages' quantizer shows it.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    err = {}
    for spec in ("k3v2", "k3tv2"):
        q = tq.KvSpec(spec).quantizer(128, "k", layer=0, head=0, layers=1, kv_heads=1)
        err[spec] = ((q.dequantize(q.quantize(x)) - x) ** 2).sum(axis=1).mean()
    assert err["k3tv2"] < err["k3v2"] * 10 ** -0.05, err  # at least 0.5 dB (measured 1.2)


@pytest.mark.parametrize(
    "shape",
    [dict(layers=32, kv_heads=8, head_dim=128), dict(layers=30, kv_heads=3, head_dim=64), dict(layers=5, kv_heads=2, head_dim=80)],
)
def test_kv_size_matches_the_command(run_tq, shape):
    kv = "fp16,fp8,k4v4,k3v2,k3v2:prod,k2v2:page=32,default,k3v2:sink=4:window=64,k3v2:centre"
    contexts = [1, 1000, 32768]
    want = run_tq("kv-size", "--layers", shape["layers"], "--kv-heads", shape["kv_heads"], "--head-dim", shape["head_dim"], "--kv", kv,
                  "--context", ",".join(map(str, contexts)), "--json", json_out=True)["rows"]
    got = tq.kv_size(kv, context=contexts, **shape)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            assert g[k] == w[k], (g["kv"], k)  # the same C++ and the same doubles: equal, not close


@pytest.mark.parametrize("extra", [(), ("--swa-full",)])
def test_kv_size_of_a_model_shape_matches_the_command(run_tq, extra):
    """shape= as `tq kv-size --shape`: Gemma-3-270M's sliding-window layers at their rings (or
    every position with swa_full), the same doubles."""
    kv, contexts = "fp16,k3v2,default", [512, 32768]
    want = run_tq("kv-size", "--shape", "gemma-3-270m", "--kv", kv, "--context", ",".join(map(str, contexts)), "--json", *extra,
                  json_out=True)["rows"]
    got = tq.kv_size(kv, context=contexts, shape="gemma-3-270m", swa_full=bool(extra))
    assert [g == w for g, w in zip(got, want)] == [True] * len(want)
    assert got[0]["mib_at_32768"] == (576.0 if extra else 107.484375)  # tests/cli/cli_smoke.cmake's figures
    assert "gemma-3-12b" in tq.model_shapes()


def test_kv_size_defaults_and_readme_figure():
    rows = {r["kv"]: r for r in tq.kv_size(context=[32768])}
    default = tq.KvSpec("default").canonical
    assert set(rows) == {"fp16", "fp8", default}
    assert rows["fp16"]["mib_at_32768"] == 4096.0
    assert round(rows[default]["mib_at_32768"], 1) == 736.5  # README: one 32K sequence


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(head_dim=0), ValueError, "head_dim must be 1..1024, got 0"),
        (dict(layers=2000), ValueError, "layers must be 1..1024, got 2000"),
        (dict(layers=1.5), TypeError, "layers must be an int"),
        (dict(kv="k3v2,k9v9"), ValueError, "K width"),
        (dict(context=[0]), ValueError, "context must be"),
        (dict(context=[1.5]), TypeError, "context must be an int, got 1.5"),  # (was read as 1)
        (dict(context=[True]), TypeError, "context must be an int, got True"),
        (dict(context=["7"]), TypeError, "context must be an int, got '7'"),
        (dict(context=1024), TypeError, "context must be a list of token counts, got 1024"),
        (dict(shape="gemma-3-270m", layers=4), ValueError, "give shape= or layers/kv_heads/head_dim, not both"),
        (dict(shape="llama-9"), ValueError, "unknown model shape 'llama-9'"),
        (dict(shape=3), TypeError, "shape must be a model's name"),
        (dict(swa_full=True), ValueError, "swa_full counts a model's sliding-window layers: give its shape="),
    ],
)
def test_kv_size_refuses(kwargs, error, message):
    with pytest.raises(error, match=message):
        tq.kv_size(**kwargs)


def test_distortion_matches_the_command(run_tq):
    want = run_tq("distortion", "--dim", 64, "--bits", "1,2,3", "--method", "both", "--samples", 1000, "--seed", 7, "--json",
                  json_out=True)["rows"]
    got = tq.distortion(dim=64, bits=[1, 2, 3], method="both", samples=1000, seed=7)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-12, abs=1e-15), (g["method"], g["bits"], k)
            else:
                assert g[k] == w[k], (g["method"], g["bits"], k)


def test_distortion_at_a_padded_dim_matches_the_command(run_tq):
    # d = 80 is padded to 96: neither claims a Lloyd-Max figure for it
    want = run_tq("distortion", "--dim", 80, "--bits", "2", "--samples", 200, "--seed", 7, "--rotation", "dense", "--json",
                  json_out=True)["rows"]
    got = tq.distortion(dim=80, bits=[2], samples=200, seed=7, rotation="dense")
    assert [g.keys() for g in got] == [w.keys() for w in want] and "mse_expected" not in got[0]


def test_distortion_within_the_papers_bounds():
    for row in tq.distortion(dim=128, bits=[1, 2, 3, 4], samples=2000):
        assert row["mse_lower"] <= row["mse"] <= row["mse_upper"]
        assert abs(row["mse"] - row["mse_expected"]) < 5 * row["mse_stderr"] + 1e-3


def test_distortion_refuses():
    with pytest.raises(ValueError, match="method must be mse, prod or both, got 'msa'"):
        tq.distortion(method="msa")
    with pytest.raises(ValueError, match="bits must be 1..8, got 9"):
        tq.distortion(bits=[9])
    with pytest.raises(ValueError, match="samples must be 100"):
        tq.distortion(samples=5)
    with pytest.raises(ValueError, match="dim must be 2..1024, got 1"):
        tq.distortion(dim=1)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=f"seed must be 0..[0-9]+, got {seed}"):
            tq.distortion(seed=seed)
    for seed in (1.5, "x", True):
        with pytest.raises(TypeError, match="seed must be an int"):
            tq.distortion(seed=seed)
