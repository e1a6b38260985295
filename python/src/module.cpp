// turboquant._C: the nanobind module under the turboquant package. It converts between Python and
// the library and does nothing else: every number comes from the C++ the `tq` command uses.
// This file: the error type, KV specs, kv_size and the distortion table's rows.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <tuple>
#include <utility>

#include "arrays.h"
#include "bindings.h"
#include "tq/check.h"
#include "tq/codec/distortion.h"
#include "tq/common.h"
#include "tq/format.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/spec.h"
#include "tq/model/model.h"
#include "tq/model/shapes.h"

namespace tq::py {

KvSpec parse_spec(const std::string& text) { return parse_kv_spec(text == "default" ? kDefaultKvSpec : text); }

namespace {

const char* encoding_name(Encoding e) {
  switch (e) {
    case Encoding::kFp32:
      return "fp32";
    case Encoding::kFp16:
      return "fp16";
    case Encoding::kBf16:
      return "bf16";
    case Encoding::kFp8E4M3:
      return "fp8";
    case Encoding::kTqMse:
      return "tq_mse";
    case Encoding::kTqProd:
      return "tq_prod";
    case Encoding::kTqSplit:
      return "tq_split";
    case Encoding::kTqTcq:
      return "tq_tcq";
  }
  return "?";
}

// windows: [layers] sliding windows (0: global) or empty; contexts: lengths whose sequence bytes
// (KvSize::seq_bytes: rings counted) go into "seq_bytes", in order.
nb::dict kv_size_dict(const KvSpec& s, uint32_t layers, uint32_t kv_heads, uint32_t head_dim, const std::vector<uint32_t>& windows,
                      const std::vector<uint64_t>& contexts) {
  const KvSize k = kv_size(s, layers, kv_heads, head_dim, kKvSizeSideExtra, windows);
  nb::dict d;
  d["kv"] = s.canonical();
  d["bits_per_element"] = k.bits_per_element;
  d["bytes_per_token"] = k.bytes_per_token;
  d["fp16_bytes_per_token"] = k.fp16_bytes_per_token;
  d["ratio_vs_fp16"] = k.ratio_vs_fp16;
  d["page_size"] = k.page_size;
  d["page_bytes"] = k.page_bytes;
  d["side_bytes"] = k.side_bytes;
  d["centre_bytes"] = k.centre_bytes;
  std::vector<double> seq;
  for (const uint64_t n : contexts) seq.push_back(k.seq_bytes(n));
  d["seq_bytes"] = seq;
  return d;
}

// A known model's shape (tq kv-size --shape): layers, KV heads, head dim and each layer's window.
nb::dict model_shape_dict(const std::string& name) {
  const model::ModelConfig c = model::named_shape(name);
  std::vector<uint32_t> windows;
  for (int l = 0; l < c.n_layers; ++l) windows.push_back(uint32_t(c.layer_window(l)));
  nb::dict d;
  d["layers"] = c.n_layers;
  d["kv_heads"] = c.n_kv_heads;
  d["head_dim"] = c.head_dim;
  d["windows"] = windows;
  return d;
}

nb::dict distortion_dict(uint32_t dim, uint32_t bits, bool prod, const std::string& rotation, uint64_t samples, uint64_t seed,
                         uint64_t sample_seed) {
  const TqConfig cfg = tq_config(dim, bits, prod, rotation, seed, false);
  DistortionRow r;
  {
    nb::gil_scoped_release unlocked;  // seconds of work for 20000 samples
    r = distortion_row(cfg, samples, sample_seed);
  }
  nb::dict d;
  d["method"] = prod ? "prod" : "mse";
  d["bits"] = bits;
  d["dim"] = dim;
  d["rotation"] = rotation_name(cfg.rotation);
  d["samples"] = samples;
  d["mse"] = r.stats.mse;
  d["mse_stderr"] = r.stats.mse_stderr;
  d["ip_bias"] = r.stats.ip_bias;
  d["ip_bias_stderr"] = r.stats.ip_bias_stderr;
  d["ip_ratio"] = r.stats.ip_ratio;
  d["ip_var"] = r.stats.ip_var;
  d["mse_lower"] = r.mse_lower;
  d["mse_upper"] = r.mse_upper;
  d["mse_expected"] = r.mse_expected;
  d["mse_paper"] = r.mse_paper;
  d["ip_var_bound"] = r.ip_var_bound;
  return d;
}

// The (layer, layers) of a KvSpec method `fn`: ints, the layer inside the model.
std::pair<uint32_t, uint32_t> model_layer(const IntArg& layer_arg, const IntArg& layers_arg, const char* fn) {
  const uint32_t layer = to_u32(layer_arg, fn, "layer"), layers = to_u32(layers_arg, fn, "layers");
  TQ_CHECK(layer < layers, "{}: layer {} is outside the model's {} layers", fn, layer, layers);
  return {layer, layers};
}

}  // namespace

void bind_spec(nb::module_& m) {
  nb::class_<KvSpec>(m, "KvSpec", "A parsed KV spec (docs/kv-specs.md): the format of the pages and the policy around them.")
      .def(
          "__init__", [](KvSpec* self, const std::string& text) { new (self) KvSpec(parse_spec(text)); }, nb::arg("spec"),
          "Parses a spec such as 'k3v2', 'k4v4:prod' or 'default'; raises ValueError naming the bad part.")
      .def_ro("text", &KvSpec::text)
      // pickle and copy.deepcopy (multiprocessing, transformers' cache copies): the text as given
      .def("__getstate__", [](const KvSpec& s) { return std::make_tuple(s.text); })
      .def("__setstate__", [](KvSpec& s, const std::tuple<std::string>& state) { new (&s) KvSpec(parse_spec(std::get<0>(state))); })
      .def_prop_ro("canonical", &KvSpec::canonical)
      .def_prop_ro("k_encoding", [](const KvSpec& s) { return encoding_name(s.format.k.enc); })
      .def_prop_ro("v_encoding", [](const KvSpec& s) { return encoding_name(s.format.v.enc); })
      .def_prop_ro("k_bits", [](const KvSpec& s) { return s.format.k.bits; })
      .def_prop_ro("v_bits", [](const KvSpec& s) { return s.format.v.bits; })
      .def_prop_ro("page_size", [](const KvSpec& s) { return s.format.page_size; })
      .def_prop_ro("seed", [](const KvSpec& s) { return s.format.seed; })
      .def_prop_ro("norm_correction", [](const KvSpec& s) { return s.format.norm_correction; })
      .def_prop_ro("rotation", [](const KvSpec& s) { return s.format.auto_rotation ? "auto" : rotation_name(s.format.rotation); })
      .def(
          "rotation_for",
          [](const KvSpec& s, IntArg head_dim) {
            return rotation_name(s.format.rotation_for(to_u32(head_dim, "KvSpec.rotation_for", "head_dim")));
          },
          nb::arg("head_dim"))
      .def_prop_ro(
          "format", [](const KvSpec& s) { return s.format.canonical(); }, "The format part alone, as a spec.")
      .def_prop_ro(
          "policy", [](const KvSpec& s) { return s.policy.knobs(); }, "The policy knobs that are set: ['edge=2/k4v4', 'sink=4', ...].")
      .def_prop_ro("sink", [](const KvSpec& s) { return s.policy.sink; })
      .def_prop_ro("window", [](const KvSpec& s) { return s.policy.window; })
      .def_prop_ro("edge_layers", [](const KvSpec& s) { return s.policy.edge_layers; })
      .def_prop_ro(
          "layer_set", [](const KvSpec& s) { return s.policy.layer_set; }, "The layers of layers=<set>/<base>, ascending; [] without it.")
      .def(
          "bits_per_element",
          [](const KvSpec& s, IntArg head_dim_arg) {
            const uint32_t head_dim = to_u32(head_dim_arg, "KvSpec.bits_per_element", "head_dim");
            TQ_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, "KvSpec.bits_per_element: head_dim must be 1..{}, got {}", kMaxHeadDim, head_dim);
            return s.bits_per_element(head_dim);
          },
          nb::arg("head_dim"), "Bits per K/V element of full pages at this head dim, norms and padding included (policy aside).")
      .def(
          "page_bytes",
          [](const KvSpec& s, IntArg layers, IntArg kv_heads, IntArg head_dim) {
            const char* fn = "KvSpec.page_bytes";
            return s.page_bytes(to_u32(layers, fn, "layers"), to_u32(kv_heads, fn, "kv_heads"), to_u32(head_dim, fn, "head_dim"));
          },
          nb::arg("layers"), nb::arg("kv_heads"), nb::arg("head_dim"),
           "Bytes of one page over every layer and KV head, edge layers in their own format.")
      // The engine's per-layer layout of a spec with edge layers: edge and other layers are caches
      // of their own over the same page ids (turboquant.transformers lays its pages out so).
      .def(
          "layer_format",
          [](const KvSpec& s, IntArg layer_arg, IntArg layers_arg) {
            const auto [layer, layers] = model_layer(layer_arg, layers_arg, "KvSpec.layer_format");
            return s.layer_format(layer, layers).canonical();
          },
          nb::arg("layer"), nb::arg("layers"), "The format (a spec without policy) layer `layer` of a `layers`-layer model is stored in.")
      .def(
          "is_edge_layer",
          [](const KvSpec& s, IntArg layer_arg, IntArg layers_arg) {
            const auto [layer, layers] = model_layer(layer_arg, layers_arg, "KvSpec.is_edge_layer");
            return s.is_edge_layer(layer, layers);
          },
          nb::arg("layer"), nb::arg("layers"))
      .def(
          "edge_layer_count",
          [](const KvSpec& s, IntArg layers) { return s.edge_layer_count(to_u32(layers, "KvSpec.edge_layer_count", "layers")); },
          nb::arg("layers"),
           "Layers in the edge cache: 2 * edge, or the layers= set's; refused where the model has too few layers.")
      .def(
          "local_layer",
          [](const KvSpec& s, IntArg layer_arg, IntArg layers_arg) {
            const auto [layer, layers] = model_layer(layer_arg, layers_arg, "KvSpec.local_layer");
            return s.local_layer(layer, layers);
          },
          nb::arg("layer"), nb::arg("layers"), "A layer's index in its cache (the edge cache or the other layers').")
      .def("__str__", &KvSpec::canonical)
      .def("__repr__", [](const KvSpec& s) { return "KvSpec('" + s.canonical() + "')"; })
      .def("__eq__", [](const KvSpec& a, const KvSpec& b) { return a.canonical() == b.canonical(); })
      // anything else: NotImplemented, so `spec == None` is False and a spec sits in a list or a dict beside strings
      .def("__eq__", [](const KvSpec&, nb::handle) { return nb::borrow(Py_NotImplemented); }, nb::arg("other").none())
      .def("__hash__", [](const KvSpec& s) { return nb::hash(nb::str(s.canonical().c_str())); });

  m.attr("DEFAULT_KV_SPEC") = kDefaultKvSpec;
  m.def(
      "gpu_kernels_unsupported",
      [](const KvSpec& s, uint32_t head_dim) { return gpu_kernels_unsupported(s.format.k, s.format.v, head_dim); }, nb::arg("spec"),
      nb::arg("head_dim"),
      "Why the CUDA attention kernels take no cache of this spec at this head dim ('' when they do), in every build; the GPU's "
      "shared memory is checked at the first call.");
  m.def("kv_size", &kv_size_dict, nb::arg("spec"), nb::arg("layers"), nb::arg("kv_heads"), nb::arg("head_dim"), nb::arg("windows"),
        nb::arg("contexts"));
  m.def("model_shape", &model_shape_dict, nb::arg("name"));
  m.def("model_shapes", &model::named_shapes);
  m.def("distortion_row", &distortion_dict, nb::arg("dim"), nb::arg("bits"), nb::arg("prod"), nb::arg("rotation"), nb::arg("samples"),
        nb::arg("seed"), nb::arg("sample_seed"));
}

}  // namespace tq::py

NB_MODULE(_C, m) {
  namespace nb = nanobind;
  // Every bad input the library refuses throws tq::Error with a message naming the value: in
  // Python a ValueError (turboquant.Error is its subclass).
  nb::exception<tq::Error>(m, "Error", PyExc_ValueError);
  tq::py::bind_spec(m);
  tq::py::bind_codec(m);
  tq::py::bind_engine(m);
  tq::py::bind_cuda(m);
  tq::py::bind_cpu_ops(m);
#ifdef TQ_WITH_CUDA
  m.attr("HAVE_CUDA") = true;
#else
  m.attr("HAVE_CUDA") = false;
#endif
}
