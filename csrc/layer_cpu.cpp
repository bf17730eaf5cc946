// CPU forward and backward of the layer ops, LSTM, GRU and LN-LSTM (SPEC §2, §2b, §2c, §5).
//
// The layer is a cell over time. The driver (CpuLayer and the two time loops) is written once;
// each cell contributes its chunk of pointwise math (CellChunk, calling cell_math.h). Forward:
// one GEMM projects the (masked) inputs of all steps; per step, the recurrent GEMM computes
// Ŵ_hh ĥ_{t-1} (added into the input term for the LSTM, kept apart for the GRU), then one
// parallel pointwise pass applies the cell with the per-step masks drawn from the Philox stream
// (philox.h). Backward walks the steps in reverse with one pointwise pass and one GEMM per step
// (two of each with a projection), and computes the weight gradients as single GEMMs after the
// loop. The switches of the pointwise passes are template parameters, so an unregularized call
// draws no random number and multiplies by no mask.
//
// The layer-normalized LSTM needs per-sample reductions, so its passes work on whole samples: the
// input term of all steps is normalized right after the input GEMM (one parallel pass over the
// T * B rows); per step, one pass per sample normalizes the recurrent term, applies the cell and
// normalizes c̃, and backward runs the same rows in reverse, accumulating the LN gains' (and the
// bias') gradients in per-thread sums rather than in (T, B, 4H) buffers.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <utility>

#include "batching.h"
#include "cell_math.h"
#include "cpu_gemm.h"
#include "cpu_philox.h"
#include "layer.h"
#include "layer_ops.h"

namespace rnnfused {

namespace {

using cpu_gemm::FixedRightOperand;
using cpu_gemm::Product;

// The pointwise passes work on chunks of kChunk consecutive units of one sample: the chunk's
// masks are drawn into small arrays first, then one branch-free loop applies the cell, which the
// compiler vectorizes. A parallel task is one (sample, chunk) pair.
constexpr int64_t kChunk = 64;  // a multiple of 4: chunks start on a Philox quad
// Tasks per thread at least: below this a parallel region costs more than it saves.
constexpr int64_t kGrainTasks = 8;

template <typename scalar_t>
scalar_t* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<scalar_t>() : nullptr;
}

// Runs body(b, j0, n) over every chunk [j0, j0 + n) of every sample of a (B, width) pass.
template <typename F>
void for_each_chunk(int64_t B, int64_t width, F&& body) {
  const int64_t chunks = (width + kChunk - 1) / kChunk;
  at::parallel_for(0, B * chunks, kGrainTasks, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, j0 = (task % chunks) * kChunk;
      body(b, j0, std::min(kChunk, width - j0));
    }
  });
}

// Runs body(b) over the samples, in parallel when there are enough of them to pay for it
// (width: the units a sample's task touches).
template <typename F>
void for_each_sample(int64_t B, int64_t width, F&& body) {
  const int64_t grain = std::max<int64_t>(1, kGrainTasks * kChunk / std::max<int64_t>(width, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) body(b);
  });
}

// LN of one row in place: v <- (v - mean(v)) * rstd, returns rstd (two passes, in acc_t).
template <typename scalar_t>
scalar_t normalize_row(scalar_t* v, int64_t n) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < n; ++k) sum += v[k];
  const scalar_t mean = sum / static_cast<scalar_t>(n);
  scalar_t sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t k = 0; k < n; ++k) sq += (v[k] - mean) * (v[k] - mean);
  const scalar_t rstd = layer_norm_rstd<scalar_t>(sq, n);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) v[k] = (v[k] - mean) * rstd;
  return rstd;
}

// Backward of y = LN(v) for one row, in place: dy <- dL/dv given y and rstd.
template <typename scalar_t>
void normalize_row_backward(scalar_t* dy, const scalar_t* y, scalar_t rstd, int64_t n) {
  scalar_t s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t k = 0; k < n; ++k) {
    s1 += dy[k];
    s2 += dy[k] * y[k];
  }
  const scalar_t m1 = s1 / static_cast<scalar_t>(n), m2 = s2 / static_cast<scalar_t>(n);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) dy[k] = layer_norm_backward<scalar_t>(dy[k], y[k], rstd, m1, m2);
}

// The per-step mask values of units [j0, j0 + n) of sample b at step t, as cell_math.h takes
// them: candidate dropout scales, zoneout values (0/1 in training, the rate in evaluation).
template <typename acc_t>
void draw_step_masks(const LayerPlan& plan, MaskKind kind, int64_t t, int64_t b, int64_t j0,
                     int64_t n, acc_t* out) {
  const bool is_zoneout = kind == kMaskZoneoutC || kind == kMaskZoneoutH;
  if (is_zoneout && !plan.training) {
    for (int64_t k = 0; k < n; ++k) out[k] = static_cast<acc_t>(plan.rate[kind]);
    return;
  }
  const MaskStream stream = plan.stream(kind);
  const uint32_t threshold = plan.threshold(kind);
  const acc_t inv_keep = static_cast<acc_t>(plan.inv_keep(kind));
  // One Philox block per quad, the quads of the chunk side by side (cpu_philox.h), then the words
  // become mask values.
  static_assert(kChunk / 4 <= kPhiloxQuads);
  uint32_t words[4][kPhiloxQuads];
  const int64_t quads = (n + 3) / 4;
  philox_quads(stream, t, b, j0 / 4, quads, words);
  // n is a multiple of 4 except in the last chunk of a row; out has room for kChunk values (a
  // multiple of 32). Zoneout: 1 where the previous value is kept (zoneout_value); dropout: 0 where
  // the unit is dropped, else 1 / (1 - p) (dropout_scale).
  static_assert(kChunk % 32 == 0);
  if (is_zoneout) {
    mask_values<acc_t>(words, quads, threshold, acc_t(1), acc_t(0), out);
  } else {
    mask_values<acc_t>(words, quads, threshold, acc_t(0), inv_keep, out);
  }
}

// ---------------------------------------------------------------------------------------------
// The cells: what one chunk of units does in a step. Everything around it (padding, masks, the
// state and its zoneout, the GEMMs, the time loop) is the driver's, below.
// ---------------------------------------------------------------------------------------------

// One chunk of forward: units [j0, j0 + n) of one sample. Gate g of unit k sits at [g * H + k]
// of the gate-shaped pointers.
template <typename scalar_t>
struct ForwardChunk {
  const scalar_t* pre;     // input term of the pre-activations (LSTM: plus the recurrent term)
  const scalar_t* gh;      // GRU: the recurrent term Ŵ_hh ĥ; LSTM: null
  const scalar_t* bias_x;  // added to pre (LSTM: b_ih + b_hh; GRU: b_ih)
  const scalar_t* bias_h;  // GRU: b_hh, added to gh; LSTM: null
  const scalar_t* h_prev;  // the state before the step
  const scalar_t* c_prev;  // LSTM: the cell before the step
  scalar_t* c_next;        // LSTM: the (zoned-out) cell after it
  scalar_t* ws;            // the gates workspace, or null
  scalar_t* ctil;          // LSTM with zoneout on c, LN-LSTM: c̃, or null
  const scalar_t* gain_x;  // LN-LSTM: γ_ih, the input term's gains (pre holds LN(W_ih x̂))
  const scalar_t* gain_h;  // LN-LSTM: γ_hh, the recurrent term's (gh holds LN(Ŵ_hh ĥ))
  int64_t H;
};

// One chunk of backward.
template <typename scalar_t>
struct BackwardChunk {
  const scalar_t* ws;       // the gates workspace
  const scalar_t* h_prev;   // the state before the step
  const scalar_t* c_prev;   // LSTM
  const scalar_t* c_tilde;  // LSTM: c̃ of the step
  scalar_t* dc;             // LSTM: in dL/dc after the step, out before it
  scalar_t* da;             // out: dL/d(recurrent term), the LSTM's only one
  scalar_t* dgi;            // GRU out: dL/d(input term); LSTM: null
  scalar_t* zpart;          // GRU: the carried dL/dh_{t-1}, which gains the direct share
  scalar_t* htil;           // LSTM with projection: out h̃ for the W_hr gradient, or null
  int64_t H;
};

// Stores a chunk's n values of each workspace gate, gate g at ws[g * H].
template <typename scalar_t>
void store_workspace(scalar_t* ws, int64_t H, int64_t n,
                     const std::array<const scalar_t*, kWorkspaceGates>& values) {
  for (int g = 0; g < kWorkspaceGates; ++g) std::copy(values[g], values[g] + n, ws + g * H);
}

template <CellKind kCell>
struct CellChunk;

template <>
struct CellChunk<CellKind::kLstm> {
  template <typename acc_t, bool kCand, bool kZoneC>
  static void forward(const ForwardChunk<acc_t>& io, int64_t n, const acc_t* cand,
                      const acc_t* zc, acc_t* h_tilde) {
    const int64_t H = io.H;
    const acc_t* a = io.pre;
    const acc_t* bs = io.bias_x;
    acc_t gi[kChunk], gf[kChunk], gg[kChunk], go[kChunk], c_tilde[kChunk];
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const Gates<acc_t> gate = activate_gates<acc_t>(a[k] + bs[k], a[H + k] + bs[H + k],
                                                      a[2 * H + k] + bs[2 * H + k],
                                                      a[3 * H + k] + bs[3 * H + k]);
      const CellForward<acc_t> cell =
          cell_forward<acc_t>(gate, io.c_prev[k], kCand ? cand[k] : acc_t(1));
      io.c_next[k] = kZoneC ? zoneout_mix<acc_t>(io.c_prev[k], cell.c_tilde, zc[k]) : cell.c_tilde;
      gi[k] = gate.i;
      gf[k] = gate.f;
      gg[k] = gate.g;
      go[k] = gate.o;
      c_tilde[k] = cell.c_tilde;
      h_tilde[k] = cell.h_tilde;
    }
    if (io.ws) store_workspace(io.ws, H, n, {gi, gf, gg, go});
    if (io.ctil) std::copy(c_tilde, c_tilde + n, io.ctil);
  }

  template <typename acc_t, bool kCand, bool kZoneC>
  static void backward(const BackwardChunk<acc_t>& io, int64_t n, const acc_t* cand,
                       const acc_t* zc, const acc_t* dh_tilde) {
    const int64_t H = io.H;
    const acc_t* g = io.ws;
    acc_t* d = io.da;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const Gates<acc_t> gate{g[k], g[H + k], g[2 * H + k], g[3 * H + k]};
      acc_t dcell = io.dc[k];
      const GateGrads<acc_t> grad = cell_backward<acc_t>(
          gate, io.c_prev[k], io.c_tilde[k], kCand ? cand[k] : acc_t(1), kZoneC ? zc[k] : acc_t(0),
          dh_tilde[k], dcell);
      io.dc[k] = dcell;
      d[k] = grad.a_i;
      d[H + k] = grad.a_f;
      d[2 * H + k] = grad.a_g;
      d[3 * H + k] = grad.a_o;
    }
    if (io.htil) {
      for (int64_t k = 0; k < n; ++k) io.htil[k] = g[3 * H + k] * act_tanh(io.c_tilde[k]);
    }
  }
};

template <>
struct CellChunk<CellKind::kGru> {
  template <typename acc_t, bool kCand, bool kZoneC>
  static void forward(const ForwardChunk<acc_t>& io, int64_t n, const acc_t* cand,
                      const acc_t* /*zc*/, acc_t* h_tilde) {
    const int64_t H = io.H;
    const acc_t *a = io.pre, *bx = io.bias_x, *gh = io.gh, *bh = io.bias_h;
    acc_t r[kChunk], z[kChunk], nn[kChunk], hn[kChunk];
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const GruGates<acc_t> gate = gru_activate<acc_t>(
          a[k] + bx[k], a[H + k] + bx[H + k], a[2 * H + k] + bx[2 * H + k], gh[k] + bh[k],
          gh[H + k] + bh[H + k], gh[2 * H + k] + bh[2 * H + k]);
      h_tilde[k] = gru_cell_forward<acc_t>(gate, io.h_prev[k], kCand ? cand[k] : acc_t(1));
      r[k] = gate.r;
      z[k] = gate.z;
      nn[k] = gate.n;
      hn[k] = gate.hn;
    }
    if (io.ws) store_workspace(io.ws, H, n, {r, z, nn, hn});
  }

  template <typename acc_t, bool kCand, bool kZoneC>
  static void backward(const BackwardChunk<acc_t>& io, int64_t n, const acc_t* cand,
                       const acc_t* /*zc*/, const acc_t* dh_tilde) {
    const int64_t H = io.H;
    const acc_t* g = io.ws;
    acc_t *dh = io.da, *dx = io.dgi;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const GruGates<acc_t> gate{g[k], g[H + k], g[2 * H + k], g[3 * H + k]};
      const GruGrads<acc_t> grad = gru_cell_backward<acc_t>(
          gate, io.h_prev[k], kCand ? cand[k] : acc_t(1), dh_tilde[k]);
      dx[k] = dh[k] = grad.gi_r;
      dx[H + k] = dh[H + k] = grad.gi_z;
      dx[2 * H + k] = grad.gi_n;
      dh[2 * H + k] = grad.gh_n;
      io.zpart[k] += grad.h_prev;
    }
  }
};

// The LN-LSTM's gates and cell: a = LN(W_ih x̂) γ_ih + LN(Ŵ_hh ĥ) γ_hh + b, then the LSTM's c̃.
// h̃ needs LN(c̃) over the whole sample, so the driver finishes it (forward_cell_ln).
template <>
struct CellChunk<CellKind::kLnLstm> {
  template <typename acc_t, bool kCand, bool kZoneC>
  static void forward(const ForwardChunk<acc_t>& io, int64_t n, const acc_t* cand,
                      const acc_t* zc) {
    const int64_t H = io.H;
    const acc_t *x = io.pre, *h = io.gh, *gx = io.gain_x, *gh = io.gain_h, *bs = io.bias_x;
    acc_t gi[kChunk], gf[kChunk], gg[kChunk], go[kChunk];
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      acc_t a[4];
      for (int g = 0; g < 4; ++g) {
        const int64_t u = g * H + k;
        a[g] = x[u] * gx[u] + h[u] * gh[u] + bs[u];
      }
      const Gates<acc_t> gate = activate_gates<acc_t>(a[0], a[1], a[2], a[3]);
      const acc_t c_tilde =
          cell_forward<acc_t>(gate, io.c_prev[k], kCand ? cand[k] : acc_t(1)).c_tilde;
      io.c_next[k] = kZoneC ? zoneout_mix<acc_t>(io.c_prev[k], c_tilde, zc[k]) : c_tilde;
      io.ctil[k] = c_tilde;
      gi[k] = gate.i;
      gf[k] = gate.f;
      gg[k] = gate.g;
      go[k] = gate.o;
    }
    store_workspace(io.ws, H, n, {gi, gf, gg, go});
  }
};

// ---------------------------------------------------------------------------------------------
// The layer driver: the passes of one step around a cell's chunk math
// ---------------------------------------------------------------------------------------------

// What the forward passes of one step read and write. (B, ·) row-major slices.
template <typename scalar_t>
struct ForwardStep {
  const scalar_t* pre;     // (B, G*H) input term (+ recurrent term for the LSTM)
  const scalar_t* gh;      // (B, G*H) GRU: recurrent term
  const scalar_t* bias_x;  // (G*H)
  const scalar_t* bias_h;  // (G*H) GRU
  const scalar_t* h_prev;  // (B, R) state before the step
  scalar_t* h_next;        // (B, R) state after the step
  const scalar_t* c_prev;  // (B, H) LSTM
  scalar_t* c_next;        // (B, H) LSTM
  scalar_t* gates;         // (B, 4H) workspace at t, or null
  scalar_t* ctil;          // (B, H) c̃ at t, or null
  scalar_t* out;           // (B, R) output at t
  scalar_t* hhat_next;     // (B, R) h ⊙ mh for the next GEMM, or null
  const scalar_t* mh;      // (B, R) recurrent-dropout scale, or null
  scalar_t* htil;          // (B, H) h̃ for the projection GEMM, or null
  // LN-LSTM: gh holds the recurrent term, normalized in place; pre the normalized input term.
  const scalar_t* gain_x;  // (4H) γ_ih
  const scalar_t* gain_h;  // (4H) γ_hh
  const scalar_t* gain_c;  // (H) γ_c
  const scalar_t* bias_c;  // (H) β_c
  scalar_t* norm_c;        // (B, H) out: LN(c̃)
  scalar_t* rstd;          // (B, 3) out: the rstd of the recurrent term [1] and of c̃ [2]
};

// What the backward passes of one step read and write.
template <typename scalar_t>
struct BackwardStep {
  const scalar_t* gates;    // (B, 4H) workspace at t
  const scalar_t* h_prev;   // (B, R) state before the step
  const scalar_t* c_prev;   // (B, H) LSTM
  const scalar_t* c_tilde;  // (B, H) LSTM
  const scalar_t* dhtil;    // (B, H) with projection: dL/dh̃ from its GEMM, else null
  const scalar_t* dy;       // (B, R) dL/dy_t
  scalar_t* zpart;          // (B, R) dL/dh carried to the earlier step
  const scalar_t* dhhat;    // (B, R) dL/dĥ from step s+1's GEMM, or null at the last step
  const scalar_t* mh;       // (B, R) or null
  scalar_t* dc;             // (B, H) LSTM
  scalar_t* da;             // (B, G*H) out: dL/d(recurrent term)
  scalar_t* dgi;            // (B, G*H) GRU out: dL/d(input term)
  scalar_t* htil;           // (B, H) with projection: out h̃
  scalar_t* dproj;          // (B, R) with projection: out dL/d(W_hr h̃)
  // LN-LSTM
  const scalar_t* norm_x;   // (B, 4H) LN(W_ih x̂_t)
  const scalar_t* norm_h;   // (B, 4H) LN(Ŵ_hh ĥ_{t-1})
  const scalar_t* norm_c;   // (B, H) LN(c̃_t)
  const scalar_t* rstd;     // (B, 3)
  const scalar_t* gain_x;   // (4H)
  const scalar_t* gain_h;   // (4H)
  const scalar_t* gain_c;   // (H)
  const scalar_t* bias_c;   // (H)
  // (threads, 4H + 4H + 4H + H + H): each thread's sums of dL/db, dL/dγ_ih, dL/dγ_hh, dL/dγ_c,
  // dL/dβ_c
  scalar_t* param_grads;
};

template <CellKind kCell, typename scalar_t, bool kCand, bool kZoneC, bool kZoneH>
struct CpuLayer {
  using acc_t = scalar_t;
  using Cell = CellChunk<kCell>;
  static constexpr int64_t kG = CellTraits<kCell>::kGates;
  const LayerPlan& plan;
  // orig[b]: the sample (its index in the op's arguments) that row b of the loop holds, or null
  // when the rows are the samples in order. Every mask is drawn with the original index (SPEC §3).
  const int64_t* orig;

  int64_t sample(int64_t b) const { return orig ? orig[b] : b; }

  // Every pass below runs on rows [0, rows) of the step only: the rows still running at that step,
  // which come first because the loop's rows are sorted by descending length. The other rows are
  // the bulk passes' (forward_inactive, backward_inactive).

  // ---------------------------------------------------------------------------------------
  // Forward
  // ---------------------------------------------------------------------------------------

  // The cell pass of step t over (B, H). Without a projection it also finishes the state
  // (zoneout on h, output, masked state for the next GEMM); with one it leaves h̃ in htil.
  void forward_cell(int64_t t, int64_t rows, const ForwardStep<scalar_t>& st) const {
    const int64_t H = plan.H;
    const bool proj = plan.has_proj;
    for_each_chunk(rows, H, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * H + j0;
      scalar_t* ws = st.gates ? st.gates + b * kWorkspaceGates * H + j0 : nullptr;
      const int64_t sb = sample(b);
      acc_t cand[kChunk], zc[kChunk], zh[kChunk], h_tilde[kChunk];
      if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, sb, j0, n, cand);
      if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, sb, j0, n, zc);
      if constexpr (kZoneH) {
        if (!proj) draw_step_masks(plan, kMaskZoneoutH, t, sb, j0, n, zh);
      }
      const int64_t gate_row = b * kG * H + j0;
      const ForwardChunk<scalar_t> io{st.pre + gate_row,
                                      st.gh ? st.gh + gate_row : nullptr,
                                      st.bias_x + j0,
                                      st.bias_h ? st.bias_h + j0 : nullptr,
                                      st.h_prev + row,
                                      st.c_prev ? st.c_prev + row : nullptr,
                                      st.c_next ? st.c_next + row : nullptr,
                                      ws,
                                      st.ctil ? st.ctil + row : nullptr,
                                      nullptr,
                                      nullptr,
                                      H};
      Cell::template forward<acc_t, kCand, kZoneC>(io, n, cand, zc, h_tilde);
      if (proj) {
        std::copy(h_tilde, h_tilde + n, st.htil + row);
      } else {
        finish_state(row, n, h_tilde, zh, st);
      }
    });
  }

  // The rows [rows, B) of step t that have ended (forward direction) or not yet begun (reverse):
  // the state passes through, the output is 0, the workspace rows are 0 (c̃: the cell). Rows are
  // contiguous in every (B, ·) buffer, so each is one copy or fill.
  void forward_inactive(int64_t rows, const ForwardStep<scalar_t>& st) const {
    const int64_t B = plan.B, H = plan.H, R = plan.R, left = B - rows;
    if (left <= 0) return;
    std::copy(st.h_prev + rows * R, st.h_prev + B * R, st.h_next + rows * R);
    std::fill_n(st.out + rows * R, left * R, scalar_t(0));
    if (st.mh) {
      for (int64_t k = rows * R; k < B * R; ++k) st.hhat_next[k] = st.h_prev[k] * st.mh[k];
    }
    if (st.c_next) std::copy(st.c_prev + rows * H, st.c_prev + B * H, st.c_next + rows * H);
    if (st.gates) std::fill_n(st.gates + rows * kWorkspaceGates * H, left * kWorkspaceGates * H, scalar_t(0));
    if (st.ctil) std::copy(st.c_prev + rows * H, st.c_prev + B * H, st.ctil + rows * H);
    if constexpr (kCell == CellKind::kLnLstm) {
      // The recurrent GEMM wrote rows [0, rows) of the normalized recurrent term only.
      std::fill_n(const_cast<scalar_t*>(st.gh) + rows * kG * H, left * kG * H, scalar_t(0));
      std::fill_n(st.norm_c + rows * H, left * H, scalar_t(0));
      for (int64_t b = rows; b < B; ++b) st.rstd[b * 3 + 1] = st.rstd[b * 3 + 2] = 0;
    }
  }

  // The LN-LSTM's cell pass of step t, one task per sample: LN of the recurrent term, the gates
  // and c̃ chunk by chunk (c̃ into norm_c), LN of c̃, then h̃ and the state chunk by chunk.
  // st.gates is never null here (a scratch row block when no workspace is kept).
  void forward_cell_ln(int64_t t, int64_t rows, const ForwardStep<scalar_t>& st) const {
    const int64_t H = plan.H, GH = kG * H;
    const bool proj = plan.has_proj;
    for_each_sample(rows, GH, [&](int64_t b) {
      scalar_t* ws = st.gates + b * kWorkspaceGates * H;
      const int64_t sb = sample(b);
      scalar_t* gh = const_cast<scalar_t*>(st.gh) + b * GH;
      st.rstd[b * 3 + 1] = normalize_row(gh, GH);
      scalar_t* c_tilde = st.norm_c + b * H;
      for (int64_t j0 = 0; j0 < H; j0 += kChunk) {
        const int64_t n = std::min(kChunk, H - j0), row = b * H + j0;
        acc_t cand[kChunk], zc[kChunk];
        if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, sb, j0, n, cand);
        if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, sb, j0, n, zc);
        const ForwardChunk<scalar_t> io{st.pre + b * GH + j0, gh + j0,      st.bias_x + j0,
                                        nullptr,              nullptr,      st.c_prev + row,
                                        st.c_next + row,      ws + j0,      c_tilde + j0,
                                        st.gain_x + j0,       st.gain_h + j0, H};
        Cell::template forward<acc_t, kCand, kZoneC>(io, n, cand, zc);
      }
      st.rstd[b * 3 + 2] = normalize_row(c_tilde, H);
      const scalar_t* o = ws + 3 * H;
      for (int64_t j0 = 0; j0 < H; j0 += kChunk) {
        const int64_t n = std::min(kChunk, H - j0), row = b * H + j0;
        acc_t zh[kChunk], h_tilde[kChunk];
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          h_tilde[k] = ln_hidden<acc_t>(o[j0 + k], c_tilde[j0 + k], st.gain_c[j0 + k],
                                        st.bias_c[j0 + k]);
        }
        if (proj) {
          std::copy(h_tilde, h_tilde + n, st.htil + row);
        } else {
          if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, sb, j0, n, zh);
          finish_state(row, n, h_tilde, zh, st);
        }
      }
    });
  }

  // h_t from h̃_t for units [row, row + n) of the (B, R) state: zoneout, the output, and the
  // recurrent-dropped copy the next GEMM reads.
  void finish_state(int64_t row, int64_t n, const acc_t* h_fresh, const acc_t* zh,
                    const ForwardStep<scalar_t>& st) const {
    const scalar_t* h_prev = st.h_prev + row;
    scalar_t* h_next = st.h_next + row;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const acc_t h = kZoneH ? zoneout_mix<acc_t>(h_prev[k], h_fresh[k], zh[k]) : h_fresh[k];
      h_next[k] = h;
      st.out[row + k] = h;
    }
    if (st.mh) {
      for (int64_t k = 0; k < n; ++k) st.hhat_next[row + k] = h_next[k] * st.mh[row + k];
    }
  }

  // The state pass of step t over (B, P) after the projection GEMM left W_hr h̃ in hproj.
  void forward_projected_state(int64_t t, int64_t rows, const scalar_t* hproj,
                               const ForwardStep<scalar_t>& st) const {
    const int64_t R = plan.R;
    for_each_chunk(rows, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      acc_t fresh[kChunk], zh[kChunk];
      std::copy(hproj + row, hproj + row + n, fresh);
      if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, sample(b), j0, n, zh);
      finish_state(row, n, fresh, zh, st);
    });
  }

  // ---------------------------------------------------------------------------------------
  // Backward
  // ---------------------------------------------------------------------------------------

  // dL/dh for the state after step s of units [row, row + n), then its split through zoneout.
  //   zpart: in: the zoneout share carried from step s+1 (or grad_h_n); out: this step's share
  //   fresh: out: dL/dh̃ (the pre-zoneout state, projected or not)
  void backward_state(int64_t row, int64_t n, const acc_t* zh,
                      const BackwardStep<scalar_t>& st, acc_t* fresh) const {
    scalar_t* zpart = st.zpart;
    acc_t dh[kChunk];
    for (int64_t k = 0; k < n; ++k) dh[k] = zpart[row + k];
    if (st.dhhat) {
      if (st.mh) {
        for (int64_t k = 0; k < n; ++k) dh[k] += st.dhhat[row + k] * st.mh[row + k];
      } else {
        for (int64_t k = 0; k < n; ++k) dh[k] += st.dhhat[row + k];
      }
    }
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const acc_t total = dh[k] + st.dy[row + k];
      if constexpr (kZoneH) {
        const ZoneoutGrads<acc_t> z = zoneout_backward<acc_t>(total, zh[k]);
        zpart[row + k] = z.prev;
        fresh[k] = z.fresh;
      } else {
        zpart[row + k] = 0;
        fresh[k] = total;
      }
    }
  }

  // The cell pass of backward step t over (B, H); without a projection the state pass is
  // fused in here.
  void backward_cell(int64_t t, int64_t rows, const BackwardStep<scalar_t>& st) const {
    const int64_t H = plan.H;
    const bool proj = plan.has_proj;
    for_each_chunk(rows, H, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * H + j0;
      const int64_t sb = sample(b);
      acc_t cand[kChunk], zc[kChunk], zh[kChunk], dh_tilde[kChunk];
      if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, sb, j0, n, cand);
      if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, sb, j0, n, zc);
      if constexpr (kZoneH) {
        if (!proj) draw_step_masks(plan, kMaskZoneoutH, t, sb, j0, n, zh);
      }
      if (proj) {
        for (int64_t k = 0; k < n; ++k) dh_tilde[k] = st.dhtil[row + k];
      } else {
        backward_state(row, n, zh, st, dh_tilde);
      }
      const int64_t gate_row = b * kG * H + j0;
      const BackwardChunk<scalar_t> io{st.gates + b * kWorkspaceGates * H + j0,
                                       st.h_prev + row,
                                       st.c_prev ? st.c_prev + row : nullptr,
                                       st.c_tilde ? st.c_tilde + row : nullptr,
                                       st.dc ? st.dc + row : nullptr,
                                       st.da + gate_row,
                                       st.dgi ? st.dgi + gate_row : nullptr,
                                       st.zpart + row,
                                       st.htil ? st.htil + row : nullptr,
                                       H};
      Cell::template backward<acc_t, kCand, kZoneC>(io, n, cand, zc, dh_tilde);
    });
  }

  // The LN-LSTM's cell pass of backward step t, one task per sample: dL/dh̃ (through zoneout on h
  // unless projected), back through h̃ = o tanh(LN(c̃) γ_c + β_c) and LN(c̃), the gates, then
  // through the two gate LNs into dL/d(W_ih x̂) (dgi) and dL/d(Ŵ_hh ĥ) (da). The bias and gain
  // gradients go to this thread's row of param_grads.
  void backward_cell_ln(int64_t t, int64_t rows, const BackwardStep<scalar_t>& st) const {
    const int64_t H = plan.H, GH = kG * H;
    const bool proj = plan.has_proj;
    const int64_t width = 3 * GH + 2 * H;
    for_each_sample(rows, GH, [&](int64_t b) {
      scalar_t* acc = st.param_grads + at::get_thread_num() * width;
      scalar_t *d_bias = acc, *d_gx = acc + GH, *d_gh = acc + 2 * GH, *d_gc = acc + 3 * GH,
               *d_bc = acc + 3 * GH + H;
      const int64_t sb = sample(b);
      scalar_t* dx = st.dgi + b * GH;  // dL/d(W_ih x̂_t): first dL/dLN(·), then through the LN
      scalar_t* dh = st.da + b * GH;   // dL/d(Ŵ_hh ĥ_{t-1}), likewise
      // dL/dh̃ of the sample into dx[0, H) (scratch until the gate gradients are known).
      scalar_t* dh_tilde = dx;
      for (int64_t j0 = 0; j0 < H; j0 += kChunk) {
        const int64_t n = std::min(kChunk, H - j0), row = b * H + j0;
        if (proj) {
          std::copy(st.dhtil + row, st.dhtil + row + n, dh_tilde + j0);
        } else {
          acc_t zh[kChunk];
          if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, sb, j0, n, zh);
          backward_state(row, n, zh, st, dh_tilde + j0);
        }
      }
      const scalar_t* g = st.gates + b * kWorkspaceGates * H;
      const scalar_t* y = st.norm_c + b * H;
      const scalar_t* gc = st.gain_c;
      const scalar_t* bc = st.bias_c;
      // dL/do into dh[3H, 4H) and dL/dLN(c̃) into dh[0, H), both scratch.
      scalar_t* d_o = dh + 3 * H;
      scalar_t* dy = dh;
      scalar_t* htil = st.htil ? st.htil + b * H : nullptr;  // with a projection: h̃ for dW_hr
#pragma omp simd
      for (int64_t k = 0; k < H; ++k) {
        const LnHiddenGrads<acc_t> lh = ln_hidden_backward<acc_t>(g[3 * H + k], y[k], gc[k], bc[k],
                                                                 dh_tilde[k]);
        d_o[k] = lh.d_o;
        d_gc[k] += lh.dq * y[k];
        d_bc[k] += lh.dq;
        dy[k] = lh.dq * gc[k];
        if (htil) htil[k] = lh.h_tilde;
      }
      normalize_row_backward(dy, y, st.rstd[b * 3 + 2], H);  // dy: dL/dc̃ through h̃
      // The gate gradients, chunk by chunk (their masks), into dx as dL/da (dh_tilde is spent).
      for (int64_t j0 = 0; j0 < H; j0 += kChunk) {
        const int64_t n = std::min(kChunk, H - j0), row = b * H + j0;
        acc_t cand[kChunk], zc[kChunk];
        if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, sb, j0, n, cand);
        if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, sb, j0, n, zc);
#pragma omp simd
        for (int64_t k = 0; k < n; ++k) {
          const int64_t j = j0 + k;
          const Gates<acc_t> gate{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
          acc_t dcell = st.dc[row + k];
          const GateGrads<acc_t> grad =
              gate_backward<acc_t>(gate, st.c_prev[row + k], kCand ? cand[k] : acc_t(1),
                                   kZoneC ? zc[k] : acc_t(0), d_o[j], dy[j], dcell);
          st.dc[row + k] = dcell;
          dx[j] = grad.a_i;
          dx[H + j] = grad.a_f;
          dx[2 * H + j] = grad.a_g;
          dx[3 * H + j] = grad.a_o;
        }
      }
      // dL/da (in dx) -> the bias and gains, then through each gate LN.
      const scalar_t* nx = st.norm_x + b * GH;
      const scalar_t* nh = st.norm_h + b * GH;
#pragma omp simd
      for (int64_t u = 0; u < GH; ++u) {
        const acc_t da = dx[u];
        d_bias[u] += da;
        d_gx[u] += da * nx[u];
        d_gh[u] += da * nh[u];
        dx[u] = da * st.gain_x[u];
        dh[u] = da * st.gain_h[u];
      }
      normalize_row_backward(dx, nx, st.rstd[b * 3], GH);
      normalize_row_backward(dh, nh, st.rstd[b * 3 + 1], GH);
    });
  }

  // The state pass of backward step t with a projection, over (B, P): writes dL/d(W_hr h̃).
  void backward_projected_state(int64_t t, int64_t rows, const BackwardStep<scalar_t>& st) const {
    const int64_t R = plan.R;
    for_each_chunk(rows, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      acc_t zh[kChunk], fresh[kChunk];
      if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, sample(b), j0, n, zh);
      backward_state(row, n, zh, st, fresh);
      std::copy(fresh, fresh + n, st.dproj + row);
    });
  }

  // The rows [rows, ran) that ran at the step after this one (in processing order) but not at
  // this one (only in the reverse direction, where rows stop as the backward loop goes on): their
  // state passed through this step unchanged and output nothing, so dL/dh gains the step after's
  // dL/dĥ and nothing else. Rows past `ran` have a zero dL/dĥ; dL/dc passes through as it is.
  void backward_inactive(int64_t rows, int64_t ran, const BackwardStep<scalar_t>& st) const {
    if (!st.dhhat || ran <= rows) return;
    const int64_t R = plan.R;
    for (int64_t k = rows * R; k < ran * R; ++k) {
      st.zpart[k] += st.mh ? st.dhhat[k] * st.mh[k] : st.dhhat[k];
    }
  }
};

void check_cpu_dtype(const Tensor& input) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                   "rnnfused: on the CPU, input must be float32 or float64, got ",
                   input.scalar_type());
}

Tensor contiguous_or_undefined(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined() ? t->contiguous() : Tensor();
}

// ---------------------------------------------------------------------------------------------
// The time loops
// ---------------------------------------------------------------------------------------------

template <CellKind kCell>
LayerOutputs layer_forward_cpu(const ForwardArgs& args) {
  using Traits = CellTraits<kCell>;
  const LayerPlan plan = plan_forward(kCell, args);
  const Tensor& input = args.input;
  check_cpu_dtype(input);
  const bool need_workspace = args.need_workspace;
  const int64_t T = plan.T, B = plan.B, H = plan.H, R = plan.R;
  const int64_t GH = Traits::kGates * H;
  const auto opts = input.options();
  const SequenceMasks seq = sequence_masks(plan, input.scalar_type());
  const Tensor len = contiguous_or_undefined(args.lengths);
  const Batching bt = make_batching(plan, len);
  const int64_t N = bt.rows();

  // x̂ = x ⊙ mx / (1 - p_in): the same (B, I) mask at every step; packed rows (N, I).
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  xhat = bt.pack(xhat);
  // Ŵ_hh = W_hh ⊙ M / (1 - p_w): one mask per call.
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_ih = args.weight_ih.contiguous();
  const Tensor w_hr = contiguous_or_undefined(args.weight_hr);
  const Tensor mh = bt.to_loop(seq.recurrent_scale);

  Tensor output = at::empty({T, B, R}, opts);
  Tensor gates, hs, cs, ctil, norm_x, norm_h, norm_c, rstd;
  // Two rolling states suffice when backward will not run.
  const int64_t kept = need_workspace ? T + 1 : 2;
  hs = at::empty({kept, B, R}, opts);
  hs[0].copy_(bt.to_loop(args.h0));
  if constexpr (Traits::kHasCell) {
    cs = at::empty({kept, B, H}, opts);
    cs[0].copy_(bt.to_loop(*args.c0));
  }
  // Input term of all steps, Xp = x̂ W_ih^T, packed rows (N, G*H); the cell pass adds the biases
  // (and, for the LSTM, the GEMM adds the recurrent term into it).
  Tensor xp = cpu_gemm::mm(Product::kInput, xhat, w_ih.t());
  if (need_workspace) {
    // The LSTM's gates overwrite their own pre-activations: each chunk of the cell pass reads its
    // units' four sums before it stores their four gates, so the workspace can be the input
    // term's buffer when their rows are laid out alike, i.e. nothing is packed: one (T, B, 4H)
    // allocation fewer per call (52 MB at (100, 64, 512, 512)); time unchanged within 1%.
    constexpr bool kGatesInPlace = kCell == CellKind::kLstm;
    gates = kGatesInPlace && !bt.packed ? xp.view({T, B, kWorkspaceGates * H})
                                        : at::empty({T, B, kWorkspaceGates * H}, opts);
    if (plan.zoneout_c() && !Traits::kLayerNorm) ctil = at::empty({T, B, H}, opts);
  }
  // The LN-LSTM's normalized terms: kept for backward, or one step's worth of scratch.
  const LayerNormParams* ln = args.ln;
  Tensor ln_gains;  // [γ_ih | γ_hh | γ_c | β_c], contiguous
  if constexpr (Traits::kLayerNorm) {
    ln_gains = flat_layer_norm_params(*ln);
    // Zeros at the padded positions, which no pass writes when packed.
    rstd = bt.packed ? at::zeros({T, B, 3}, opts) : at::empty({T, B, 3}, opts);
    if (need_workspace) {
      norm_h = at::empty({T, B, GH}, opts);
      norm_c = at::empty({T, B, H}, opts);
    } else {
      gates = at::empty({B, kWorkspaceGates * H}, opts);
      norm_h = at::empty({B, GH}, opts);
      norm_c = at::empty({B, H}, opts);
    }
  }

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layer_forward_cpu", [&] {
    if constexpr (Traits::kLayerNorm) {  // LN(W_ih x̂_t) for every t, in place
      scalar_t* x = xp.data_ptr<scalar_t>();
      scalar_t* r = rstd.data_ptr<scalar_t>();
      const int64_t* at_row = bt.packed ? bt.loop_rows.data_ptr<int64_t>() : nullptr;
      for_each_sample(N, GH, [&](int64_t row) {
        r[(at_row ? at_row[row] : row) * 3] = normalize_row(x + row * GH, GH);
      });
      // The workspace keeps (T, B, 4H) in the loop's order, 0 at padded positions.
      if (need_workspace) norm_x = bt.unpack_loop(xp);
    }
    // The LSTMs add both biases to one sum; the GRU keeps b_hh with the recurrent term.
    constexpr bool kSeparateBias = Traits::kSeparateRecurrent && !Traits::kLayerNorm;
    Tensor bias_x, bias_h;
    if (!plan.has_bias) {
      bias_x = at::zeros({GH}, opts);
      if (kSeparateBias) bias_h = bias_x;
    } else if (kSeparateBias) {
      bias_x = args.bias_ih->contiguous();
      bias_h = args.bias_hh->contiguous();
    } else {
      bias_x = (*args.bias_ih + *args.bias_hh).contiguous();
    }
    Tensor gh = Traits::kSeparateRecurrent && !Traits::kLayerNorm ? at::empty({B, GH}, opts)
                                                                  : Tensor();
    Tensor hhat = mh.defined() ? at::empty({2, B, R}, opts) : Tensor();
    if (mh.defined()) hhat[0].copy_(hs[0] * mh);
    Tensor htil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
    Tensor hproj = plan.has_proj ? at::empty({B, R}, opts) : Tensor();

    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
    scalar_t* hhat_p = ptr_or_null<scalar_t>(hhat);
    scalar_t* gh_p = ptr_or_null<scalar_t>(gh);

    // The recurrent term ĥ_{t-1} Ŵ_hh^T every step, with Ŵ_hh packed once (and W_hr, for the
    // projection h̃ W_hr^T).
    const FixedRightOperand<scalar_t> recurrent(Product::kRecurrent, true, B, GH, R,
                                                w_hh.data_ptr<scalar_t>(), R,
                                                !Traits::kSeparateRecurrent);
    const FixedRightOperand<scalar_t> projection(Product::kProjection, true,
                                                 plan.has_proj ? B : 0, R, H,
                                                 ptr_or_null<scalar_t>(w_hr), H);
    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<kCell, scalar_t, kCand, kZoneC, kZoneH> cpu{plan, bt.orig()};
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = plan.time_of(s);
        const int64_t rows = bt.active[t];  // the running rows, first in the loop's order
        const int64_t cur = need_workspace ? s : s % 2;
        const int64_t nxt = need_workspace ? s + 1 : (s + 1) % 2;
        scalar_t* pre = xp.data_ptr<scalar_t>() + bt.offset[t] * GH;
        const scalar_t* h_prev = hs_p + cur * B * R;
        const scalar_t* hhat_prev = hhat_p ? hhat_p + (s % 2) * B * R : h_prev;
        // Where this step's workspace rows go (the LN-LSTM's scratch rows without a workspace).
        const int64_t at_t = need_workspace ? t : 0;
        if constexpr (Traits::kLayerNorm) {
          gh_p = norm_h.data_ptr<scalar_t>() + at_t * B * GH;
        }
        if constexpr (Traits::kSeparateRecurrent) {
          recurrent.gemm(rows, hhat_prev, R, 0, gh_p, GH);
        } else {
          recurrent.gemm(rows, hhat_prev, R, 1, pre, GH);
        }
        const ForwardStep<scalar_t> step{
            pre,
            gh_p,
            bias_x.data_ptr<scalar_t>(),
            ptr_or_null<scalar_t>(bias_h),
            h_prev,
            hs_p + nxt * B * R,
            cs_p ? cs_p + cur * B * H : nullptr,
            cs_p ? cs_p + nxt * B * H : nullptr,
            gates.defined() ? gates.data_ptr<scalar_t>() + at_t * B * kWorkspaceGates * H
                            : nullptr,
            ctil.defined() ? ctil.data_ptr<scalar_t>() + t * B * H : nullptr,
            output.data_ptr<scalar_t>() + t * B * R,
            hhat_p ? hhat_p + ((s + 1) % 2) * B * R : nullptr,
            ptr_or_null<scalar_t>(mh),
            ptr_or_null<scalar_t>(htil),
            ptr_or_null<scalar_t>(ln_gains),
            Traits::kLayerNorm ? ln_gains.data_ptr<scalar_t>() + GH : nullptr,
            Traits::kLayerNorm ? ln_gains.data_ptr<scalar_t>() + 2 * GH : nullptr,
            Traits::kLayerNorm ? ln_gains.data_ptr<scalar_t>() + 2 * GH + H : nullptr,
            Traits::kLayerNorm ? norm_c.data_ptr<scalar_t>() + at_t * B * H : nullptr,
            Traits::kLayerNorm ? rstd.data_ptr<scalar_t>() + t * B * 3 : nullptr};
        if constexpr (Traits::kLayerNorm) {
          cpu.forward_cell_ln(t, rows, step);
        } else {
          cpu.forward_cell(t, rows, step);
        }
        if (plan.has_proj) {
          projection.gemm(rows, htil.data_ptr<scalar_t>(), H, 0, hproj.data_ptr<scalar_t>(), R);
          cpu.forward_projected_state(t, rows, hproj.data_ptr<scalar_t>(), step);
        }
        cpu.forward_inactive(rows, step);
      }
    });
  });

  LayerOutputs out = finish_forward(plan, need_workspace, output, gates, hs, cs, ctil);
  if constexpr (Traits::kLayerNorm) finish_forward_ln(need_workspace, out, norm_x, norm_h, norm_c, rstd);
  // The op's outputs in the samples' order; the workspace stays in the loop's.
  out.output = bt.to_samples(out.output, 1);
  out.h_n = bt.to_samples(out.h_n);
  out.c_n = bt.to_samples(out.c_n);
  return out;
}

template <CellKind kCell>
LayerGrads layer_backward_cpu(const BackwardArgs& args) {
  using Traits = CellTraits<kCell>;
  const LayerPlan plan = plan_backward(kCell, args);
  const Tensor& input = args.input;
  check_cpu_dtype(input);
  const int64_t T = plan.T, B = plan.B, H = plan.H, R = plan.R;
  const int64_t GH = Traits::kGates * H;
  const auto opts = input.options();
  const SequenceMasks seq = sequence_masks(plan, input.scalar_type());
  const Tensor len = contiguous_or_undefined(args.lengths);
  const Batching bt = make_batching(plan, len);  // the forward's, from the same lengths
  const int64_t N = bt.rows();
  const Tensor grad_output = bt.to_loop(args.grad_output, 1).contiguous();
  const Tensor gates = args.gates.contiguous(), hs = args.hs.contiguous();
  const Tensor cs = Traits::kHasCell ? args.cs->contiguous() : Tensor();
  const Tensor ctil =
      kCell == CellKind::kLstm && plan.zoneout_c() ? args.ctil->contiguous() : Tensor();
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_hr = contiguous_or_undefined(args.weight_hr);
  const Tensor mh = bt.to_loop(seq.recurrent_scale);

  // Packed rows (N, ·), by input position t: the running rows of each step.
  Tensor da = at::empty({N, GH}, opts);          // dL/d(recurrent term)
  Tensor dgi = Traits::kSeparateRecurrent ? at::empty({N, GH}, opts) : da;  // input term's
  // dL/dh carried to the earlier step, dL/dc: (B, ·) in the loop's order.
  Tensor zpart = bt.to_loop(args.grad_h_n).contiguous().clone();
  Tensor dc = Traits::kHasCell ? bt.to_loop(*args.grad_c_n).contiguous().clone() : Tensor();
  // dL/dĥ from the last step's GEMM; 0 in rows that have not run yet (see backward_inactive).
  Tensor dhhat = at::zeros({B, R}, opts);
  Tensor dproj = plan.has_proj ? at::empty({N, R}, opts) : Tensor();  // dL/d(W_hr h̃)
  Tensor dhtil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
  Tensor htil = plan.has_proj ? at::empty({N, H}, opts) : Tensor();
  // The LN-LSTM's workspace and parameters, and each thread's sums of the bias and LN parameter
  // gradients: [db | dγ_ih | dγ_hh | dγ_c | dβ_c].
  LayerNormSaved saved;
  Tensor ln_gains, param_grads;
  if constexpr (Traits::kLayerNorm) {
    const LayerNormParams* ln = args.ln;
    saved = LayerNormSaved(*args.ln_ws);
    ln_gains = flat_layer_norm_params(*ln);
    param_grads = at::zeros({at::get_num_threads(), 3 * GH + 2 * H}, opts);
  }

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layer_backward_cpu", [&] {
    // dL/dĥ = da_t Ŵ_hh every step, with Ŵ_hh packed once (and W_hr for dL/dh̃ = dproj W_hr).
    const FixedRightOperand<scalar_t> recurrent(Product::kRecurrentBackward, false, B, R, GH,
                                                w_hh.data_ptr<scalar_t>(), R);
    const FixedRightOperand<scalar_t> projection(Product::kProjectionBackward, false,
                                                 plan.has_proj ? B : 0, H, R,
                                                 ptr_or_null<scalar_t>(w_hr), H);
    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<kCell, scalar_t, kCand, kZoneC, kZoneH> cpu{plan, bt.orig()};
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = plan.time_of(s);
        const int64_t rows = bt.active[t];
        const int64_t ran = s == T - 1 ? 0 : bt.active[plan.time_of(s + 1)];
        const int64_t off = bt.offset[t];
        scalar_t* da_t = da.data_ptr<scalar_t>() + off * GH;
        const scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
        BackwardStep<scalar_t> step{
            gates.data_ptr<scalar_t>() + t * B * kWorkspaceGates * H,
            hs.data_ptr<scalar_t>() + s * B * R,
            cs_p ? cs_p + s * B * H : nullptr,
            !cs_p || Traits::kLayerNorm ? nullptr
            : kZoneC                    ? ctil.data_ptr<scalar_t>() + t * B * H
                                        : cs_p + (s + 1) * B * H,
            ptr_or_null<scalar_t>(dhtil),
            grad_output.data_ptr<scalar_t>() + t * B * R,
            zpart.data_ptr<scalar_t>(),
            s == T - 1 ? nullptr : dhhat.data_ptr<scalar_t>(),
            ptr_or_null<scalar_t>(mh),
            ptr_or_null<scalar_t>(dc),
            da_t,
            Traits::kSeparateRecurrent ? dgi.data_ptr<scalar_t>() + off * GH : nullptr,
            plan.has_proj ? htil.data_ptr<scalar_t>() + off * H : nullptr,
            plan.has_proj ? dproj.data_ptr<scalar_t>() + off * R : nullptr};
        if constexpr (Traits::kLayerNorm) {
          step.norm_x = saved.norm_x.data_ptr<scalar_t>() + t * B * GH;
          step.norm_h = saved.norm_h.data_ptr<scalar_t>() + t * B * GH;
          step.norm_c = saved.norm_c.data_ptr<scalar_t>() + t * B * H;
          step.rstd = saved.rstd.data_ptr<scalar_t>() + t * B * 3;
          step.gain_x = ln_gains.data_ptr<scalar_t>();
          step.gain_h = step.gain_x + GH;
          step.gain_c = step.gain_x + 2 * GH;
          step.bias_c = step.gain_c + H;
          step.param_grads = param_grads.data_ptr<scalar_t>();
        }
        cpu.backward_inactive(rows, ran, step);
        if (plan.has_proj) {
          cpu.backward_projected_state(t, rows, step);
          projection.gemm(rows, step.dproj, R, 0, dhtil.data_ptr<scalar_t>(), H);
        }
        if constexpr (Traits::kLayerNorm) {
          cpu.backward_cell_ln(t, rows, step);
        } else {
          cpu.backward_cell(t, rows, step);
        }
        // dL/dĥ_{s-1} = da_t Ŵ_hh, for the rows that ran (the others keep theirs: see
        // backward_inactive)
        recurrent.gemm(rows, da_t, GH, 0, dhhat.data_ptr<scalar_t>(), R);
      }
    });
  });

  const Tensor grad_h0 = initial_state_gradient(plan, bt, zpart, dhhat, mh);
  LayerGrads grads = packed_input_and_weight_gradients(
      plan, bt, seq, input, args.weight_ih, dgi, da, hs, dproj, htil, bt.to_samples(grad_h0),
      dc.defined() ? bt.to_samples(dc) : dc);
  if constexpr (Traits::kLayerNorm) {
    // The bias enters after the LNs: its gradient is the sum of dL/da, not of dgi or da.
    const Tensor sums = param_grads.sum(0);
    if (plan.has_bias) grads.grad_bias_ih = sums.narrow(0, 0, GH).clone();
    grads.grad_ln_weight_ih = sums.narrow(0, GH, GH).clone();
    grads.grad_ln_weight_hh = sums.narrow(0, 2 * GH, GH).clone();
    grads.grad_ln_weight_c = sums.narrow(0, 3 * GH, H).clone();
    grads.grad_ln_bias_c = sums.narrow(0, 3 * GH + H, H).clone();
  }
  return grads;
}

// The layer driver of this device, as layer_ops.h calls it.
struct CpuDevice {
  template <CellKind kCell>
  static LayerOutputs forward(const ForwardArgs& args) { return layer_forward_cpu<kCell>(args); }
  template <CellKind kCell>
  static LayerGrads backward(const BackwardArgs& args) { return layer_backward_cpu<kCell>(args); }
};

}  // namespace

TORCH_LIBRARY_IMPL(rnnfused, CPU, m) { register_layer_ops<CpuDevice>(m); }

}  // namespace rnnfused
