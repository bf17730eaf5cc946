// Counter-based mask generator shared by the CPU and CUDA paths (SPEC §3).
//
// Every mask bit is a pure function of (seed, layer, direction, mask kind, t, b, j): one
// Philox-4x32-10 block (Salmon et al., SC'11; the generator cuRAND and torch use) is drawn per
// group of four consecutive units j, so a thread or a SIMD lane that owns four units pays one
// block. Because nothing depends on the order in which elements are visited, the CPU loop and
// the CUDA kernels draw identical masks, and backward regenerates them instead of storing them.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNNFUSED_HD __host__ __device__ __forceinline__
#else
#define RNNFUSED_HD inline
#endif

namespace rnnfused {

// The mask kinds, in the order of the rates array of the ops.
enum MaskKind : uint32_t {
  kMaskInput = 0,       // variational input dropout, (B, I), one per sequence
  kMaskRecurrent = 1,   // variational recurrent dropout, (B, R), one per sequence
  kMaskWeight = 2,      // DropConnect on W_hh, (4H, R), one per call
  kMaskCandidate = 3,   // dropout on the cell candidate g, (T, B, H), new each step
  kMaskZoneoutC = 4,    // zoneout on c, (T, B, H)
  kMaskZoneoutH = 5,    // zoneout on h, (T, B, R)
};
constexpr int kNumMaskKinds = 6;

struct Philox4x32 {
  uint32_t v[4];
};

RNNFUSED_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox-4x32's round multipliers and key increments (Weyl constants).
constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// Philox-4x32 with 10 rounds on counter c and key k.
RNNFUSED_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                     uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = kPhiloxM0, kM1 = kPhiloxM1;
  constexpr uint32_t kW0 = kPhiloxW0, kW1 = kPhiloxW1;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c0, hi0, lo0);
    philox_mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}

// Where one mask lives in the counter space: the key is the call's seed; the counter is
// (j / 4, row, t, layer << 16 | direction << 8 | kind), row being the sample b (or the row of
// W_hh for the weight mask).
struct MaskStream {
  uint32_t k0, k1;  // seed
  uint32_t tag;     // layer, direction, kind

  RNNFUSED_HD MaskStream(uint64_t seed, int64_t layer, bool reverse, uint32_t kind)
      : k0(static_cast<uint32_t>(seed)),
        k1(static_cast<uint32_t>(seed >> 32)),
        tag((static_cast<uint32_t>(layer) << 16) | ((reverse ? 1u : 0u) << 8) | kind) {}

  // The same stream keyed by another seed: the CUDA kernels' way to use a seed that torch's CUDA
  // generator drew into device memory (read at run time, so each CUDA graph replay uses its own).
  RNNFUSED_HD MaskStream with_seed(uint64_t seed) const {
    MaskStream s = *this;
    s.k0 = static_cast<uint32_t>(seed);
    s.k1 = static_cast<uint32_t>(seed >> 32);
    return s;
  }

  // Four uniform 32-bit words for units 4q..4q+3 of row `row` at step `t`.
  RNNFUSED_HD Philox4x32 quad(int64_t t, int64_t row, int64_t q) const {
    return philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(row),
                         static_cast<uint32_t>(t), tag, k0, k1);
  }

  // The word of unit j alone (a quarter of a block: use quad() where four units are at hand).
  RNNFUSED_HD uint32_t word(int64_t t, int64_t row, int64_t j) const {
    return quad(t, row, j >> 2).v[j & 3];
  }
};

// A rate p in [0, 1) as a 32-bit threshold: an event of probability p is `word < threshold`.
// The rounding is part of the contract: lstm_masks and both kernels use this one function.
RNNFUSED_HD uint32_t rate_threshold(double p) {
  if (!(p > 0.0)) return 0u;
  const double scaled = p * 4294967296.0;
  return scaled >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(scaled);
}

// Dropout keeps a unit when the event "drop" (probability p) does not happen.
RNNFUSED_HD bool dropout_keep(uint32_t word, uint32_t threshold) { return word >= threshold; }

// Zoneout keeps the previous value when the event (probability z) happens.
RNNFUSED_HD bool zoneout_keep_previous(uint32_t word, uint32_t threshold) {
  return word < threshold;
}

}  // namespace rnnfused
