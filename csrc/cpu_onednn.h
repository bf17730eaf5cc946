// oneDNN's matrix product as torch carries it, for the CPU GEMM backends (cpu_gemm.h).
//
// torch links oneDNN statically and exports none of its C API, so the product is reached through
// torch's own registered ops: mkldnn::_linear_pointwise (X W^T, W plain or packed) and
// mkldnn::_reorder_linear_weight (W packed once for a batch size), one dispatcher call each. On a
// torch built without oneDNN, or with torch.backends.mkldnn.enabled = False, available() is false
// and nothing here is called.
#pragma once

#include <ATen/ATen.h>

namespace rnnfused {
namespace onednn {

// Whether torch has the ops and the user has not turned oneDNN off.
bool available();

// W (n x k) packed for products with `rows` rows of X.
at::Tensor pack_weight(const at::Tensor& weight, int64_t rows);

// X (m x k, any strides) W^T, W (n x k) plain (any strides) or from pack_weight: a new (m x n)
// tensor.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight);

}  // namespace onednn
}  // namespace rnnfused
