// The CPU codecs in Python: quantizers (TurboQuant and the baselines) over numpy rows, and the
// host paged cache with its reference attention. Arrays come in without a copy (DLPack / buffer
// protocol) and results go out as numpy arrays that own the library's buffers.
#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>

#include <algorithm>
#include <cstring>
#include <cstdint>
#include <memory>
#include <optional>

#include "arrays.h"
#include "bindings.h"
#include "tq/check.h"
#include "tq/codec/quantizer.h"
#include "tq/codec/turboquant.h"
#include "tq/kv/attention_ref.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/paged_cache.h"

namespace tq::py {

// The module's pages and quantizers have no prompt to calibrate on, so they refuse fractional
// widths rather than pick other outlier channels than the engine would.
void refuse_split(const KvSpec& spec, const char* who) {
  for (const TensorCode c : {spec.format.k, spec.format.v, spec.policy.edge_k, spec.policy.edge_v})
    TQ_CHECK(c.enc != Encoding::kTqSplit,
             "KV spec '{}': {} does not take fractional widths (their outlier channels come from the prompt in the engine: "
             "tq run / tq perplexity, or turboquant.LLM on the CPU)",
             spec.text, who);
}

namespace {


// A Quantizer and what was asked for, for repr(), and how to build it again, for pickle: a tuple
// ("tq", dim, bits, prod, rotation, seed, norm_correction, tcq), ("baseline", name, dim, group,
// fp8_scale) or ("spec", spec text, head_dim, tensor, layer, head, layers, kv_heads).
struct PyQuantizer {
  std::unique_ptr<Quantizer> q;
  std::string desc;
  nb::tuple recipe;

  // Rows of a packed buffer of `n` bytes: given, or n / bytes(1) where rows are laid out evenly
  // (every quantizer but the KIVI keys, which pack groups of rows).
  size_t rows_of(size_t n, const std::optional<IntArg>& rows_arg, const char* fn) const {
    if (rows_arg) {
      const size_t rows = to_u64(*rows_arg, fn, "rows");
      // Every row takes a byte at least: more rows than bytes cannot match, and bytes(rows) of a
      // huge count would wrap (and then the output's rows * dim).
      TQ_CHECK(rows <= n, "{}: {} rows of {} cannot fit in {} bytes", fn, rows, q->name(), n);
      TQ_CHECK(q->bytes(rows) == n, "{}: {} rows of {} take {} bytes, got {}", fn, rows, q->name(), q->bytes(rows), n);
      return rows;
    }
    const size_t one = q->bytes(1);
    TQ_CHECK(q->bytes(2) == 2 * one, "{}: {} packs groups of rows: pass rows=", fn, q->name());
    TQ_CHECK(n % one == 0, "{}: {} bytes are not a whole number of {}-byte rows of {}", fn, n, one, q->name());
    return n / one;
  }
};


std::string float_baseline(Encoding e) {
  return e == Encoding::kFp32 ? "fp32" : e == Encoding::kFp16 ? "fp16" : e == Encoding::kBf16 ? "bf16" : "fp8";
}

// The quantizer that writes `tensor` ("k" or "v") of (layer, head) in the pages of this spec, for a
// model of `layers` layers: edge layers in their own format and cache (the engine's layout), the
// codec and seed of the pages (codec_config), so that its codes equal the pages' bit for bit.
PyQuantizer spec_quantizer(const KvSpec& spec, IntArg head_dim_arg, const std::string& tensor, IntArg layer_arg, IntArg head_arg,
                           IntArg layers_arg, IntArg kv_heads_arg) {
  const char* fn = "KvSpec.quantizer";
  const uint32_t head_dim = to_u32(head_dim_arg, fn, "head_dim"), layer = to_u32(layer_arg, fn, "layer"), head = to_u32(head_arg, fn, "head"),
                 layers = to_u32(layers_arg, fn, "layers"), kv_heads = to_u32(kv_heads_arg, fn, "kv_heads");
  TQ_CHECK(tensor == "k" || tensor == "v", "KvSpec.quantizer: tensor must be 'k' or 'v', got '{}'", tensor);
  TQ_CHECK(layer < layers, "KvSpec.quantizer: layer {} is outside the model's {} layers", layer, layers);
  TQ_CHECK(head < kv_heads, "KvSpec.quantizer: head {} is outside the {} KV heads", head, kv_heads);
  TQ_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "KvSpec.quantizer: head_dim must be 1..{}, got {}", kMaxHeadDim, head_dim);
  const bool value = tensor == "v";
  const KvFormat f = spec.layer_format(layer, layers);
  const TensorCode code = value ? f.v : f.k;
  refuse_split(spec, "KvSpec.quantizer");
  PyQuantizer out;
  if (is_tq(code.enc)) {
    out.q = make_turboquant(codec_config(f, head_dim, spec.local_layer(layer, layers), head, value));
  } else {
    out.q = make_baseline(float_baseline(code.enc), head_dim);
  }
  out.desc = fmt::format("KvSpec('{}').quantizer({}, '{}', layer={}, head={}, layers={}, kv_heads={})", spec.canonical(), head_dim, tensor,
                         layer, head, layers, kv_heads);
  out.recipe = nb::make_tuple("spec", spec.text, head_dim, tensor, layer, head, layers, kv_heads);
  return out;
}

PyQuantizer tq_quantizer(IntArg dim_arg, IntArg bits_arg, bool prod, const std::string& rotation, IntArg seed_arg, bool nc, bool tcq) {
  const uint32_t dim = to_u32(dim_arg, "Quantizer", "dim"), bits = to_u32(bits_arg, "Quantizer", "bits");
  const uint64_t seed = to_u64(seed_arg, "Quantizer", "seed");
  PyQuantizer q;
  TqConfig cfg = tq_config(dim, bits, prod, rotation, seed, nc);
  cfg.tcq = tcq;  // trellis-coded (format.h kTqTcq); TurboQuant refuses it with prod, and above 7 bits
  q.q = make_turboquant(cfg);
  q.desc = fmt::format("Quantizer(dim={}, bits={}, prod={}, rotation='{}', seed={}, norm_correction={}{})", dim, bits, prod ? "True" : "False",
                       rotation, seed, nc ? "True" : "False", tcq ? ", tcq=True" : "");
  q.recipe = nb::make_tuple("tq", dim, bits, prod, rotation, seed, nc, tcq);
  return q;
}

PyQuantizer baseline_quantizer(const std::string& name, IntArg dim_arg, IntArg group_arg, float fp8_scale) {
  const uint32_t dim = to_u32(dim_arg, "Quantizer.baseline", "dim"), group = to_u32(group_arg, "Quantizer.baseline", "group");
  PyQuantizer q;
  q.q = make_baseline(name, dim, group, fp8_scale);
  q.desc = fmt::format("Quantizer.baseline('{}', {})", name, dim);
  q.recipe = nb::make_tuple("baseline", name, dim, group, fp8_scale);
  return q;
}

// Host pages of a KV spec's format (the policy knobs are the engine's and are refused by name).
struct PyKvCache {
  KvSpec spec;
  PagedKvCache cache;
  PyKvCache(const KvSpec& s, IntArg layers, IntArg kv_heads, IntArg head_dim, IntArg num_pages)
      : spec((refuse_policy(s, "turboquant.KvCache"), refuse_split(s, "turboquant.KvCache"), s)),
        cache(CacheShape{to_u32(layers, "KvCache", "layers"), to_u32(kv_heads, "KvCache", "kv_heads"), to_u32(head_dim, "KvCache", "head_dim"),
                         to_u32(num_pages, "KvCache", "num_pages")},
              s.format) {}
  const CacheShape& shape() const { return cache.shape(); }
};

}  // namespace

TqConfig tq_config(uint32_t dim, uint32_t bits, bool prod, const std::string& rotation, uint64_t seed, bool norm_correction) {
  TqConfig cfg;
  cfg.dim = dim;
  cfg.bits = bits;
  cfg.prod = prod;
  cfg.rotation = rotation == "auto" ? KvFormat{}.rotation_for(dim) : parse_rotation(rotation);
  cfg.seed = seed;
  cfg.norm_correction = norm_correction;
  return cfg;
}

void bind_codec(nb::module_& m) {
  nb::class_<PyQuantizer>(m, "Quantizer",
                          "Quantizes rows of float32 to packed bytes and back: TurboQuant, or a baseline (Quantizer.baseline).")
      .def(
          "__init__",
          [](PyQuantizer* self, IntArg dim, IntArg bits, bool prod, const std::string& rotation, IntArg seed, bool nc, bool tcq) {
            new (self) PyQuantizer(tq_quantizer(dim, bits, prod, rotation, seed, nc, tcq));
          },
          nb::arg("dim"), nb::arg("bits") = 3, nb::kw_only(), nb::arg("prod") = false, nb::arg("rotation") = "auto", nb::arg("seed") = 0,
          nb::arg("norm_correction") = false, nb::arg("tcq") = false)
      .def_static(
          "baseline",
          [](const std::string& name, IntArg dim, IntArg group, float fp8_scale) { return baseline_quantizer(name, dim, group, fp8_scale); },
          nb::arg("name"), nb::arg("dim"), nb::kw_only(), nb::arg("group") = 32, nb::arg("fp8_scale") = 1.0f,
          "fp32, fp16, bf16, fp8, int8, int4, int2, kivi2, kivi4 or q4_0 (include/tq/codec/quantizer.h).")
      .def_prop_ro("name", [](const PyQuantizer& q) { return q.q->name(); })
      .def_prop_ro("dim", [](const PyQuantizer& q) { return q.q->dim(); })
      .def_prop_ro("bits_per_element", [](const PyQuantizer& q) { return q.q->bits_per_element(); })
      .def(
          "bytes",
          [](const PyQuantizer& q, IntArg rows_arg) {
            const size_t rows = to_u64(rows_arg, "Quantizer.bytes", "rows");
            // rows x the row's bytes must fit in 64 bits (2^60 rows of 50 bytes wrapped around)
            const size_t one = q.q->bytes(1);
            TQ_CHECK(rows <= SIZE_MAX / std::max<size_t>(one, 1), "Quantizer.bytes: {} rows of {} bytes overflow 64 bits", rows, one);
            return q.q->bytes(rows);
          },
          nb::arg("rows"))
      .def(
          "quantize",
          [](const PyQuantizer& q, RoArray x_in) {
            const nb::ndarray<nb::ro>& x = x_in.a;
            check_cpu(x, {"Quantizer.quantize", "x", "[rows, dim]"}, kF32, "float32", {kAny, q.q->dim()});
            const size_t rows = x.shape(0);
            std::vector<uint8_t> out(q.q->bytes(rows));  // [bytes(rows)]
            {
              nb::gil_scoped_release unlocked;
              q.q->quantize(static_cast<const float*>(x.data()), rows, out.data());
            }
            const size_t n = out.size();
            return to_numpy(std::move(out), {n});
          },
          nb::arg("x"), "x: float32 [rows, dim] -> uint8 [bytes(rows)], laid out like one page (codes, then norms).")
      .def(
          "dequantize",
          [](const PyQuantizer& q, RoArray codes_in, std::optional<IntArg> rows) {
            const nb::ndarray<nb::ro>& codes = codes_in.a;
            check_cpu(codes, {"Quantizer.dequantize", "codes", "[bytes]"}, kU8, "uint8", {kAny});
            const size_t r = q.rows_of(codes.shape(0), rows, "Quantizer.dequantize");
            std::vector<float> out(r * q.q->dim());  // [rows][dim]
            {
              nb::gil_scoped_release unlocked;
              q.q->dequantize(static_cast<const uint8_t*>(codes.data()), r, out.data());
            }
            return to_numpy(std::move(out), {r, q.q->dim()});
          },
          nb::arg("codes"), nb::arg("rows") = nb::none(), "uint8 [bytes(rows)] -> float32 [rows, dim].")
      .def(
          "dot",
          [](const PyQuantizer& q, RoArray query_in, RoArray codes_in, std::optional<IntArg> rows) {
            const nb::ndarray<nb::ro>& query = query_in.a;
            const nb::ndarray<nb::ro>& codes = codes_in.a;
            check_cpu(query, {"Quantizer.dot", "query", "[dim]"}, kF32, "float32", {q.q->dim()});
            check_cpu(codes, {"Quantizer.dot", "codes", "[bytes]"}, kU8, "uint8", {kAny});
            const size_t r = q.rows_of(codes.shape(0), rows, "Quantizer.dot");
            std::vector<float> out(r);  // [rows]
            {
              nb::gil_scoped_release unlocked;
              q.q->dot(static_cast<const float*>(query.data()), static_cast<const uint8_t*>(codes.data()), r, out.data());
            }
            return to_numpy(std::move(out), {r});
          },
          nb::arg("query"), nb::arg("codes"), nb::arg("rows") = nb::none(),
          "<query, row i> for every packed row, without writing the dequantized rows (the fused path attention uses).")
      .def("__repr__", [](const PyQuantizer& q) { return q.desc; })
      // pickle and copy.deepcopy (multiprocessing): built again from what was asked for, the same codes
      .def("__getstate__", [](const PyQuantizer& q) { return q.recipe; })
      .def("__setstate__", [](PyQuantizer& self, const nb::tuple& r) {
        const auto at = [&](size_t i) { return IntArg{r[i]}; };
        const std::string kind = r.size() > 0 ? nb::cast<std::string>(r[0]) : "";
        if (kind == "tq" && r.size() == 8)
          new (&self) PyQuantizer(tq_quantizer(at(1), at(2), nb::cast<bool>(r[3]), nb::cast<std::string>(r[4]), at(5), nb::cast<bool>(r[6]),
                                               nb::cast<bool>(r[7])));
        else if (kind == "baseline" && r.size() == 5)
          new (&self) PyQuantizer(baseline_quantizer(nb::cast<std::string>(r[1]), at(2), at(3), nb::cast<float>(r[4])));
        else if (kind == "spec" && r.size() == 8)
          new (&self) PyQuantizer(
              spec_quantizer(parse_spec(nb::cast<std::string>(r[1])), at(2), nb::cast<std::string>(r[3]), at(4), at(5), at(6), at(7)));
        else
          throw nb::value_error("Quantizer.__setstate__: not a Quantizer's state");
      });

  // KvSpec.quantizer is defined here, where the quantizer type is known.
  nb::type<KvSpec>().attr("quantizer") = nb::cpp_function(
      &spec_quantizer, nb::is_method(), nb::arg("head_dim"), nb::arg("tensor") = "k", nb::kw_only(), nb::arg("layer") = 0,
      nb::arg("head") = 0, nb::arg("layers") = 1, nb::arg("kv_heads") = 1,
      "The quantizer of tensor 'k' or 'v' of (layer, head) in a cache of this spec: its codes equal the pages' bit for bit.");

  nb::class_<PyKvCache>(m, "KvCache", "Host pages of a KV spec's format: quantize on write, read back, reference attention.")
      .def(nb::init<const KvSpec&, IntArg, IntArg, IntArg, IntArg>(), nb::arg("spec"), nb::arg("layers"), nb::arg("kv_heads"),
           nb::arg("head_dim"), nb::arg("num_pages"))
      .def_prop_ro("spec", [](const PyKvCache& c) { return c.spec; })
      .def_prop_ro("layers", [](const PyKvCache& c) { return c.shape().layers; })
      .def_prop_ro("kv_heads", [](const PyKvCache& c) { return c.shape().kv_heads; })
      .def_prop_ro("head_dim", [](const PyKvCache& c) { return c.shape().head_dim; })
      .def_prop_ro("num_pages", [](const PyKvCache& c) { return c.shape().num_pages; })
      .def_prop_ro("page_size", [](const PyKvCache& c) { return c.cache.page_size(); })
      .def_prop_ro("nbytes", [](const PyKvCache& c) { return c.cache.bytes(); })
      .def_prop_ro(
          "layout",
          [](const PyKvCache& c) {
            const BlockLayout& L = c.cache.layout();
            nb::dict d;
            d["k_row"] = L.k_row, d["k_qjl_row"] = L.k_qjl_row, d["v_row"] = L.v_row;
            d["k_codes"] = L.k_codes, d["k_qjl"] = L.k_qjl, d["v_codes"] = L.v_codes;
            d["k_norms"] = L.k_norms, d["k_rnorms"] = L.k_rnorms, d["v_norms"] = L.v_norms, d["bytes"] = L.bytes;
            return d;
          },
          "Byte offsets of the sections of one (layer, page, kv_head) block (docs/format.md).")
      .def_prop_ro(
          "data",
          [](const PyKvCache& c) {
            const CacheShape& s = c.shape();
            // A read-only view of the pages, no copy: [layers][num_pages][kv_heads][block bytes].
            return nb::ndarray<nb::numpy, const uint8_t>(c.cache.data(), {s.layers, s.num_pages, s.kv_heads, c.cache.layout().bytes});
          },
          nb::rv_policy::reference_internal)
      .def(
          "write",
          [](PyKvCache& c, IntArg layer_arg, RoArray slots_in, RoArray k_in, RoArray v_in) {
            const nb::ndarray<nb::ro>& slots = slots_in.a;
            const nb::ndarray<nb::ro>& k = k_in.a;
            const nb::ndarray<nb::ro>& v = v_in.a;
            const uint32_t layer = to_u32(layer_arg, "KvCache.write", "layer");
            TQ_CHECK(layer < c.shape().layers, "KvCache.write: layer {} is outside the cache's {} layers", layer, c.shape().layers);
            store_rows("KvCache.write", c.cache, layer, nb::ndarray<>(slots), nb::ndarray<>(k), nb::ndarray<>(v), 1);
          },
          nb::arg("layer"), nb::arg("slots"), nb::arg("k"), nb::arg("v"),
          "Quantizes token rows into their slots (page * page_size + offset; -1 skips). k, v: float32 [tokens, kv_heads, head_dim].")
      .def(
          "read",
          [](const PyKvCache& c, IntArg layer_arg, RoArray slots_in) {
            const nb::ndarray<nb::ro>& slots = slots_in.a;
            const uint32_t layer = to_u32(layer_arg, "KvCache.read", "layer");
            const CacheShape& s = c.shape();
            TQ_CHECK(layer < s.layers, "KvCache.read: layer {} is outside the cache's {} layers", layer, s.layers);
            check_cpu(slots, {"KvCache.read", "slots", "[tokens]"}, kI64, "int64", {kAny});
            const size_t n = slots.shape(0), row = size_t(s.kv_heads) * s.head_dim;
            const auto* sl = static_cast<const int64_t*>(slots.data());
            std::vector<float> k(n * row), v(n * row);  // [tokens][kv_heads][head_dim]
            {
              nb::gil_scoped_release unlocked;
              for (size_t t = 0; t < n; ++t) {
                TQ_CHECK(sl[t] >= 0, "KvCache.read: slot {} at index {} is negative", sl[t], t);
                c.cache.read(layer, sl[t], &k[t * row], &v[t * row]);
              }
            }
            return std::make_tuple(to_numpy(std::move(k), {n, s.kv_heads, s.head_dim}),
                                   to_numpy(std::move(v), {n, s.kv_heads, s.head_dim}));
          },
          nb::arg("layer"), nb::arg("slots"), "The dequantized rows of the slots: (k, v), float32 [tokens, kv_heads, head_dim] each.")
      .def(
          "attention",
          [](const PyKvCache& c, IntArg layer_arg, RoArray q_in, RoArray block_tables_in, RoArray seq_lens_in,
             float scale) {
            const nb::ndarray<nb::ro>& q = q_in.a;
            const nb::ndarray<nb::ro>& block_tables = block_tables_in.a;
            const nb::ndarray<nb::ro>& seq_lens = seq_lens_in.a;
            const uint32_t layer = to_u32(layer_arg, "KvCache.attention", "layer");
            const CacheShape& s = c.shape();
            TQ_CHECK(layer < s.layers, "KvCache.attention: layer {} is outside the cache's {} layers", layer, s.layers);
            check_cpu(q, {"KvCache.attention", "q", "[num_seqs, num_q_tokens, q_heads, head_dim]"}, kF32, "float32",
                      {kAny, kAny, kAny, s.head_dim});
            const int64_t seqs = int64_t(q.shape(0));
            check_cpu(block_tables, {"KvCache.attention", "block_tables", "[num_seqs, max_pages]"}, kI32, "int32", {seqs, kAny});
            check_cpu(seq_lens, {"KvCache.attention", "seq_lens", "[num_seqs]"}, kI32, "int32", {seqs});
            AttentionBatch a;
            a.q = static_cast<const float*>(q.data());
            a.block_tables = static_cast<const int32_t*>(block_tables.data());
            a.seq_lens = static_cast<const int32_t*>(seq_lens.data());
            a.num_seqs = uint32_t(seqs), a.num_q_tokens = uint32_t(q.shape(1)), a.q_heads = uint32_t(q.shape(2));
            a.max_pages = uint32_t(block_tables.shape(1));
            a.scale = scale;
            TQ_CHECK(a.max_pages >= 1, "KvCache.attention: block_tables needs at least one page per sequence");
            for (uint32_t s = 0; s < a.num_seqs; ++s)  // (a length outside the table is attention_reference's to refuse)
              check_block_table("KvCache.attention", a.block_tables + size_t(s) * a.max_pages, s, 0,
                                uint32_t(std::clamp<int64_t>(a.seq_lens[s], 0, int64_t(a.max_pages) * c.cache.page_size())),
                                c.cache.page_size(), c.cache.num_pages(layer));
            std::vector<float> out(q.size());  // [num_seqs][num_q_tokens][q_heads][head_dim]
            a.out = out.data();
            {
              nb::gil_scoped_release unlocked;
              attention_reference(c.cache, layer, a);
            }
            return to_numpy(std::move(out), {q.shape(0), q.shape(1), q.shape(2), q.shape(3)});
          },
          nb::arg("layer"), nb::arg("q"), nb::arg("block_tables"), nb::arg("seq_lens"), nb::arg("scale") = 0.0f,
          "Softmax attention of each sequence's last num_q_tokens queries over its pages (causal), computed in double over the\n"
          "dequantized cache: the reference the CUDA kernels are tested against. scale 0: 1/sqrt(head_dim).")
      // pickle and copy.deepcopy: the spec, the shape and the pages' bytes
      .def("__getstate__",
           [](const PyKvCache& c) {
             const CacheShape& s = c.shape();
             return nb::make_tuple(c.spec.text, s.layers, s.kv_heads, s.head_dim, s.num_pages,
                                   nb::bytes(reinterpret_cast<const char*>(c.cache.data()), c.cache.bytes()));
           })
      .def("__setstate__",
           [](PyKvCache& self, const std::tuple<std::string, IntArg, IntArg, IntArg, IntArg, nb::bytes>& st) {
             const nb::bytes& data = std::get<5>(st);
             PyKvCache c(parse_spec(std::get<0>(st)), std::get<1>(st), std::get<2>(st), std::get<3>(st), std::get<4>(st));
             TQ_CHECK(data.size() == c.cache.bytes(), "KvCache.__setstate__: {} bytes of pages for a cache of {}", data.size(), c.cache.bytes());
             std::memcpy(c.cache.block(0, 0, 0), data.c_str(), data.size());
             new (&self) PyKvCache(std::move(c));
           })
      .def("__repr__", [](const PyKvCache& c) {
        const CacheShape& s = c.shape();
        return fmt::format("KvCache('{}', layers={}, kv_heads={}, head_dim={}, num_pages={})", c.spec.canonical(), s.layers, s.kv_heads,
                           s.head_dim, s.num_pages);
      });
}

}  // namespace tq::py
