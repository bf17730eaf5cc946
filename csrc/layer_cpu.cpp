// CPU forward and backward of the layer ops, LSTM and GRU (SPEC §2, §2b, §5).
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
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <utility>

#include "cell_math.h"
#include "cpu_blas.h"
#include "layer.h"
#include "layer_ops.h"

namespace rnnfused {

namespace {

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
  // One Philox block per quad, the quads of the chunk side by side so the rounds vectorize
  // (about 20x faster than block by block), then the words become mask values.
  uint32_t words[4][kChunk / 4];
  const int64_t quads = (n + 3) / 4;
#pragma omp simd
  for (int64_t q = 0; q < quads; ++q) {
    const Philox4x32 w = stream.quad(t, b, j0 / 4 + q);
    words[0][q] = w.v[0];
    words[1][q] = w.v[1];
    words[2][q] = w.v[2];
    words[3][q] = w.v[3];
  }
  // n is a multiple of 4 except in the last chunk of a row; out has room for kChunk values.
  if (is_zoneout) {
    for (int64_t q = 0; q < quads; ++q) {
      for (int k = 0; k < 4; ++k) out[4 * q + k] = zoneout_value<acc_t>(words[k][q], threshold);
    }
  } else {
    for (int64_t q = 0; q < quads; ++q) {
      for (int k = 0; k < 4; ++k) {
        out[4 * q + k] = dropout_scale<acc_t>(words[k][q], threshold, inv_keep);
      }
    }
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
  scalar_t* ctil;          // LSTM with zoneout on c: c̃, or null
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
};

template <CellKind kCell, typename scalar_t, bool kCand, bool kZoneC, bool kZoneH>
struct CpuLayer {
  using acc_t = scalar_t;
  using Cell = CellChunk<kCell>;
  static constexpr int64_t kG = CellTraits<kCell>::kGates;
  const LayerPlan& plan;
  const int64_t* len;  // (B) or null

  bool active(int64_t t, int64_t b) const { return len == nullptr || t < len[b]; }

  // ---------------------------------------------------------------------------------------
  // Forward
  // ---------------------------------------------------------------------------------------

  // The cell pass of step t over (B, H). Without a projection it also finishes the state
  // (zoneout on h, output, masked state for the next GEMM); with one it leaves h̃ in htil.
  void forward_cell(int64_t t, const ForwardStep<scalar_t>& st) const {
    const int64_t H = plan.H;
    const bool proj = plan.has_proj;
    for_each_chunk(plan.B, H, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * H + j0;
      scalar_t* ws = st.gates ? st.gates + b * kWorkspaceGates * H + j0 : nullptr;
      if (!active(t, b)) {  // padded position: the state passes through, the output is 0
        if (st.c_next) std::copy(st.c_prev + row, st.c_prev + row + n, st.c_next + row);
        if (ws) {
          for (int g = 0; g < kWorkspaceGates; ++g) std::fill_n(ws + g * H, n, scalar_t(0));
        }
        if (st.ctil) std::copy(st.c_prev + row, st.c_prev + row + n, st.ctil + row);
        if (proj) {
          std::fill_n(st.htil + row, n, scalar_t(0));
        } else {
          pass_state(row, n, st);
        }
        return;
      }
      acc_t cand[kChunk], zc[kChunk], zh[kChunk], h_tilde[kChunk];
      if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, b, j0, n, cand);
      if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, b, j0, n, zc);
      if constexpr (kZoneH) {
        if (!proj) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
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
                                      H};
      Cell::template forward<acc_t, kCand, kZoneC>(io, n, cand, zc, h_tilde);
      if (proj) {
        std::copy(h_tilde, h_tilde + n, st.htil + row);
      } else {
        finish_state(row, n, h_tilde, zh, st);
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

  // A padded position of the state: it passes through, the output is 0.
  void pass_state(int64_t row, int64_t n, const ForwardStep<scalar_t>& st) const {
    std::copy(st.h_prev + row, st.h_prev + row + n, st.h_next + row);
    std::fill_n(st.out + row, n, scalar_t(0));
    if (st.mh) {
      for (int64_t k = 0; k < n; ++k) st.hhat_next[row + k] = st.h_prev[row + k] * st.mh[row + k];
    }
  }

  // The state pass of step t over (B, P) after the projection GEMM left W_hr h̃ in hproj.
  void forward_projected_state(int64_t t, const scalar_t* hproj,
                               const ForwardStep<scalar_t>& st) const {
    const int64_t R = plan.R;
    for_each_chunk(plan.B, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      if (!active(t, b)) {
        pass_state(row, n, st);
        return;
      }
      acc_t fresh[kChunk], zh[kChunk];
      std::copy(hproj + row, hproj + row + n, fresh);
      if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
      finish_state(row, n, fresh, zh, st);
    });
  }

  // ---------------------------------------------------------------------------------------
  // Backward
  // ---------------------------------------------------------------------------------------

  // dL/dh for the state after step s of units [row, row + n), then its split through zoneout.
  //   zpart: in: the zoneout share carried from step s+1 (or grad_h_n); out: this step's share
  //   fresh: out: dL/dh̃ (the pre-zoneout state, projected or not); 0 at padded positions
  void backward_state(int64_t row, int64_t n, bool on, const acc_t* zh,
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
    if (!on) {  // padded: the state passed through unchanged, the output was a constant 0
      for (int64_t k = 0; k < n; ++k) {
        zpart[row + k] = dh[k];
        fresh[k] = 0;
      }
      return;
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
  void backward_cell(int64_t t, const BackwardStep<scalar_t>& st) const {
    const int64_t H = plan.H;
    const bool proj = plan.has_proj;
    for_each_chunk(plan.B, H, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * H + j0;
      const bool on = active(t, b);
      acc_t cand[kChunk], zc[kChunk], zh[kChunk], dh_tilde[kChunk];
      if (on) {
        if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, b, j0, n, cand);
        if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, b, j0, n, zc);
        if constexpr (kZoneH) {
          if (!proj) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
        }
      }
      if (proj) {
        for (int64_t k = 0; k < n; ++k) dh_tilde[k] = st.dhtil[row + k];
      } else {
        backward_state(row, n, on, zh, st, dh_tilde);
      }
      const int64_t gate_row = b * kG * H + j0;
      if (!on) {
        for (int g = 0; g < kG; ++g) std::fill_n(st.da + gate_row + g * H, n, scalar_t(0));
        if (st.dgi) {
          for (int g = 0; g < kG; ++g) std::fill_n(st.dgi + gate_row + g * H, n, scalar_t(0));
        }
        if (st.htil) std::fill_n(st.htil + row, n, scalar_t(0));
        return;
      }
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

  // The state pass of backward step t with a projection, over (B, P): writes dL/d(W_hr h̃).
  void backward_projected_state(int64_t t, const BackwardStep<scalar_t>& st) const {
    const int64_t R = plan.R;
    for_each_chunk(plan.B, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      const bool on = active(t, b);
      acc_t zh[kChunk], fresh[kChunk];
      if constexpr (kZoneH) {
        if (on) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
      }
      backward_state(row, n, on, zh, st, fresh);
      std::copy(fresh, fresh + n, st.dproj + row);
    });
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
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R;
  const int64_t GH = Traits::kGates * H;
  const auto opts = input.options();
  const SequenceMasks seq = sequence_masks(plan, input.scalar_type());

  // x̂ = x ⊙ mx / (1 - p_in): the same (B, I) mask at every step.
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  // Ŵ_hh = W_hh ⊙ M / (1 - p_w): one mask per call.
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_ih = args.weight_ih.contiguous();
  const Tensor w_hr = contiguous_or_undefined(args.weight_hr);
  const Tensor mh = seq.recurrent_scale;
  const Tensor len = contiguous_or_undefined(args.lengths);

  Tensor output = at::empty({T, B, R}, opts);
  Tensor gates, hs, cs, ctil;
  // Two rolling states suffice when backward will not run.
  const int64_t kept = need_workspace ? T + 1 : 2;
  hs = at::empty({kept, B, R}, opts);
  hs[0].copy_(args.h0);
  if constexpr (Traits::kHasCell) {
    cs = at::empty({kept, B, H}, opts);
    cs[0].copy_(*args.c0);
  }
  if (need_workspace) {
    gates = at::empty({T, B, kWorkspaceGates * H}, opts);
    if (plan.zoneout_c()) ctil = at::empty({T, B, H}, opts);
  }

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layer_forward_cpu", [&] {
    // Input term of all steps: Xp = x̂ W_ih^T (the cell pass adds the biases).
    Tensor xp = at::empty({T, B, GH}, opts);
    gemm_rowmajor<scalar_t>(false, true, T * B, GH, I, 1, xhat.data_ptr<scalar_t>(), I,
                            w_ih.data_ptr<scalar_t>(), I, 0, xp.data_ptr<scalar_t>(), GH);
    // The LSTM adds both biases to one sum; the GRU keeps b_hh with the recurrent term.
    Tensor bias_x, bias_h;
    if (!plan.has_bias) {
      bias_x = at::zeros({GH}, opts);
      if (Traits::kSeparateRecurrent) bias_h = bias_x;
    } else if (Traits::kSeparateRecurrent) {
      bias_x = args.bias_ih->contiguous();
      bias_h = args.bias_hh->contiguous();
    } else {
      bias_x = (*args.bias_ih + *args.bias_hh).contiguous();
    }
    Tensor gh = Traits::kSeparateRecurrent ? at::empty({B, GH}, opts) : Tensor();
    Tensor hhat = mh.defined() ? at::empty({2, B, R}, opts) : Tensor();
    if (mh.defined()) hhat[0].copy_(args.h0 * mh);
    Tensor htil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
    Tensor hproj = plan.has_proj ? at::empty({B, R}, opts) : Tensor();

    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
    scalar_t* hhat_p = ptr_or_null<scalar_t>(hhat);
    scalar_t* gh_p = ptr_or_null<scalar_t>(gh);
    const int64_t* len_p = plan.has_lengths ? len.data_ptr<int64_t>() : nullptr;

    // The recurrent term ĥ_{t-1} Ŵ_hh^T every step, with Ŵ_hh packed once.
    const FixedRightOperand<scalar_t> recurrent(true, B, GH, R, w_hh.data_ptr<scalar_t>(), R);
    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<kCell, scalar_t, kCand, kZoneC, kZoneH> cpu{plan, len_p};
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = plan.time_of(s);
        const int64_t cur = need_workspace ? s : s % 2;
        const int64_t nxt = need_workspace ? s + 1 : (s + 1) % 2;
        scalar_t* pre = xp.data_ptr<scalar_t>() + t * B * GH;
        const scalar_t* h_prev = hs_p + cur * B * R;
        const scalar_t* hhat_prev = hhat_p ? hhat_p + (s % 2) * B * R : h_prev;
        if constexpr (Traits::kSeparateRecurrent) {
          recurrent.gemm(hhat_prev, R, 0, gh_p, GH);
        } else {
          recurrent.gemm(hhat_prev, R, 1, pre, GH);
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
            need_workspace ? gates.data_ptr<scalar_t>() + t * B * kWorkspaceGates * H : nullptr,
            need_workspace && kZoneC ? ctil.data_ptr<scalar_t>() + t * B * H : nullptr,
            output.data_ptr<scalar_t>() + t * B * R,
            hhat_p ? hhat_p + ((s + 1) % 2) * B * R : nullptr,
            ptr_or_null<scalar_t>(mh),
            ptr_or_null<scalar_t>(htil)};
        cpu.forward_cell(t, step);
        if (plan.has_proj) {
          gemm_rowmajor<scalar_t>(false, true, B, R, H, 1, htil.data_ptr<scalar_t>(), H,
                                  w_hr.data_ptr<scalar_t>(), H, 0, hproj.data_ptr<scalar_t>(), R);
          cpu.forward_projected_state(t, hproj.data_ptr<scalar_t>(), step);
        }
      }
    });
  });

  return finish_forward(plan, need_workspace, output, gates, hs, cs, ctil);
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
  const Tensor grad_output = args.grad_output.contiguous();
  const Tensor gates = args.gates.contiguous(), hs = args.hs.contiguous();
  const Tensor cs = Traits::kHasCell ? args.cs->contiguous() : Tensor();
  const Tensor ctil = Traits::kHasCell && plan.zoneout_c() ? args.ctil->contiguous() : Tensor();
  Tensor w_hh = args.weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_hr = contiguous_or_undefined(args.weight_hr);
  const Tensor mh = seq.recurrent_scale;
  const Tensor len = contiguous_or_undefined(args.lengths);

  Tensor da = at::empty({T, B, GH}, opts);       // dL/d(recurrent term)_t, indexed by t
  Tensor dgi = Traits::kSeparateRecurrent ? at::empty({T, B, GH}, opts) : da;  // input term's
  Tensor zpart = args.grad_h_n.contiguous().clone();  // dL/dh carried to the earlier step
  Tensor dc = Traits::kHasCell ? args.grad_c_n->contiguous().clone() : Tensor();  // dL/dc
  Tensor dhhat = at::empty({B, R}, opts);             // dL/dĥ from the last step's GEMM
  Tensor dproj = plan.has_proj ? at::empty({T, B, R}, opts) : Tensor();  // dL/d(W_hr h̃)
  Tensor dhtil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
  Tensor htil = plan.has_proj ? at::empty({T, B, H}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "layer_backward_cpu", [&] {
    const int64_t* len_p = plan.has_lengths ? len.data_ptr<int64_t>() : nullptr;
    // dL/dĥ = da_t Ŵ_hh every step, with Ŵ_hh packed once.
    const FixedRightOperand<scalar_t> recurrent(false, B, R, GH, w_hh.data_ptr<scalar_t>(), R);
    dispatch_switches<Traits::kHasCell>(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<kCell, scalar_t, kCand, kZoneC, kZoneH> cpu{plan, len_p};
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = plan.time_of(s);
        scalar_t* da_t = da.data_ptr<scalar_t>() + t * B * GH;
        const scalar_t* cs_p = ptr_or_null<scalar_t>(cs);
        const BackwardStep<scalar_t> step{
            gates.data_ptr<scalar_t>() + t * B * kWorkspaceGates * H,
            hs.data_ptr<scalar_t>() + s * B * R,
            cs_p ? cs_p + s * B * H : nullptr,
            !cs_p ? nullptr
                  : kZoneC ? ctil.data_ptr<scalar_t>() + t * B * H : cs_p + (s + 1) * B * H,
            ptr_or_null<scalar_t>(dhtil),
            grad_output.data_ptr<scalar_t>() + t * B * R,
            zpart.data_ptr<scalar_t>(),
            s == T - 1 ? nullptr : dhhat.data_ptr<scalar_t>(),
            ptr_or_null<scalar_t>(mh),
            ptr_or_null<scalar_t>(dc),
            da_t,
            Traits::kSeparateRecurrent ? dgi.data_ptr<scalar_t>() + t * B * GH : nullptr,
            plan.has_proj ? htil.data_ptr<scalar_t>() + t * B * H : nullptr,
            plan.has_proj ? dproj.data_ptr<scalar_t>() + t * B * R : nullptr};
        if (plan.has_proj) {
          cpu.backward_projected_state(t, step);
          gemm_rowmajor<scalar_t>(false, false, B, H, R, 1, step.dproj, R,
                                  w_hr.data_ptr<scalar_t>(), H, 0, dhtil.data_ptr<scalar_t>(), H);
        }
        cpu.backward_cell(t, step);
        // dL/dĥ_{s-1} = da_t Ŵ_hh
        recurrent.gemm(da_t, GH, 0, dhhat.data_ptr<scalar_t>(), R);
      }
    });
  });

  // dL/dh0 = the carried share + dĥ ⊙ mh from the first step.
  Tensor grad_h0 = T > 0 ? zpart + (mh.defined() ? dhhat * mh : dhhat) : zpart;
  return input_and_weight_gradients(plan, seq, input, args.weight_ih, dgi, da, hs, dproj, htil,
                                    std::move(grad_h0), std::move(dc));
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
