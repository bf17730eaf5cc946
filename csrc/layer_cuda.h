// The CUDA layer driver's entry points, one pair per cell. Each is defined in its cell's
// translation unit (layer_cuda_lstm.cu, layer_cuda_gru.cu, layer_cuda_ln_lstm.cu), which
// instantiates the driver of layer_cuda_driver.cuh for that cell; layer_cuda.cu registers them.
#pragma once

#include "layer.h"

namespace rnnfused::cuda {

template <CellKind kCell>
LayerOutputs forward(const ForwardArgs& args);
template <CellKind kCell>
LayerGrads backward(const BackwardArgs& args);

template <>
LayerOutputs forward<CellKind::kLstm>(const ForwardArgs& args);
template <>
LayerGrads backward<CellKind::kLstm>(const BackwardArgs& args);
template <>
LayerOutputs forward<CellKind::kGru>(const ForwardArgs& args);
template <>
LayerGrads backward<CellKind::kGru>(const BackwardArgs& args);
template <>
LayerOutputs forward<CellKind::kLnLstm>(const ForwardArgs& args);
template <>
LayerGrads backward<CellKind::kLnLstm>(const BackwardArgs& args);

}  // namespace rnnfused::cuda
