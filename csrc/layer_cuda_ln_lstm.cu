// The CUDA driver instantiated for the layer-normalized LSTM (its own translation unit: see
// layer_cuda_driver.cuh).
#include "layer_cuda_driver.cuh"

namespace rnnfused::cuda {

template <>
LayerOutputs forward<CellKind::kLnLstm>(const ForwardArgs& args) {
  return layer_forward_cuda<CellKind::kLnLstm>(args);
}

template <>
LayerGrads backward<CellKind::kLnLstm>(const BackwardArgs& args) {
  return layer_backward_cuda<CellKind::kLnLstm>(args);
}

}  // namespace rnnfused::cuda
