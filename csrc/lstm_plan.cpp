// Argument checks of the layer op and the masks that do not depend on t (SPEC §3, §6).
//
// Every check lives here, once, for the CPU and the CUDA implementation alike; each message
// names the argument and says what was expected.
#include "lstm_layer.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace rnnfused {

namespace {

const char* kRateNames[kNumMaskKinds] = {"input_dropout",     "recurrent_dropout", "weight_drop",
                                         "candidate_dropout", "zoneout_c",         "zoneout_h"};

std::string shape_str(at::IntArrayRef sizes) {
  std::string s = "(";
  for (size_t k = 0; k < sizes.size(); ++k) {
    if (k) s += ", ";
    s += std::to_string(sizes[k]);
  }
  return s + (sizes.size() == 1 ? ",)" : ")");
}

void check_shape(const Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, "rnnfused: ", name, " must have shape ",
                    shape_str(expected), ", got ", shape_str(t.sizes()));
}

void check_like(const Tensor& t, const char* name, const Tensor& input) {
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), "rnnfused: ", name,
                   " must have the dtype of input (", input.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == input.device(), "rnnfused: ", name,
                    " must be on the device of input (", input.device(), "), got ", t.device());
}

void plan_common(LayerPlan& plan, const Tensor& input, const Tensor& weight_ih,
                 const Tensor& weight_hh, const c10::optional<Tensor>& weight_hr,
                 const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                 bool reverse, bool training, at::ArrayRef<double> rates) {
  TORCH_CHECK_VALUE(input.dim() == 3, "rnnfused: input must be 3-D (seq_len, batch, input_size), "
                    "got ", input.dim(), "-D of shape ", shape_str(input.sizes()));
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   "rnnfused: input must be float32, float64, float16 or bfloat16, got ", dtype);
  plan.T = input.size(0);
  plan.B = input.size(1);
  plan.I = input.size(2);
  TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(0) % 4 == 0 && weight_ih.size(0) > 0,
                    "rnnfused: weight_ih must be 2-D (4*hidden_size, input_size), got shape ",
                    shape_str(weight_ih.sizes()));
  plan.H = weight_ih.size(0) / 4;
  check_shape(weight_ih, "weight_ih", {4 * plan.H, plan.I});
  check_like(weight_ih, "weight_ih", input);
  plan.has_proj = weight_hr.has_value() && weight_hr->defined();
  if (plan.has_proj) {
    TORCH_CHECK_VALUE(weight_hr->dim() == 2 && weight_hr->size(0) > 0,
                      "rnnfused: weight_hr must be 2-D (proj_size, hidden_size), got shape ",
                      shape_str(weight_hr->sizes()));
    plan.R = weight_hr->size(0);
    check_shape(*weight_hr, "weight_hr", {plan.R, plan.H});
    check_like(*weight_hr, "weight_hr", input);
  } else {
    plan.R = plan.H;
  }
  check_shape(weight_hh, "weight_hh", {4 * plan.H, plan.R});
  check_like(weight_hh, "weight_hh", input);

  plan.has_lengths = lengths.has_value() && lengths->defined();
  if (plan.has_lengths) {
    const Tensor& len = *lengths;
    TORCH_CHECK_TYPE(len.scalar_type() == at::kLong, "rnnfused: lengths must be int64, got ",
                     len.scalar_type());
    TORCH_CHECK_VALUE(len.device().is_cpu(), "rnnfused: lengths must be a CPU tensor, got ",
                      len.device());
    check_shape(len, "lengths", {plan.B});
    if (plan.B > 0) {
      const int64_t lo = len.min().item<int64_t>();
      const int64_t hi = len.max().item<int64_t>();
      TORCH_CHECK_VALUE(lo >= 0 && hi <= plan.T, "rnnfused: lengths must lie in [0, seq_len=",
                        plan.T, "], got values in [", lo, ", ", hi, "]");
    }
  }
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
                    "rnnfused: seed must be a one-element int64 CPU tensor");
  plan.seed = static_cast<uint64_t>(seed.item<int64_t>());
  TORCH_CHECK_VALUE(layer >= 0 && layer < 65536, "rnnfused: layer must lie in [0, 65535], got ",
                    layer);
  plan.layer = layer;
  plan.reverse = reverse;
  plan.training = training;
  TORCH_CHECK_VALUE(rates.size() == kNumMaskKinds, "rnnfused: rates must hold ", kNumMaskKinds,
                    " values [input_dropout, recurrent_dropout, weight_drop, candidate_dropout, "
                    "zoneout_c, zoneout_h], got ", rates.size());
  for (int k = 0; k < kNumMaskKinds; ++k) {
    TORCH_CHECK_VALUE(std::isfinite(rates[k]) && rates[k] >= 0.0 && rates[k] < 1.0, "rnnfused: ",
                      kRateNames[k], " must lie in [0, 1), got ", rates[k]);
    plan.rate[k] = rates[k];
  }
}

}  // namespace

LayerPlan plan_forward(const Tensor& input, const Tensor& h0, const Tensor& c0,
                       const Tensor& weight_ih, const Tensor& weight_hh,
                       const c10::optional<Tensor>& bias_ih, const c10::optional<Tensor>& bias_hh,
                       const c10::optional<Tensor>& weight_hr,
                       const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                       bool reverse, bool training, at::ArrayRef<double> rates) {
  LayerPlan plan;
  plan_common(plan, input, weight_ih, weight_hh, weight_hr, lengths, seed, layer, reverse,
              training, rates);
  check_shape(h0, "h0", {plan.B, plan.R});
  check_like(h0, "h0", input);
  check_shape(c0, "c0", {plan.B, plan.H});
  check_like(c0, "c0", input);
  const bool has_ih = bias_ih.has_value() && bias_ih->defined();
  const bool has_hh = bias_hh.has_value() && bias_hh->defined();
  TORCH_CHECK_VALUE(has_ih == has_hh, "rnnfused: bias_ih and bias_hh must be given together");
  plan.has_bias = has_ih;
  if (plan.has_bias) {
    check_shape(*bias_ih, "bias_ih", {4 * plan.H});
    check_like(*bias_ih, "bias_ih", input);
    check_shape(*bias_hh, "bias_hh", {4 * plan.H});
    check_like(*bias_hh, "bias_hh", input);
  }
  return plan;
}

LayerPlan plan_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                        const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
                        const c10::optional<Tensor>& weight_hr,
                        const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                        bool reverse, bool training, at::ArrayRef<double> rates,
                        const Tensor& gates, const Tensor& hs, const Tensor& cs,
                        const Tensor& ctil, bool has_bias) {
  LayerPlan plan;
  plan_common(plan, input, weight_ih, weight_hh, weight_hr, lengths, seed, layer, reverse,
              training, rates);
  plan.has_bias = has_bias;
  check_shape(grad_output, "grad_output", {plan.T, plan.B, plan.R});
  check_like(grad_output, "grad_output", input);
  check_shape(grad_h_n, "grad_h_n", {plan.B, plan.R});
  check_like(grad_h_n, "grad_h_n", input);
  check_shape(grad_c_n, "grad_c_n", {plan.B, plan.H});
  check_like(grad_c_n, "grad_c_n", input);
  check_shape(gates, "gates (workspace; run forward with need_workspace=True)",
              {plan.T, plan.B, 4 * plan.H});
  check_like(gates, "gates", input);
  check_shape(hs, "hs (workspace)", {plan.T + 1, plan.B, plan.R});
  check_like(hs, "hs", input);
  check_shape(cs, "cs (workspace)", {plan.T + 1, plan.B, plan.H});
  check_like(cs, "cs", input);
  if (plan.zoneout_c()) {
    check_shape(ctil, "ctil (workspace)", {plan.T, plan.B, plan.H});
    check_like(ctil, "ctil", input);
  }
  return plan;
}

SequenceMasks sequence_masks(const LayerPlan& plan, at::ScalarType dtype) {
  SequenceMasks out;
  auto make = [&](MaskKind kind, int64_t rows, int64_t cols) {
    Tensor scale = at::empty({rows, cols}, at::TensorOptions().dtype(dtype));
    const MaskStream stream = plan.stream(kind);
    const uint32_t threshold = plan.threshold(kind);
    const int64_t quads = (cols + 3) / 4;
    constexpr int64_t kBlock = 16;  // quads drawn side by side, so the Philox rounds vectorize
    const int64_t blocks = (quads + kBlock - 1) / kBlock;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sequence_masks", [&] {
      scalar_t* p = scale.data_ptr<scalar_t>();
      const scalar_t inv_keep = static_cast<scalar_t>(plan.inv_keep(kind));
      at::parallel_for(0, rows * blocks, 64, [&](int64_t begin, int64_t end) {
        uint32_t words[4][kBlock];
        for (int64_t task = begin; task < end; ++task) {
          const int64_t r = task / blocks, q0 = (task % blocks) * kBlock;
          const int64_t nq = std::min(kBlock, quads - q0);
_Pragma("omp simd")
          for (int64_t q = 0; q < nq; ++q) {
            const Philox4x32 w = stream.quad(0, r, q0 + q);
            words[0][q] = w.v[0];
            words[1][q] = w.v[1];
            words[2][q] = w.v[2];
            words[3][q] = w.v[3];
          }
          const int64_t j0 = q0 * 4, n = std::min(kBlock * 4, cols - j0);
          for (int64_t k = 0; k < n; ++k) {
            p[r * cols + j0 + k] = dropout_keep(words[k % 4][k / 4], threshold)
                                       ? inv_keep
                                       : static_cast<scalar_t>(0);
          }
        }
      });
    });
    return scale;
  };
  if (plan.input_dropout()) out.input_scale = make(kMaskInput, plan.B, plan.I);
  if (plan.recurrent_dropout()) out.recurrent_scale = make(kMaskRecurrent, plan.B, plan.R);
  if (plan.weight_drop()) out.weight_scale = make(kMaskWeight, 4 * plan.H, plan.R);
  return out;
}

ForwardResult finish_forward(const LayerPlan& plan, bool need_workspace, Tensor output,
                             Tensor gates, Tensor hs, Tensor cs, Tensor ctil) {
  const int64_t last = need_workspace ? plan.T : plan.T % 2;
  Tensor h_n = hs[last].clone();
  Tensor c_n = cs[last].clone();
  if (!need_workspace) {
    const auto opts = output.options();
    gates = at::empty({0}, opts);
    hs = at::empty({0}, opts);
    cs = at::empty({0}, opts);
    ctil = at::empty({0}, opts);
  }
  return {std::move(output), std::move(h_n), std::move(c_n), std::move(gates), std::move(hs),
          std::move(cs), std::move(ctil)};
}

BackwardResult input_and_weight_gradients(const LayerPlan& plan, const SequenceMasks& seq,
                                          const Tensor& input, const Tensor& weight_ih,
                                          const Tensor& da, const Tensor& hs, const Tensor& dproj,
                                          const Tensor& htil, Tensor grad_h0, Tensor grad_c0) {
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R;
  const auto opts = input.options();
  const Tensor da2 = da.view({T * B, 4 * H});
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  Tensor grad_input = at::mm(da2, weight_ih.contiguous()).view({T, B, I});
  if (seq.input_scale.defined()) grad_input.mul_(seq.input_scale.unsqueeze(0));
  Tensor grad_weight_ih = at::mm(da2.t(), xhat.view({T * B, I}));
  // ĥ_{t-1}: the state each step read, in input order, with its recurrent-dropout mask.
  Tensor hprev = hs.narrow(0, 0, T);
  if (plan.reverse) hprev = hprev.flip(0);
  if (seq.recurrent_scale.defined()) hprev = hprev * seq.recurrent_scale.unsqueeze(0);
  Tensor grad_weight_hh = at::mm(da2.t(), hprev.reshape({T * B, R}));
  if (seq.weight_scale.defined()) grad_weight_hh.mul_(seq.weight_scale);
  Tensor grad_bias = plan.has_bias ? da2.sum(0) : at::empty({0}, opts);
  Tensor grad_weight_hr = plan.has_proj
                              ? at::mm(dproj.view({T * B, R}).t(), htil.view({T * B, H}))
                              : at::empty({0}, opts);
  return {grad_input,     std::move(grad_h0), std::move(grad_c0), grad_weight_ih,
          grad_weight_hh, grad_bias,          grad_weight_hr};
}

std::vector<Tensor> lstm_masks(int64_t seed, int64_t T, int64_t B, int64_t I, int64_t H,
                               int64_t R, int64_t layer, bool reverse,
                               at::ArrayRef<double> rates, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(T >= 0 && B >= 0 && I >= 0 && H > 0 && R > 0,
                    "rnnfused: lstm_masks needs seq_len, batch, input_size >= 0 and "
                    "hidden_size, proj/recurrent size > 0");
  TORCH_CHECK_VALUE(seed >= 0, "rnnfused: seed must lie in [0, 2**63), got ", seed);
  TORCH_CHECK_VALUE(rates.size() == kNumMaskKinds, "rnnfused: rates must hold 6 values");
  for (int k = 0; k < kNumMaskKinds; ++k) {
    TORCH_CHECK_VALUE(std::isfinite(rates[k]) && rates[k] >= 0.0 && rates[k] < 1.0, "rnnfused: ",
                      kRateNames[k], " must lie in [0, 1), got ", rates[k]);
  }
  // kind -> (steps, rows, cols); per-sequence and per-call kinds use t = 0.
  const int64_t shapes[kNumMaskKinds][3] = {{1, B, I},      {1, B, R}, {1, 4 * H, R},
                                            {T, B, H},      {T, B, H}, {T, B, R}};
  std::vector<Tensor> out;
  for (int k = 0; k < kNumMaskKinds; ++k) {
    const auto kind = static_cast<MaskKind>(k);
    const int64_t steps = shapes[k][0], rows = shapes[k][1], cols = shapes[k][2];
    const bool is_dropout = k < static_cast<int>(kMaskZoneoutC);
    Tensor mask = at::empty({steps, rows, cols}, at::TensorOptions().dtype(at::kFloat));
    float* p = mask.data_ptr<float>();
    const MaskStream stream(static_cast<uint64_t>(seed), layer, reverse, kind);
    const uint32_t threshold = rate_threshold(rates[k]);
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t q = 0; q * 4 < cols; ++q) {
          const Philox4x32 words = stream.quad(t, r, q);
          for (int64_t i = 0; i < 4 && q * 4 + i < cols; ++i) {
            const bool bit = is_dropout ? dropout_keep(words.v[i], threshold)
                                        : zoneout_keep_previous(words.v[i], threshold);
            p[(t * rows + r) * cols + q * 4 + i] = bit ? 1.f : 0.f;
          }
        }
      }
    }
    out.push_back(k < static_cast<int>(kMaskCandidate) ? mask.squeeze(0).to(dtype) : mask.to(dtype));
  }
  return out;
}

}  // namespace rnnfused
