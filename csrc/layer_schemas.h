// The schemas of the layer ops (SPEC §5), defined once for every library that registers them:
// torch.ops.rnnfused (registration.cpp) and the CUDA simulator's test-only torch.ops.rnnfused_sim
// (sim/module.cpp).
#pragma once

#include <torch/library.h>

namespace rnnfused {

inline void define_layer_ops(torch::Library& m) {
  m.def(
      "lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor? lengths, Tensor seed, "
      "int layer, bool reverse, bool training, float[] rates, bool need_workspace) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor hs, Tensor cs, Tensor ctil)");
  m.def(
      "lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor? lengths, Tensor seed, "
      "int layer, bool reverse, bool training, float[] rates, Tensor gates, Tensor hs, Tensor cs, "
      "Tensor ctil, bool has_bias) -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias, Tensor grad_weight_hr)");
  m.def(
      "gru_forward(Tensor input, Tensor h0, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? lengths, Tensor seed, int layer, bool reverse, bool training, "
      "float[] rates, bool need_workspace) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hs)");
  m.def(
      "gru_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? lengths, Tensor seed, int layer, bool reverse, bool training, "
      "float[] rates, Tensor gates, Tensor hs, bool has_bias) -> (Tensor grad_input, "
      "Tensor grad_h0, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias_ih, "
      "Tensor grad_bias_hh)");
  m.def(
      "ln_lstm_forward(Tensor input, Tensor h0, Tensor c0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? weight_hr, Tensor ln_weight_ih, "
      "Tensor ln_weight_hh, Tensor ln_weight_c, Tensor ln_bias_c, Tensor? lengths, Tensor seed, "
      "int layer, bool reverse, bool training, float[] rates, bool need_workspace) -> "
      "(Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor hs, Tensor cs, "
      "Tensor norm_x, Tensor norm_h, Tensor norm_c, Tensor rstd)");
  m.def(
      "ln_lstm_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor ln_weight_ih, "
      "Tensor ln_weight_hh, Tensor ln_weight_c, Tensor ln_bias_c, Tensor? lengths, Tensor seed, "
      "int layer, bool reverse, bool training, float[] rates, Tensor gates, Tensor hs, Tensor cs, "
      "Tensor norm_x, Tensor norm_h, Tensor norm_c, Tensor rstd, bool has_bias) -> "
      "(Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_weight_ih, "
      "Tensor grad_weight_hh, Tensor grad_bias, Tensor grad_weight_hr, Tensor grad_ln_weight_ih, "
      "Tensor grad_ln_weight_hh, Tensor grad_ln_weight_c, Tensor grad_ln_bias_c)");
}

}  // namespace rnnfused
