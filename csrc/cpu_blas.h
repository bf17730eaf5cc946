// Torch's BLAS (MKL on x86-64 wheels) on raw row-major pointers: the "mkl" backend of cpu_gemm.h.
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

}  // namespace rnnfused
