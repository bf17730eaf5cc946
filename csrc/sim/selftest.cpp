// Kernels with the mistakes the simulator exists to catch, each next to its correct form, for
// tests/test_cuda_sim.py to check that the simulator catches them (a simulator that let them pass
// would pass every test of the real kernels too). Launched through the same helper as the driver.
#include <torch/extension.h>

#include "../gpu_runtime.cuh"

namespace {

using rnnfused::gpu::kThreads;

// The sum of one value per thread, as the LN-LSTM's block_sum computes it: a warp shuffle
// reduction, then the warps' partial sums through shared memory. kMissingBarrier leaves out the
// barrier between the warps' writes and the reads; kLaneLeftOut gives the shuffles a mask without
// lane 31; kLaneAbsent shuffles in half the lanes with a mask naming all 32; kDivergentBarrier
// puts the barrier inside a branch that only the first warp takes.
enum Variant : int {
  kCorrect,
  kMissingBarrier,
  kLaneLeftOut,
  kLaneAbsent,
  kDivergentBarrier
};

template <int kVariant>
__global__ void block_sum_kernel(const float* __restrict__ in, float* __restrict__ out) {
  __shared__ float partial[32];
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  const unsigned mask = kVariant == kLaneLeftOut ? 0x7fffffffu : 0xffffffffu;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (kVariant != kLaneAbsent || lane < 16) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(mask, v, offset);
  }
  if (lane == 0) partial[warp] = v;
  if constexpr (kVariant == kDivergentBarrier) {
    if (warp == 0) __syncthreads();  // only the first warp waits
  } else if constexpr (kVariant != kMissingBarrier) {
    __syncthreads();
  }
  float total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
  out[blockIdx.x * blockDim.x + threadIdx.x] = total;
}

// out = in + 1 over n elements with the bounds check off by one when kOffByOne (reads and writes
// element n).
template <bool kOffByOne>
__global__ void add_one_kernel(const float* __restrict__ in, float* __restrict__ out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (kOffByOne ? i <= n : i < n) out[i] = in[i] + 1.f;
}

template <int kVariant>
at::Tensor run_block_sum(const at::Tensor& in) {
  TORCH_CHECK(in.dim() == 2 && in.size(1) == kThreads && in.scalar_type() == at::kFloat);
  const at::Tensor x = in.contiguous();
  at::Tensor out = rnnfused::gpu::empty(x.sizes(), x.options());
  rnnfused::gpu::launch<block_sum_kernel<kVariant>>(x.size(0), kThreads, 0,
                                                     rnnfused::gpu::current_stream(),
                                                     x.data_ptr<float>(), out.data_ptr<float>());
  return out;
}

}  // namespace

// Registered by module.cpp.
void register_selftests(pybind11::module& m) {
  m.def("selftest_block_sum", [](const at::Tensor& in, const std::string& variant) {
    if (variant == "correct") return run_block_sum<kCorrect>(in);
    if (variant == "missing_barrier") return run_block_sum<kMissingBarrier>(in);
    if (variant == "lane_left_out") return run_block_sum<kLaneLeftOut>(in);
    if (variant == "lane_absent") return run_block_sum<kLaneAbsent>(in);
    if (variant == "divergent_barrier") return run_block_sum<kDivergentBarrier>(in);
    TORCH_CHECK_VALUE(false, "unknown variant ", variant);
  }, "Each row of in (blocks, 128) summed by a block: every element of a row gets the row's sum");
  m.def("selftest_add_one", [](const at::Tensor& in, bool off_by_one) {
    const at::Tensor x = in.contiguous();
    at::Tensor out = rnnfused::gpu::empty(x.sizes(), x.options());
    const int64_t n = x.numel();
    if (off_by_one) {
      rnnfused::gpu::launch<add_one_kernel<true>>(rnnfused::gpu::num_blocks(n), kThreads, 0,
                                                  rnnfused::gpu::current_stream(),
                                                  x.data_ptr<float>(), out.data_ptr<float>(), n);
    } else {
      rnnfused::gpu::launch<add_one_kernel<false>>(rnnfused::gpu::num_blocks(n), kThreads, 0,
                                                   rnnfused::gpu::current_stream(),
                                                   x.data_ptr<float>(), out.data_ptr<float>(), n);
    }
    return out;
  }, "in + 1; off_by_one: the bounds check lets element n through (ASan reports it)");
}
