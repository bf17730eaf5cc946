// The CUDA execution model on the CPU (SPEC §8): what the kernels of layer_cuda_driver.cuh need
// from CUDA, for the simulated build, which compiles them with the host compiler against the CPU
// build of torch (gpu_runtime.cuh includes this header when RNNFUSED_CUDA_SIM is defined; nothing
// in a user's build does).
//
// A launch runs its grid block by block. Each CUDA thread of a block is a fiber with a stack of its
// own; exactly one runs at a time, until it reaches __syncthreads(), a warp shuffle or its end,
// in the order the run asks for (forward, reverse or a seeded shuffle, set_thread_order). A barrier
// that some thread of the block never reaches (it ended, or waits at a shuffle), two threads
// waiting at different __syncthreads() calls, and a shuffle whose mask names a lane that does not
// arrive (or whose source lane is not in the mask) stop the run with an error naming the kernel.
// __shared__ memory is filled with NaN (all bits set) at the start of every block, and so is every
// buffer the driver allocates (poisoned_empty), so that a read before a write shows up as NaN.
//
// What this cannot show: speed, memory coalescing, bank conflicts, CUDA-graph capture, the device
// generator, the device's own expf/tanhf (the host polynomials of cell_math.h run here), and real
// warp scheduling (independent thread scheduling's interleavings between barriers are not tried).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

// ---------------------------------------------------------------------------------------------
// Declaration specifiers: host functions here. A __shared__ variable is a function-local static,
// one for the block that runs; the simulator finds a kernel's in the module's symbol table (the
// statics named after the kernel's own symbol) and fills them with NaN when a block starts. So
// __shared__ arrays must be declared in the kernel itself, not in a __device__ function it calls
// (the simulator would not poison those).
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static

// The built-in index variables. One launch runs at a time (a process-wide lock), and the
// simulator sets these before it resumes a thread.
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};
using uint3 = dim3;
extern dim3 threadIdx, blockIdx, blockDim, gridDim;
constexpr int warpSize = 32;

namespace rnnfused::sim {

struct Stream {};

// The device guard of the simulated device (the CPU): nothing to switch.
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

enum class ShuffleKind { kIndex, kUp, kDown, kXor };

// Thread side: wait at the block's barrier; exchange a value within the warp.
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask);
uint64_t shuffle(ShuffleKind kind, unsigned mask, uint64_t bits, int lane_arg, int width);

// Host side: run `body` (which calls the kernel at `kernel`) as the kernel `name` over
// grid x block threads.
void launch(const std::string& name, const void* kernel, int64_t grid, int block,
            size_t shared_bytes, const std::function<void()>& body);

// at::empty, filled with NaN (floating point) or all bits set (integers).
at::Tensor poisoned_empty(at::IntArrayRef sizes, const at::TensorOptions& opts);

// The order in which the threads of a block (and the blocks of a grid) run.
void set_thread_order(const std::string& order, uint64_t seed);
std::string thread_order();

// The launches since the last clear: kernel name, grid, block.
struct Launch {
  std::string kernel;
  int64_t grid;
  int block;
};
void set_launch_logging(bool on);
std::vector<Launch> launch_log(bool clear);

// The name of a kernel from the launch helper's template argument, as the compiler spells it in
// kernel_name's signature ("... [with auto kKernel = <name>; ...]").
std::string kernel_name_from(const char* signature);

template <auto kKernel>
const std::string& kernel_name() {
  static const std::string name = kernel_name_from(__PRETTY_FUNCTION__);
  return name;
}

template <typename T>
T shuffle_value(ShuffleKind kind, unsigned mask, T v, int lane_arg, int width) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>,
                "the simulator shuffles values of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle(kind, mask, bits, lane_arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace rnnfused::sim

// ---------------------------------------------------------------------------------------------
// Synchronization and warp shuffles
// ---------------------------------------------------------------------------------------------
#define __syncthreads() ::rnnfused::sim::syncthreads(__FILE__, __LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) { ::rnnfused::sim::syncwarp(mask); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  return ::rnnfused::sim::shuffle_value(::rnnfused::sim::ShuffleKind::kIndex, mask, v, src_lane,
                                        width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::rnnfused::sim::shuffle_value(::rnnfused::sim::ShuffleKind::kUp, mask, v,
                                        static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  return ::rnnfused::sim::shuffle_value(::rnnfused::sim::ShuffleKind::kDown, mask, v,
                                        static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  return ::rnnfused::sim::shuffle_value(::rnnfused::sim::ShuffleKind::kXor, mask, v, lane_mask,
                                        width);
}

// ---------------------------------------------------------------------------------------------
// Atomics: one thread runs at a time, so a read-modify-write is atomic as written.
// ---------------------------------------------------------------------------------------------
namespace rnnfused::sim {
// *address = update(*address); returns the old value.
template <typename T, typename F>
T atomic_update(T* address, F update) {
  const T old = *address;
  *address = update(old);
  return old;
}
}  // namespace rnnfused::sim

template <typename T>
T atomicAdd(T* a, T v) { return ::rnnfused::sim::atomic_update(a, [&](T o) { return o + v; }); }
template <typename T>
T atomicSub(T* a, T v) { return ::rnnfused::sim::atomic_update(a, [&](T o) { return o - v; }); }
template <typename T>
T atomicMax(T* a, T v) {
  return ::rnnfused::sim::atomic_update(a, [&](T o) { return o < v ? v : o; });
}
template <typename T>
T atomicMin(T* a, T v) {
  return ::rnnfused::sim::atomic_update(a, [&](T o) { return v < o ? v : o; });
}
template <typename T>
T atomicExch(T* a, T v) { return ::rnnfused::sim::atomic_update(a, [&](T) { return v; }); }
template <typename T>
T atomicCAS(T* a, T compare, T v) {
  return ::rnnfused::sim::atomic_update(a, [&](T o) { return o == compare ? v : o; });
}

// ---------------------------------------------------------------------------------------------
// Intrinsics: the fast-math forms as their exact counterparts (the device's are approximations)
// ---------------------------------------------------------------------------------------------
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}

// half and bfloat16: torch's host types, which the kernels' scalar_t already is.
using __half = c10::Half;
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half(float x) { return __half(x); }
inline float __half2float(__half x) { return static_cast<float>(x); }
inline __nv_bfloat16 __float2bfloat16(float x) { return __nv_bfloat16(x); }
inline float __bfloat162float(__nv_bfloat16 x) { return static_cast<float>(x); }
