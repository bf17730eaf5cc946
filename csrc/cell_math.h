// The cells' pointwise arithmetic, forward and backward, for one unit: the LSTM (SPEC §2), the
// GRU (SPEC §2b) and the layer-normalized LSTM's normalizations (SPEC §2c).
//
// Shared by the CPU loop and the CUDA kernels: neither re-derives any of this. Everything is
// computed in acc_t (float for float/half/bfloat16 storage, double for double). Masks arrive as
// plain numbers so that training (a 0/1 mask, scaled) and evaluation (identity dropout, zoneout
// at its expectation) run through the same formulas:
//   cand_scale  ĝ = g * cand_scale      training: mask / (1 - p_cand); otherwise 1
//   zc, zh      c = zc c_prev + (1 - zc) c̃  training: the 0/1 zoneout mask; eval: the rate
// Gate order and layout follow torch.nn.LSTM: pre-activations [a_i | a_f | a_g | a_o], and
// torch.nn.GRU: [r | z | n] in each of the two GEMM terms.
#pragma once

#include <cmath>
#include <cstdint>

#include "philox.h"

namespace rnnfused {

// exp and tanh of a float on the host: range reduction and Cephes' minimax polynomials, written
// without branches or library calls so that the CPU's pointwise loops vectorize (a scalar expf
// call per gate would cost more than the GEMMs). Within a few ulp of expf/tanhf; the CUDA
// kernels use the device's expf/tanhf, so CPU and CUDA agree to rounding.
// SIMD clones on the host: where GCC does not inline them (it left poly_tanhf as a call per element
// in the layer-normalized LSTM's loops), a `#pragma omp simd` loop still vectorizes. Forcing them
// inline everywhere instead slowed the plain LSTM's forward pass by half.
#if !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma omp declare simd notinbranch
#endif
RNNFUSED_HD float poly_expf(float x) {
  x = x < -87.3f ? -87.3f : x;  // keeps 2^k a normal number
  x = x > 88.3f ? 88.3f : x;
  const float kf = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const float r = (x - kf * 0.693359375f) - kf * -2.12194440e-4f;        // x - k ln 2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;  // 2^k
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma omp declare simd notinbranch
#endif
RNNFUSED_HD float poly_tanhf(float x) {
  const float ax = x < 0.f ? -x : x;
  const float z = x * x;  // |x| < 0.625: odd polynomial, no cancellation near 0
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = x + x * z * p;
  const float big = 1.f - 2.f / (poly_expf(2.f * ax) + 1.f);  // otherwise 1 - 2 / (e^2|x| + 1)
  return ax < 0.625f ? small : (x < 0.f ? -big : big);
}

#if defined(__CUDA_ARCH__)
RNNFUSED_HD float act_exp(float x) { return ::expf(x); }
RNNFUSED_HD float act_tanh(float x) { return ::tanhf(x); }
#else
RNNFUSED_HD float act_exp(float x) { return poly_expf(x); }
RNNFUSED_HD float act_tanh(float x) { return poly_tanhf(x); }
#endif
RNNFUSED_HD double act_exp(double x) { return ::exp(x); }
#if defined(__CUDA_ARCH__)
RNNFUSED_HD float act_sqrt(float x) { return ::sqrtf(x); }
#else
RNNFUSED_HD float act_sqrt(float x) { return std::sqrt(x); }
#endif
RNNFUSED_HD double act_sqrt(double x) { return ::sqrt(x); }
RNNFUSED_HD double act_tanh(double x) { return ::tanh(x); }

template <typename acc_t>
RNNFUSED_HD acc_t sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + act_exp(-x));
}

// Post-activation gates: i, f, o = σ(a), g = tanh(a_g) (before candidate dropout).
template <typename acc_t>
struct Gates {
  acc_t i, f, g, o;
};

template <typename acc_t>
RNNFUSED_HD Gates<acc_t> activate_gates(acc_t a_i, acc_t a_f, acc_t a_g, acc_t a_o) {
  return Gates<acc_t>{sigmoid(a_i), sigmoid(a_f), act_tanh(a_g), sigmoid(a_o)};
}

// Zoneout mixes the previous value back in: z = 1 keeps prev, z = 0 takes the fresh value.
template <typename acc_t>
RNNFUSED_HD acc_t zoneout_mix(acc_t prev, acc_t fresh, acc_t z) {
  return z * prev + (acc_t(1) - z) * fresh;
}

// One unit's forward step. c̃ = f c_prev + i ĝ; h̃ = o tanh(c̃) (pre-projection, before zoneout,
// which is applied by the caller to the state that the layer keeps).
template <typename acc_t>
struct CellForward {
  acc_t c_tilde;  // new cell before zoneout
  acc_t h_tilde;  // o * tanh(c̃), before projection and zoneout
};

template <typename acc_t>
RNNFUSED_HD CellForward<acc_t> cell_forward(const Gates<acc_t>& gate, acc_t c_prev,
                                            acc_t cand_scale) {
  const acc_t c_tilde = gate.f * c_prev + gate.i * (gate.g * cand_scale);
  return CellForward<acc_t>{c_tilde, gate.o * act_tanh(c_tilde)};
}

// Gradients with respect to the pre-activations [a_i, a_f, a_g, a_o].
template <typename acc_t>
struct GateGrads {
  acc_t a_i, a_f, a_g, a_o;
};

// One unit's backward step.
//   dh_tilde: dL/dh̃ (pre-projection hidden value o ⊙ tanh(c̃))
//   dc:       in: dL/dc_t (the zoned-out cell the layer keeps); out: dL/dc_{t-1}
// The gates' share of one unit's backward step, for both LSTM cells.
//   d_o:       dL/do
//   dc_fresh:  dL/dc̃ through h̃ (the plain LSTM: o (1 - tanh² c̃) dh̃; the LN-LSTM: through LN(c̃))
//   dc:        in: dL/dc_t (the zoned-out cell the layer keeps); out: dL/dc_{t-1}
template <typename acc_t>
RNNFUSED_HD GateGrads<acc_t> gate_backward(const Gates<acc_t>& gate, acc_t c_prev, acc_t cand_scale,
                                           acc_t zc, acc_t d_o, acc_t dc_fresh, acc_t& dc) {
  const acc_t dc_tilde = dc_fresh + (acc_t(1) - zc) * dc;
  const acc_t d_i = dc_tilde * gate.g * cand_scale;
  const acc_t d_f = dc_tilde * c_prev;
  const acc_t d_g = dc_tilde * gate.i * cand_scale;
  dc = zc * dc + gate.f * dc_tilde;
  return GateGrads<acc_t>{d_i * gate.i * (acc_t(1) - gate.i), d_f * gate.f * (acc_t(1) - gate.f),
                          d_g * (acc_t(1) - gate.g * gate.g), d_o * gate.o * (acc_t(1) - gate.o)};
}

template <typename acc_t>
RNNFUSED_HD GateGrads<acc_t> cell_backward(const Gates<acc_t>& gate, acc_t c_prev, acc_t c_tilde,
                                           acc_t cand_scale, acc_t zc, acc_t dh_tilde,
                                           acc_t& dc) {
  const acc_t tc = act_tanh(c_tilde);
  return gate_backward<acc_t>(gate, c_prev, cand_scale, zc, dh_tilde * tc,
                              dh_tilde * gate.o * (acc_t(1) - tc * tc), dc);
}

// ---------------------------------------------------------------------------------------------
// Layer normalization, for the layer-normalized LSTM (SPEC §2c)
// ---------------------------------------------------------------------------------------------

// LN(v) = (v - mean) * rstd with rstd = 1 / sqrt(var + eps), the biased variance over the row.
constexpr double kLayerNormEps = 1e-5;

template <typename acc_t>
RNNFUSED_HD acc_t layer_norm_rstd(acc_t sum_sq_dev, int64_t n) {
  return acc_t(1) / act_sqrt(sum_sq_dev / acc_t(n) + acc_t(kLayerNormEps));
}

// Backward of one element of y = LN(v): dL/dv from dL/dy given the row's reductions
// mean_dy = mean(dL/dy) and mean_dy_y = mean(dL/dy ⊙ y).
template <typename acc_t>
RNNFUSED_HD acc_t layer_norm_backward(acc_t dy, acc_t y, acc_t rstd, acc_t mean_dy,
                                      acc_t mean_dy_y) {
  return rstd * (dy - mean_dy - y * mean_dy_y);
}

// The LN-LSTM's output path: h̃ = o tanh(LN(c̃) γ_c + β_c), given y = LN(c̃).
template <typename acc_t>
RNNFUSED_HD acc_t ln_hidden(acc_t o, acc_t y, acc_t gain, acc_t bias) {
  return o * act_tanh(y * gain + bias);
}

// Its backward for one unit: dL/do, and dL/dq of q = y γ_c + β_c (dL/dγ_c = dq y, dL/dβ_c = dq,
// dL/dy = dq γ_c); and h̃ itself, which a projection's weight gradient needs (from the same tanh).
template <typename acc_t>
struct LnHiddenGrads {
  acc_t d_o, dq, h_tilde;
};

template <typename acc_t>
RNNFUSED_HD LnHiddenGrads<acc_t> ln_hidden_backward(acc_t o, acc_t y, acc_t gain, acc_t bias,
                                                     acc_t dh_tilde) {
  const acc_t tq = act_tanh(y * gain + bias);
  return LnHiddenGrads<acc_t>{dh_tilde * tq, dh_tilde * o * (acc_t(1) - tq * tq), o * tq};
}

// ---------------------------------------------------------------------------------------------
// GRU, torch.nn.GRU's "reset after" form (SPEC §2b)
// ---------------------------------------------------------------------------------------------

// What a GRU step keeps for backward: r, z, n (n before candidate dropout) and the recurrent
// term of n, gh_n = (Ŵ_hh ĥ)_n + b_hh_n, which the reset gate scales.
template <typename acc_t>
struct GruGates {
  acc_t r, z, n, hn;
};

// gi_*: (W_ih x̂)_* + b_ih_*;  gh_*: (Ŵ_hh ĥ)_* + b_hh_*.
template <typename acc_t>
RNNFUSED_HD GruGates<acc_t> gru_activate(acc_t gi_r, acc_t gi_z, acc_t gi_n, acc_t gh_r,
                                         acc_t gh_z, acc_t gh_n) {
  const acc_t r = sigmoid(gi_r + gh_r);
  const acc_t z = sigmoid(gi_z + gh_z);
  return GruGates<acc_t>{r, z, act_tanh(gi_n + r * gh_n), gh_n};
}

// h̃ = (1 - z) n̂ + z h_prev, with n̂ = n cand_scale (h_prev itself, not the dropped-out ĥ).
template <typename acc_t>
RNNFUSED_HD acc_t gru_cell_forward(const GruGates<acc_t>& gate, acc_t h_prev, acc_t cand_scale) {
  return (acc_t(1) - gate.z) * (gate.n * cand_scale) + gate.z * h_prev;
}

// Gradients of one GRU unit: with respect to the input term's pre-activations gi_{r,z,n}, the
// recurrent term's n part gh_n (its r and z parts equal gi_r and gi_z), and the share of
// dL/dh_{t-1} that flows through z h_prev directly (not through the GEMM).
template <typename acc_t>
struct GruGrads {
  acc_t gi_r, gi_z, gi_n, gh_n, h_prev;
};

//   dh_tilde: dL/dh̃ (the state before zoneout)
template <typename acc_t>
RNNFUSED_HD GruGrads<acc_t> gru_cell_backward(const GruGates<acc_t>& gate, acc_t h_prev,
                                              acc_t cand_scale, acc_t dh_tilde) {
  const acc_t n_hat = gate.n * cand_scale;
  const acc_t d_n = dh_tilde * (acc_t(1) - gate.z) * cand_scale;
  const acc_t d_z = dh_tilde * (h_prev - n_hat);
  const acc_t da_n = d_n * (acc_t(1) - gate.n * gate.n);
  const acc_t d_r = da_n * gate.hn;
  return GruGrads<acc_t>{d_r * gate.r * (acc_t(1) - gate.r), d_z * gate.z * (acc_t(1) - gate.z),
                         da_n, da_n * gate.r, dh_tilde * gate.z};
}

// Backward through h_t = zh h_{t-1} + (1 - zh) h̃_t: splits dL/dh_t into the part that reaches
// h̃_t and the part that skips the step.
template <typename acc_t>
struct ZoneoutGrads {
  acc_t fresh;  // dL/dh̃_t
  acc_t prev;   // the share of dL/dh_{t-1} that comes through the zoned-out units
};

template <typename acc_t>
RNNFUSED_HD ZoneoutGrads<acc_t> zoneout_backward(acc_t dh, acc_t z) {
  return ZoneoutGrads<acc_t>{(acc_t(1) - z) * dh, z * dh};
}

// The per-step mask values of one unit, as the formulas above take them.
// kind_threshold: rate_threshold(p) of that kind; word: the unit's Philox word.
template <typename acc_t>
RNNFUSED_HD acc_t dropout_scale(uint32_t word, uint32_t threshold, acc_t inv_keep) {
  return dropout_keep(word, threshold) ? inv_keep : acc_t(0);
}

template <typename acc_t>
RNNFUSED_HD acc_t zoneout_value(uint32_t word, uint32_t threshold) {
  return zoneout_keep_previous(word, threshold) ? acc_t(1) : acc_t(0);
}

}  // namespace rnnfused
