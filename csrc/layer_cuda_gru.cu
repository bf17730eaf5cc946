// The CUDA driver instantiated for the GRU (its own translation unit: see layer_cuda_driver.cuh).
#include "layer_cuda_driver.cuh"

namespace rnnfused::cuda {

template <>
LayerOutputs forward<CellKind::kGru>(const ForwardArgs& args) {
  return layer_forward_cuda<CellKind::kGru>(args);
}

template <>
LayerGrads backward<CellKind::kGru>(const BackwardArgs& args) {
  return layer_backward_cuda<CellKind::kGru>(args);
}

}  // namespace rnnfused::cuda
