// Row-major GEMM on raw pointers for the CPU time loop.
//
// The per-step recurrent GEMM is small (B x 4H x R) and runs T times per call, so the
// dispatcher's per-call cost of torch.mm shows at small sizes. Torch's CPU library exports the
// Fortran BLAS entry points of the BLAS it was built with (MKL on x86-64 wheels); we call those
// directly when they are present and fall back to at::mm_out (same numbers, more overhead) when
// they are not (weak symbols: the extension still loads against a torch without them).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_small_gemm.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's packed GEMM (CBLAS enums as ints: RowMajor 101, NoTrans 111, Trans 112, Packed 151,
// BMatrix 162): the recurrent weights are packed once per call instead of once per step.
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace rnnfused {

// C (m x n) = alpha * op(A) * op(B) + beta * C, all row-major; op(A) is m x k, op(B) is k x n.
// lda/ldb/ldc are the row strides of the stored matrices.
template <typename scalar_t>
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, scalar_t alpha,
                   const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
                   scalar_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t r = 0; r < m; ++r)
      for (int64_t col = 0; col < n; ++col) c[r * ldc + col] = beta == scalar_t(0) ? scalar_t(0) : beta * c[r * ldc + col];
    return;
  }
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool fits = m <= kIntMax && n <= kIntMax && k <= kIntMax && lda <= kIntMax &&
                    ldb <= kIntMax && ldc <= kIntMax;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDA = static_cast<int>(ldb), LDB = static_cast<int>(lda), LDC = static_cast<int>(ldc);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (fits && sgemm_ != nullptr) {
      sgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
      return;
    }
  } else if constexpr (std::is_same_v<scalar_t, double>) {
    if (fits && dgemm_ != nullptr) {
      dgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
      return;
    }
  }
  // Fallback through ATen on views of the same memory.
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  auto view = [&](const scalar_t* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor t = at::from_blob(const_cast<scalar_t*>(p), {trans ? cols : rows, trans ? rows : cols},
                                 {ld, 1}, opts);
    return trans ? t.t() : t;
  };
  at::Tensor A = view(a, m, k, lda, trans_a);
  at::Tensor Bm = view(b, k, n, ldb, trans_b);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  at::Tensor prod = at::mm(A, Bm);
  if (beta == scalar_t(0)) {
    C.copy_(prod.mul_(alpha));
  } else {
    C.mul_(beta).add_(prod, alpha);
  }
}

// The right operand op(B) of C = A op(B) + beta C, fixed for a whole time loop: packed once by
// MKL when it is there (float), else used as it is by gemm_rowmajor. Row-major, as above.
//
// The per-step GEMMs are short and wide (m = B rows, n = G*H or R columns). Left to itself, MKL
// splits such a call over the threads badly (at m = 32, k = 256, n = 1024 on 2 cores it runs 1.1x
// faster on 2 threads than on 1; at m = 8 not at all), so with more than one thread the columns are
// split here instead: op(B) is packed as one panel of consecutive columns per thread, and each
// call runs the panels in one parallel region, MKL single-threaded inside it (it is called from
// within an OpenMP region). Each thread then also reads only its own share of B every step.
// With at most kSmallRows rows (float, AVX2 builds), cpu_small_gemm.h's kernel serves the product
// instead, its panels split over the threads the same way.
template <typename scalar_t>
class FixedRightOperand {
 public:
  FixedRightOperand(bool trans_b, int64_t m, int64_t n, int64_t k, const scalar_t* b, int64_t ldb)
      : trans_b_(trans_b), m_(m), n_(n), k_(k), b_(b), ldb_(ldb) {
    constexpr int64_t kIntMax = std::numeric_limits<int>::max();
#if defined(RNNFUSED_SMALL_GEMM)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (m > 0 && m <= kSmallRows && n > 0 && k > 0) {
        small_ = at::empty({small_gemm::panels(n) * k * small_gemm::kNR},
                           at::TensorOptions().dtype(at::kFloat));
        // In parallel, panel by panel: packed serially, the recurrent weights took ~0.5 ms per
        // call at the demo's shape (1536 x 384), with the other thread idle.
        float* out = small_.template data_ptr<float>();
        at::parallel_for(0, small_gemm::panels(n), 1, [&](int64_t p0, int64_t p1) {
          small_gemm::pack(trans_b, n, k, b, ldb, out, p0, p1);
        });
        return;
      }
    }
#endif
    if constexpr (std::is_same_v<scalar_t, float>) {
      const bool fits = m <= kIntMax && n <= kIntMax && k <= kIntMax && ldb <= kIntMax;
      if (fits && m > 0 && n > 0 && k > 0 && cblas_sgemm_pack_get_size != nullptr &&
          cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr) {
        // Panels of whole kPanelAlign-column blocks, as even as that allows; one when too narrow.
        const int64_t blocks = (n + kPanelAlign - 1) / kPanelAlign;
        const int64_t panels = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t n0 = std::min(n, blocks * p / panels * kPanelAlign);
          const int64_t n1 = std::min(n, blocks * (p + 1) / panels * kPanelAlign);
          if (n1 <= n0) continue;
          // Columns [n0, n1) of op(B): rows n0.. of B when transposed, columns n0.. when not.
          const float* src = trans_b ? b + n0 * ldb : b + n0;
          const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(m), int(n1 - n0), int(k));
          Panel panel{n0, n1, at::empty({static_cast<int64_t>(bytes / sizeof(float)) + 1},
                                        at::TensorOptions().dtype(at::kFloat))};
          cblas_sgemm_pack(kRowMajor, kBMatrix, trans_b ? kTrans : kNoTrans, int(m), int(n1 - n0),
                           int(k), 1.0f, src, int(ldb), panel.packed.template data_ptr<float>());
          panels_.push_back(std::move(panel));
        }
      }
    }
  }

  // C (m x n) = A (m x k, row stride lda) op(B) + beta C.
  void gemm(const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c, int64_t ldc) const {
    gemm(m_, a, lda, beta, c, ldc);
  }

  // The same on the first `rows` rows of A and C only (rows <= m: the rows of a packed batch that
  // are still running). The packed B does not depend on the rows of A.
  void gemm(int64_t rows, const scalar_t* a, int64_t lda, scalar_t beta, scalar_t* c,
            int64_t ldc) const {
    TORCH_INTERNAL_ASSERT(rows >= 0 && rows <= m_);
    if (rows == 0) return;
#if defined(RNNFUSED_SMALL_GEMM)
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (small_.defined() && (beta == 0.f || beta == 1.f)) {
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
    }
#endif
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (!panels_.empty()) {
        auto run = [&](const Panel& p) {
          cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(rows), int(p.n1 - p.n0), int(k_),
                              a, int(lda), p.packed.template data_ptr<float>(), int(ldb_), beta, c + p.n0,
                              int(ldc));
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
  bool trans_b_;
  int64_t m_, n_, k_;
  const scalar_t* b_;
  int64_t ldb_;
  std::vector<Panel> panels_;
  at::Tensor small_;  // op(B) in small_gemm's panels, when that kernel serves this product
  // The most rows for which small_gemm serves the product: in one process, alternating, the
  // regularized layer's fwd+bwd ran 5% faster with it at m = 8, 15% at 16, 19% at 32, and 2%
  // slower at 64 (AMD EPYC, 2 threads).
  static constexpr int64_t kSmallRows = 32;
};

}  // namespace rnnfused
