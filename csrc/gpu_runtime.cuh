// The CUDA runtime as the layer driver (layer_cuda_driver.cuh) uses it: the one launch helper
// through which every kernel launch goes, the grid sizing rules, and the calls around the launches
// (the current stream, the device guard, the capture status, the copy of lengths to the device,
// the allocation of the driver's buffers).
//
// Two forms of the same interface (namespace rnnfused::gpu):
//  - on a CUDA build (nvcc, a CUDA build of torch): the CUDA runtime and ATen's CUDA context;
//  - with RNNFUSED_CUDA_SIM (SPEC §8): the CUDA execution model simulated on the CPU
//    (sim/cuda_sim.h), for CI without a GPU. The driver and the kernel bodies are the same source
//    in both; the simulated build runs them on CPU tensors, its GEMMs through the same ATen calls,
//    and fills every buffer it allocates with NaN so that an element no kernel wrote shows up.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#ifdef RNNFUSED_CUDA_SIM
#include "sim/cuda_sim.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace rnnfused::gpu {

using at::Tensor;

// Threads per block of every kernel.
constexpr int kThreads = 128;

// Blocks for `work` items, one per thread; a grid-stride loop covers whatever the cap leaves.
inline int64_t num_blocks(int64_t work) {
  return std::min<int64_t>((work + kThreads - 1) / kThreads, int64_t(1) << 20);
}

// Blocks for `rows` rows (samples) of a kernel that gives each row a block of its own; the kernel
// loops over the rows a capped grid leaves.
inline int64_t row_blocks(int64_t rows) { return std::min<int64_t>(rows, 65535); }

#ifndef RNNFUSED_CUDA_SIM

using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;

inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }

inline bool stream_capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

inline void check_device(const Tensor& input) {
  TORCH_CHECK_VALUE(input.is_cuda(), "rnnfused: the CUDA kernels need input on a CUDA device, got ",
                    input.device());
}

// A small int64 host tensor on the device, queued on the current stream. Staged through pinned
// memory, because a copy from pageable memory would wait for the stream's work.
inline Tensor to_device_async(const Tensor& host, const at::Device& device) {
  return host.contiguous().pin_memory().to(device, at::kLong, /*non_blocking=*/true);
}

inline Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return at::empty(sizes, opts);
}

// Launches kKernel<<<grid, block, shared_bytes, stream>>>(args...) and checks the launch; an
// empty grid launches nothing.
template <auto kKernel, typename... Args>
void launch(int64_t grid, int block, size_t shared_bytes, Stream stream, const Args&... args) {
  if (grid <= 0) return;
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "rnnfused: grid of ", grid, " blocks");
  kKernel<<<static_cast<unsigned>(grid), block, shared_bytes, stream>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#else  // RNNFUSED_CUDA_SIM

using Stream = sim::Stream;
using DeviceGuard = sim::DeviceGuard;

inline Stream current_stream() { return Stream{}; }

inline bool stream_capturing() { return false; }

inline void check_device(const Tensor& input) {
  TORCH_CHECK_VALUE(input.device().is_cpu(),
                    "rnnfused: the simulated CUDA kernels take CPU tensors, got ", input.device());
}

inline Tensor to_device_async(const Tensor& host, const at::Device& /*device*/) {
  return host.contiguous().to(at::kLong, /*non_blocking=*/false, /*copy=*/true);
}

inline Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  return sim::poisoned_empty(sizes, opts);
}

template <auto kKernel, typename... Args>
void launch(int64_t grid, int block, size_t shared_bytes, Stream /*stream*/, const Args&... args) {
  if (grid <= 0) return;
  TORCH_CHECK(grid <= std::numeric_limits<int32_t>::max(), "rnnfused: grid of ", grid, " blocks");
  sim::launch(sim::kernel_name<kKernel>(), reinterpret_cast<const void*>(kKernel), grid, block,
              shared_bytes, [&] { kKernel(args...); });
}

#endif

}  // namespace rnnfused::gpu
