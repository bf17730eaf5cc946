// The CUDA driver instantiated for the LSTM (its own translation unit: see layer_cuda_driver.cuh).
#include "layer_cuda_driver.cuh"

namespace rnnfused::cuda {

template <>
LayerOutputs forward<CellKind::kLstm>(const ForwardArgs& args) {
  return layer_forward_cuda<CellKind::kLstm>(args);
}

template <>
LayerGrads backward<CellKind::kLstm>(const BackwardArgs& args) {
  return layer_backward_cuda<CellKind::kLstm>(args);
}

}  // namespace rnnfused::cuda
