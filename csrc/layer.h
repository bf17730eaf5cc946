// The layer ops: one recurrent layer, one direction, a cell over time (SPEC §2, §2b, §5).
//
// Three cells share everything here: the LSTM (rnnfused::lstm_forward / lstm_backward), the GRU
// (rnnfused::gru_forward / gru_backward) and the layer-normalized LSTM (rnnfused::ln_lstm_forward /
// ln_lstm_backward). What differs between them is the cell's pointwise math (cell_math.h), its
// gate count and, for the LN-LSTM, its per-sample normalizations; the argument checks, the masks, the workspace, the time
// loop and the GEMMs are the layer driver's, written once per device (layer_cpu.cpp,
// layer_cuda_driver.cuh) as templates over the cell.
//
// Shapes (T steps, B samples, I inputs, H cells, G gates: 4 for the LSTM, 3 for the GRU,
// R = P with an LSTM projection else H):
//   input (T, B, I)  h0 (B, R)  c0 (B, H) (LSTM only)  weight_ih (G*H, I)  weight_hh (G*H, R)
//   bias_ih, bias_hh (G*H)  weight_hr (P, H) (LSTM only)  lengths (B) int64 on the CPU
//   seed: 0-dim int64 tensor on the CPU, or (CUDA) on the input's device
//   rates: [input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_c, zoneout_h]
//          (the GRU has no cell state: its zoneout_c must be 0)
// Forward returns output (T, B, R), h_n (B, R), c_n (B, H) (LSTM) and the workspace that
// backward reads, all empty when need_workspace is false:
//   gates (T, B, 4H)  LSTM: post-activation [i | f | g | o]; GRU: [r | z | n | gh_n], n before
//                     candidate dropout and gh_n = (Ŵ_hh ĥ)_n + b_hh_n; indexed by input position t
//   hs (T+1, B, R)    the state before/after each step, in processing order (hs[0] = h0)
//   cs (T+1, B, H)    LSTM: the (zoned-out) cell, in processing order (cs[0] = c0)
//   ctil (T, B, H)    LSTM: c̃ before zoneout, indexed by t; only with zoneout on c
// The LN-LSTM keeps gates, hs and cs as the LSTM (no ctil), and its normalized values, by t:
//   norm_x (T, B, 4H) LN(W_ih x̂_t)   norm_h (T, B, 4H) LN(Ŵ_hh ĥ_{t-1})   norm_c (T, B, H) LN(c̃_t)
//   rstd (T, B, 3)    the three LNs' 1 / sqrt(var + eps), in that order
// With lengths, both drivers run the samples sorted by descending length (stably) and each step
// on the samples still running only (batching.h): the workspace rows are in that sorted order
// (the samples' order when already sorted), 0 at padded positions, and backward sorts the same
// way. output, h_n, c_n and every gradient are in the samples' order on every device.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>
#include <vector>

#include "philox.h"

namespace rnnfused {

using at::Tensor;

enum class CellKind { kLstm, kGru, kLnLstm };

// What the driver needs to know about a cell at compile time.
template <CellKind kCell>
struct CellTraits;

template <>
struct CellTraits<CellKind::kLstm> {
  static constexpr int kGates = 4;          // i, f, g, o
  static constexpr bool kHasCell = true;    // carries c
  static constexpr bool kCanProject = true;  // h = W_hr h̃ (proj_size)
  // The recurrent term joins the input term before any nonlinearity: the per-step GEMM
  // accumulates into the input projection.
  static constexpr bool kSeparateRecurrent = false;
  static constexpr bool kLayerNorm = false;
  static constexpr const char* kName = "LSTM";
  static constexpr const char* kOp = "lstm";  // torch.ops.rnnfused.lstm_forward / _backward
};

template <>
struct CellTraits<CellKind::kGru> {
  static constexpr int kGates = 3;          // r, z, n
  static constexpr bool kHasCell = false;
  static constexpr bool kCanProject = false;
  // n = tanh(gi_n + r ⊙ gh_n) needs the recurrent term on its own: the per-step GEMM writes a
  // separate (B, 3H) buffer.
  static constexpr bool kSeparateRecurrent = true;
  static constexpr bool kLayerNorm = false;
  static constexpr const char* kName = "GRU";
  static constexpr const char* kOp = "gru";
};

template <>
struct CellTraits<CellKind::kLnLstm> {
  static constexpr int kGates = 4;
  static constexpr bool kHasCell = true;
  static constexpr bool kCanProject = true;
  // Each GEMM term is normalized on its own before the two are summed.
  static constexpr bool kSeparateRecurrent = true;
  // Per-sample reductions over the gates and the cell: the pointwise passes work on whole rows.
  static constexpr bool kLayerNorm = true;
  static constexpr const char* kName = "LN-LSTM";
  static constexpr const char* kOp = "ln_lstm";
};

// A cell's traits as values, for the code that takes the cell at run time (the plan's checks, the
// Python side through rnnfused._C.cell_specs). Every CellKind must have a case: a new cell is
// never planned as another one.
struct CellSpec {
  const char* name;
  const char* op;
  int gates;
  bool has_cell;
  bool can_project;
  bool layer_norm;
};

template <CellKind kCell>
constexpr CellSpec spec_of() {
  using Traits = CellTraits<kCell>;
  return CellSpec{Traits::kName, Traits::kOp, Traits::kGates, Traits::kHasCell,
                  Traits::kCanProject, Traits::kLayerNorm};
}

constexpr CellSpec cell_spec(CellKind cell) {
  switch (cell) {
    case CellKind::kLstm: return spec_of<CellKind::kLstm>();
    case CellKind::kGru: return spec_of<CellKind::kGru>();
    case CellKind::kLnLstm: return spec_of<CellKind::kLnLstm>();
  }
  return CellSpec{"?", "?", 0, false, false, false};  // unreachable: -Wswitch names a missing case
}

constexpr CellKind kAllCells[] = {CellKind::kLstm, CellKind::kGru, CellKind::kLnLstm};

// The ops' `rates`, in MaskKind order (philox.h).
constexpr std::array<const char*, kNumMaskKinds> kRateNames = {
    "input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout", "zoneout_c",
    "zoneout_h"};

// The LN-LSTM's parameters: the gains of the two gate LNs (4H each) and the gain and bias of the
// LN on c̃ (H each).
struct LayerNormParams {
  const Tensor& weight_ih;
  const Tensor& weight_hh;
  const Tensor& weight_c;
  const Tensor& bias_c;
};

// What its forward keeps for backward, beside gates, hs and cs.
struct LayerNormWorkspace {
  const Tensor& norm_x;
  const Tensor& norm_h;
  const Tensor& norm_c;
  const Tensor& rstd;
};

// The LN parameters as the kernels read them: one contiguous [γ_ih | γ_hh | γ_c | β_c].
Tensor flat_layer_norm_params(const LayerNormParams& ln);

// The LN workspace as backward reads it, contiguous.
struct LayerNormSaved {
  Tensor norm_x, norm_h, norm_c, rstd;
  explicit LayerNormSaved(const LayerNormWorkspace& ws)
      : norm_x(ws.norm_x.contiguous()),
        norm_h(ws.norm_h.contiguous()),
        norm_c(ws.norm_c.contiguous()),
        rstd(ws.rstd.contiguous()) {}
  LayerNormSaved() = default;
};

// Width of the gates workspace per sample, for both cells: 4H.
constexpr int kWorkspaceGates = 4;

struct LayerPlan {
  CellKind cell = CellKind::kLstm;
  int64_t G = 4;  // gates of the cell
  int64_t T = 0, B = 0, I = 0, H = 0, R = 0;
  bool has_proj = false;
  bool has_bias = false;
  bool has_lengths = false;
  bool training = false;
  bool reverse = false;
  int64_t layer = 0;
  uint64_t seed = 0;
  // CUDA only: the seed as a one-element int64 tensor on the input's device (drawn there by
  // torch's CUDA generator), which the kernels read at run time; then `seed` is unused (0).
  const int64_t* seed_on_device = nullptr;
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
// unregularized call runs code with no mask in it. A cell without a cell state never gets
// kZoneC (its plan refuses zoneout_c), so its passes are not instantiated with it.
template <bool kHasCell, typename F>
void dispatch_switches(const LayerPlan& plan, F&& f) {
  const int code = (plan.candidate_dropout() ? 4 : 0) | (kHasCell && plan.zoneout_c() ? 2 : 0) |
                   (plan.zoneout_h() ? 1 : 0);
  switch (code) {
    case 0: f.template operator()<false, false, false>(); break;
    case 1: f.template operator()<false, false, true>(); break;
    case 4: f.template operator()<true, false, false>(); break;
    case 5: f.template operator()<true, false, true>(); break;
    default:
      if constexpr (kHasCell) {
        switch (code) {
          case 2: f.template operator()<false, true, false>(); break;
          case 3: f.template operator()<false, true, true>(); break;
          case 6: f.template operator()<true, true, false>(); break;
          default: f.template operator()<true, true, true>(); break;
        }
      }
      break;
  }
}

// The arguments of a forward call, as the ops take them; c0, weight_hr undefined for the GRU; ln
// given for the LN-LSTM only.
struct ForwardArgs {
  const Tensor& input;
  const Tensor& h0;
  const c10::optional<Tensor>& c0;
  const Tensor& weight_ih;
  const Tensor& weight_hh;
  const c10::optional<Tensor>& bias_ih;
  const c10::optional<Tensor>& bias_hh;
  const c10::optional<Tensor>& weight_hr;
  const c10::optional<Tensor>& lengths;
  const Tensor& seed;
  int64_t layer;
  bool reverse;
  bool training;
  at::ArrayRef<double> rates;
  bool need_workspace;
  const LayerNormParams* ln = nullptr;
};

// The arguments of a backward call; grad_c_n, weight_hr, cs, ctil undefined for the GRU; ln and
// ln_ws given for the LN-LSTM only (its ctil is undefined).
struct BackwardArgs {
  const Tensor& grad_output;
  const Tensor& grad_h_n;
  const c10::optional<Tensor>& grad_c_n;
  const Tensor& input;
  const Tensor& weight_ih;
  const Tensor& weight_hh;
  const c10::optional<Tensor>& weight_hr;
  const c10::optional<Tensor>& lengths;
  const Tensor& seed;
  int64_t layer;
  bool reverse;
  bool training;
  at::ArrayRef<double> rates;
  const Tensor& gates;
  const Tensor& hs;
  const c10::optional<Tensor>& cs;
  const c10::optional<Tensor>& ctil;
  bool has_bias;
  const LayerNormParams* ln = nullptr;
  const LayerNormWorkspace* ln_ws = nullptr;
};

// What a forward call returns; c_n, cs, ctil are empty for the GRU, the norms for all but the
// LN-LSTM.
struct LayerOutputs {
  Tensor output, h_n, c_n, gates, hs, cs, ctil;
  Tensor norm_x, norm_h, norm_c, rstd;
};

// What a backward call returns; grad_c0 and grad_weight_hr empty where the cell has none.
struct LayerGrads {
  Tensor grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
      grad_bias_hh, grad_weight_hr;
  // LN-LSTM only.
  Tensor grad_ln_weight_ih, grad_ln_weight_hh, grad_ln_weight_c, grad_ln_bias_c;
};

// Checks every argument (shape, dtype, device, ranges) with a message naming it, and plans.
LayerPlan plan_forward(CellKind cell, const ForwardArgs& args);
LayerPlan plan_backward(CellKind cell, const BackwardArgs& args);

// The per-sequence and per-call masks of a call, materialized as scales: (B, I) and (B, R)
// inverted-dropout scales and the (G*H, R) DropConnect scale. Undefined when inactive. These are
// sample- or weight-sized, never (T, B, H).
struct SequenceMasks {
  Tensor input_scale;      // (B, I)
  Tensor recurrent_scale;  // (B, R)
  Tensor weight_scale;     // (G*H, R)
};
SequenceMasks sequence_masks(const LayerPlan& plan, at::ScalarType dtype);

// The end of forward on any device: h_n and c_n copied out of the state sequences (hs/cs hold
// T+1 steps with the workspace, two rolling ones without), and distinct empty workspace outputs
// when none was kept (the schemas declare no aliasing between outputs).
LayerOutputs finish_forward(const LayerPlan& plan, bool need_workspace, Tensor output,
                            Tensor gates, Tensor hs, Tensor cs, Tensor ctil);

// The LN-LSTM's part of it: its four norm workspace outputs, or distinct empty tensors.
void finish_forward_ln(bool need_workspace, LayerOutputs& out, Tensor norm_x, Tensor norm_h,
                       Tensor norm_c, Tensor rstd);

// The end of backward on any device, after the time loop: the input, weight and bias
// gradients, each one GEMM (or reduction) over all steps.
//   da_ih, da_hh (T, B, G*H): dL/d(W_ih x̂_t) and dL/d(Ŵ_hh ĥ_{t-1}) by input position (the same
//   tensor for the LSTM, whose two terms are summed); hs: the forward workspace (processing
//   order); dproj (T, B, P), htil (T, B, H): with a projection, dL/d(W_hr h̃) and h̃
LayerGrads input_and_weight_gradients(const LayerPlan& plan, const SequenceMasks& seq,
                                      const Tensor& input, const Tensor& weight_ih,
                                      const Tensor& da_ih, const Tensor& da_hh, const Tensor& hs,
                                      const Tensor& dproj, const Tensor& htil, Tensor grad_h0,
                                      Tensor grad_c0);

// The ops' schemas' tuples.
using LstmForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LstmBackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using GruForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using GruBackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LnLstmForwardResult =
    std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using LnLstmBackwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                        Tensor, Tensor, Tensor, Tensor>;

LstmForwardResult lstm_forward_result(LayerOutputs out);
LstmBackwardResult lstm_backward_result(LayerGrads grads);
GruForwardResult gru_forward_result(LayerOutputs out);
GruBackwardResult gru_backward_result(LayerGrads grads);
LnLstmForwardResult ln_lstm_forward_result(LayerOutputs out);
LnLstmBackwardResult ln_lstm_backward_result(LayerGrads grads);

// Materializes the masks of one call exactly as the kernels draw them (SPEC §3), as {0,1}
// tensors: keep-masks for dropout, keep-previous masks for zoneout. gates: G of the cell.
std::vector<Tensor> layer_masks(int64_t gates, int64_t seed, int64_t T, int64_t B, int64_t I,
                                int64_t H, int64_t R, int64_t layer, bool reverse,
                                at::ArrayRef<double> rates, at::ScalarType dtype);

}  // namespace rnnfused
