// The CPU's Philox draws: up to 16 consecutive quads of one mask row at a time (philox.h's
// blocks, the same words the CUDA kernels draw).
//
// Written for AVX2: eight blocks side by side in the 32-bit lanes of four registers (c0..c3),
// each 32 x 32 -> 64-bit product of a round taken as two _mm256_mul_epu32 (even lanes, then odd
// lanes shifted down) and blended back into high and low words. GCC's own vectorization of
// philox4x32_10 widens every lane to 64 bits and narrows it back, and runs at about 10 ns a block
// on this project's AMD EPYC; this runs at about 4.7 ns (a standalone timing of 3.2M blocks, both
// checked word for word against each other). Elsewhere the portable loop below runs.
#pragma once

#include <cstdint>
#include <type_traits>

#include "philox.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace rnnfused {

constexpr int64_t kPhiloxQuads = 16;  // the most quads one call draws

#if defined(__AVX2__)
namespace philox_avx2 {

// hi:lo = c * m lane by lane (32-bit lanes; m the same in every lane).
inline void mulhilo(__m256i c, __m256i m, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(c, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

}  // namespace philox_avx2
#endif

// words[k][i] = word k of the block of quad q0 + i of `row` at step t, for i < nq <= 16 (entries
// past nq, up to the next multiple of 8, are written with the quads that follow).
inline void philox_quads(const MaskStream& stream, int64_t t, int64_t row, int64_t q0, int64_t nq,
                         uint32_t (&words)[4][kPhiloxQuads]) {
#if defined(__AVX2__)
  using philox_avx2::mulhilo;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t i = 0; i < nq; i += 8) {
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(q0 + i))),
                                  lane);
    __m256i c1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(row)));
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(t)));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(stream.tag));
    uint32_t k0 = stream.k0, k1 = stream.k1;
    for (int round = 0; round < 10; ++round) {  // philox4x32_10's rounds, eight blocks at once
      __m256i hi0, lo0, hi1, lo1;
      mulhilo(c0, m0, hi0, lo0);
      mulhilo(c2, m1, hi1, lo1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = lo1;
      c3 = lo0;
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&words[0][i]), c0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&words[1][i]), c1);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&words[2][i]), c2);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(&words[3][i]), c3);
  }
#else
#pragma omp simd
  for (int64_t i = 0; i < nq; ++i) {
    const Philox4x32 w = stream.quad(t, row, q0 + i);
    words[0][i] = w.v[0];
    words[1][i] = w.v[1];
    words[2][i] = w.v[2];
    words[3][i] = w.v[3];
  }
#endif
}

// The words as mask values, unit by unit: out[4 i + k] = words[k][i] < threshold ? below : other,
// for i < nq, without a branch (the bits are coin flips: a branch on them mispredicts half the time,
// which made the conversion cost more than the draws). out has room for 4 * nq values rounded up
// to a multiple of 32 (the AVX2 float path writes whole groups of eight quads, from the words
// philox_quads wrote past nq).
template <typename T>
inline void mask_values(const uint32_t (&words)[4][kPhiloxQuads], int64_t nq, uint32_t threshold,
                        T below, T other, T* out) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    // Unsigned w < threshold as a signed compare of both with the top bit flipped.
    const __m256i flip = _mm256_set1_epi32(static_cast<int>(0x80000000u));
    const __m256i thr = _mm256_xor_si256(_mm256_set1_epi32(static_cast<int>(threshold)), flip);
    const __m256 lo = _mm256_set1_ps(below), hi = _mm256_set1_ps(other);
    for (int64_t i = 0; i < nq; i += 8) {
      __m256 v[4];  // v[k]: the values of word k of quads i..i+7
      for (int k = 0; k < 4; ++k) {
        const __m256i w = _mm256_xor_si256(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(&words[k][i])), flip);
        v[k] = _mm256_blendv_ps(hi, lo, _mm256_castsi256_ps(_mm256_cmpgt_epi32(thr, w)));
      }
      // 4 x 8 -> 8 x 4: quad by quad, its four words in a row.
      const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
      const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
      auto pairs = [](__m256 a, __m256 b, bool high) {
        const __m256d x = _mm256_castps_pd(a), y = _mm256_castps_pd(b);
        return _mm256_castpd_ps(high ? _mm256_unpackhi_pd(x, y) : _mm256_unpacklo_pd(x, y));
      };
      const __m256 q04 = pairs(t0, t2, false), q15 = pairs(t0, t2, true);  // quads 0|4, 1|5
      const __m256 q26 = pairs(t1, t3, false), q37 = pairs(t1, t3, true);  // quads 2|6, 3|7
      float* o = out + 4 * i;
      _mm256_storeu_ps(o, _mm256_permute2f128_ps(q04, q15, 0x20));
      _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(q26, q37, 0x20));
      _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(q04, q15, 0x31));
      _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(q26, q37, 0x31));
    }
    return;
  }
#endif
  const T values[2] = {other, below};
  for (int64_t i = 0; i < nq; ++i) {
    for (int k = 0; k < 4; ++k) out[4 * i + k] = values[words[k][i] < threshold];
  }
}

}  // namespace rnnfused
