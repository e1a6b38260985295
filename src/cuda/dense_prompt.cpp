// dense_prompt_attention: cuDNN's fused SDPA (through cudnn-frontend's graph API) on a step's whole
// prompts. cuDNN is dlopen'ed on first use, so a build with TQ_CUDNN runs (and says why the dense
// path is off) on machines without it; a build without it compiles only the refusals at the end.
#include "tq/cuda/dense_prompt.h"

#include <cuda_runtime.h>

#include <cmath>

#include "tq/check.h"

#if TQ_CUDNN
#include <dlfcn.h>

#include <cudnn_frontend.h>

#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#endif

namespace tq::cuda {
namespace {

// The tokens of each sequence p's plan is built for (and keyed by): ntok, or a ragged call's bucket.
uint32_t plan_rows(const DensePromptParams& p) { return p.ragged ? dense_prompt_ragged_rows(p.ntok) : p.ntok; }

void check_params(const DensePromptParams& p) {
  TQ_CHECK(p.dtype == DType::kBf16 || p.dtype == DType::kF16, "dense prompt attention: rows of dtype {} (bf16 or fp16 only)", int(p.dtype));
  TQ_CHECK(p.num_seqs >= 1 && p.ntok >= 1, "dense prompt attention: {} sequences of {} tokens (at least 1 of 1)", p.num_seqs, p.ntok);
  TQ_CHECK(p.kv_heads >= 1 && p.q_heads >= 1 && p.q_heads % p.kv_heads == 0,
           "dense prompt attention: {} query heads over {} KV heads (a whole multiple of at least 1)", p.q_heads, p.kv_heads);
  // cuDNN's fused attention takes head dims that are multiples of 8 up to 256 (its fprop limits).
  TQ_CHECK(p.head_dim >= 8 && p.head_dim <= 256 && p.head_dim % 8 == 0, "dense prompt attention: head dim {} (8..256, a multiple of 8)",
           p.head_dim);
  const uint64_t rows = plan_rows(p);  // the plan's (cuDNN's index arithmetic)
  TQ_CHECK(uint64_t(p.num_seqs) * rows * p.q_heads * p.head_dim < (uint64_t(1) << 31),
           "dense prompt attention: {} sequences x {} tokens x {} heads x {} is past 2^31 elements", p.num_seqs, rows, p.q_heads,
           p.head_dim);
  TQ_CHECK(std::isfinite(p.scale) && p.scale >= 0, "dense prompt attention: logit scale {} (0 for 1/sqrt(head_dim), or positive)",
           p.scale);
}

}  // namespace

uint32_t dense_prompt_ragged_rows(uint32_t ntok) {
  uint32_t rows = 64;
  while (rows < ntok && rows < (1u << 31)) rows *= 2;
  return rows;
}

std::vector<int32_t> dense_prompt_ragged(const std::vector<uint32_t>& lens, uint32_t q_heads, uint32_t kv_heads, uint32_t head_dim) {
  const size_t n = lens.size();
  std::vector<int32_t> meta(3 * n + 2);
  int64_t row = 0;
  for (size_t i = 0; i <= n; ++i) {
    TQ_CHECK(int64_t(row) * q_heads * head_dim < (int64_t(1) << 31), "dense prompt attention: {} rows of {} heads x {} reach 2^31 elements", row,
             q_heads, head_dim);
    meta[n + i] = int32_t(row * q_heads * head_dim);
    meta[2 * n + 1 + i] = int32_t(row * kv_heads * head_dim);
    if (i == n) break;
    TQ_CHECK(lens[i] >= 1 && lens[i] < (1u << 31), "dense prompt attention: sequence {} of {} tokens (at least 1)", i, lens[i]);
    meta[i] = int32_t(lens[i]);
    row += lens[i];
  }
  return meta;
}

#if TQ_CUDNN
}  // namespace tq::cuda

// cudnn-frontend's dynamic loading reads cuDNN's symbols from this handle (cudnn_frontend_shim.h).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace tq::cuda {
namespace {

namespace fe = cudnn_frontend;

// The tensors' ids in the graph's variant pack (ragged shapes: the lengths and the offsets too).
enum : int64_t { kQ = 1, kK, kV, kO, kLenQ, kLenKv, kOffQ, kOffK, kOffV, kOffO };

// What loading cuDNN found: empty if it loaded.
const std::string& load_error() {
  static const std::string error = [] {
    std::string tried;
    const auto open = [&](const char* name) {
      if (!name || !*name) return false;
      fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL);
      if (fe::cudnn_dlhandle) return true;
      const char* e = dlerror();
      tried += fmt::format("{}{} ({})", tried.empty() ? "" : ", ", name, e ? e : "not found");
      return false;
    };
    // TQ_CUDNN_LIBRARY first (a path or a name), then the loader's search, then the library the
    // build found (TQ_CUDNN_LIBRARY_HINT: a pip-installed cuDNN is not on the loader's path).
    const char* env = std::getenv("TQ_CUDNN_LIBRARY");
    bool ok = open(env) || open("libcudnn.so.9");
#ifdef TQ_CUDNN_LIBRARY_HINT
    ok = ok || open(TQ_CUDNN_LIBRARY_HINT);
#endif
    if (!ok) return fmt::format("cuDNN 9 is not loaded: tried {} (install cuDNN 9 for CUDA 13, e.g. pip install nvidia-cudnn-cu13, and "
                                "set TQ_CUDNN_LIBRARY to its libcudnn.so.9)", tried);
    // The frontend loads a CUDA runtime of its own choosing (libcudart.so.12 before .13, by name);
    // have it use the one this library runs on (CUDNN_FRONTEND_CUDART_LIB_NAME, unless set).
    Dl_info cudart{};
    if (dladdr(reinterpret_cast<void*>(&cudaGetDevice), &cudart) && cudart.dli_fname)
      setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", cudart.dli_fname, 0);
    const size_t version = fe::detail::get_backend_version();
    // 9.5: the SDPA fprop of grouped-query heads with the BSHD strides below on every sm_80+ GPU.
    if (version < 90500) return fmt::format("cuDNN {} is loaded; dense prompt attention needs 9.5 or newer", version);
    // libcudnn.so.9 is the name of cuDNN 9 for CUDA 12 and for CUDA 13 alike: the one found must be
    // built for this process's CUDA major.
    using CudartOf = size_t (*)();
    const auto cudart_of = reinterpret_cast<CudartOf>(dlsym(fe::cudnn_dlhandle, "cudnnGetCudartVersion"));
    int ours = 0;
    if (cudart_of && cudaRuntimeGetVersion(&ours) == cudaSuccess && cudart_of() / 1000 != size_t(ours) / 1000)
      return fmt::format("cuDNN {} is built for CUDA {}.x, this process runs CUDA {}.x: install cuDNN 9 for CUDA {} (e.g. pip install "
                         "nvidia-cudnn-cu{}) and set TQ_CUDNN_LIBRARY to its libcudnn.so.9",
                         version, cudart_of() / 1000, ours / 1000, ours / 1000, ours / 1000);
    return std::string();
  }();
  return error;
}

int current_device() {
  int d = 0;
  const cudaError_t e = cudaGetDevice(&d);
  TQ_CHECK(e == cudaSuccess, "dense prompt attention: cudaGetDevice: {}", cudaGetErrorString(e));
  return d;
}

// A shape's built graph and the workspace its plan needs.
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace = 0;
};
using Key = std::tuple<int, int, bool, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t>;  // device, dtype, ragged, b, s, hq, hkv, d, scale bits

struct Plans {
  std::mutex mu;  // the handles and the cache; execute also runs under it (cudnnSetStream is per handle)
  std::map<int, cudnnHandle_t> handles;
  std::map<Key, Plan> plans;
  std::list<Key> order;  // oldest first: the cache holds kMaxPlans shapes (prompt lengths vary)
  static constexpr size_t kMaxPlans = 256;
};
Plans& plans() {
  static Plans* p = new Plans;  // never destroyed: cuDNN may be unloaded before static destructors run
  return *p;
}

cudnnHandle_t handle_for(Plans& ps, int device) {
  auto it = ps.handles.find(device);
  if (it != ps.handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  const cudnnStatus_t s = fe::detail::create_handle(&h);
  TQ_CHECK(s == CUDNN_STATUS_SUCCESS, "dense prompt attention: cudnnCreate on device {}: {}", device, fe::detail::get_error_string(s));
  ps.handles[device] = h;
  return h;
}

float scale_of(const DensePromptParams& p) { return p.scale > 0 ? p.scale : 1.0f / std::sqrt(float(p.head_dim)); }

// The graph of one shape: Q, K, V and O as [b][s][heads][d] rows (cuDNN's BSHD strides, its dims
// in b, h, s, d order), a top-left causal mask (every sequence starts at position 0), fp32 softmax.
// Ragged: s is the plan's rows (dense_prompt_ragged_rows), each sequence's rows start at its
// offset and its length is given (the padding mask: queries and keys past it are not computed).
Plan build(cudnnHandle_t h, const DensePromptParams& p) {
  const bool ragged = p.ragged != nullptr;
  const int64_t b = p.num_seqs, s = plan_rows(p), hq = p.q_heads, hk = p.kv_heads, d = p.head_dim;
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(p.dtype == DType::kBf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const auto rows = [&](const char* name, int64_t uid, int64_t heads) {
    return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({b, heads, s, d}).set_stride(
        {s * heads * d, d, heads * d, 1}));
  };
  const auto index = [&](const char* name, int64_t uid, int64_t n) {  // [n] int32 (cuDNN's [n, 1, 1, 1])
    return g->tensor(
        fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({n, 1, 1, 1}).set_stride({1, 1, 1, 1}).set_data_type(
            fe::DataType_t::INT32));
  };
  auto q = rows("Q", kQ, hq), k = rows("K", kK, hk), v = rows("V", kV, hk);
  auto options = fe::graph::SDPA_attributes().set_name("dense_prompt").set_generate_stats(false).set_attn_scale(scale_of(p));
  options.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  std::shared_ptr<fe::graph::Tensor_attributes> off_o;
  if (ragged) {
    q->set_ragged_offset(index("offsets_q", kOffQ, b + 1));
    k->set_ragged_offset(index("offsets_k", kOffK, b + 1));
    v->set_ragged_offset(index("offsets_v", kOffV, b + 1));
    off_o = index("offsets_o", kOffO, b + 1);
    options.set_padding_mask(true).set_seq_len_q(index("lens_q", kLenQ, b)).set_seq_len_kv(index("lens_kv", kLenKv, b));
  }
  auto [o, stats] = g->sdpa(q, k, v, options);
  (void)stats;
  o->set_output(true).set_dim({b, hq, s, d}).set_stride({s * hq * d, d, hq * d, 1}).set_uid(kO);
  if (ragged) o->set_ragged_offset(off_o);
  fe::error_t e = g->build(h, {fe::HeurMode_t::A});
  TQ_CHECK(e.is_good(), "dense prompt attention: cuDNN {} has no plan for {} sequences x {} tokens{}, {}/{} heads of {} ({}): {}",
           fe::detail::get_backend_version(), b, s, ragged ? " (ragged)" : "", hq, hk, d, p.dtype == DType::kBf16 ? "bf16" : "fp16",
           e.get_message());
  Plan plan{g, 0};
  TQ_CHECK(g->get_workspace_size(plan.workspace).is_good(), "dense prompt attention: cuDNN gave no workspace size");
  return plan;
}

// The plan of p's shape, built on first use. Called with ps.mu held.
const Plan& plan_for(Plans& ps, const DensePromptParams& p, int device) {
  float sc = scale_of(p);
  uint32_t bits = 0;
  std::memcpy(&bits, &sc, sizeof bits);
  const Key key{device, int(p.dtype), p.ragged != nullptr, p.num_seqs, plan_rows(p), p.q_heads, p.kv_heads, p.head_dim, bits};
  auto it = ps.plans.find(key);
  if (it != ps.plans.end()) return it->second;
  if (ps.plans.size() >= Plans::kMaxPlans) {
    ps.plans.erase(ps.order.front());
    ps.order.pop_front();
  }
  Plan plan = build(handle_for(ps, device), p);
  ps.order.push_back(key);
  return ps.plans.emplace(key, std::move(plan)).first->second;
}

}  // namespace

bool dense_prompt_available(std::string* why) {
  std::string e = load_error();
  if (e.empty()) {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
      e = "no CUDA device";
    else if (major < 8)
      e = fmt::format("device {} is of compute capability {}.x; cuDNN's fused attention needs 8.0 or newer", device, major);
  }
  if (why) *why = e;
  return e.empty();
}

uint64_t dense_prompt_workspace_bytes(const DensePromptParams& p) {
  check_params(p);
  std::string why;
  TQ_CHECK(dense_prompt_available(&why), "dense prompt attention: {}", why);
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  return uint64_t(plan_for(ps, p, current_device()).workspace);
}

void dense_prompt_attention(const DensePromptParams& p, Stream stream) {
  check_params(p);
  TQ_CHECK(p.q && p.k && p.v && p.out, "dense prompt attention: a null row pointer (q {}, k {}, v {}, out {})", p.q, p.k, p.v,
           static_cast<const void*>(p.out));
  std::string why;
  TQ_CHECK(dense_prompt_available(&why), "dense prompt attention: {}", why);
  Plans& ps = plans();
  std::lock_guard<std::mutex> lock(ps.mu);
  const int device = current_device();
  const Plan& plan = plan_for(ps, p, device);
  TQ_CHECK(p.workspace_bytes >= uint64_t(plan.workspace) && (plan.workspace == 0 || p.workspace),
           "dense prompt attention: workspace of {} bytes, the plan for {} x {} tokens needs {}", p.workspace_bytes, p.num_seqs, p.ntok,
           plan.workspace);
  const cudnnHandle_t h = handle_for(ps, device);
  const cudnnStatus_t s = fe::detail::set_stream(h, stream);
  TQ_CHECK(s == CUDNN_STATUS_SUCCESS, "dense prompt attention: cudnnSetStream: {}", fe::detail::get_error_string(s));
  std::unordered_map<int64_t, void*> pack{{kQ, const_cast<void*>(p.q)}, {kK, const_cast<void*>(p.k)}, {kV, const_cast<void*>(p.v)},
                                          {kO, p.out}};
  if (p.ragged) {  // dense_prompt_ragged's layout: lengths [b], q offsets [b + 1], k offsets [b + 1]
    int32_t* m = const_cast<int32_t*>(p.ragged);
    const size_t b = p.num_seqs;
    pack.insert({{kLenQ, m}, {kLenKv, m}, {kOffQ, m + b}, {kOffO, m + b}, {kOffK, m + 2 * b + 1}, {kOffV, m + 2 * b + 1}});
  }
  fe::error_t e = plan.graph->execute(h, pack, p.workspace);
  TQ_CHECK(e.is_good(), "dense prompt attention: cuDNN's execute failed for {} x {} tokens: {}", p.num_seqs, p.ntok, e.get_message());
}

#else  // built without cuDNN

bool dense_prompt_available(std::string* why) {
  if (why) *why = "this build has no cuDNN (configure with -DTQ_CUDNN=ON; scripts/setup.sh installs cudnn-frontend's headers)";
  return false;
}

uint64_t dense_prompt_workspace_bytes(const DensePromptParams& p) {
  check_params(p);
  std::string why;
  dense_prompt_available(&why);
  throw Error(fmt::format("dense prompt attention: {}", why));
}

void dense_prompt_attention(const DensePromptParams& p, Stream) { (void)dense_prompt_workspace_bytes(p); }

#endif

}  // namespace tq::cuda
