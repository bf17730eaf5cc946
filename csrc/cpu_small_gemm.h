// A single-precision GEMM for the per-step products of a time loop when the batch is small:
// C (m x n) = A (m x k) op(B) [+ C], with op(B) packed once per call and m a few rows.
//
// At m = 8 (a batch of 8) MKL's sgemm reaches about half of what it does on large products on
// this project's AVX2 machines: a quarter of its time goes to copying operands it could keep
// (the packed B included; `perf`: mkl_blas_def_sgemm_scopy_down16_bdz). Here op(B) is packed once
// into panels of kNR columns, k rows of kNR floats each, and a register tile of a few rows by kNR
// columns walks down k with two loads of B and one broadcast of A per row; A is read where it lies.
//
// The kernel is compiled for AVX2 + FMA in a translation unit of its own
// (cpu_small_gemm_avx2.cpp), whatever -march the rest of the build uses, and runs only where
// supported() says the processor has them: one build serves every x86-64 CPU. Whether it serves a
// given product is measured at run time (cpu_gemm.h), like the other GEMM backends.
#pragma once

#include <cstdint>

namespace rnnfused {
namespace small_gemm {

constexpr int64_t kNR = 16;  // columns of a panel: two 8-float registers

inline int64_t panels(int64_t n) { return (n + kNR - 1) / kNR; }

// Whether this build has the kernel and this processor can run it (x86-64 with AVX2 and FMA).
bool supported();

// Panels [p0, p1) of op(B) (k x n; B row-major with row stride ldb, transposed when trans_b),
// each k x kNR floats at out + p * k * kNR, columns past n zero.
void pack(bool trans_b, int64_t n, int64_t k, const float* b, int64_t ldb, float* out, int64_t p0,
          int64_t p1);

// C (m x n) = A op(B) (+ C when accumulate) on panels [p0, p1) of the packed op(B), i.e. columns
// [p0 * kNR, min(p1 * kNR, n)). Only where supported().
void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* packed,
          int64_t p0, int64_t p1, float* c, int64_t ldc, bool accumulate);

}  // namespace small_gemm
}  // namespace rnnfused
