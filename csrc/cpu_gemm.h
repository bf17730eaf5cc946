// The CPU layers' matrix products, each through the library that is fastest for it on the machine
// it runs on: oneDNN (torch's mkldnn ops), MKL (torch's BLAS), or this project's small-batch
// kernel (cpu_small_gemm.h).
//
// Which is fastest depends on the processor more than on anything a build can know: on an
// AVX-512 AMD EPYC, MKL runs AVX2 code and oneDNN AVX-512 (2x per GEMM, issue 24); on an
// AVX2-only one, oneDNN wins the (64 x 512) x (512 x 2048) step product by 1.6x and MKL the
// weight-gradient products, and the small kernel wins at a batch of 8. So, as
// torch.backends.cudnn.benchmark does for convolutions, every float32 product is timed once per
// process with each backend that can run it, on its own shape, dtype and thread count, and the
// fastest is kept for every later call of that shape (choose()). RNNFUSED_CPU_GEMM (or
// rnnfused.cpu_gemm.force) pins one backend instead. float64 keeps MKL: no choice is made for it.
//
// Two kinds of product:
//  - the loop's products (recurrent, projection, and their backward), C = A op(B) with op(B) fixed
//    for a whole time loop: FixedRightOperand packs op(B) once per call for the chosen backend;
//  - the products before and after the loop (the input projection, the input and weight
//    gradients): mm(), whose rows (weight gradients: depth) are the sequence's T * B or its packed
//    rows, so their choice is cached by the next power of two of that size.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cpu_blas.h"
#include "cpu_onednn.h"
#include "cpu_small_gemm.h"

namespace rnnfused {
namespace cpu_gemm {

enum class Backend : int { kOneDnn = 0, kMkl = 1, kSmall = 2 };
constexpr int kBackends = 3;

// What a product is for, part of its cache key and of what rnnfused.cpu_gemm.choices() reports.
enum class Product : int {
  kInput = 0,            // x̂ W_ih^T, all steps at once, before the loop
  kRecurrent,            // ĥ_{t-1} Ŵ_hh^T, every step
  kProjection,           // h̃_t W_hr^T, every step
  kRecurrentBackward,    // dL/da_t Ŵ_hh, every step of backward
  kProjectionBackward,   // dL/d(W_hr h̃_t) W_hr, every step of backward
  kGradInput,            // dL/da W_ih, after the loop
  kGradWeight,           // dL/da^T x̂ (and the other weight gradients), after the loop
};
constexpr int kProducts = 7;

const char* name(Backend backend);
const char* name(Product product);

// Whether this process can run `backend` for products of this kind: oneDNN where torch has it
// (and torch.backends.mkldnn.enabled), MKL always (torch's BLAS, at::mm without its symbols), the
// small kernel on processors with AVX2 and FMA for every product but the weight gradients (whose
// left operand is a transposed view it does not read).
bool runs(Backend backend, Product product);

// Prepares one call of the product on `backend` for timing: returns the call.
using Prepare = std::function<std::function<void()>(Backend)>;

// The backend for a float32 product of A (m x k) by B (k x n): the forced one where it runs the
// product (else MKL); otherwise the one measured fastest for this (product, m, n, k, threads),
// timing prepare(backend)'s call for each backend that runs it on a cache miss.
Backend choose(Product product, int64_t m, int64_t n, int64_t k, const Prepare& prepare);

// A (m x k) B (k x n), any strides, as a new tensor: float32 through the chosen backend, other
// dtypes through at::mm.
at::Tensor mm(Product product, const at::Tensor& a, const at::Tensor& b);

// A (rows x cols) float32 operand for timing, drawn from a generator of its own: the user's
// torch.manual_seed stream is left as it was.
at::Tensor probe_operand(int64_t rows, int64_t cols);

// What Python sees (rnnfused.cpu_gemm).
std::vector<std::string> available();
void force(const std::string& backend);  // "auto", "onednn", "mkl" or "small"
std::string forced();                    // "auto" when nothing is forced
struct Choice {
  std::string product, backend;
  int64_t m, n, k, threads;
  std::vector<std::pair<std::string, double>> seconds;  // per call, each backend timed
};
std::vector<Choice> choices();
void clear();

// The right operand op(B) of C = A op(B) + beta C, fixed for a whole time loop, packed once for
// the backend that runs the product. Row-major; lda/ldb/ldc are row strides.
//
// The per-step GEMMs are short and wide (m = B rows, n = G*H or R columns). Left to itself, MKL
// splits such a call over the threads badly (at m = 32, k = 256, n = 1024 on 2 cores it runs 1.1x
// faster on 2 threads than on 1; at m = 8 not at all), so for MKL and the small kernel the columns
// are split here instead: op(B) is packed as one panel of consecutive columns per thread, and
// each call runs the panels in one parallel region, single-threaded inside it. oneDNN splits its
// own work: it gets the whole product.
template <typename scalar_t>
class FixedRightOperand {
 public:
  // accumulate: whether the calls will add into C (beta = 1), which the timing then includes.
  FixedRightOperand(Product product, bool trans_b, int64_t m, int64_t n, int64_t k,
                    const scalar_t* b, int64_t ldb, bool accumulate = false)
      : trans_b_(trans_b), m_(m), n_(n), k_(k), b_(b), ldb_(ldb) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (m > 0 && n > 0 && k > 0) {
        backend_ = choose(product, m, n, k, [&](Backend backend) {
          auto probe = std::make_shared<FixedRightOperand>(backend, trans_b, m, n, k, b, ldb);
          auto a = std::make_shared<at::Tensor>(probe_operand(m, k));
          auto c = std::make_shared<at::Tensor>(at::zeros({m, n}));
          const float beta = accumulate ? 1.f : 0.f;
          return std::function<void()>([probe, a, c, m, k, n, beta] {
            probe->gemm(m, a->data_ptr<float>(), k, beta, c->data_ptr<float>(), n);
          });
        });
        pack();
      }
    }
  }

  // The same with the backend given (the timing probes of choose()).
  FixedRightOperand(Backend backend, bool trans_b, int64_t m, int64_t n, int64_t k,
                    const scalar_t* b, int64_t ldb)
      : trans_b_(trans_b), m_(m), n_(n), k_(k), b_(b), ldb_(ldb), backend_(backend) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (m > 0 && n > 0 && k > 0) pack();
    }
  }

  Backend backend() const { return backend_; }

  // C (rows x n) = A (rows x k, row stride lda) op(B) + beta C, on the first `rows` <= m rows of
  // A and C (the rows of a packed batch still running); beta is 0 or 1.
  void gemm(int64_t rows, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
            int64_t ldc) const {
    TORCH_INTERNAL_ASSERT(rows >= 0 && rows <= m_);
    TORCH_INTERNAL_ASSERT(beta == scalar_t(0) || beta == scalar_t(1));
    if (rows == 0 || n_ == 0) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (small_.defined()) {
        const float* packed = small_.template data_ptr<float>();
        const int64_t panels = small_gemm::panels(n_);
        // At least ~64k multiply-adds per task: below that a parallel region costs more.
        const int64_t per_panel = std::max<int64_t>(1, rows * k_ * small_gemm::kNR);
        const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / per_panel);
        at::parallel_for(0, panels, grain, [&](int64_t p0, int64_t p1) {
          small_gemm::gemm(rows, n_, k_, a, lda, packed, p0, p1, c, ldc, beta == 1.f);
        });
        return;
      }
      if (onednn_.defined()) {
        const at::Tensor x = at::from_blob(const_cast<float*>(a), {rows, k_}, {lda, 1},
                                           at::TensorOptions().dtype(at::kFloat));
        const at::Tensor y = onednn::linear(x, onednn_);
        const float* src = y.template data_ptr<float>();
        for (int64_t r = 0; r < rows; ++r) {
          float* dst = c + r * ldc;
          const float* row = src + r * n_;
          if (beta == 0.f) {
            std::memcpy(dst, row, n_ * sizeof(float));
          } else {
#pragma omp simd
            for (int64_t j = 0; j < n_; ++j) dst[j] += row[j];
          }
        }
        return;
      }
      if (!panels_.empty()) {
        auto run = [&](const Panel& p) {
          cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(rows), int(p.n1 - p.n0), int(k_),
                              a, int(lda), p.packed.template data_ptr<float>(), int(ldb_), beta,
                              c + p.n0, int(ldc));
        };
        if (panels_.size() == 1) {
          run(panels_[0]);
        } else {
          at::parallel_for(0, static_cast<int64_t>(panels_.size()), 1,
                           [&](int64_t begin, int64_t end) {
                             for (int64_t p = begin; p < end; ++p) run(panels_[p]);
                           });
        }
        return;
      }
    }
    gemm_rowmajor<scalar_t>(false, trans_b_, rows, n_, k_, scalar_t(1), a, lda, b_, ldb_, beta, c,
                            ldc);
  }

 private:
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151,
                       kBMatrix = 162;
  static constexpr int64_t kPanelAlign = 16;  // two AVX2 / one AVX-512 register of columns
  struct Panel {
    int64_t n0, n1;  // columns [n0, n1) of op(B)
    at::Tensor packed;
  };

  // op(B) as the backend wants it (float only).
  void pack() {
    const auto opts = at::TensorOptions().dtype(at::kFloat);
    if (backend_ == Backend::kSmall) {
      small_ = at::empty({small_gemm::panels(n_) * k_ * small_gemm::kNR}, opts);
      // In parallel, panel by panel: packed serially, the recurrent weights took ~0.5 ms per
      // call at the demo's shape (1536 x 384), with the other thread idle.
      float* out = small_.template data_ptr<float>();
      at::parallel_for(0, small_gemm::panels(n_), 1, [&](int64_t p0, int64_t p1) {
        small_gemm::pack(trans_b_, n_, k_, b_, ldb_, out, p0, p1);
      });
    } else if (backend_ == Backend::kOneDnn) {
      // oneDNN computes X W^T with W (n x k): op(B)^T, which is B itself when transposed.
      const scalar_t* b = b_;
      at::Tensor w = trans_b_ ? at::from_blob(const_cast<float*>(b), {n_, k_}, {ldb_, 1}, opts)
                              : at::from_blob(const_cast<float*>(b), {k_, n_}, {ldb_, 1}, opts).t();
      onednn_ = onednn::pack_weight(w.contiguous(), m_);
    } else {
      pack_mkl();
    }
  }

  void pack_mkl() {
    constexpr int64_t kIntMax = std::numeric_limits<int>::max();
    const bool fits = m_ <= kIntMax && n_ <= kIntMax && k_ <= kIntMax && ldb_ <= kIntMax;
    if (!fits || cblas_sgemm_pack_get_size == nullptr || cblas_sgemm_pack == nullptr ||
        cblas_sgemm_compute == nullptr) {
      return;  // gemm_rowmajor on B as it lies
    }
    // Panels of whole kPanelAlign-column blocks, as even as that allows; one when too narrow.
    const int64_t blocks = (n_ + kPanelAlign - 1) / kPanelAlign;
    const int64_t panels = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = std::min(n_, blocks * p / panels * kPanelAlign);
      const int64_t n1 = std::min(n_, blocks * (p + 1) / panels * kPanelAlign);
      if (n1 <= n0) continue;
      // Columns [n0, n1) of op(B): rows n0.. of B when transposed, columns n0.. when not.
      const float* src = trans_b_ ? b_ + n0 * ldb_ : b_ + n0;
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(m_), int(n1 - n0), int(k_));
      Panel panel{n0, n1, at::empty({static_cast<int64_t>(bytes / sizeof(float)) + 1},
                                    at::TensorOptions().dtype(at::kFloat))};
      cblas_sgemm_pack(kRowMajor, kBMatrix, trans_b_ ? kTrans : kNoTrans, int(m_), int(n1 - n0),
                       int(k_), 1.0f, src, int(ldb_), panel.packed.template data_ptr<float>());
      panels_.push_back(std::move(panel));
    }
  }

  bool trans_b_;
  int64_t m_, n_, k_;
  const scalar_t* b_;
  int64_t ldb_;
  Backend backend_ = Backend::kMkl;
  std::vector<Panel> panels_;  // MKL's packed panels, one per thread
  at::Tensor small_;           // op(B) in small_gemm's panels, when that kernel runs the product
  at::Tensor onednn_;          // op(B)^T packed by oneDNN, when it runs the product
};

}  // namespace cpu_gemm
}  // namespace rnnfused
