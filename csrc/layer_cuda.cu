// The CUDA implementations of the layer ops: layer_ops.h's entry points over the per-cell
// drivers of layer_cuda.h (the kernels are in layer_cuda_driver.cuh).
#include <torch/library.h>

#include "layer_cuda.h"
#include "layer_ops.h"

namespace rnnfused {

namespace {

// The layer driver of this device, as layer_ops.h calls it.
struct CudaDevice {
  template <CellKind kCell>
  static LayerOutputs forward(const ForwardArgs& args) { return cuda::forward<kCell>(args); }
  template <CellKind kCell>
  static LayerGrads backward(const BackwardArgs& args) { return cuda::backward<kCell>(args); }
};

}  // namespace

TORCH_LIBRARY_IMPL(rnnfused, CUDA, m) { register_layer_ops<CudaDevice>(m); }

}  // namespace rnnfused
