// The layer op: one LSTM layer, one direction, the cell over time (SPEC §2, §5).
//
// Declarations shared by the registration, the CPU and the CUDA implementation, and `LayerPlan`,
// which turns the op's arguments into sizes, rates and switches once, after checking them.
//
// Shapes (T steps, B samples, I inputs, H cells, R = P with a projection else H):
//   input (T, B, I)  h0 (B, R)  c0 (B, H)  weight_ih (4H, I)  weight_hh (4H, R)
//   bias_ih, bias_hh (4H)  weight_hr (P, H)  lengths (B) int64 on the CPU  seed: 0-dim int64 CPU
//   rates: [input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_c, zoneout_h]
// Forward returns (output (T, B, R), h_n (B, R), c_n (B, H)) and the workspace that backward
// reads, all empty when need_workspace is false:
//   gates (T, B, 4H)  post-activation [i | f | g | o], indexed by input position t
//   hs (T+1, B, R)    the state before/after each step, in processing order (hs[0] = h0)
//   cs (T+1, B, H)    the (zoned-out) cell, in processing order (cs[0] = c0)
//   ctil (T, B, H)    c̃ before zoneout, indexed by t; only with zoneout on c
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "philox.h"

namespace rnnfused {

using at::Tensor;

using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using BackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

struct LayerPlan {
  int64_t T = 0, B = 0, I = 0, H = 0, R = 0;
  bool has_proj = false;
  bool has_bias = false;
  bool has_lengths = false;
  bool training = false;
  bool reverse = false;
  int64_t layer = 0;
  uint64_t seed = 0;
  std::array<double, kNumMaskKinds> rate{};

  // Which regularizers are active in this call. Dropout and weight drop only act in training;
  // zoneout acts in both modes (its expectation in evaluation).
  bool input_dropout() const { return training && rate[kMaskInput] > 0; }
  bool recurrent_dropout() const { return training && rate[kMaskRecurrent] > 0; }
  bool weight_drop() const { return training && rate[kMaskWeight] > 0; }
  bool candidate_dropout() const { return training && rate[kMaskCandidate] > 0; }
  bool zoneout_c() const { return rate[kMaskZoneoutC] > 0; }
  bool zoneout_h() const { return rate[kMaskZoneoutH] > 0; }

  // Input position of processing step s.
  int64_t time_of(int64_t s) const { return reverse ? T - 1 - s : s; }

  MaskStream stream(MaskKind kind) const { return MaskStream(seed, layer, reverse, kind); }
  uint32_t threshold(MaskKind kind) const { return rate_threshold(rate[kind]); }
  // 1 / (1 - p): the inverted-dropout scale of a kept unit.
  double inv_keep(MaskKind kind) const { return 1.0 / (1.0 - rate[kind]); }
};

// Calls f.template operator()<kCand, kZoneC, kZoneH>() with the compile-time switches of the
// pointwise passes (candidate dropout, zoneout on c, zoneout on h) that this plan needs, so an
// unregularized call runs code with no mask in it.
template <typename F>
void dispatch_switches(const LayerPlan& plan, F&& f) {
  const int code = (plan.candidate_dropout() ? 4 : 0) | (plan.zoneout_c() ? 2 : 0) |
                   (plan.zoneout_h() ? 1 : 0);
  switch (code) {
    case 0: f.template operator()<false, false, false>(); break;
    case 1: f.template operator()<false, false, true>(); break;
    case 2: f.template operator()<false, true, false>(); break;
    case 3: f.template operator()<false, true, true>(); break;
    case 4: f.template operator()<true, false, false>(); break;
    case 5: f.template operator()<true, false, true>(); break;
    case 6: f.template operator()<true, true, false>(); break;
    default: f.template operator()<true, true, true>(); break;
  }
}

// Checks every argument (shape, dtype, device, ranges) with a message naming it, and plans.
LayerPlan plan_forward(const Tensor& input, const Tensor& h0, const Tensor& c0,
                       const Tensor& weight_ih, const Tensor& weight_hh,
                       const c10::optional<Tensor>& bias_ih, const c10::optional<Tensor>& bias_hh,
                       const c10::optional<Tensor>& weight_hr,
                       const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                       bool reverse, bool training, at::ArrayRef<double> rates);

LayerPlan plan_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                        const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
                        const c10::optional<Tensor>& weight_hr,
                        const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                        bool reverse, bool training, at::ArrayRef<double> rates,
                        const Tensor& gates, const Tensor& hs, const Tensor& cs,
                        const Tensor& ctil, bool has_bias);

// The per-sequence and per-call masks of a call, materialized as scales on the CPU: (B, I) and
// (B, R) inverted-dropout scales and the (4H, R) DropConnect scale. Undefined when inactive.
// These are sample- or weight-sized, never (T, B, H).
struct SequenceMasks {
  Tensor input_scale;      // (B, I)
  Tensor recurrent_scale;  // (B, R)
  Tensor weight_scale;     // (4H, R)
};
SequenceMasks sequence_masks(const LayerPlan& plan, at::ScalarType dtype);

// The end of forward on any device: h_n and c_n copied out of the state sequences (hs/cs hold
// T+1 steps with the workspace, two rolling ones without), and four distinct empty workspace
// outputs when none was kept (the schema declares no aliasing between outputs).
ForwardResult finish_forward(const LayerPlan& plan, bool need_workspace, Tensor output,
                             Tensor gates, Tensor hs, Tensor cs, Tensor ctil);

// The end of backward on any device, after the time loop: the input, weight and bias
// gradients, each one GEMM (or reduction) over all steps.
//   da (T, B, 4H): dL/da_t by input position; hs: the forward workspace (processing order);
//   dproj (T, B, P), htil (T, B, H): with a projection, dL/d(W_hr h̃) and h̃; else undefined
BackwardResult input_and_weight_gradients(const LayerPlan& plan, const SequenceMasks& seq,
                                          const Tensor& input, const Tensor& weight_ih,
                                          const Tensor& da, const Tensor& hs, const Tensor& dproj,
                                          const Tensor& htil, Tensor grad_h0, Tensor grad_c0);

ForwardResult lstm_forward_cpu(const Tensor& input, const Tensor& h0, const Tensor& c0,
                               const Tensor& weight_ih, const Tensor& weight_hh,
                               const c10::optional<Tensor>& bias_ih,
                               const c10::optional<Tensor>& bias_hh,
                               const c10::optional<Tensor>& weight_hr,
                               const c10::optional<Tensor>& lengths, const Tensor& seed,
                               int64_t layer, bool reverse, bool training,
                               at::ArrayRef<double> rates, bool need_workspace);

BackwardResult lstm_backward_cpu(const Tensor& grad_output, const Tensor& grad_h_n,
                                 const Tensor& grad_c_n, const Tensor& input,
                                 const Tensor& weight_ih, const Tensor& weight_hh,
                                 const c10::optional<Tensor>& weight_hr,
                                 const c10::optional<Tensor>& lengths, const Tensor& seed,
                                 int64_t layer, bool reverse, bool training,
                                 at::ArrayRef<double> rates, const Tensor& gates, const Tensor& hs,
                                 const Tensor& cs, const Tensor& ctil, bool has_bias);

// Materializes the masks of one call exactly as the kernels draw them (SPEC §3), as {0,1}
// tensors: keep-masks for dropout, keep-previous masks for zoneout.
std::vector<Tensor> lstm_masks(int64_t seed, int64_t T, int64_t B, int64_t I, int64_t H,
                               int64_t R, int64_t layer, bool reverse,
                               at::ArrayRef<double> rates, at::ScalarType dtype);

}  // namespace rnnfused
