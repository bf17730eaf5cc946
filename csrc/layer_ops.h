// The op entry points (lstm_, gru_ and ln_lstm_ forward and backward), written once
// for both devices: each unpacks the schema's arguments into ForwardArgs / BackwardArgs, calls
// the device's layer driver for its cell, and packs the result into the schema's tuple.
//
// A device provides a type with
//   template <CellKind kCell> static LayerOutputs forward(const ForwardArgs&);
//   template <CellKind kCell> static LayerGrads backward(const BackwardArgs&);
// and registers the ops with register_layer_ops<Device>(m) inside its TORCH_LIBRARY_IMPL.
#pragma once

#include <torch/library.h>

#include "layer.h"

namespace rnnfused {

template <typename Device>
struct LayerOps {
  static LstmForwardResult lstm_forward(const Tensor& input, const Tensor& h0, const Tensor& c0,
                                        const Tensor& weight_ih, const Tensor& weight_hh,
                                        const c10::optional<Tensor>& bias_ih,
                                        const c10::optional<Tensor>& bias_hh,
                                        const c10::optional<Tensor>& weight_hr,
                                        const c10::optional<Tensor>& lengths, const Tensor& seed,
                                        int64_t layer, bool reverse, bool training,
                                        at::ArrayRef<double> rates, bool need_workspace) {
    const c10::optional<Tensor> c0_opt(c0);
    return lstm_forward_result(Device::template forward<CellKind::kLstm>(
        {input, h0, c0_opt, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed,
         layer, reverse, training, rates, need_workspace}));
  }

  static LstmBackwardResult lstm_backward(
      const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
      const c10::optional<Tensor>& weight_hr, const c10::optional<Tensor>& lengths,
      const Tensor& seed, int64_t layer, bool reverse, bool training, at::ArrayRef<double> rates,
      const Tensor& gates, const Tensor& hs, const Tensor& cs, const Tensor& ctil, bool has_bias) {
    const c10::optional<Tensor> grad_c_n_opt(grad_c_n), cs_opt(cs), ctil_opt(ctil);
    return lstm_backward_result(Device::template backward<CellKind::kLstm>(
        {grad_output, grad_h_n, grad_c_n_opt, input, weight_ih, weight_hh, weight_hr, lengths,
         seed, layer, reverse, training, rates, gates, hs, cs_opt, ctil_opt, has_bias}));
  }

  static GruForwardResult gru_forward(const Tensor& input, const Tensor& h0,
                                      const Tensor& weight_ih, const Tensor& weight_hh,
                                      const c10::optional<Tensor>& bias_ih,
                                      const c10::optional<Tensor>& bias_hh,
                                      const c10::optional<Tensor>& lengths, const Tensor& seed,
                                      int64_t layer, bool reverse, bool training,
                                      at::ArrayRef<double> rates, bool need_workspace) {
    const c10::optional<Tensor> none;
    return gru_forward_result(Device::template forward<CellKind::kGru>(
        {input, h0, none, weight_ih, weight_hh, bias_ih, bias_hh, none, lengths, seed, layer,
         reverse, training, rates, need_workspace}));
  }

  static GruBackwardResult gru_backward(const Tensor& grad_output, const Tensor& grad_h_n,
                                        const Tensor& input, const Tensor& weight_ih,
                                        const Tensor& weight_hh,
                                        const c10::optional<Tensor>& lengths, const Tensor& seed,
                                        int64_t layer, bool reverse, bool training,
                                        at::ArrayRef<double> rates, const Tensor& gates,
                                        const Tensor& hs, bool has_bias) {
    const c10::optional<Tensor> none;
    return gru_backward_result(Device::template backward<CellKind::kGru>(
        {grad_output, grad_h_n, none, input, weight_ih, weight_hh, none, lengths, seed, layer,
         reverse, training, rates, gates, hs, none, none, has_bias}));
  }

  static LnLstmForwardResult ln_lstm_forward(
      const Tensor& input, const Tensor& h0, const Tensor& c0, const Tensor& weight_ih,
      const Tensor& weight_hh, const c10::optional<Tensor>& bias_ih,
      const c10::optional<Tensor>& bias_hh, const c10::optional<Tensor>& weight_hr,
      const Tensor& ln_weight_ih, const Tensor& ln_weight_hh, const Tensor& ln_weight_c,
      const Tensor& ln_bias_c, const c10::optional<Tensor>& lengths, const Tensor& seed,
      int64_t layer, bool reverse, bool training, at::ArrayRef<double> rates,
      bool need_workspace) {
    const c10::optional<Tensor> c0_opt(c0);
    const LayerNormParams ln{ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c};
    return ln_lstm_forward_result(Device::template forward<CellKind::kLnLstm>(
        {input, h0, c0_opt, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed,
         layer, reverse, training, rates, need_workspace, &ln}));
  }

  static LnLstmBackwardResult ln_lstm_backward(
      const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
      const Tensor& input, const Tensor& weight_ih, const Tensor& weight_hh,
      const c10::optional<Tensor>& weight_hr, const Tensor& ln_weight_ih,
      const Tensor& ln_weight_hh, const Tensor& ln_weight_c, const Tensor& ln_bias_c,
      const c10::optional<Tensor>& lengths, const Tensor& seed, int64_t layer, bool reverse,
      bool training, at::ArrayRef<double> rates, const Tensor& gates, const Tensor& hs,
      const Tensor& cs, const Tensor& norm_x, const Tensor& norm_h, const Tensor& norm_c,
      const Tensor& rstd, bool has_bias) {
    const c10::optional<Tensor> grad_c_n_opt(grad_c_n), cs_opt(cs), none;
    const LayerNormParams ln{ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c};
    const LayerNormWorkspace ln_ws{norm_x, norm_h, norm_c, rstd};
    return ln_lstm_backward_result(Device::template backward<CellKind::kLnLstm>(
        {grad_output, grad_h_n, grad_c_n_opt, input, weight_ih, weight_hh, weight_hr, lengths,
         seed, layer, reverse, training, rates, gates, hs, cs_opt, none, has_bias, &ln, &ln_ws}));
  }
};

template <typename Device>
void register_layer_ops(torch::Library& m) {
  m.impl("ln_lstm_forward", &LayerOps<Device>::ln_lstm_forward);
  m.impl("ln_lstm_backward", &LayerOps<Device>::ln_lstm_backward);
  m.impl("lstm_forward", &LayerOps<Device>::lstm_forward);
  m.impl("lstm_backward", &LayerOps<Device>::lstm_backward);
  m.impl("gru_forward", &LayerOps<Device>::gru_forward);
  m.impl("gru_backward", &LayerOps<Device>::gru_backward);
}

}  // namespace rnnfused
