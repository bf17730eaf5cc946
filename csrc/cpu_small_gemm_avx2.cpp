// The small-batch GEMM of cpu_small_gemm.h, compiled for AVX2 + FMA whatever -march the rest of
// the build uses, and called only where small_gemm::supported() is true.
//
// Nothing but this file's own functions is compiled under the target pragma: it includes no
// standard-library header whose inline functions the linker could then pick for the other,
// portable translation units.
#include "cpu_small_gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNNFUSED_SMALL_GEMM_X86 1
#endif

#if RNNFUSED_SMALL_GEMM_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>
#endif

namespace rnnfused {
namespace small_gemm {

#if RNNFUSED_SMALL_GEMM_X86

namespace {

constexpr int64_t kMR = 6;  // rows of a register tile: 12 accumulators, 2 B registers, 1 for A

// Stores (or adds) one row of a tile: ncols of the 16 columns in lo, hi.
inline void store_row(float* row, __m256 lo, __m256 hi, int64_t ncols, bool accumulate) {
  if (ncols == kNR) {
    if (accumulate) {
      lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
      hi = _mm256_add_ps(hi, _mm256_loadu_ps(row + 8));
    }
    _mm256_storeu_ps(row, lo);
    _mm256_storeu_ps(row + 8, hi);
    return;
  }
  alignas(32) float tmp[kNR];  // the last panel of a row: only its ncols real columns
  _mm256_store_ps(tmp, lo);
  _mm256_store_ps(tmp + 8, hi);
  for (int64_t j = 0; j < ncols; ++j) row[j] = accumulate ? row[j] + tmp[j] : tmp[j];
}

// One row of a tile at one kk: (lo, hi) += A[r][kk] * (b0, b1).
__attribute__((always_inline)) inline void row_fma(__m256& lo, __m256& hi, const float* a_rk,
                                                   __m256 b0, __m256 b1) {
  const __m256 av = _mm256_broadcast_ss(a_rk);
  lo = _mm256_fmadd_ps(av, b0, lo);
  hi = _mm256_fmadd_ps(av, b1, hi);
}

// Rows [0, MR) of A against one panel: C[r][0, ncols) = sum_kk A[r][kk] P[kk][.] (+ C). The
// accumulators are named variables, not an array: GCC kept an array's copy on the stack and
// stored all twelve every iteration.
template <int MR>
inline void tile(int64_t k, const float* a, int64_t lda, const float* panel, float* c, int64_t ldc,
                 int64_t ncols, bool accumulate) {
  static_assert(MR >= 1 && MR <= 6, "a tile has 1 to 6 rows");
  __m256 l0 = _mm256_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0,
         l4 = l0, h4 = l0, l5 = l0, h5 = l0;
  for (int64_t kk = 0; kk < k; ++kk) {
    __m256 b0 = _mm256_loadu_ps(panel + kk * kNR);
    __m256 b1 = _mm256_loadu_ps(panel + kk * kNR + 8);
    // Keep B in registers: for the 1- to 4-row tiles GCC otherwise folds the loads into every FMA
    // (vfmadd231ps mem), a load per FMA that halved their rate (4 rows: 21 GMAC/s, 5 rows: 42).
    asm("" : "+x"(b0), "+x"(b1));
    row_fma(l0, h0, a + kk, b0, b1);
    if constexpr (MR > 1) row_fma(l1, h1, a + lda + kk, b0, b1);
    if constexpr (MR > 2) row_fma(l2, h2, a + 2 * lda + kk, b0, b1);
    if constexpr (MR > 3) row_fma(l3, h3, a + 3 * lda + kk, b0, b1);
    if constexpr (MR > 4) row_fma(l4, h4, a + 4 * lda + kk, b0, b1);
    if constexpr (MR > 5) row_fma(l5, h5, a + 5 * lda + kk, b0, b1);
  }
  store_row(c, l0, h0, ncols, accumulate);
  if constexpr (MR > 1) store_row(c + ldc, l1, h1, ncols, accumulate);
  if constexpr (MR > 2) store_row(c + 2 * ldc, l2, h2, ncols, accumulate);
  if constexpr (MR > 3) store_row(c + 3 * ldc, l3, h3, ncols, accumulate);
  if constexpr (MR > 4) store_row(c + 4 * ldc, l4, h4, ncols, accumulate);
  if constexpr (MR > 5) store_row(c + 5 * ldc, l5, h5, ncols, accumulate);
}

template <int MR>
inline void tile_rows(int64_t rows, int64_t k, const float* a, int64_t lda, const float* panel,
                      float* c, int64_t ldc, int64_t ncols, bool accumulate) {
  if constexpr (MR > 1) {
    if (rows < MR) {
      tile_rows<MR - 1>(rows, k, a, lda, panel, c, ldc, ncols, accumulate);
      return;
    }
  }
  tile<MR>(k, a, lda, panel, c, ldc, ncols, accumulate);
}

}  // namespace

void pack(bool trans_b, int64_t n, int64_t k, const float* b, int64_t ldb, float* out, int64_t p0,
          int64_t p1) {
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = out + p * k * kNR;
    for (int64_t j = 0; j < kNR; ++j) {
      const int64_t col = p * kNR + j;
      if (col >= n) {
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = 0.f;
      } else if (trans_b) {
        const float* src = b + col * ldb;
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = src[kk];
      } else {
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kNR + j] = b[kk * ldb + col];
      }
    }
  }
}

// The rows go in as few tiles as kMR allows, of even height (8 rows: two tiles of 4, not 6 + 2,
// whose 2-row tile would wait on its loads).
void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* packed,
          int64_t p0, int64_t p1, float* c, int64_t ldc, bool accumulate) {
  const int64_t tiles = (m + kMR - 1) / kMR;
  for (int64_t p = p0; p < p1; ++p) {
    const float* panel = packed + p * k * kNR;
    const int64_t col = p * kNR, left = n - col, ncols = left < kNR ? left : kNR;
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t r0 = m * i / tiles, r1 = m * (i + 1) / tiles;
      tile_rows<kMR>(r1 - r0, k, a + r0 * lda, lda, panel, c + r0 * ldc + col, ldc, ncols,
                     accumulate);
    }
  }
}

#else  // not x86-64: the kernel does not exist, and supported() says so

void pack(bool, int64_t, int64_t, const float*, int64_t, float*, int64_t, int64_t) {
  __builtin_trap();
}
void gemm(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, int64_t, float*,
          int64_t, bool) {
  __builtin_trap();
}

#endif

}  // namespace small_gemm
}  // namespace rnnfused

#if RNNFUSED_SMALL_GEMM_X86
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

namespace rnnfused {
namespace small_gemm {

// Outside the target pragma: this runs on any processor, to ask whether it may run the rest.
bool supported() {
#if RNNFUSED_SMALL_GEMM_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

}  // namespace small_gemm
}  // namespace rnnfused
