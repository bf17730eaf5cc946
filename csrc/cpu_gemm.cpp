// The measured choice of a GEMM backend per product (cpu_gemm.h), its cache, and what
// rnnfused.cpu_gemm reads and sets.
#include "cpu_gemm.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

namespace rnnfused {
namespace cpu_gemm {

namespace {

constexpr std::array<const char*, kBackends> kBackendNames = {"onednn", "mkl", "small"};
constexpr std::array<const char*, kProducts> kProductNames = {
    "input", "recurrent", "projection", "recurrent_backward", "projection_backward",
    "grad_input", "grad_weight"};
constexpr int kAuto = -1;

int parse_backend(const std::string& text, const char* what) {
  if (text.empty() || text == "auto") return kAuto;
  for (int b = 0; b < kBackends; ++b) {
    if (text == kBackendNames[b]) return b;
  }
  TORCH_CHECK_VALUE(false, "rnnfused: ", what, " must be one of auto, onednn, mkl, small; got '",
                    text, "'");
}

struct Key {
  Product product;
  int64_t m, n, k, threads;
  bool operator<(const Key& o) const {
    return std::tie(product, m, n, k, threads) < std::tie(o.product, o.m, o.n, o.k, o.threads);
  }
};

struct Entry {
  Backend backend;
  std::array<double, kBackends> seconds;  // per call; NaN where not timed
};

struct State {
  std::mutex mutex;
  bool env_read = false;
  int forced = kAuto;
  std::map<Key, Entry> cache;
  std::map<Key, Backend> forced_runs;  // what ran while a backend was forced, for choices()
};

State& state() {
  static State s;
  return s;
}

// The forced backend (or kAuto), the environment's on first use. Called under the mutex.
int forced_locked(State& s) {
  if (!s.env_read) {
    s.env_read = true;
    const char* env = std::getenv("RNNFUSED_CPU_GEMM");
    s.forced = parse_backend(env ? env : "", "the environment variable RNNFUSED_CPU_GEMM");
  }
  return s.forced;
}

// Seconds per call of each runner, the fastest of three rounds that alternate between them, each
// round long enough (~2 ms) for the clock.
std::array<double, kBackends> time_calls(std::array<std::function<void()>, kBackends>& calls) {
  using clock = std::chrono::steady_clock;
  std::array<double, kBackends> best, first;
  std::array<int64_t, kBackends> reps;
  best.fill(std::nan(""));
  for (int b = 0; b < kBackends; ++b) {
    if (!calls[b]) continue;
    calls[b]();  // warm-up: packing caches, oneDNN's primitive cache, page faults
    const auto t0 = clock::now();
    calls[b]();
    first[b] = std::chrono::duration<double>(clock::now() - t0).count();
    reps[b] = std::clamp<int64_t>(static_cast<int64_t>(2e-3 / std::max(first[b], 1e-7)), 1, 200);
    best[b] = first[b];
  }
  for (int round = 0; round < 3; ++round) {
    for (int b = 0; b < kBackends; ++b) {
      if (!calls[b]) continue;
      const auto t0 = clock::now();
      for (int64_t r = 0; r < reps[b]; ++r) calls[b]();
      const double s = std::chrono::duration<double>(clock::now() - t0).count() / reps[b];
      best[b] = std::min(best[b], s);
    }
  }
  return best;
}

int64_t next_power_of_two(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

// The small kernel on a product with a row-major A and a B that is row-major either way round (a
// weight or its transpose): B packed for this one call.
at::Tensor small_mm(const at::Tensor& a, const at::Tensor& b) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const bool trans_b = b.stride(1) != 1;
  TORCH_INTERNAL_ASSERT(a.stride(1) == 1 && (trans_b ? b.stride(0) == 1 : true));
  const FixedRightOperand<float> op(Backend::kSmall, trans_b, m, n, k, b.data_ptr<float>(),
                                    trans_b ? b.stride(1) : b.stride(0));
  at::Tensor c = at::empty({m, n}, a.options());
  op.gemm(m, a.data_ptr<float>(), a.stride(0), 0.f, c.data_ptr<float>(), n);
  return c;
}

at::Tensor run_mm(Backend backend, const at::Tensor& a, const at::Tensor& b) {
  switch (backend) {
    case Backend::kOneDnn:
      return onednn::linear(a, b.t());
    case Backend::kSmall:
      return small_mm(a, b);
    case Backend::kMkl:
      break;
  }
  return at::mm(a, b);
}

}  // namespace

const char* name(Backend backend) { return kBackendNames[static_cast<int>(backend)]; }
const char* name(Product product) { return kProductNames[static_cast<int>(product)]; }

bool runs(Backend backend, Product product) {
  switch (backend) {
    case Backend::kOneDnn:
      return onednn::available();
    case Backend::kMkl:
      return true;
    case Backend::kSmall:  // not the weight gradients: their A is a transposed view
      return product != Product::kGradWeight && small_gemm::supported();
  }
  return false;
}

Backend choose(Product product, int64_t m, int64_t n, int64_t k, const Prepare& prepare) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const int forced = forced_locked(s);
  const Key key{product, m, n, k, at::get_num_threads()};
  if (forced != kAuto) {
    const auto backend = static_cast<Backend>(forced);
    return s.forced_runs[key] = runs(backend, product) ? backend : Backend::kMkl;
  }
  if (auto it = s.cache.find(key); it != s.cache.end()) return it->second.backend;
  std::array<std::function<void()>, kBackends> calls;
  int candidates = 0;
  for (int b = 0; b < kBackends; ++b) {
    if (runs(static_cast<Backend>(b), product)) {
      calls[b] = prepare(static_cast<Backend>(b));
      ++candidates;
    }
  }
  Entry entry{Backend::kMkl, {}};
  entry.seconds.fill(std::nan(""));
  if (candidates > 1) {
    entry.seconds = time_calls(calls);
    double fastest = std::numeric_limits<double>::infinity();
    for (int b = 0; b < kBackends; ++b) {
      if (calls[b] && entry.seconds[b] < fastest) {
        fastest = entry.seconds[b];
        entry.backend = static_cast<Backend>(b);
      }
    }
  }
  s.cache.emplace(key, entry);
  return entry.backend;
}

at::Tensor mm(Product product, const at::Tensor& a, const at::Tensor& b) {
  // Inside the layer op the dtypes are decided: under torch.autocast, at::mm would otherwise
  // return bfloat16 for these float32 operands.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  if (a.scalar_type() != at::kFloat || a.numel() == 0 || b.numel() == 0) return at::mm(a, b);
  // The small kernel reads A by rows and B by rows or columns (the callers' operands are).
  TORCH_INTERNAL_ASSERT(product == Product::kGradWeight || a.stride(1) == 1);
  TORCH_INTERNAL_ASSERT(product == Product::kGradWeight || b.stride(0) == 1 || b.stride(1) == 1);
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  // The size that is T * B, or a packed batch's rows (a weight gradient's depth, the others'
  // rows), varies from call to call: the choice holds for it up to the next power of two, and is
  // timed on the first call's operands.
  const bool deep = product == Product::kGradWeight;
  const Backend backend = choose(product, deep ? m : next_power_of_two(m), n,
                                 deep ? next_power_of_two(k) : k, [&](Backend be) {
                                   return std::function<void()>([&a, &b, be] { run_mm(be, a, b); });
                                 });
  return run_mm(backend, a, b);
}

at::Tensor probe_operand(int64_t rows, int64_t cols) {
  static std::mutex mutex;
  static at::Generator generator = at::detail::createCPUGenerator(20261207);
  std::lock_guard<std::mutex> lock(mutex);
  return at::randn({rows, cols}, generator, at::TensorOptions().dtype(at::kFloat));
}

std::vector<std::string> available() {
  std::vector<std::string> names;
  for (int b = 0; b < kBackends; ++b) {
    const auto backend = static_cast<Backend>(b);
    if (runs(backend, Product::kRecurrent)) names.emplace_back(name(backend));
  }
  return names;
}

void force(const std::string& backend) {
  const int parsed = parse_backend(backend, "backend");
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.env_read = true;
  s.forced = parsed;
}

std::string forced() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const int f = forced_locked(s);
  return f == kAuto ? "auto" : kBackendNames[f];
}

std::vector<Choice> choices() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::vector<Choice> out;
  for (const auto& [key, entry] : s.cache) {
    Choice c{name(key.product), name(entry.backend), key.m, key.n, key.k, key.threads, {}};
    for (int b = 0; b < kBackends; ++b) {
      if (!std::isnan(entry.seconds[b])) c.seconds.emplace_back(kBackendNames[b], entry.seconds[b]);
    }
    out.push_back(std::move(c));
  }
  for (const auto& [key, backend] : s.forced_runs) {
    out.push_back({name(key.product), name(backend), key.m, key.n, key.k, key.threads, {}});
  }
  return out;
}

void clear() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.cache.clear();
  s.forced_runs.clear();
}

}  // namespace cpu_gemm
}  // namespace rnnfused
