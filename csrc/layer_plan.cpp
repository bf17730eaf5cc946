// Argument checks of the layer ops (LSTM and GRU), the masks that do not depend on t, and the
// steps before and after the time loop that both devices share (SPEC §3, §6).
//
// Every check lives here, once, for the CPU and the CUDA implementation alike; each message
// names the argument and says what was expected.
#include "layer.h"

#include "batching.h"
#include "cpu_gemm.h"
#include "cpu_philox.h"

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

void check_rates(at::ArrayRef<double> rates) {
  TORCH_CHECK_VALUE(rates.size() == kNumMaskKinds, "rnnfused: rates must hold ", kNumMaskKinds,
                    " values [input_dropout, recurrent_dropout, weight_drop, candidate_dropout, "
                    "zoneout_c, zoneout_h], got ", rates.size());
  for (int k = 0; k < kNumMaskKinds; ++k) {
    TORCH_CHECK_VALUE(std::isfinite(rates[k]) && rates[k] >= 0.0 && rates[k] < 1.0, "rnnfused: ",
                      kRateNames[k], " must lie in [0, 1), got ", rates[k]);
  }
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

void plan_common(CellKind cell, LayerPlan& plan, const Tensor& input, const Tensor& weight_ih,
                 const Tensor& weight_hh, const c10::optional<Tensor>& weight_hr,
                 const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer,
                 bool reverse, bool training, at::ArrayRef<double> rates) {
  const CellSpec spec = cell_spec(cell);
  plan.cell = cell;
  plan.G = spec.gates;
  const int64_t G = plan.G;
  TORCH_CHECK_VALUE(input.dim() == 3, "rnnfused: input must be 3-D (seq_len, batch, input_size), "
                    "got ", input.dim(), "-D of shape ", shape_str(input.sizes()));
  const auto dtype = input.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   "rnnfused: input must be float32, float64, float16 or bfloat16, got ", dtype);
  plan.T = input.size(0);
  plan.B = input.size(1);
  plan.I = input.size(2);
  TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(0) % G == 0 && weight_ih.size(0) > 0,
                    "rnnfused: weight_ih must be 2-D (", G, "*hidden_size, input_size), got shape ",
                    shape_str(weight_ih.sizes()));
  plan.H = weight_ih.size(0) / G;
  check_shape(weight_ih, "weight_ih", {G * plan.H, plan.I});
  check_like(weight_ih, "weight_ih", input);
  plan.has_proj = weight_hr.has_value() && weight_hr->defined();
  TORCH_CHECK_VALUE(!plan.has_proj || spec.can_project,
                    "rnnfused: weight_hr (a projection) exists only for the LSTM, not the ",
                    spec.name);
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
  check_shape(weight_hh, "weight_hh", {G * plan.H, plan.R});
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
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong,
                    "rnnfused: seed must be a one-element int64 tensor, got ", seed.numel(),
                    " elements of ", seed.scalar_type());
  if (seed.device().is_cpu()) {
    plan.seed = static_cast<uint64_t>(seed.item<int64_t>());
  } else {
    // Read by the kernels where it lies: no copy to the host, nothing frozen in a CUDA graph.
    TORCH_CHECK_VALUE(seed.device() == input.device() && input.is_cuda(),
                      "rnnfused: seed must be on the CPU or on the CUDA device of input (",
                      input.device(), "), got ", seed.device());
    plan.seed_on_device = seed.data_ptr<int64_t>();
  }
  TORCH_CHECK_VALUE(layer >= 0 && layer < 65536, "rnnfused: layer must lie in [0, 65535], got ",
                    layer);
  plan.layer = layer;
  plan.reverse = reverse;
  plan.training = training;
  check_rates(rates);
  for (int k = 0; k < kNumMaskKinds; ++k) plan.rate[k] = rates[k];
  TORCH_CHECK_VALUE(spec.has_cell || plan.rate[kMaskZoneoutC] == 0.0,
                    "rnnfused: the ", spec.name, " has no cell state, so zoneout_c must be 0, got ",
                    plan.rate[kMaskZoneoutC]);
}

void check_layer_norm(const LayerPlan& plan, const LayerNormParams* ln, const Tensor& input) {
  TORCH_CHECK_VALUE(ln != nullptr, "rnnfused: the layer-normalized LSTM needs its LN parameters");
  const int64_t GH = plan.G * plan.H;
  check_shape(ln->weight_ih, "ln_weight_ih", {GH});
  check_like(ln->weight_ih, "ln_weight_ih", input);
  check_shape(ln->weight_hh, "ln_weight_hh", {GH});
  check_like(ln->weight_hh, "ln_weight_hh", input);
  check_shape(ln->weight_c, "ln_weight_c", {plan.H});
  check_like(ln->weight_c, "ln_weight_c", input);
}

}  // namespace

LayerPlan plan_forward(CellKind cell, const ForwardArgs& a) {
  LayerPlan plan;
  plan_common(cell, plan, a.input, a.weight_ih, a.weight_hh, a.weight_hr, a.lengths, a.seed,
              a.layer, a.reverse, a.training, a.rates);
  check_shape(a.h0, "h0", {plan.B, plan.R});
  check_like(a.h0, "h0", a.input);
  if (cell_spec(cell).has_cell) {
    TORCH_CHECK_VALUE(a.c0.has_value() && a.c0->defined(), "rnnfused: the ",
                      cell_spec(cell).name, " needs c0");
    check_shape(*a.c0, "c0", {plan.B, plan.H});
    check_like(*a.c0, "c0", a.input);
  }
  const bool has_ih = a.bias_ih.has_value() && a.bias_ih->defined();
  const bool has_hh = a.bias_hh.has_value() && a.bias_hh->defined();
  TORCH_CHECK_VALUE(has_ih == has_hh, "rnnfused: bias_ih and bias_hh must be given together");
  plan.has_bias = has_ih;
  if (plan.has_bias) {
    check_shape(*a.bias_ih, "bias_ih", {plan.G * plan.H});
    check_like(*a.bias_ih, "bias_ih", a.input);
    check_shape(*a.bias_hh, "bias_hh", {plan.G * plan.H});
    check_like(*a.bias_hh, "bias_hh", a.input);
  }
  if (cell_spec(cell).layer_norm) {
    check_layer_norm(plan, a.ln, a.input);
    check_shape(a.ln->bias_c, "ln_bias_c", {plan.H});
    check_like(a.ln->bias_c, "ln_bias_c", a.input);
  }
  return plan;
}

LayerPlan plan_backward(CellKind cell, const BackwardArgs& a) {
  LayerPlan plan;
  plan_common(cell, plan, a.input, a.weight_ih, a.weight_hh, a.weight_hr, a.lengths, a.seed,
              a.layer, a.reverse, a.training, a.rates);
  plan.has_bias = a.has_bias;
  check_shape(a.grad_output, "grad_output", {plan.T, plan.B, plan.R});
  check_like(a.grad_output, "grad_output", a.input);
  check_shape(a.grad_h_n, "grad_h_n", {plan.B, plan.R});
  check_like(a.grad_h_n, "grad_h_n", a.input);
  check_shape(a.gates, "gates (workspace; run forward with need_workspace=True)",
              {plan.T, plan.B, kWorkspaceGates * plan.H});
  check_like(a.gates, "gates", a.input);
  check_shape(a.hs, "hs (workspace)", {plan.T + 1, plan.B, plan.R});
  check_like(a.hs, "hs", a.input);
  if (cell_spec(cell).has_cell) {
    TORCH_CHECK_VALUE(a.grad_c_n.has_value() && a.cs.has_value(), "rnnfused: the ",
                      cell_spec(cell).name, "'s backward needs grad_c_n and cs");
    check_shape(*a.grad_c_n, "grad_c_n", {plan.B, plan.H});
    check_like(*a.grad_c_n, "grad_c_n", a.input);
    check_shape(*a.cs, "cs (workspace)", {plan.T + 1, plan.B, plan.H});
    check_like(*a.cs, "cs", a.input);
  }
  if (cell_spec(cell).layer_norm) {
    check_layer_norm(plan, a.ln, a.input);
    TORCH_CHECK_VALUE(a.ln_ws != nullptr, "rnnfused: the LN-LSTM's backward needs its workspace");
    const int64_t T = plan.T, B = plan.B, GH = plan.G * plan.H;
    check_shape(a.ln_ws->norm_x, "norm_x (workspace)", {T, B, GH});
    check_like(a.ln_ws->norm_x, "norm_x", a.input);
    check_shape(a.ln_ws->norm_h, "norm_h (workspace)", {T, B, GH});
    check_like(a.ln_ws->norm_h, "norm_h", a.input);
    check_shape(a.ln_ws->norm_c, "norm_c (workspace)", {T, B, plan.H});
    check_like(a.ln_ws->norm_c, "norm_c", a.input);
    check_shape(a.ln_ws->rstd, "rstd (workspace)", {T, B, 3});
    check_like(a.ln_ws->rstd, "rstd", a.input);
  } else if (cell == CellKind::kLstm) {
    TORCH_CHECK_VALUE(a.ctil.has_value(), "rnnfused: the LSTM's backward needs ctil");
    if (plan.zoneout_c()) {
      check_shape(*a.ctil, "ctil (workspace)", {plan.T, plan.B, plan.H});
      check_like(*a.ctil, "ctil", a.input);
    }
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
    constexpr int64_t kBlock = kPhiloxQuads;  // quads drawn side by side (cpu_philox.h)
    const int64_t blocks = (quads + kBlock - 1) / kBlock;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "sequence_masks", [&] {
      scalar_t* p = scale.data_ptr<scalar_t>();
      const scalar_t inv_keep = static_cast<scalar_t>(plan.inv_keep(kind));
      at::parallel_for(0, rows * blocks, 64, [&](int64_t begin, int64_t end) {
        uint32_t words[4][kBlock];
        scalar_t values[4 * kBlock];  // 64: a multiple of 32, as mask_values needs
        for (int64_t task = begin; task < end; ++task) {
          const int64_t r = task / blocks, q0 = (task % blocks) * kBlock;
          const int64_t nq = std::min(kBlock, quads - q0);
          philox_quads(stream, 0, r, q0, nq, words);
          const int64_t j0 = q0 * 4, n = std::min(kBlock * 4, cols - j0);
          mask_values<scalar_t>(words, nq, threshold, scalar_t(0), inv_keep, values);
          std::copy(values, values + n, p + r * cols + j0);
        }
      });
    });
    return scale;
  };
  if (plan.input_dropout()) out.input_scale = make(kMaskInput, plan.B, plan.I);
  if (plan.recurrent_dropout()) out.recurrent_scale = make(kMaskRecurrent, plan.B, plan.R);
  if (plan.weight_drop()) out.weight_scale = make(kMaskWeight, plan.G * plan.H, plan.R);
  return out;
}

LayerOutputs finish_forward(const LayerPlan& plan, bool need_workspace, Tensor output,
                            Tensor gates, Tensor hs, Tensor cs, Tensor ctil) {
  const int64_t last = need_workspace ? plan.T : plan.T % 2;
  const auto opts = output.options();
  LayerOutputs out;
  out.h_n = hs[last].clone();
  out.c_n = cs.defined() ? cs[last].clone() : at::empty({0}, opts);
  if (!need_workspace) {
    gates = hs = cs = ctil = Tensor();
  }
  // Distinct empty tensors where nothing is kept: the schemas promise no aliasing.
  auto or_empty = [&](Tensor t) { return t.defined() ? std::move(t) : at::empty({0}, opts); };
  out.output = std::move(output);
  out.gates = or_empty(std::move(gates));
  out.hs = or_empty(std::move(hs));
  out.cs = or_empty(std::move(cs));
  out.ctil = or_empty(std::move(ctil));
  return out;
}

Tensor flat_layer_norm_params(const LayerNormParams& ln) {
  return at::cat({ln.weight_ih.reshape({-1}), ln.weight_hh.reshape({-1}), ln.weight_c.reshape({-1}),
                  ln.bias_c.reshape({-1})});
}

void finish_forward_ln(bool need_workspace, LayerOutputs& out, Tensor norm_x, Tensor norm_h,
                       Tensor norm_c, Tensor rstd) {
  const auto opts = out.output.options();
  auto kept = [&](Tensor t) { return need_workspace ? std::move(t) : at::empty({0}, opts); };
  out.norm_x = kept(std::move(norm_x));
  out.norm_h = kept(std::move(norm_h));
  out.norm_c = kept(std::move(norm_c));
  out.rstd = kept(std::move(rstd));
}

using cpu_gemm::Product;

Tensor product(Product kind, const Tensor& a, const Tensor& b) {
  return a.is_cpu() ? cpu_gemm::mm(kind, a, b) : at::mm(a, b);
}

LayerGrads input_and_weight_gradients(const LayerPlan& plan, const SequenceMasks& seq,
                                      const Tensor& input, const Tensor& weight_ih,
                                      const Tensor& da_ih, const Tensor& da_hh, const Tensor& hs,
                                      const Tensor& dproj, const Tensor& htil, Tensor grad_h0,
                                      Tensor grad_c0) {
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R, GH = plan.G * H;
  const auto opts = input.options();
  const bool shared = da_ih.is_same(da_hh);
  const Tensor dx2 = da_ih.view({T * B, GH});
  const Tensor dh2 = shared ? dx2 : da_hh.view({T * B, GH});
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  LayerGrads g;
  g.grad_input = product(Product::kGradInput, dx2, weight_ih.contiguous()).view({T, B, I});
  if (seq.input_scale.defined()) g.grad_input.mul_(seq.input_scale.unsqueeze(0));
  g.grad_weight_ih = product(Product::kGradWeight, dx2.t(), xhat.view({T * B, I}));
  // ĥ_{t-1}: the state each step read, in input order, with its recurrent-dropout mask.
  Tensor hprev = hs.narrow(0, 0, T);
  if (plan.reverse) hprev = hprev.flip(0);
  if (seq.recurrent_scale.defined()) hprev = hprev * seq.recurrent_scale.unsqueeze(0);
  g.grad_weight_hh = product(Product::kGradWeight, dh2.t(), hprev.reshape({T * B, R}));
  if (seq.weight_scale.defined()) g.grad_weight_hh.mul_(seq.weight_scale);
  if (plan.has_bias && cell_spec(plan.cell).layer_norm) {
    // The LN-LSTM's bias enters after the LNs: its driver sums dL/da itself.
    g.grad_bias_ih = g.grad_bias_hh = Tensor();
  } else if (plan.has_bias) {
    g.grad_bias_ih = dx2.sum(0);
    g.grad_bias_hh = shared ? g.grad_bias_ih.clone() : dh2.sum(0);
  } else {
    g.grad_bias_ih = at::empty({0}, opts);
    g.grad_bias_hh = at::empty({0}, opts);
  }
  g.grad_weight_hr = plan.has_proj ? product(Product::kGradWeight, dproj.view({T * B, R}).t(),
                                             htil.view({T * B, H}))
                                   : at::empty({0}, opts);
  g.grad_h0 = std::move(grad_h0);
  g.grad_c0 = grad_c0.defined() ? std::move(grad_c0) : at::empty({0}, opts);
  return g;
}

LstmForwardResult lstm_forward_result(LayerOutputs o) {
  return {std::move(o.output), std::move(o.h_n), std::move(o.c_n), std::move(o.gates),
          std::move(o.hs),     std::move(o.cs),  std::move(o.ctil)};
}

LstmBackwardResult lstm_backward_result(LayerGrads g) {
  // The LSTM's two biases enter as a sum: one gradient serves both (the schema returns it once).
  return {std::move(g.grad_input),     std::move(g.grad_h0),     std::move(g.grad_c0),
          std::move(g.grad_weight_ih), std::move(g.grad_weight_hh), std::move(g.grad_bias_ih),
          std::move(g.grad_weight_hr)};
}

GruForwardResult gru_forward_result(LayerOutputs o) {
  return {std::move(o.output), std::move(o.h_n), std::move(o.gates), std::move(o.hs)};
}

GruBackwardResult gru_backward_result(LayerGrads g) {
  return {std::move(g.grad_input),     std::move(g.grad_h0),      std::move(g.grad_weight_ih),
          std::move(g.grad_weight_hh), std::move(g.grad_bias_ih), std::move(g.grad_bias_hh)};
}

LnLstmForwardResult ln_lstm_forward_result(LayerOutputs o) {
  return {std::move(o.output), std::move(o.h_n),    std::move(o.c_n),    std::move(o.gates),
          std::move(o.hs),     std::move(o.cs),     std::move(o.norm_x), std::move(o.norm_h),
          std::move(o.norm_c), std::move(o.rstd)};
}

LnLstmBackwardResult ln_lstm_backward_result(LayerGrads g) {
  return {std::move(g.grad_input),        std::move(g.grad_h0),
          std::move(g.grad_c0),           std::move(g.grad_weight_ih),
          std::move(g.grad_weight_hh),    std::move(g.grad_bias_ih),
          std::move(g.grad_weight_hr),    std::move(g.grad_ln_weight_ih),
          std::move(g.grad_ln_weight_hh), std::move(g.grad_ln_weight_c),
          std::move(g.grad_ln_bias_c)};
}

std::vector<Tensor> layer_masks(int64_t gates, int64_t seed, int64_t T, int64_t B, int64_t I,
                                int64_t H, int64_t R, int64_t layer, bool reverse,
                                at::ArrayRef<double> rates, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(gates == 3 || gates == 4, "rnnfused: gates must be 4 (LSTM) or 3 (GRU), got ",
                    gates);
  TORCH_CHECK_VALUE(T >= 0 && B >= 0 && I >= 0 && H > 0 && R > 0,
                    "rnnfused: the masks need seq_len, batch, input_size >= 0 and "
                    "hidden_size, proj/recurrent size > 0");
  TORCH_CHECK_VALUE(seed >= 0, "rnnfused: seed must lie in [0, 2**63), got ", seed);
  check_rates(rates);
  // kind -> (steps, rows, cols); per-sequence and per-call kinds use t = 0.
  const int64_t shapes[kNumMaskKinds][3] = {{1, B, I},      {1, B, R}, {1, gates * H, R},
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
