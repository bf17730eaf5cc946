// CUDA forward and backward of the layer ops (SPEC §2, §2b, §5): the same functions as
// layer_cpu.cpp, with the same masks, workspace and schemas, for every cell.
//
// This header holds the whole driver as templates over the cell; each cell's translation unit
// (layer_cuda_lstm.cu, layer_cuda_gru.cu, layer_cuda_ln_lstm.cu) includes it and instantiates it
// for its cell alone, so that the build compiles the cells in parallel (one unit for all took
// ~150 s of one core for sm_90 alone); layer_cuda.cu registers them. Everything here has internal
// linkage (an unnamed namespace): each unit keeps its own kernels, and no two units can clash.
//
// One layer driver, templated over the cell (CellKind, CellTraits in layer.h), does everything
// the LSTM and the GRU share: the plan, the per-sequence masks, the input GEMM, the per-step
// recurrent GEMM, the state after each step (zoneout on h, the output, the recurrent-dropped copy
// ĥ that the next GEMM reads), lengths (as the CPU driver does, batching.h: the samples sorted by
// length, each step's GEMMs and kernels on the rows still running, the input term and the gate
// gradients packed; at a padded position the state passes through, the output is 0 and the
// workspace gates are 0), the rolling or full workspace, the split of dL/dh through zoneout in
// backward and the input and weight gradients after the loop. A cell contributes only its
// per-unit pointwise step (CudaCell below), which calls cell_math.h and re-derives nothing.
//
// Forward: one GEMM projects the (masked) inputs of all steps into an (N, G*H) scratch tensor;
// per step, one GEMM computes the recurrent term Ŵ_hh ĥ_{t-1} (the LSTM accumulates it into the
// projection, the GRU writes it with b_hh to a (B, 3H) buffer of its own, since
// n = tanh(gi_n + r ⊙ gh_n) needs it apart) and one fused pointwise kernel applies the cell with
// the per-step masks drawn from the Philox stream (philox.h), writing the post-activation gates
// to the workspace, the output and the state. An LSTM projection adds a GEMM and a small state
// kernel per step. Backward walks the steps in reverse with one fused pointwise kernel and one GEMM
// per step (two of each with a projection); the input and weight gradients are single GEMMs after
// the loop.
//
// The layer-normalized LSTM (SPEC §2c) needs per-sample reductions, so its kernels give one block
// to each sample: the input term of all steps is normalized once after the input GEMM
// (ln_rows_kernel); per step, one kernel normalizes the recurrent term, applies the cell,
// normalizes c̃ and finishes the state (ln_forward_cell_kernel), reducing inside the block. Its
// backward kernel leaves dL/da (before the input LN) and dL/dq of the output path in buffers, from
// which the gains', the bias' and the input term's gradients are computed for all steps at once
// after the loop; only the recurrent LN's backward is in the step.
//
// One thread owns a quad of four consecutive units of one sample: the Philox block that draws
// their masks is computed once (the counter layout of philox.h) and no mask is ever stored. The
// pointwise kernels are templates over the regularizer switches <kCand, kZoneC, kZoneH>, so an
// unregularized call draws no random number. Arithmetic runs in at::opmath_type<scalar_t>
// (float for half/bfloat16); the GEMMs run in the storage dtype through ATen's cuBLAS ops
// (at::addmm_out / at::mm_out into preallocated buffers: at::cuda::blas is not exported from
// libtorch_cuda, and this way torch's TF32 and reduced-precision settings apply), which accumulate
// in float. Everything is queued on the current stream; nothing here synchronizes with the host.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "batching.h"
#include "cell_math.h"
#include "gpu_runtime.cuh"
#include "layer.h"
#include "layer_cuda.h"

namespace rnnfused {

namespace {

using gpu::kThreads;
using gpu::num_blocks;
using gpu::row_blocks;

#define RNNFUSED_GRID_STRIDE(n, total)                                                        \
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < (total); \
       n += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename scalar_t>
scalar_t* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<scalar_t>() : nullptr;
}

// The projection (W_hr, proj_size > 0) exists for the LSTM only.
template <CellKind kCell>
constexpr bool kCanProject = CellTraits<kCell>::kCanProject;

// ---------------------------------------------------------------------------------------------
// Masks
// ---------------------------------------------------------------------------------------------

// A call's stream as a kernel uses it: keyed by the seed in device memory when the call's seed
// is a CUDA tensor (drawn there by torch's CUDA generator: nothing waits for the host, and a CUDA
// graph replay reads the seed its own replay drew), else by the host seed the plan read.
__device__ __forceinline__ MaskStream keyed(const MaskStream& stream, const int64_t* seed_on_device) {
  return seed_on_device != nullptr ? stream.with_seed(static_cast<uint64_t>(*seed_on_device))
                                   : stream;
}

// The device equivalent of sequence_masks(): a (rows, cols) inverted-dropout scale, t = 0.
template <typename scalar_t>
__global__ void sequence_mask_kernel(scalar_t* __restrict__ scale, int64_t rows, int64_t cols,
                                     MaskStream call_stream, const int64_t* seed_on_device,
                                     uint32_t threshold, scalar_t inv_keep) {
  const MaskStream stream = keyed(call_stream, seed_on_device);
  const int64_t quads = (cols + 3) / 4;
  RNNFUSED_GRID_STRIDE(n, rows * quads) {
    const int64_t r = n / quads, q = n % quads;
    const Philox4x32 words = stream.quad(0, r, q);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t col = q * 4 + k;
      if (col < cols) {
        scale[r * cols + col] = dropout_keep(words.v[k], threshold) ? inv_keep : scalar_t(0);
      }
    }
  }
}

SequenceMasks sequence_masks_cuda(const LayerPlan& plan, const at::TensorOptions& opts) {
  SequenceMasks out;
  auto make = [&](MaskKind kind, int64_t rows, int64_t cols) {
    Tensor scale = gpu::empty({rows, cols}, opts);
    if (scale.numel() == 0) return scale;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scale.scalar_type(),
                                    "sequence_masks_cuda", [&] {
      const int64_t quads = (cols + 3) / 4;
      gpu::launch<sequence_mask_kernel<scalar_t>>(
          num_blocks(rows * quads), kThreads, 0, gpu::current_stream(), scale.data_ptr<scalar_t>(),
          rows, cols, plan.stream(kind), plan.seed_on_device, plan.threshold(kind),
          static_cast<scalar_t>(plan.inv_keep(kind)));
    });
    return scale;
  };
  if (plan.input_dropout()) out.input_scale = make(kMaskInput, plan.B, plan.I);
  if (plan.recurrent_dropout()) out.recurrent_scale = make(kMaskRecurrent, plan.B, plan.R);
  if (plan.weight_drop()) out.weight_scale = make(kMaskWeight, plan.G * plan.H, plan.R);
  return out;
}

// What the pointwise kernels need to know about a call's per-step masks, in a form a kernel
// can take by value (LayerPlan's helpers are host code).
template <typename acc_t>
struct StepMaskParams {
  MaskStream cand, zone_c, zone_h;
  uint32_t cand_threshold, zone_c_threshold, zone_h_threshold;
  acc_t cand_inv_keep;
  acc_t zone_c_rate, zone_h_rate;  // evaluation: zoneout at its expectation
  bool training;
  const int64_t* seed_on_device;  // the call's seed in device memory, or null (see keyed())

  explicit StepMaskParams(const LayerPlan& plan)
      : cand(plan.stream(kMaskCandidate)),
        zone_c(plan.stream(kMaskZoneoutC)),
        zone_h(plan.stream(kMaskZoneoutH)),
        cand_threshold(plan.threshold(kMaskCandidate)),
        zone_c_threshold(plan.threshold(kMaskZoneoutC)),
        zone_h_threshold(plan.threshold(kMaskZoneoutH)),
        cand_inv_keep(static_cast<acc_t>(plan.inv_keep(kMaskCandidate))),
        zone_c_rate(static_cast<acc_t>(plan.rate[kMaskZoneoutC])),
        zone_h_rate(static_cast<acc_t>(plan.rate[kMaskZoneoutH])),
        training(plan.training),
        seed_on_device(plan.seed_on_device) {}

  // A kernel's first step: the streams keyed by the seed it reads from device memory, if any.
  __device__ __forceinline__ StepMaskParams resolved() const {
    StepMaskParams p = *this;
    p.cand = keyed(cand, seed_on_device);
    p.zone_c = keyed(zone_c, seed_on_device);
    p.zone_h = keyed(zone_h, seed_on_device);
    return p;
  }

  // Zoneout of one quad: the 0/1 keep-previous mask in training, the rate in evaluation.
  __device__ __forceinline__ void zoneout(const MaskStream& stream, uint32_t threshold,
                                          acc_t rate, int64_t t, int64_t b, int64_t q,
                                          acc_t (&z)[4]) const {
    if (training) {
      const Philox4x32 w = stream.quad(t, b, q);
#pragma unroll
      for (int k = 0; k < 4; ++k) z[k] = zoneout_value<acc_t>(w.v[k], threshold);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) z[k] = rate;
    }
  }
};

// The per-step masks of one quad of units (the device twin of layer_cpu.cpp's mask drawing).
template <typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
struct QuadMasks {
  acc_t cand[4] = {1, 1, 1, 1};
  acc_t zc[4] = {0, 0, 0, 0};
  acc_t zh[4] = {0, 0, 0, 0};

  // The identity masks of a padded position (nothing is computed there).
  __device__ __forceinline__ QuadMasks() {}

  __device__ __forceinline__ QuadMasks(const StepMaskParams<acc_t>& p, int64_t t, int64_t b,
                                       int64_t q, bool draw_zh) {
    if constexpr (kCand) {
      const Philox4x32 w = p.cand.quad(t, b, q);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        cand[k] = dropout_scale<acc_t>(w.v[k], p.cand_threshold, p.cand_inv_keep);
      }
    }
    if constexpr (kZoneC) p.zoneout(p.zone_c, p.zone_c_threshold, p.zone_c_rate, t, b, q, zc);
    if constexpr (kZoneH) {
      if (draw_zh) p.zoneout(p.zone_h, p.zone_h_threshold, p.zone_h_rate, t, b, q, zh);
    }
  }
};

// The sample that row b of the loop holds: with lengths the rows are sorted by length
// (batching.h), and every mask is drawn with the sample's own index (SPEC §3).
__device__ __forceinline__ int64_t sample_of(const int64_t* orig, int64_t b) {
  return orig != nullptr ? orig[b] : b;
}

// ---------------------------------------------------------------------------------------------
// The pointers of one step
// ---------------------------------------------------------------------------------------------

// The pointers of one forward step: row-major (B, ·) slices of the call's tensors. What a cell
// does not have is null.
template <typename scalar_t>
struct ForwardStep {
  const scalar_t* pre;  // (B, G*H) input term; LSTM: with the recurrent term added (a_t)
  const scalar_t* gh;   // (B, G*H) GRU: the recurrent term Ŵ_hh ĥ_{t-1} + b_hh
  const scalar_t* h_prev;
  scalar_t* h_next;     // (B, R)
  const scalar_t* c_prev;
  scalar_t* c_next;     // (B, H) LSTM
  scalar_t* gates;      // (B, 4H) workspace gates at t, or null without workspace
  scalar_t* ctil;       // (B, H) LSTM: c̃ before zoneout, or null
  scalar_t* out;        // (B, R) the output at input position t
  scalar_t* hhat_next;  // (B, R) h ⊙ mh for the next GEMM, or null without recurrent dropout
  const scalar_t* mh;   // (B, R) recurrent-dropout scale, or null
  scalar_t* htil;       // (B, H) LSTM: h̃ for the projection GEMM, or null without projection
  const int64_t* orig;  // (B) on the device: the sample of each row (Batching), or null
  // LN-LSTM: pre holds LN(W_ih x̂_t), gh the raw recurrent term (normalized in place)
  const scalar_t* bias;    // (4H) b_ih + b_hh, or null
  const scalar_t* gain_x;  // (4H) γ_ih
  const scalar_t* gain_h;  // (4H) γ_hh
  const scalar_t* gain_c;  // (H) γ_c
  const scalar_t* bias_c;  // (H) β_c
  scalar_t* norm_c;        // (B, H) out: LN(c̃)
  scalar_t* rstd;          // (B, 3) out: [1] the recurrent term's, [2] c̃'s
};

// The pointers of one backward step.
template <typename scalar_t, typename acc_t>
struct BackwardStep {
  const scalar_t* gates;    // (B, 4H) workspace gates at t
  const scalar_t* h_prev;   // (B, R) the state before the step
  const scalar_t* c_prev;   // (B, H) LSTM: cell before the step
  const scalar_t* c_tilde;  // (B, H) LSTM: c̃ of the step
  const scalar_t* dhtil;    // (B, H) LSTM with a projection: dL/dh̃ (from its GEMM), else null
  const scalar_t* dy;       // (B, R) dL/dy_t
  acc_t* zpart;             // (B, R) in: dL/dh carried from later steps, outside the GEMM;
                            //        out: the same for the step before
  const scalar_t* dhhat;    // (B, R) dL/dĥ from step s+1's GEMM, or null at the last step
  const scalar_t* mh;       // (B, R) recurrent-dropout scale, or null
  acc_t* dc;                // (B, H) LSTM: in: dL/dc after the step; out: before it
  scalar_t* da;             // (B, G*H) out: dL/d(recurrent term), the LSTM's only one (a_t)
  scalar_t* dgi;            // (B, G*H) GRU out: dL/d(input term); LSTM: null
  scalar_t* htil;           // (B, H) LSTM out with a projection: h̃ for the W_hr gradient
  scalar_t* dproj;          // (B, R) LSTM out with a projection: dL/d(W_hr h̃)
  const int64_t* orig;
  // LN-LSTM: dgi receives dL/da (before the input term's LN), da dL/d(Ŵ_hh ĥ)
  const scalar_t* norm_h;   // (B, 4H)
  const scalar_t* norm_c;   // (B, H)
  const scalar_t* rstd;     // (B, 3)
  const scalar_t* gain_h;   // (4H)
  const scalar_t* gain_c;   // (H)
  const scalar_t* bias_c;   // (H)
  scalar_t* dq;             // (B, H) out: dL/d(LN(c̃) γ_c + β_c)
};

// ---------------------------------------------------------------------------------------------
// The cells' per-unit steps: unit j of sample b (bj = b * H + j), at an active position or a
// padded one. Everything around them (masks, state, lengths) is the driver's.
// ---------------------------------------------------------------------------------------------

template <CellKind kCell>
struct CudaCell;

template <>
struct CudaCell<CellKind::kLstm> {
  static constexpr int64_t kG = CellTraits<CellKind::kLstm>::kGates;

  // The new cell (zoned out on c) and the workspace; returns h̃ = o tanh(c̃).
  template <typename scalar_t, typename acc_t, bool kZoneC>
  static __device__ __forceinline__ acc_t forward(const ForwardStep<scalar_t>& s, int64_t b,
                                                  int64_t j, int64_t bj, int64_t H, acc_t cand,
                                                  acc_t zc) {
    const scalar_t* a = s.pre + b * kG * H;
    const acc_t c_prev = static_cast<acc_t>(s.c_prev[bj]);
    const Gates<acc_t> gate =
        activate_gates<acc_t>(static_cast<acc_t>(a[j]), static_cast<acc_t>(a[H + j]),
                              static_cast<acc_t>(a[2 * H + j]), static_cast<acc_t>(a[3 * H + j]));
    const CellForward<acc_t> cell = cell_forward<acc_t>(gate, c_prev, cand);
    s.c_next[bj] =
        static_cast<scalar_t>(kZoneC ? zoneout_mix(c_prev, cell.c_tilde, zc) : cell.c_tilde);
    if (s.gates != nullptr) {
      scalar_t* g = s.gates + b * kWorkspaceGates * H;
      g[j] = static_cast<scalar_t>(gate.i);
      g[H + j] = static_cast<scalar_t>(gate.f);
      g[2 * H + j] = static_cast<scalar_t>(gate.g);
      g[3 * H + j] = static_cast<scalar_t>(gate.o);
    }
    if (s.ctil != nullptr) s.ctil[bj] = static_cast<scalar_t>(cell.c_tilde);
    return cell.h_tilde;
  }

  // dL/da_t from dL/dh̃; carries dL/dc back through the step.
  template <typename scalar_t, typename acc_t, bool kZoneC>
  static __device__ __forceinline__ void backward(const BackwardStep<scalar_t, acc_t>& s,
                                                  int64_t b, int64_t j, int64_t bj, int64_t H,
                                                  acc_t cand, acc_t zc, acc_t dh_tilde) {
    const scalar_t* g = s.gates + b * kWorkspaceGates * H;
    const Gates<acc_t> gate{static_cast<acc_t>(g[j]), static_cast<acc_t>(g[H + j]),
                            static_cast<acc_t>(g[2 * H + j]), static_cast<acc_t>(g[3 * H + j])};
    const acc_t c_tilde = static_cast<acc_t>(s.c_tilde[bj]);
    if (s.htil != nullptr) s.htil[bj] = static_cast<scalar_t>(gate.o * act_tanh(c_tilde));
    acc_t dcell = s.dc[bj];
    const GateGrads<acc_t> grad = cell_backward<acc_t>(
        gate, static_cast<acc_t>(s.c_prev[bj]), c_tilde, cand, kZoneC ? zc : acc_t(0), dh_tilde,
        dcell);
    s.dc[bj] = dcell;
    scalar_t* d = s.da + b * kG * H;
    d[j] = static_cast<scalar_t>(grad.a_i);
    d[H + j] = static_cast<scalar_t>(grad.a_f);
    d[2 * H + j] = static_cast<scalar_t>(grad.a_g);
    d[3 * H + j] = static_cast<scalar_t>(grad.a_o);
  }
};

template <>
struct CudaCell<CellKind::kGru> {
  static constexpr int64_t kG = CellTraits<CellKind::kGru>::kGates;

  // The gates and the workspace [r | z | n | gh_n]; returns h̃ = (1 - z) n̂ + z h_prev.
  template <typename scalar_t, typename acc_t, bool kZoneC>
  static __device__ __forceinline__ acc_t forward(const ForwardStep<scalar_t>& s, int64_t b,
                                                  int64_t j, int64_t bj, int64_t H, acc_t cand,
                                                  acc_t /*zc: no cell state*/) {
    const scalar_t* gi = s.pre + b * kG * H;
    const scalar_t* gh = s.gh + b * kG * H;
    const GruGates<acc_t> gate = gru_activate<acc_t>(
        static_cast<acc_t>(gi[j]), static_cast<acc_t>(gi[H + j]), static_cast<acc_t>(gi[2 * H + j]),
        static_cast<acc_t>(gh[j]), static_cast<acc_t>(gh[H + j]), static_cast<acc_t>(gh[2 * H + j]));
    if (s.gates != nullptr) {
      scalar_t* g = s.gates + b * kWorkspaceGates * H;
      g[j] = static_cast<scalar_t>(gate.r);
      g[H + j] = static_cast<scalar_t>(gate.z);
      g[2 * H + j] = static_cast<scalar_t>(gate.n);
      g[3 * H + j] = static_cast<scalar_t>(gate.hn);
    }
    return gru_cell_forward<acc_t>(gate, static_cast<acc_t>(s.h_prev[bj]), cand);
  }

  // dL/dgi_t = [dr, dz, da_n] and dL/dgh_t = [dr, dz, da_n r] from dL/dh̃; adds the share of
  // dL/dh_{t-1} that flows through z h_prev directly (the rest comes through the GEMM).
  template <typename scalar_t, typename acc_t, bool kZoneC>
  static __device__ __forceinline__ void backward(const BackwardStep<scalar_t, acc_t>& s,
                                                  int64_t b, int64_t j, int64_t bj, int64_t H,
                                                  acc_t cand, acc_t /*zc: no cell state*/,
                                                  acc_t dh_tilde) {
    const scalar_t* g = s.gates + b * kWorkspaceGates * H;
    const GruGates<acc_t> gate{static_cast<acc_t>(g[j]), static_cast<acc_t>(g[H + j]),
                               static_cast<acc_t>(g[2 * H + j]), static_cast<acc_t>(g[3 * H + j])};
    const GruGrads<acc_t> grad =
        gru_cell_backward<acc_t>(gate, static_cast<acc_t>(s.h_prev[bj]), cand, dh_tilde);
    const scalar_t d_r = static_cast<scalar_t>(grad.gi_r);
    const scalar_t d_z = static_cast<scalar_t>(grad.gi_z);
    scalar_t* dgi = s.dgi + b * kG * H;
    scalar_t* dgh = s.da + b * kG * H;
    dgi[j] = d_r;
    dgi[H + j] = d_z;
    dgi[2 * H + j] = static_cast<scalar_t>(grad.gi_n);
    dgh[j] = d_r;
    dgh[H + j] = d_z;
    dgh[2 * H + j] = static_cast<scalar_t>(grad.gh_n);
    s.zpart[bj] += grad.h_prev;
  }
};

// ---------------------------------------------------------------------------------------------
// Forward kernels. Each runs on the rows [0, rows) of its step, the samples still running (with
// lengths the loop's rows are sorted by length: batching.h); the others are forward_inactive's.
// ---------------------------------------------------------------------------------------------

// h_t from h̃_t: zoneout, the output, and the recurrent-dropped copy the next GEMM reads.
template <typename scalar_t, typename acc_t, bool kZoneH>
__device__ __forceinline__ void finish_state(const ForwardStep<scalar_t>& s, int64_t br,
                                             acc_t h_fresh, acc_t zh) {
  const acc_t h_prev = static_cast<acc_t>(s.h_prev[br]);
  const acc_t h = kZoneH ? zoneout_mix(h_prev, h_fresh, zh) : h_fresh;
  const scalar_t stored = static_cast<scalar_t>(h);
  s.h_next[br] = stored;
  s.out[br] = stored;
  // ĥ from the state as stored (as the CPU does and as backward's weight gradient sees it).
  if (s.mh != nullptr) {
    s.hhat_next[br] = static_cast<scalar_t>(static_cast<acc_t>(stored) * static_cast<acc_t>(s.mh[br]));
  }
}

// The cell of step t over (rows, H). Without a projection it also finishes the state; with one
// (LSTM) it leaves h̃ in htil for the projection GEMM.
template <CellKind kCell, typename scalar_t, typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    forward_cell_kernel(ForwardStep<scalar_t> s, StepMaskParams<acc_t> call_masks, int64_t t,
                        int64_t rows, int64_t H, bool has_proj_) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  using Cell = CudaCell<kCell>;
  using Masks = QuadMasks<acc_t, kCand, kZoneC, kZoneH>;
  const bool has_proj = kCanProject<kCell> && has_proj_;
  const int64_t quads = (H + 3) / 4;
  RNNFUSED_GRID_STRIDE(n, rows * quads) {
    const int64_t b = n / quads, q = n % quads;
    const Masks masks(mp, t, sample_of(s.orig, b), q, !has_proj);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t j = q * 4 + k;
      if (j >= H) break;
      const int64_t bj = b * H + j;
      const acc_t h_tilde = Cell::template forward<scalar_t, acc_t, kZoneC>(
          s, b, j, bj, H, masks.cand[k], masks.zc[k]);
      if (has_proj) {
        s.htil[bj] = static_cast<scalar_t>(h_tilde);
      } else {
        finish_state<scalar_t, acc_t, kZoneH>(s, bj, h_tilde, masks.zh[k]);
      }
    }
  }
}

// The state of step t over (rows, P) after the projection GEMM left W_hr h̃ in hproj (LSTM).
template <typename scalar_t, typename acc_t, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    forward_projected_state_kernel(ForwardStep<scalar_t> s, const scalar_t* __restrict__ hproj,
                                   StepMaskParams<acc_t> call_masks, int64_t t, int64_t rows,
                                   int64_t R) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  const int64_t quads = (R + 3) / 4;
  RNNFUSED_GRID_STRIDE(n, rows * quads) {
    const int64_t b = n / quads, q = n % quads;
    acc_t zh[4] = {0, 0, 0, 0};
    if constexpr (kZoneH) {
      mp.zoneout(mp.zone_h, mp.zone_h_threshold, mp.zone_h_rate, t, sample_of(s.orig, b), q, zh);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t r = q * 4 + k;
      if (r >= R) break;
      const int64_t br = b * R + r;
      finish_state<scalar_t, acc_t, kZoneH>(s, br, static_cast<acc_t>(hproj[br]), zh[k]);
    }
  }
}

// The rows [rows, B) of step t, which have ended (forward direction) or not yet begun (reverse):
// the state passes through, the output is 0, the workspace rows are 0 (c̃: the cell), and the
// LN-LSTM's normalized terms of the step are 0 (layer_cpu.cpp's forward_inactive).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    forward_inactive_kernel(ForwardStep<scalar_t> s, int64_t rows, int64_t B, int64_t H,
                            int64_t R, int64_t GH) {
  const int64_t left = B - rows;
  RNNFUSED_GRID_STRIDE(n, left * R) {
    const int64_t k = rows * R + n;
    s.h_next[k] = s.h_prev[k];
    s.out[k] = scalar_t(0);
    if (s.mh != nullptr) {
      s.hhat_next[k] = static_cast<scalar_t>(static_cast<at::opmath_type<scalar_t>>(s.h_prev[k]) *
                                             static_cast<at::opmath_type<scalar_t>>(s.mh[k]));
    }
  }
  RNNFUSED_GRID_STRIDE(n, left * H) {
    const int64_t k = rows * H + n;
    if (s.c_next != nullptr) s.c_next[k] = s.c_prev[k];
    if (s.ctil != nullptr) s.ctil[k] = s.c_prev[k];
    if (s.norm_c != nullptr) s.norm_c[k] = scalar_t(0);
  }
  if (s.gates != nullptr) {
    RNNFUSED_GRID_STRIDE(n, left * kWorkspaceGates * H) {
      s.gates[rows * kWorkspaceGates * H + n] = scalar_t(0);
    }
  }
  if (s.norm_c != nullptr) {  // LN-LSTM: the recurrent term the GEMM left unwritten, the rstds
    RNNFUSED_GRID_STRIDE(n, left * GH) const_cast<scalar_t*>(s.gh)[rows * GH + n] = scalar_t(0);
    RNNFUSED_GRID_STRIDE(n, left) s.rstd[(rows + n) * 3 + 1] = s.rstd[(rows + n) * 3 + 2] = scalar_t(0);
  }
}

// ---------------------------------------------------------------------------------------------
// Backward kernels, on the rows [0, rows) of the step (backward_inactive: the others)
// ---------------------------------------------------------------------------------------------

// dL/dh_s of the state after step s, split through zoneout on h (layer_cpu.cpp's
// backward_state). Returns dL/dh̃_s.
template <typename scalar_t, typename acc_t, bool kZoneH>
__device__ __forceinline__ acc_t backward_state(const BackwardStep<scalar_t, acc_t>& s,
                                                int64_t br, acc_t zh) {
  acc_t dh = s.zpart[br];
  if (s.dhhat != nullptr) {
    const acc_t d = static_cast<acc_t>(s.dhhat[br]);
    dh += s.mh != nullptr ? d * static_cast<acc_t>(s.mh[br]) : d;
  }
  dh += static_cast<acc_t>(s.dy[br]);
  if constexpr (kZoneH) {
    const ZoneoutGrads<acc_t> z = zoneout_backward(dh, zh);
    s.zpart[br] = z.prev;
    return z.fresh;
  } else {
    s.zpart[br] = acc_t(0);
    return dh;
  }
}

// The cell of backward step t over (rows, H); without a projection the state pass is fused in.
template <CellKind kCell, typename scalar_t, typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    backward_cell_kernel(BackwardStep<scalar_t, acc_t> s, StepMaskParams<acc_t> call_masks,
                         int64_t t, int64_t rows, int64_t H, bool has_proj_) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  using Cell = CudaCell<kCell>;
  using Masks = QuadMasks<acc_t, kCand, kZoneC, kZoneH>;
  const bool has_proj = kCanProject<kCell> && has_proj_;
  const int64_t quads = (H + 3) / 4;
  RNNFUSED_GRID_STRIDE(n, rows * quads) {
    const int64_t b = n / quads, q = n % quads;
    const Masks masks(mp, t, sample_of(s.orig, b), q, !has_proj);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t j = q * 4 + k;
      if (j >= H) break;
      const int64_t bj = b * H + j;
      const acc_t dh_tilde = has_proj ? static_cast<acc_t>(s.dhtil[bj])
                                      : backward_state<scalar_t, acc_t, kZoneH>(s, bj, masks.zh[k]);
      Cell::template backward<scalar_t, acc_t, kZoneC>(s, b, j, bj, H, masks.cand[k],
                                                       masks.zc[k], dh_tilde);
    }
  }
}

// The state of backward step t with a projection, over (rows, P): writes dL/d(W_hr h̃) (LSTM).
template <typename scalar_t, typename acc_t, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    backward_projected_state_kernel(BackwardStep<scalar_t, acc_t> s,
                                    StepMaskParams<acc_t> call_masks, int64_t t, int64_t rows,
                                    int64_t R) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  const int64_t quads = (R + 3) / 4;
  RNNFUSED_GRID_STRIDE(n, rows * quads) {
    const int64_t b = n / quads, q = n % quads;
    acc_t zh[4] = {0, 0, 0, 0};
    if constexpr (kZoneH) {
      mp.zoneout(mp.zone_h, mp.zone_h_threshold, mp.zone_h_rate, t, sample_of(s.orig, b), q, zh);
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t r = q * 4 + k;
      if (r >= R) break;
      const int64_t br = b * R + r;
      s.dproj[br] = static_cast<scalar_t>(backward_state<scalar_t, acc_t, kZoneH>(s, br, zh[k]));
    }
  }
}

// The rows [rows, ran) that ran at the step after this one (in processing order) but not at this
// one (reverse direction only): their state passed through this step, so dL/dh gains the step
// after's dL/dĥ and nothing else (layer_cpu.cpp's backward_inactive).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    backward_inactive_kernel(BackwardStep<scalar_t, acc_t> s, int64_t rows, int64_t ran,
                             int64_t R) {
  RNNFUSED_GRID_STRIDE(n, (ran - rows) * R) {
    const int64_t k = rows * R + n;
    const acc_t d = static_cast<acc_t>(s.dhhat[k]);
    s.zpart[k] += s.mh != nullptr ? d * static_cast<acc_t>(s.mh[k]) : d;
  }
}

// ---------------------------------------------------------------------------------------------
// The layer-normalized LSTM: one block per sample
// ---------------------------------------------------------------------------------------------

// The sum of v over the block, returned to every thread. shared: 32 acc_t.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* shared) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  acc_t total = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += shared[w];
  return total;
}

// LN of one row of n values in place by the whole block (two passes); returns its rstd.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t block_normalize_row(scalar_t* v, int64_t n, acc_t* shared) {
  acc_t sum = 0;
  for (int64_t u = threadIdx.x; u < n; u += blockDim.x) sum += static_cast<acc_t>(v[u]);
  const acc_t mean = block_sum(sum, shared) / acc_t(n);
  acc_t sq = 0;
  for (int64_t u = threadIdx.x; u < n; u += blockDim.x) {
    const acc_t d = static_cast<acc_t>(v[u]) - mean;
    sq += d * d;
  }
  const acc_t r = layer_norm_rstd<acc_t>(block_sum(sq, shared), n);
  for (int64_t u = threadIdx.x; u < n; u += blockDim.x) {
    v[u] = static_cast<scalar_t>((static_cast<acc_t>(v[u]) - mean) * r);
  }
  return r;
}

// LN of rows of a (rows, n) tensor in place; rstd[at(row) * 3 + slot] = the row's rstd, at(row)
// being at_row[row] for packed rows (Batching::loop_rows), else row.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ln_rows_kernel(scalar_t* __restrict__ x, scalar_t* __restrict__ rstd,
                   const int64_t* __restrict__ at_row, int slot, int64_t rows, int64_t n) {
  __shared__ acc_t shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const acc_t r = block_normalize_row<scalar_t, acc_t>(x + row * n, n, shared);
    const int64_t at = at_row != nullptr ? at_row[row] : row;
    if (threadIdx.x == 0) rstd[at * 3 + slot] = static_cast<scalar_t>(r);
  }
}

// Backward of the input term's LN for every row after the loop, in place:
// d <- rstd (e - mean(e) - y mean(e y)) with e = d ⊙ γ_ih and y = LN(W_ih x̂).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    ln_rows_backward_kernel(scalar_t* __restrict__ d, const scalar_t* __restrict__ y,
                            const scalar_t* __restrict__ gain, const scalar_t* __restrict__ rstd,
                            const int64_t* __restrict__ at_row, int slot, int64_t rows,
                            int64_t n) {
  __shared__ acc_t shared[32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    scalar_t* dv = d + row * n;
    const scalar_t* yv = y + row * n;
    acc_t s1 = 0, s2 = 0;
    for (int64_t u = threadIdx.x; u < n; u += blockDim.x) {
      const acc_t e = static_cast<acc_t>(dv[u]) * static_cast<acc_t>(gain[u]);
      s1 += e;
      s2 += e * static_cast<acc_t>(yv[u]);
    }
    const acc_t m1 = block_sum(s1, shared) / acc_t(n);
    const acc_t m2 = block_sum(s2, shared) / acc_t(n);
    const acc_t r = static_cast<acc_t>(rstd[(at_row != nullptr ? at_row[row] : row) * 3 + slot]);
    for (int64_t u = threadIdx.x; u < n; u += blockDim.x) {
      const acc_t e = static_cast<acc_t>(dv[u]) * static_cast<acc_t>(gain[u]);
      dv[u] = static_cast<scalar_t>(layer_norm_backward<acc_t>(e, static_cast<acc_t>(yv[u]), r,
                                                               m1, m2));
    }
  }
}

// The LN-LSTM's step t, one block per running sample (rows of them): LN of the recurrent term,
// the gates and c̃, LN of c̃, h̃ and (without a projection) the state. A thread keeps the same
// quads of units in every pass, so what it wrote to global memory in one pass it reads back in
// the next unsynchronized.
template <typename scalar_t, typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    ln_forward_cell_kernel(ForwardStep<scalar_t> s, StepMaskParams<acc_t> call_masks, int64_t t,
                           int64_t rows, int64_t H, bool has_proj) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  using Masks = QuadMasks<acc_t, kCand, kZoneC, kZoneH>;
  __shared__ acc_t shared[32];
  const int64_t GH = 4 * H, quads = (H + 3) / 4;
  for (int64_t b = blockIdx.x; b < rows; b += gridDim.x) {
    scalar_t* g = s.gates + b * kWorkspaceGates * H;
    scalar_t* y = s.norm_c + b * H;
    const int64_t sample = sample_of(s.orig, b);
    // LN(Ŵ_hh ĥ_{t-1}) in place.
    scalar_t* v = const_cast<scalar_t*>(s.gh) + b * GH;
    const acc_t rstd_h = block_normalize_row<scalar_t, acc_t>(v, GH, shared);
    __syncthreads();
    // The gates and c̃ (into y, before its LN).
    const scalar_t* x = s.pre + b * GH;
    acc_t c_sum = 0;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      const Masks masks(mp, t, sample, q, false);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int64_t j = q * 4 + k;
        if (j >= H) break;
        acc_t a[4];
#pragma unroll
        for (int gate = 0; gate < 4; ++gate) {
          const int64_t u = gate * H + j;
          a[gate] = static_cast<acc_t>(x[u]) * static_cast<acc_t>(s.gain_x[u]) +
                    static_cast<acc_t>(v[u]) * static_cast<acc_t>(s.gain_h[u]) +
                    (s.bias ? static_cast<acc_t>(s.bias[u]) : acc_t(0));
        }
        const Gates<acc_t> gate = activate_gates<acc_t>(a[0], a[1], a[2], a[3]);
        const int64_t bj = b * H + j;
        const acc_t c_prev = static_cast<acc_t>(s.c_prev[bj]);
        const acc_t c_tilde = cell_forward<acc_t>(gate, c_prev, masks.cand[k]).c_tilde;
        s.c_next[bj] =
            static_cast<scalar_t>(kZoneC ? zoneout_mix(c_prev, c_tilde, masks.zc[k]) : c_tilde);
        g[j] = static_cast<scalar_t>(gate.i);
        g[H + j] = static_cast<scalar_t>(gate.f);
        g[2 * H + j] = static_cast<scalar_t>(gate.g);
        g[3 * H + j] = static_cast<scalar_t>(gate.o);
        y[j] = static_cast<scalar_t>(c_tilde);
        c_sum += static_cast<acc_t>(y[j]);
      }
    }
    // LN(c̃) of c̃ as stored (rounded to half/bfloat16 there), read back by the thread that wrote it.
    const acc_t mean_c = block_sum(c_sum, shared) / acc_t(H);
    acc_t c_sq = 0;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      for (int k = 0; k < 4 && q * 4 + k < H; ++k) {
        const acc_t d = static_cast<acc_t>(y[q * 4 + k]) - mean_c;
        c_sq += d * d;
      }
    }
    const acc_t rstd_c = layer_norm_rstd<acc_t>(block_sum(c_sq, shared), H);
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      acc_t zh[4] = {0, 0, 0, 0};
      if constexpr (kZoneH) {
        if (!has_proj) mp.zoneout(mp.zone_h, mp.zone_h_threshold, mp.zone_h_rate, t, sample, q, zh);
      }
      for (int k = 0; k < 4 && q * 4 + k < H; ++k) {
        const int64_t j = q * 4 + k, bj = b * H + j;
        const acc_t yn = (static_cast<acc_t>(y[j]) - mean_c) * rstd_c;
        y[j] = static_cast<scalar_t>(yn);
        const acc_t h_tilde = ln_hidden<acc_t>(static_cast<acc_t>(g[3 * H + j]), yn,
                                               static_cast<acc_t>(s.gain_c[j]),
                                               static_cast<acc_t>(s.bias_c[j]));
        if (has_proj) {
          s.htil[bj] = static_cast<scalar_t>(h_tilde);
        } else {
          finish_state<scalar_t, acc_t, kZoneH>(s, bj, h_tilde, zh[k]);
        }
      }
    }
    if (threadIdx.x == 0) {
      s.rstd[b * 3 + 1] = static_cast<scalar_t>(rstd_h);
      s.rstd[b * 3 + 2] = static_cast<scalar_t>(rstd_c);
    }
    __syncthreads();  // the next sample of this block reuses shared
  }
}

// The LN-LSTM's backward step t, one block per running sample: dL/dh̃ (through zoneout on h unless
// projected), through h̃ and LN(c̃) (dL/dq to dq), the gates (dL/da to dgi, dL/dc carried), and
// the recurrent term's LN (dL/d(Ŵ_hh ĥ) to da). Scratch: d_o in dgi[3H, 4H) and dL/dLN(c̃) in
// dgi[0, H), each overwritten by the thread that wrote it once read.
template <typename scalar_t, typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
__global__ void __launch_bounds__(kThreads)
    ln_backward_cell_kernel(BackwardStep<scalar_t, acc_t> s, StepMaskParams<acc_t> call_masks,
                            int64_t t, int64_t rows, int64_t H, bool has_proj) {
  [[maybe_unused]] const StepMaskParams<acc_t> mp = call_masks.resolved();
  using Masks = QuadMasks<acc_t, kCand, kZoneC, kZoneH>;
  __shared__ acc_t shared[32];
  const int64_t GH = 4 * H, quads = (H + 3) / 4;
  for (int64_t b = blockIdx.x; b < rows; b += gridDim.x) {
    const int64_t sample = sample_of(s.orig, b);
    scalar_t* dx = s.dgi + b * GH;
    scalar_t* dh = s.da + b * GH;
    const scalar_t* g = s.gates + b * kWorkspaceGates * H;
    const scalar_t* y = s.norm_c + b * H;
    acc_t s1 = 0, s2 = 0;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      acc_t zh[4] = {0, 0, 0, 0};
      if constexpr (kZoneH) {
        if (!has_proj) mp.zoneout(mp.zone_h, mp.zone_h_threshold, mp.zone_h_rate, t, sample, q, zh);
      }
      for (int k = 0; k < 4 && q * 4 + k < H; ++k) {
        const int64_t j = q * 4 + k, bj = b * H + j;
        const acc_t dh_tilde = has_proj ? static_cast<acc_t>(s.dhtil[bj])
                                        : backward_state<scalar_t, acc_t, kZoneH>(s, bj, zh[k]);
        const acc_t o = static_cast<acc_t>(g[3 * H + j]), yj = static_cast<acc_t>(y[j]);
        const acc_t gc = static_cast<acc_t>(s.gain_c[j]), bc = static_cast<acc_t>(s.bias_c[j]);
        const LnHiddenGrads<acc_t> lh = ln_hidden_backward<acc_t>(o, yj, gc, bc, dh_tilde);
        if (s.htil != nullptr) s.htil[bj] = static_cast<scalar_t>(lh.h_tilde);
        s.dq[bj] = static_cast<scalar_t>(lh.dq);
        const acc_t dy = lh.dq * gc;
        dx[3 * H + j] = static_cast<scalar_t>(lh.d_o);
        dx[j] = static_cast<scalar_t>(dy);
        s1 += dy;
        s2 += dy * yj;
      }
    }
    const acc_t m1 = block_sum(s1, shared) / acc_t(H);
    const acc_t m2 = block_sum(s2, shared) / acc_t(H);
    const acc_t rstd_c = static_cast<acc_t>(s.rstd[b * 3 + 2]);
    const scalar_t* nh = s.norm_h + b * GH;
    acc_t s3 = 0, s4 = 0;
    for (int64_t q = threadIdx.x; q < quads; q += blockDim.x) {
      const Masks masks(mp, t, sample, q, false);
      for (int k = 0; k < 4 && q * 4 + k < H; ++k) {
        const int64_t j = q * 4 + k, bj = b * H + j;
        const acc_t dc_fresh = layer_norm_backward<acc_t>(
            static_cast<acc_t>(dx[j]), static_cast<acc_t>(y[j]), rstd_c, m1, m2);
        const acc_t d_o = static_cast<acc_t>(dx[3 * H + j]);
        const Gates<acc_t> gate{static_cast<acc_t>(g[j]), static_cast<acc_t>(g[H + j]),
                                static_cast<acc_t>(g[2 * H + j]), static_cast<acc_t>(g[3 * H + j])};
        acc_t dcell = s.dc[bj];
        const GateGrads<acc_t> grad =
            gate_backward<acc_t>(gate, static_cast<acc_t>(s.c_prev[bj]), masks.cand[k],
                                 kZoneC ? masks.zc[k] : acc_t(0), d_o, dc_fresh, dcell);
        s.dc[bj] = dcell;
        const acc_t da[4] = {grad.a_i, grad.a_f, grad.a_g, grad.a_o};
#pragma unroll
        for (int gi = 0; gi < 4; ++gi) {
          const int64_t u = gi * H + j;
          const scalar_t stored = static_cast<scalar_t>(da[gi]);
          dx[u] = stored;
          const acc_t e = static_cast<acc_t>(stored) * static_cast<acc_t>(s.gain_h[u]);
          s3 += e;
          s4 += e * static_cast<acc_t>(nh[u]);
        }
      }
    }
    const acc_t m3 = block_sum(s3, shared) / acc_t(GH);  // also orders dx's writes before reads
    const acc_t m4 = block_sum(s4, shared) / acc_t(GH);
    const acc_t rstd_h = static_cast<acc_t>(s.rstd[b * 3 + 1]);
    for (int64_t u = threadIdx.x; u < GH; u += blockDim.x) {
      const acc_t e = static_cast<acc_t>(dx[u]) * static_cast<acc_t>(s.gain_h[u]);
      dh[u] = static_cast<scalar_t>(
          layer_norm_backward<acc_t>(e, static_cast<acc_t>(nh[u]), rstd_h, m3, m4));
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Host side: the layer driver
// ---------------------------------------------------------------------------------------------

// The batching of the call (batching.h) with its index tensors on the device: small copies
// queued on the stream, one per call.
Batching device_batching(const LayerPlan& plan, const c10::optional<Tensor>& lengths,
                         const at::Device& device) {
  if (!plan.has_lengths) return make_batching(plan, Tensor());
  // A graph would keep reading the pinned buffers of the call it captured, which the allocator
  // may since have handed to someone else: refuse instead of replaying stale lengths.
  TORCH_CHECK_VALUE(!gpu::stream_capturing(),
                    "rnnfused: lengths cannot be given inside CUDA graph capture (they are checked "
                    "on the host and copied to the device by each call); capture the padded batch "
                    "without lengths, or run variable-length batches eagerly");
  return make_batching(plan, lengths->contiguous())
      .on([&](const Tensor& t) { return gpu::to_device_async(t, device); });
}

// The inactive rows' kernels, launched from function templates of their own: launched from the
// time loop's generic lambda with template arguments that do not depend on the lambda's own
// (only on the dispatch's scalar_t alias), nvcc's host stub spells them `scalar_t` and fails.
template <typename scalar_t>
void launch_forward_inactive(const ForwardStep<scalar_t>& step, int64_t rows, int64_t B, int64_t H,
                             int64_t R, int64_t GH, gpu::Stream stream) {
  gpu::launch<forward_inactive_kernel<scalar_t>>(
      num_blocks((B - rows) * std::max<int64_t>(R, kWorkspaceGates * H)), kThreads, 0, stream,
      step, rows, B, H, R, GH);
}

template <typename scalar_t, typename acc_t>
void launch_backward_inactive(const BackwardStep<scalar_t, acc_t>& step, int64_t rows,
                              int64_t ran, int64_t R, gpu::Stream stream) {
  gpu::launch<backward_inactive_kernel<scalar_t, acc_t>>(num_blocks((ran - rows) * R), kThreads,
                                                         0, stream, step, rows, ran, R);
}

// Row-major (rows, cols) matrix view of a contiguous buffer at an element offset: the GEMMs of
// the time loop write into slices of preallocated tensors.
Tensor rows_of(const Tensor& t, int64_t offset, int64_t rows, int64_t cols) {
  return t.as_strided({rows, cols}, {cols, 1}, t.storage_offset() + offset);
}

template <CellKind kCell>
LayerOutputs layer_forward_cuda(const ForwardArgs& args) {
  using Traits = CellTraits<kCell>;
  constexpr int64_t G = Traits::kGates;
  constexpr int64_t W = kWorkspaceGates;
  const LayerPlan plan = plan_forward(kCell, args);
  const Tensor& input = args.input;
  const bool need_workspace = args.need_workspace;
  gpu::check_device(input);
  const gpu::DeviceGuard guard(input.device());
  const int64_t T = plan.T, B = plan.B, H = plan.H, R = plan.R, GH = G * H;
  const auto opts = input.options();
  const SequenceMasks seq = sequence_masks_cuda(plan, opts);
  // With lengths the loop runs on the samples sorted by length, each step on those still running.
  const Batching bt = device_batching(plan, args.lengths, input.device());
  const int64_t N = bt.rows();

  // x̂ = x ⊙ mx / (1 - p_in): the same (B, I) mask at every step; packed rows (N, I).
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  xhat = bt.pack(xhat);
  // Ŵ_hh = W_hh ⊙ M / (1 - p_w): one mask per call.
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_hh_t = w_hh.t();
  const Tensor w_hr_t = plan.has_proj ? args.weight_hr->contiguous().t() : Tensor();
  const Tensor mh = bt.to_loop(seq.recurrent_scale);

  // The input term of all steps, packed rows (N, G*H). LSTM: Xp = x̂ W_ih^T + b_ih + b_hh, to
  // which each step adds its recurrent term in place; GRU: gi = x̂ W_ih^T + b_ih (b_hh goes with
  // gh).
  Tensor xp;
  // LN-LSTM: the input term is normalized without its bias; b_ih + b_hh join after both LNs.
  Tensor ln_bias;
  if constexpr (Traits::kLayerNorm) {
    xp = at::mm(xhat, args.weight_ih.t());
    if (plan.has_bias) ln_bias = (*args.bias_ih + *args.bias_hh).contiguous();
  } else if (plan.has_bias) {
    const Tensor bias = Traits::kSeparateRecurrent ? *args.bias_ih : *args.bias_ih + *args.bias_hh;
    xp = at::addmm(bias, xhat, args.weight_ih.t());
  } else {
    xp = at::mm(xhat, args.weight_ih.t());
  }
  // GRU: the recurrent term of the step, Ŵ_hh ĥ_{t-1} + b_hh.
  Tensor gh = Traits::kSeparateRecurrent && !Traits::kLayerNorm ? gpu::empty({B, GH}, opts)
                                                                  : Tensor();
  const Tensor b_hh = Traits::kSeparateRecurrent && plan.has_bias ? args.bias_hh->contiguous()
                                                                   : Tensor();

  Tensor output = gpu::empty({T, B, R}, opts);
  Tensor gates, hs, cs, ctil, norm_x, norm_h, norm_c, rstd;
  // Two rolling states suffice when backward will not run.
  const int64_t kept = need_workspace ? T + 1 : 2;
  hs = gpu::empty({kept, B, R}, opts);
  hs[0].copy_(bt.to_loop(args.h0));
  if constexpr (Traits::kHasCell) {
    cs = gpu::empty({kept, B, H}, opts);
    cs[0].copy_(bt.to_loop(*args.c0));
  }
  // The workspace gates have a buffer of their own (not the input term's scratch), in the loop's
  // row order, 0 at padded positions.
  if (need_workspace) {
    gates = gpu::empty({T, B, W * H}, opts);
    if (plan.zoneout_c() && !Traits::kLayerNorm) ctil = gpu::empty({T, B, H}, opts);
  }
  // The LN-LSTM's normalized terms: kept for backward, or one step's worth of scratch.
  Tensor ln_gains;  // [γ_ih | γ_hh | γ_c | β_c]
  if constexpr (Traits::kLayerNorm) {
    const LayerNormParams* ln = args.ln;
    ln_gains = flat_layer_norm_params(*ln);
    // Zeros at the padded positions, which no kernel writes when packed.
    rstd = bt.packed ? at::zeros({T, B, 3}, opts) : gpu::empty({T, B, 3}, opts);
    const int64_t steps = need_workspace ? T : 1;
    norm_h = gpu::empty({steps, B, GH}, opts);
    norm_c = gpu::empty({steps, B, H}, opts);
    if (!need_workspace) gates = gpu::empty({1, B, W * H}, opts);
  }
  Tensor hhat = mh.defined() ? gpu::empty({2, B, R}, opts) : Tensor();
  if (mh.defined()) hhat[0].copy_(hs[0] * mh);
  Tensor htil = plan.has_proj ? gpu::empty({B, H}, opts) : Tensor();
  Tensor hproj = plan.has_proj ? gpu::empty({B, R}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "layer_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
    scalar_t* hhat_p = ptr_or_null<scalar_t>(hhat);
    scalar_t* gates_p = ptr_or_null<scalar_t>(gates);  // null without workspace
    scalar_t* ctil_p = ptr_or_null<scalar_t>(ctil);    // null without zoneout on c
    const StepMaskParams<acc_t> mp(plan);
    const gpu::Stream stream = gpu::current_stream();
    if constexpr (Traits::kLayerNorm) {  // LN(W_ih x̂_t) for every packed row, in place
      gpu::launch<ln_rows_kernel<scalar_t, acc_t>>(
          row_blocks(N), kThreads, 0, stream, xp.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
          bt.packed ? bt.loop_rows.data_ptr<int64_t>() : nullptr, 0, N, GH);
      // The workspace keeps (T, B, 4H) in the loop's order, 0 at padded positions.
      if (need_workspace) norm_x = bt.unpack_loop(xp);
    }

    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = plan.time_of(s);
        const int64_t rows = bt.active[t];  // the running rows, first in the loop's order
        const int64_t cur = need_workspace ? s : s % 2;
        const int64_t nxt = need_workspace ? s + 1 : (s + 1) % 2;
        const Tensor hhat_prev = hhat_p ? rows_of(hhat, (s % 2) * B * R, rows, R)
                                        : rows_of(hs, cur * B * R, rows, R);
        const Tensor pre = rows_of(xp, bt.offset[t] * GH, rows, GH);
        const int64_t at_t = need_workspace ? t : 0;  // the LN-LSTM's scratch rows without one
        if constexpr (Traits::kLayerNorm) {
          gh = rows_of(norm_h, at_t * B * GH, B, GH);
          Tensor gh_rows = gh.narrow(0, 0, rows);
          at::mm_out(gh_rows, hhat_prev, w_hh_t);  // normalized in the cell kernel
        } else if constexpr (Traits::kSeparateRecurrent) {
          // gh = ĥ_{s-1} Ŵ_hh^T + b_hh
          Tensor gh_rows = gh.narrow(0, 0, rows);
          if (b_hh.defined()) {
            at::addmm_out(gh_rows, b_hh, hhat_prev, w_hh_t);
          } else {
            at::mm_out(gh_rows, hhat_prev, w_hh_t);
          }
        } else {
          // a_t = Xp_t + ĥ_{s-1} Ŵ_hh^T, in place.
          Tensor pre_rows = pre;
          at::addmm_out(pre_rows, pre, hhat_prev, w_hh_t);
        }
        ForwardStep<scalar_t> step{};
        step.pre = pre.data_ptr<scalar_t>();
        step.gh = Traits::kSeparateRecurrent ? gh.data_ptr<scalar_t>() : nullptr;
        step.h_prev = hs_p + cur * B * R;
        step.h_next = hs_p + nxt * B * R;
        step.c_prev = cs_p ? cs_p + cur * B * H : nullptr;
        step.c_next = cs_p ? cs_p + nxt * B * H : nullptr;
        step.gates = gates_p ? gates_p + at_t * B * W * H : nullptr;
        step.ctil = kZoneC && ctil_p ? ctil_p + t * B * H : nullptr;
        step.out = output.data_ptr<scalar_t>() + t * B * R;
        step.hhat_next = hhat_p ? hhat_p + ((s + 1) % 2) * B * R : nullptr;
        step.mh = ptr_or_null<scalar_t>(mh);
        step.htil = ptr_or_null<scalar_t>(htil);
        step.orig = bt.orig_on_device();
        if constexpr (Traits::kLayerNorm) {
          step.bias = ptr_or_null<scalar_t>(ln_bias);
          step.gain_x = ln_gains.data_ptr<scalar_t>();
          step.gain_h = step.gain_x + GH;
          step.gain_c = step.gain_x + 2 * GH;
          step.bias_c = step.gain_c + H;
          step.norm_c = norm_c.data_ptr<scalar_t>() + at_t * B * H;
          step.rstd = rstd.data_ptr<scalar_t>() + t * B * 3;
        }
        if constexpr (Traits::kLayerNorm) {
          gpu::launch<ln_forward_cell_kernel<scalar_t, acc_t, kCand, kZoneC, kZoneH>>(
              row_blocks(rows), kThreads, 0, stream, step, mp, t, rows, H, plan.has_proj);
        } else {
          gpu::launch<forward_cell_kernel<kCell, scalar_t, acc_t, kCand, kZoneC, kZoneH>>(
              num_blocks(rows * ((H + 3) / 4)), kThreads, 0, stream, step, mp, t, rows, H,
              plan.has_proj);
        }
        if constexpr (kCanProject<kCell>) {
          if (plan.has_proj) {
            Tensor hproj_rows = hproj.narrow(0, 0, rows);
            at::mm_out(hproj_rows, htil.narrow(0, 0, rows), w_hr_t);  // W_hr h̃
            gpu::launch<forward_projected_state_kernel<scalar_t, acc_t, kZoneH>>(
                num_blocks(rows * ((R + 3) / 4)), kThreads, 0, stream, step,
                hproj.data_ptr<scalar_t>(), mp, t, rows, R);
          }
        }
        if (rows < B) {
          launch_forward_inactive(step, rows, B, H, R, GH, stream);
        }
      }
    });
  });

  LayerOutputs out = finish_forward(plan, need_workspace, std::move(output), std::move(gates),
                                    std::move(hs), std::move(cs), std::move(ctil));
  if constexpr (Traits::kLayerNorm) {
    finish_forward_ln(need_workspace, out, std::move(norm_x), std::move(norm_h), std::move(norm_c),
                      std::move(rstd));
  }
  // The op's outputs in the samples' order; the workspace stays in the loop's.
  out.output = bt.to_samples(out.output, 1);
  out.h_n = bt.to_samples(out.h_n);
  out.c_n = bt.to_samples(out.c_n);
  return out;
}

template <CellKind kCell>
LayerGrads layer_backward_cuda(const BackwardArgs& args) {
  using Traits = CellTraits<kCell>;
  constexpr int64_t G = Traits::kGates;
  constexpr int64_t W = kWorkspaceGates;
  const LayerPlan plan = plan_backward(kCell, args);
  const Tensor& input = args.input;
  gpu::check_device(input);
  const gpu::DeviceGuard guard(input.device());
  const int64_t T = plan.T, B = plan.B, H = plan.H, R = plan.R, GH = G * H;
  const auto opts = input.options();
  // The gradients carried from step to step stay in the compute precision (float for
  // half/bfloat16); what a GEMM reads or writes is in the storage dtype.
  const auto acc_opts = opts.dtype(at::toOpMathType(input.scalar_type()));
  const SequenceMasks seq = sequence_masks_cuda(plan, opts);
  const Batching bt = device_batching(plan, args.lengths, input.device());  // the forward's
  const int64_t N = bt.rows();
  const Tensor grad_output = bt.to_loop(args.grad_output, 1).contiguous();
  const Tensor gates = args.gates.contiguous(), hs = args.hs.contiguous();
  const Tensor cs = Traits::kHasCell ? args.cs->contiguous() : Tensor();
  const Tensor ctil =
      kCell == CellKind::kLstm && plan.zoneout_c() ? args.ctil->contiguous() : Tensor();
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_hr = plan.has_proj ? args.weight_hr->contiguous() : Tensor();
  const Tensor mh = bt.to_loop(seq.recurrent_scale);

  // dL/d(recurrent term) and dL/d(input term), packed rows (N, G*H) by input position: one
  // tensor for the LSTM, whose two terms are summed into a_t; two for the GRU.
  Tensor da = gpu::empty({N, GH}, opts);
  Tensor dgi = Traits::kSeparateRecurrent ? gpu::empty({N, GH}, opts) : da;
  // dL/dh carried back, dL/dc: (B, ·) in the loop's order.
  Tensor zpart = gpu::empty({B, R}, acc_opts).copy_(bt.to_loop(args.grad_h_n));
  Tensor dc = Traits::kHasCell ? gpu::empty({B, H}, acc_opts).copy_(bt.to_loop(*args.grad_c_n))
                               : Tensor();
  // dL/dĥ from step s+1's GEMM; 0 in rows that have not run yet (backward_inactive_kernel).
  Tensor dhhat = at::zeros({B, R}, opts);
  Tensor dproj = plan.has_proj ? gpu::empty({N, R}, opts) : Tensor();  // dL/d(W_hr h̃)
  Tensor dhtil = plan.has_proj ? gpu::empty({B, H}, opts) : Tensor();
  Tensor htil = plan.has_proj ? gpu::empty({N, H}, opts) : Tensor();
  // The LN-LSTM's workspace and parameters; dgi receives dL/da in the loop (the input LN's
  // backward runs after it), dq dL/dq of q = LN(c̃) γ_c + β_c.
  LayerNormSaved saved;
  Tensor ln_gains, dq;
  if constexpr (Traits::kLayerNorm) {
    const LayerNormParams* ln = args.ln;
    saved = LayerNormSaved(*args.ln_ws);
    ln_gains = flat_layer_norm_params(*ln);
    dq = gpu::empty({N, H}, opts);
  }
  LayerGrads ln_grads;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "layer_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
    const scalar_t* ctil_p = ptr_or_null<scalar_t>(ctil);
    const StepMaskParams<acc_t> mp(plan);
    const gpu::Stream stream = gpu::current_stream();
    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = plan.time_of(s);
        const int64_t rows = bt.active[t];
        const int64_t ran = s == T - 1 ? 0 : bt.active[plan.time_of(s + 1)];
        const int64_t off = bt.offset[t];
        const Tensor da_t = rows_of(da, off * GH, rows, GH);
        BackwardStep<scalar_t, acc_t> step{};
        step.gates = gates.data_ptr<scalar_t>() + t * B * W * H;
        step.h_prev = hs.data_ptr<scalar_t>() + s * B * R;
        step.c_prev = cs_p ? cs_p + s * B * H : nullptr;
        step.c_tilde = !cs_p || Traits::kLayerNorm ? nullptr
                       : kZoneC                    ? ctil_p + t * B * H
                                                   : cs_p + (s + 1) * B * H;
        step.dhtil = ptr_or_null<scalar_t>(dhtil);
        step.dy = grad_output.data_ptr<scalar_t>() + t * B * R;
        step.zpart = zpart.data_ptr<acc_t>();
        step.dhhat = s == T - 1 ? nullptr : dhhat.data_ptr<scalar_t>();
        step.mh = ptr_or_null<scalar_t>(mh);
        step.dc = ptr_or_null<acc_t>(dc);
        step.da = da_t.data_ptr<scalar_t>();
        step.dgi = Traits::kSeparateRecurrent ? dgi.data_ptr<scalar_t>() + off * GH : nullptr;
        step.htil = plan.has_proj ? htil.data_ptr<scalar_t>() + off * H : nullptr;
        step.dproj = plan.has_proj ? dproj.data_ptr<scalar_t>() + off * R : nullptr;
        step.orig = bt.orig_on_device();
        if constexpr (Traits::kLayerNorm) {
          step.norm_h = saved.norm_h.data_ptr<scalar_t>() + t * B * GH;
          step.norm_c = saved.norm_c.data_ptr<scalar_t>() + t * B * H;
          step.rstd = saved.rstd.data_ptr<scalar_t>() + t * B * 3;
          step.gain_h = ln_gains.data_ptr<scalar_t>() + GH;
          step.gain_c = ln_gains.data_ptr<scalar_t>() + 2 * GH;
          step.bias_c = step.gain_c + H;
          step.dq = dq.data_ptr<scalar_t>() + off * H;
        }
        if (step.dhhat != nullptr && rows < ran) {
          launch_backward_inactive(step, rows, ran, R, stream);
        }
        if constexpr (kCanProject<kCell>) {
          if (plan.has_proj) {
            gpu::launch<backward_projected_state_kernel<scalar_t, acc_t, kZoneH>>(
                num_blocks(rows * ((R + 3) / 4)), kThreads, 0, stream, step, mp, t, rows, R);
            // dL/dh̃ = dL/d(W_hr h̃) W_hr
            Tensor dhtil_rows = dhtil.narrow(0, 0, rows);
            at::mm_out(dhtil_rows, rows_of(dproj, off * R, rows, R), w_hr);
          }
        }
        if constexpr (Traits::kLayerNorm) {
          gpu::launch<ln_backward_cell_kernel<scalar_t, acc_t, kCand, kZoneC, kZoneH>>(
              row_blocks(rows), kThreads, 0, stream, step, mp, t, rows, H, plan.has_proj);
        } else {
          gpu::launch<backward_cell_kernel<kCell, scalar_t, acc_t, kCand, kZoneC, kZoneH>>(
              num_blocks(rows * ((H + 3) / 4)), kThreads, 0, stream, step, mp, t, rows, H,
              plan.has_proj);
        }
        // dL/dĥ_{s-1} = dL/d(recurrent term)_t Ŵ_hh, for the rows that ran (the others keep
        // theirs: backward_inactive_kernel)
        Tensor dhhat_rows = dhhat.narrow(0, 0, rows);
        at::mm_out(dhhat_rows, da_t, w_hh);
      }
    });
    if constexpr (Traits::kLayerNorm) {
      // The bias and gains from dL/da and dL/dq of every running row (reduced in float), then
      // dL/da through the input term's LN, all rows at once.
      const auto acc_type = at::toOpMathType(input.scalar_type());
      const Tensor norm_x = bt.pack_loop(saved.norm_x);
      auto column_sums = [&](const Tensor& v) { return v.sum(0, false, acc_type).to(opts.dtype()); };
      if (plan.has_bias) ln_grads.grad_bias_ih = column_sums(dgi);
      ln_grads.grad_ln_weight_ih = column_sums(dgi * norm_x);
      ln_grads.grad_ln_weight_hh = column_sums(dgi * bt.pack_loop(saved.norm_h));
      ln_grads.grad_ln_weight_c = column_sums(dq * bt.pack_loop(saved.norm_c));
      ln_grads.grad_ln_bias_c = column_sums(dq);
      gpu::launch<ln_rows_backward_kernel<scalar_t, acc_t>>(
          row_blocks(N), kThreads, 0, stream, dgi.data_ptr<scalar_t>(),
          norm_x.data_ptr<scalar_t>(), ln_gains.data_ptr<scalar_t>(),
          saved.rstd.data_ptr<scalar_t>(), bt.packed ? bt.loop_rows.data_ptr<int64_t>() : nullptr,
          0, N, GH);
    }
  });

  Tensor grad_h0 =
      bt.to_samples(initial_state_gradient(plan, bt, zpart, dhhat, mh).to(input.scalar_type()));
  Tensor grad_c0 = Traits::kHasCell ? bt.to_samples(dc.to(input.scalar_type())) : Tensor();

  LayerGrads grads = packed_input_and_weight_gradients(plan, bt, seq, input, args.weight_ih, dgi,
                                                       da, hs, dproj, htil, std::move(grad_h0),
                                                       std::move(grad_c0));
  if constexpr (Traits::kLayerNorm) {
    // The bias enters after the LNs: its gradient is the sum of dL/da, not of dgi or da.
    if (plan.has_bias) grads.grad_bias_ih = std::move(ln_grads.grad_bias_ih);
    grads.grad_ln_weight_ih = std::move(ln_grads.grad_ln_weight_ih);
    grads.grad_ln_weight_hh = std::move(ln_grads.grad_ln_weight_hh);
    grads.grad_ln_weight_c = std::move(ln_grads.grad_ln_weight_c);
    grads.grad_ln_bias_c = std::move(ln_grads.grad_ln_bias_c);
  }
  return grads;
}

}  // namespace

}  // namespace rnnfused

// Defines the entry points of layer_cuda.h for one cell (CellKind::kCell): the whole of that
// cell's translation unit, layer_cuda_<cell>.cu.
#define RNNFUSED_CUDA_CELL_ENTRY_POINTS(kCell)                                         \
  namespace rnnfused::cuda {                                                           \
  template <>                                                                          \
  LayerOutputs forward<CellKind::kCell>(const ForwardArgs& args) {                     \
    return layer_forward_cuda<CellKind::kCell>(args);                                  \
  }                                                                                    \
  template <>                                                                          \
  LayerGrads backward<CellKind::kCell>(const BackwardArgs& args) {                     \
    return layer_backward_cuda<CellKind::kCell>(args);                                 \
  }                                                                                    \
  }  // namespace rnnfused::cuda
