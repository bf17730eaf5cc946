// Variable lengths on every device: the batch sorted by length, each step on the rows still
// running (SPEC §4: lengths= and packed input). Shared by the CPU driver (layer_cpu.cpp) and the
// CUDA driver (layer_cuda_driver.cuh).
#pragma once

#include <vector>

#include "cpu_gemm.h"
#include "layer.h"

namespace rnnfused {

// How the time loop lays out a batch with lengths, as cuDNN does for packed sequences. The loop's
// rows are the samples sorted by descending length (stably; no permutation at all when they are
// already in that order, PackedSequence's), so at input position t the samples still running,
// those with length > t, are the first active[t] rows, in both directions. The recurrent GEMM
// and the pointwise passes of a step run on those rows only. The input term (forward) and the
// gate gradients (backward) are packed: the active rows of t = 0, then of t = 1, ..., N rows in
// all, so the GEMMs before and after the loop touch no padding either. Without lengths (or with
// every length T, sorted) nothing is permuted or packed and N = T * B.
//
// The loop's tensors (the state sequences, the workspace) stay in the sorted row order; the
// op's outputs and gradients are put back in the samples' order, and backward sorts its inputs
// the same way (the order is a function of the lengths alone). The CPU and CUDA drivers share
// all of this; on CUDA the index tensors live on the device (Batching::on).
struct Batching {
  int64_t T = 0, B = 0;
  bool permuted = false;          // the sorted order is not the samples' order
  bool packed = false;            // some step runs fewer than B rows (or permuted)
  std::vector<int64_t> order;     // order[i]: the sample at row i (when permuted)
  Tensor perm, inverse;           // (B) int64: order, and the row of each sample (when permuted)
  std::vector<int64_t> active;    // (T) rows running at input position t
  std::vector<int64_t> offset;    // (T + 1) packed row of (t, row 0); offset[T] = N
  // (N) int64 indices of the packed rows (when packed): into (T * B) rows in the samples' order
  // (t * B + order[i]) and in the loop's order (t * B + i).
  Tensor src_rows, loop_rows;

  const int64_t* orig() const { return permuted ? order.data() : nullptr; }
  // orig() where the kernels run: perm's data (on perm's device), or null.
  const int64_t* orig_on_device() const { return permuted ? perm.data_ptr<int64_t>() : nullptr; }
  int64_t rows() const { return offset[T]; }

  // A (B, ...) tensor in the samples' order -> the loop's order, and back.
  Tensor to_loop(const Tensor& t, int64_t dim = 0) const {
    return permuted && t.defined() ? t.index_select(dim, perm) : t;
  }
  Tensor to_samples(const Tensor& t, int64_t dim = 0) const {
    return permuted && t.numel() > 0 ? t.index_select(dim, inverse) : t;
  }
  // (T, B, X) in the samples' order -> (N, X) packed rows in the loop's order.
  Tensor pack(const Tensor& t) const {
    const Tensor flat = t.reshape({T * B, t.size(-1)});
    return packed ? flat.index_select(0, src_rows) : flat;
  }
  // (T, B, X) already in the loop's order -> (N, X) packed rows.
  Tensor pack_loop(const Tensor& t) const {
    const Tensor flat = t.reshape({T * B, t.size(-1)});
    return packed ? flat.index_select(0, loop_rows) : flat;
  }
  // (N, X) packed rows -> (T, B, X) in the loop's order, 0 at padded positions (a view when
  // nothing is packed).
  Tensor unpack_loop(const Tensor& rows_) const {
    const int64_t X = rows_.size(-1);
    if (!packed) return rows_.view({T, B, X});
    Tensor out = at::zeros({T, B, X}, rows_.options());
    out.view({T * B, X}).index_copy_(0, loop_rows, rows_);
    return out;
  }

  // This batching with its index tensors moved by `to_device` (e.g. the CUDA driver's copy to
  // the device, queued on the stream).
  template <typename F>
  Batching on(F&& to_device) const {
    Batching b = *this;
    if (perm.defined()) b.perm = to_device(perm);
    if (inverse.defined()) b.inverse = to_device(inverse);
    if (src_rows.defined()) b.src_rows = to_device(src_rows);
    if (loop_rows.defined()) b.loop_rows = to_device(loop_rows);
    return b;
  }
};

// A B: on the CPU through the GEMM backend chosen for the product (cpu_gemm.h), elsewhere at::mm
// (layer_plan.cpp).
Tensor product(cpu_gemm::Product kind, const Tensor& a, const Tensor& b);

// The batching of a call from its lengths (a CPU int64 tensor, or undefined without lengths).
Batching make_batching(const LayerPlan& plan, const Tensor& lengths);

// dL/dh0 in the loop's order after the backward loop: the share carried outside the GEMMs
// (zpart, added to in place) plus dĥ ⊙ mh from the first step's GEMM for the rows that ran at
// it (the others took theirs in the inactive-row passes).
Tensor initial_state_gradient(const LayerPlan& plan, const Batching& bt, Tensor zpart,
                              const Tensor& dhhat, const Tensor& mh);

// input_and_weight_gradients (layer_plan.cpp) on packed rows: da_ih, da_hh (N, G*H), dproj
// (N, P), htil (N, H) hold the running rows only, and hs (T + 1, B, R) is in the loop's order.
// The input gradient comes back in the samples' order, 0 at padded positions.
LayerGrads packed_input_and_weight_gradients(const LayerPlan& plan, const Batching& bt,
                                             const SequenceMasks& seq, const Tensor& input,
                                             const Tensor& weight_ih, const Tensor& da_ih,
                                             const Tensor& da_hh, const Tensor& hs,
                                             const Tensor& dproj, const Tensor& htil,
                                             Tensor grad_h0, Tensor grad_c0);

}  // namespace rnnfused
