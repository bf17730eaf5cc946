// CPU forward and backward of the layer op (SPEC §2, §5).
//
// The layer is the cell over time. Forward: one GEMM projects the (masked) inputs of all steps;
// per step, the recurrent GEMM adds Ŵ_hh ĥ_{t-1}, then one parallel pointwise pass applies the
// cell (cell_math.h) with the per-step masks drawn from the Philox stream (philox.h). Backward
// walks the steps in reverse with one pointwise pass and one GEMM per step (two of each with a
// projection), and computes the weight gradients as single GEMMs after the loop. The switches of
// the pointwise passes are template parameters, so an unregularized call draws no random number
// and multiplies by no mask.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>

#include "cell_math.h"
#include "cpu_blas.h"
#include "lstm_layer.h"

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

// What the pointwise passes of one call read and write; the step pointers move with s.
template <typename scalar_t>
struct Buffers {
  scalar_t* h_prev;  // (B, R) state before the step
  scalar_t* h_next;  // (B, R) state after the step
  scalar_t* c_prev;  // (B, H)
  scalar_t* c_next;  // (B, H)
};

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

template <typename scalar_t, bool kCand, bool kZoneC, bool kZoneH>
struct CpuLayer {
  using acc_t = scalar_t;
  const LayerPlan& plan;
  const int64_t* len;  // (B) or null

  bool active(int64_t t, int64_t b) const { return len == nullptr || t < len[b]; }

  // ---------------------------------------------------------------------------------------
  // Forward
  // ---------------------------------------------------------------------------------------

  // The cell pass of step s over (B, H). Without a projection it also finishes the state
  // (zoneout on h, output, masked state for the next GEMM); with one it leaves h̃ in htil.
  //   pre: (B, 4H) x̂ W_ih^T + ĥ Ŵ_hh^T; bias: (4H) b_ih + b_hh, added here (one pass fewer
  //   over the (T, B, 4H) projection than adding it before the GEMMs)
  void forward_cell(int64_t t, const scalar_t* pre, const scalar_t* bias,
                    const Buffers<scalar_t>& buf,
                    scalar_t* gates, scalar_t* ctil, scalar_t* out, scalar_t* hhat_next,
                    const scalar_t* mh, scalar_t* htil) const {
    const int64_t H = plan.H;
    const bool proj = plan.has_proj;
    for_each_chunk(plan.B, H, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * H + j0;
      const scalar_t* c_prev = buf.c_prev + row;
      scalar_t* c_next = buf.c_next + row;
      if (!active(t, b)) {  // padded position: the state passes through, the output is 0
        std::copy(c_prev, c_prev + n, c_next);
        if (gates) {
          for (int g = 0; g < 4; ++g) std::fill_n(gates + b * 4 * H + g * H + j0, n, scalar_t(0));
        }
        if (ctil) std::copy(c_prev, c_prev + n, ctil + row);
        if (proj) {
          std::fill_n(htil + row, n, scalar_t(0));
        } else {
          pass_state(row, n, buf, out, hhat_next, mh);
        }
        return;
      }
      acc_t cand[kChunk], zc[kChunk], zh[kChunk];
      if constexpr (kCand) draw_step_masks(plan, kMaskCandidate, t, b, j0, n, cand);
      if constexpr (kZoneC) draw_step_masks(plan, kMaskZoneoutC, t, b, j0, n, zc);
      if constexpr (kZoneH) {
        if (!proj) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
      }
      const scalar_t* a = pre + b * 4 * H + j0;
      const scalar_t* bs = bias + j0;
      acc_t gi[kChunk], gf[kChunk], gg[kChunk], go[kChunk], c_tilde[kChunk], h_tilde[kChunk];
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const Gates<acc_t> gate = activate_gates<acc_t>(a[k] + bs[k], a[H + k] + bs[H + k],
                                                        a[2 * H + k] + bs[2 * H + k],
                                                        a[3 * H + k] + bs[3 * H + k]);
        const CellForward<acc_t> cell = cell_forward<acc_t>(gate, c_prev[k], kCand ? cand[k] : acc_t(1));
        c_next[k] = kZoneC ? zoneout_mix<acc_t>(c_prev[k], cell.c_tilde, zc[k]) : cell.c_tilde;
        gi[k] = gate.i;
        gf[k] = gate.f;
        gg[k] = gate.g;
        go[k] = gate.o;
        c_tilde[k] = cell.c_tilde;
        h_tilde[k] = cell.h_tilde;
      }
      if (gates) {
        scalar_t* g = gates + b * 4 * H + j0;
        std::copy(gi, gi + n, g);
        std::copy(gf, gf + n, g + H);
        std::copy(gg, gg + n, g + 2 * H);
        std::copy(go, go + n, g + 3 * H);
      }
      if (ctil) std::copy(c_tilde, c_tilde + n, ctil + row);
      if (proj) {
        std::copy(h_tilde, h_tilde + n, htil + row);
      } else {
        finish_state(row, n, h_tilde, zh, buf, out, hhat_next, mh);
      }
    });
  }

  // h_t from h̃_t for units [row, row + n) of the (B, R) state: zoneout, the output, and the
  // recurrent-dropped copy the next GEMM reads.
  void finish_state(int64_t row, int64_t n, const acc_t* h_fresh, const acc_t* zh,
                    const Buffers<scalar_t>& buf, scalar_t* out, scalar_t* hhat_next,
                    const scalar_t* mh) const {
    const scalar_t* h_prev = buf.h_prev + row;
    scalar_t* h_next = buf.h_next + row;
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) {
      const acc_t h = kZoneH ? zoneout_mix<acc_t>(h_prev[k], h_fresh[k], zh[k]) : h_fresh[k];
      h_next[k] = h;
      out[row + k] = h;
    }
    if (mh) {
      for (int64_t k = 0; k < n; ++k) hhat_next[row + k] = h_next[k] * mh[row + k];
    }
  }

  // A padded position of the state: it passes through, the output is 0.
  void pass_state(int64_t row, int64_t n, const Buffers<scalar_t>& buf, scalar_t* out,
                  scalar_t* hhat_next, const scalar_t* mh) const {
    std::copy(buf.h_prev + row, buf.h_prev + row + n, buf.h_next + row);
    std::fill_n(out + row, n, scalar_t(0));
    if (mh) {
      for (int64_t k = 0; k < n; ++k) hhat_next[row + k] = buf.h_prev[row + k] * mh[row + k];
    }
  }

  // The state pass of step s over (B, P) after the projection GEMM left W_hr h̃ in hproj.
  void forward_projected_state(int64_t t, const scalar_t* hproj, const Buffers<scalar_t>& buf,
                               scalar_t* out, scalar_t* hhat_next, const scalar_t* mh) const {
    const int64_t R = plan.R;
    for_each_chunk(plan.B, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      if (!active(t, b)) {
        pass_state(row, n, buf, out, hhat_next, mh);
        return;
      }
      acc_t fresh[kChunk], zh[kChunk];
      std::copy(hproj + row, hproj + row + n, fresh);
      if constexpr (kZoneH) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
      finish_state(row, n, fresh, zh, buf, out, hhat_next, mh);
    });
  }

  // ---------------------------------------------------------------------------------------
  // Backward
  // ---------------------------------------------------------------------------------------

  // dL/dh for the state after step s of units [row, row + n), then its split through zoneout.
  //   zpart: in: the zoneout share carried from step s+1 (or grad_h_n); out: this step's share
  //   dhhat: dL/dĥ from step s+1's GEMM (null at the last step)
  //   fresh: out: dL/dh̃ (the pre-zoneout state, projected or not); 0 at padded positions
  void backward_state(int64_t row, int64_t n, bool on, const acc_t* zh, const scalar_t* dy,
                      scalar_t* zpart, const scalar_t* dhhat, const scalar_t* mh,
                      acc_t* fresh) const {
    acc_t dh[kChunk];
    for (int64_t k = 0; k < n; ++k) dh[k] = zpart[row + k];
    if (dhhat) {
      if (mh) {
        for (int64_t k = 0; k < n; ++k) dh[k] += dhhat[row + k] * mh[row + k];
      } else {
        for (int64_t k = 0; k < n; ++k) dh[k] += dhhat[row + k];
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
      const acc_t total = dh[k] + dy[row + k];
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

  // The cell pass of backward step s over (B, H).
  //   dhtil: dL/dh̃ of the pre-projection value with a projection; without one (null) the
  //          state pass is fused in here
  //   dc: in: dL/dc after the step, out: before it; da: out: dL/da_t (B, 4H)
  //   htil_out: with a projection, h̃ = o tanh(c̃) for the W_hr gradient
  void backward_cell(int64_t t, const scalar_t* gates, const scalar_t* c_prev,
                     const scalar_t* c_tilde, const scalar_t* dhtil, const scalar_t* dy,
                     scalar_t* zpart, const scalar_t* dhhat, const scalar_t* mh, scalar_t* dc,
                     scalar_t* da, scalar_t* htil_out) const {
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
        for (int64_t k = 0; k < n; ++k) dh_tilde[k] = dhtil[row + k];
      } else {
        backward_state(row, n, on, zh, dy, zpart, dhhat, mh, dh_tilde);
      }
      scalar_t* d = da + b * 4 * H + j0;
      if (!on) {
        for (int g = 0; g < 4; ++g) std::fill_n(d + g * H, n, scalar_t(0));
        if (htil_out) std::fill_n(htil_out + row, n, scalar_t(0));
        return;
      }
      const scalar_t* g = gates + b * 4 * H + j0;
      const scalar_t* cp = c_prev + row;
      const scalar_t* ct = c_tilde + row;
      scalar_t* dcr = dc + row;
#pragma omp simd
      for (int64_t k = 0; k < n; ++k) {
        const Gates<acc_t> gate{g[k], g[H + k], g[2 * H + k], g[3 * H + k]};
        acc_t dcell = dcr[k];
        const GateGrads<acc_t> grad = cell_backward<acc_t>(
            gate, cp[k], ct[k], kCand ? cand[k] : acc_t(1), kZoneC ? zc[k] : acc_t(0),
            dh_tilde[k], dcell);
        dcr[k] = dcell;
        d[k] = grad.a_i;
        d[H + k] = grad.a_f;
        d[2 * H + k] = grad.a_g;
        d[3 * H + k] = grad.a_o;
      }
      if (htil_out) {
        for (int64_t k = 0; k < n; ++k) {
          htil_out[row + k] = g[3 * H + k] * act_tanh(static_cast<acc_t>(ct[k]));
        }
      }
    });
  }

  // The state pass of backward step s with a projection, over (B, P): writes dL/d(W_hr h̃).
  void backward_projected_state(int64_t t, const scalar_t* dy, scalar_t* zpart,
                                const scalar_t* dhhat, const scalar_t* mh,
                                scalar_t* dproj) const {
    const int64_t R = plan.R;
    for_each_chunk(plan.B, R, [&](int64_t b, int64_t j0, int64_t n) {
      const int64_t row = b * R + j0;
      const bool on = active(t, b);
      acc_t zh[kChunk], fresh[kChunk];
      if constexpr (kZoneH) {
        if (on) draw_step_masks(plan, kMaskZoneoutH, t, b, j0, n, zh);
      }
      backward_state(row, n, on, zh, dy, zpart, dhhat, mh, fresh);
      std::copy(fresh, fresh + n, dproj + row);
    });
  }
};

void check_cpu_dtype(const Tensor& input) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                   "rnnfused: on the CPU, input must be float32 or float64, got ",
                   input.scalar_type());
}

}  // namespace

ForwardResult lstm_forward_cpu(const Tensor& input_, const Tensor& h0, const Tensor& c0,
                               const Tensor& weight_ih, const Tensor& weight_hh,
                               const c10::optional<Tensor>& bias_ih,
                               const c10::optional<Tensor>& bias_hh,
                               const c10::optional<Tensor>& weight_hr,
                               const c10::optional<Tensor>& lengths, const Tensor& seed,
                               int64_t layer, bool reverse, bool training,
                               at::ArrayRef<double> rates, bool need_workspace) {
  const LayerPlan plan = plan_forward(input_, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh,
                                      weight_hr, lengths, seed, layer, reverse, training, rates);
  check_cpu_dtype(input_);
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R;
  const auto opts = input_.options();
  const SequenceMasks seq = sequence_masks(plan, input_.scalar_type());

  // x̂ = x ⊙ mx / (1 - p_in): the same (B, I) mask at every step.
  Tensor xhat = input_.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  // Ŵ_hh = W_hh ⊙ M / (1 - p_w): one mask per call.
  Tensor w_hh = weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_ih = weight_ih.contiguous();
  const Tensor w_hr = plan.has_proj ? weight_hr->contiguous() : Tensor();
  const Tensor mh = seq.recurrent_scale;
  const Tensor len = plan.has_lengths ? lengths->contiguous() : Tensor();

  Tensor output = at::empty({T, B, R}, opts);
  Tensor gates, hs, cs, ctil;
  if (need_workspace) {
    gates = at::empty({T, B, 4 * H}, opts);
    hs = at::empty({T + 1, B, R}, opts);
    cs = at::empty({T + 1, B, H}, opts);
    ctil = plan.zoneout_c() ? at::empty({T, B, H}, opts) : at::empty({0}, opts);
  } else {
    // Two rolling states suffice when backward will not run.
    hs = at::empty({2, B, R}, opts);
    cs = at::empty({2, B, H}, opts);
  }
  hs[0].copy_(h0);
  cs[0].copy_(c0);

  AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), "lstm_forward_cpu", [&] {
    // Input projection of all steps: Xp = x̂ W_ih^T (the cell pass adds b_ih + b_hh).
    Tensor xp = at::empty({T, B, 4 * H}, opts);
    gemm_rowmajor<scalar_t>(false, true, T * B, 4 * H, I, 1, xhat.data_ptr<scalar_t>(), I,
                            w_ih.data_ptr<scalar_t>(), I, 0, xp.data_ptr<scalar_t>(), 4 * H);
    const Tensor bias = plan.has_bias ? (*bias_ih + *bias_hh).contiguous() : at::zeros({4 * H}, opts);
    Tensor hhat = mh.defined() ? at::empty({2, B, R}, opts) : Tensor();
    if (mh.defined()) hhat[0].copy_(h0 * mh);
    Tensor htil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
    Tensor hproj = plan.has_proj ? at::empty({B, R}, opts) : Tensor();

    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = cs.data_ptr<scalar_t>();
    const scalar_t* mh_p = ptr_or_null<scalar_t>(mh);
    const int64_t* len_p = plan.has_lengths ? len.data_ptr<int64_t>() : nullptr;

    // a_t += ĥ_{t-1} Ŵ_hh^T every step, with Ŵ_hh packed once.
    const FixedRightOperand<scalar_t> recurrent(true, B, 4 * H, R, w_hh.data_ptr<scalar_t>(), R);
    dispatch_switches(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<scalar_t, kCand, kZoneC, kZoneH> cpu{plan, len_p};
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = plan.time_of(s);
        const int64_t cur = need_workspace ? s : s % 2;
        const int64_t nxt = need_workspace ? s + 1 : (s + 1) % 2;
        const Buffers<scalar_t> buf{hs_p + cur * B * R, hs_p + nxt * B * R, cs_p + cur * B * H,
                                    cs_p + nxt * B * H};
        const scalar_t* hhat_prev = mh_p ? hhat.data_ptr<scalar_t>() + (s % 2) * B * R : buf.h_prev;
        scalar_t* hhat_next = mh_p ? hhat.data_ptr<scalar_t>() + ((s + 1) % 2) * B * R : nullptr;
        scalar_t* pre = xp.data_ptr<scalar_t>() + t * B * 4 * H;
        recurrent.gemm(hhat_prev, R, 1, pre, 4 * H);
        scalar_t* out_t = output.data_ptr<scalar_t>() + t * B * R;
        cpu.forward_cell(t, pre, bias.data_ptr<scalar_t>(), buf,
                         need_workspace ? gates.data_ptr<scalar_t>() + t * B * 4 * H : nullptr,
                         need_workspace && kZoneC ? ctil.data_ptr<scalar_t>() + t * B * H : nullptr,
                         out_t, hhat_next, mh_p, ptr_or_null<scalar_t>(htil));
        if (plan.has_proj) {
          gemm_rowmajor<scalar_t>(false, true, B, R, H, 1, htil.data_ptr<scalar_t>(), H,
                                  w_hr.data_ptr<scalar_t>(), H, 0, hproj.data_ptr<scalar_t>(), R);
          cpu.forward_projected_state(t, hproj.data_ptr<scalar_t>(), buf, out_t, hhat_next, mh_p);
        }
      }
    });
  });

  return finish_forward(plan, need_workspace, output, gates, hs, cs, ctil);
}

BackwardResult lstm_backward_cpu(const Tensor& grad_output_, const Tensor& grad_h_n,
                                 const Tensor& grad_c_n, const Tensor& input,
                                 const Tensor& weight_ih, const Tensor& weight_hh,
                                 const c10::optional<Tensor>& weight_hr,
                                 const c10::optional<Tensor>& lengths, const Tensor& seed,
                                 int64_t layer, bool reverse, bool training,
                                 at::ArrayRef<double> rates, const Tensor& gates_,
                                 const Tensor& hs_, const Tensor& cs_, const Tensor& ctil_,
                                 bool has_bias) {
  const LayerPlan plan =
      plan_backward(grad_output_, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr,
                    lengths, seed, layer, reverse, training, rates, gates_, hs_, cs_, ctil_,
                    has_bias);
  check_cpu_dtype(input);
  const int64_t T = plan.T, B = plan.B, H = plan.H, R = plan.R;
  const auto opts = input.options();
  const SequenceMasks seq = sequence_masks(plan, input.scalar_type());
  const Tensor grad_output = grad_output_.contiguous();
  const Tensor gates = gates_.contiguous(), hs = hs_.contiguous(), cs = cs_.contiguous();
  const Tensor ctil = plan.zoneout_c() ? ctil_.contiguous() : Tensor();
  Tensor w_hh = weight_hh.contiguous();
  if (seq.weight_scale.defined()) w_hh = w_hh * seq.weight_scale;
  const Tensor w_hr = plan.has_proj ? weight_hr->contiguous() : Tensor();
  const Tensor mh = seq.recurrent_scale;
  const Tensor len = plan.has_lengths ? lengths->contiguous() : Tensor();

  Tensor da = at::empty({T, B, 4 * H}, opts);        // dL/da_t, indexed by t
  Tensor zpart = grad_h_n.contiguous().clone();      // dL/dh carried to the earlier step
  Tensor dc = grad_c_n.contiguous().clone();         // dL/dc carried to the earlier step
  Tensor dhhat = at::empty({B, R}, opts);            // dL/dĥ from the last step's GEMM
  Tensor dproj = plan.has_proj ? at::empty({T, B, R}, opts) : Tensor();  // dL/d(W_hr h̃)
  Tensor dhtil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
  Tensor htil = plan.has_proj ? at::empty({T, B, H}, opts) : Tensor();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_backward_cpu", [&] {
    const scalar_t* mh_p = ptr_or_null<scalar_t>(mh);
    const int64_t* len_p = plan.has_lengths ? len.data_ptr<int64_t>() : nullptr;
    // dL/dĥ = da_t Ŵ_hh every step, with Ŵ_hh packed once.
    const FixedRightOperand<scalar_t> recurrent(false, B, R, 4 * H, w_hh.data_ptr<scalar_t>(), R);
    dispatch_switches(plan, [&]<bool kCand, bool kZoneC, bool kZoneH>() {
      const CpuLayer<scalar_t, kCand, kZoneC, kZoneH> cpu{plan, len_p};
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = plan.time_of(s);
        const scalar_t* dy = grad_output.data_ptr<scalar_t>() + t * B * R;
        const scalar_t* dhhat_p = s == T - 1 ? nullptr : dhhat.data_ptr<scalar_t>();
        scalar_t* da_t = da.data_ptr<scalar_t>() + t * B * 4 * H;
        const scalar_t* c_prev = cs.data_ptr<scalar_t>() + s * B * H;
        const scalar_t* c_tilde = kZoneC ? ctil.data_ptr<scalar_t>() + t * B * H
                                         : cs.data_ptr<scalar_t>() + (s + 1) * B * H;
        const scalar_t* gates_t = gates.data_ptr<scalar_t>() + t * B * 4 * H;
        if (plan.has_proj) {
          scalar_t* dproj_t = dproj.data_ptr<scalar_t>() + t * B * R;
          cpu.backward_projected_state(t, dy, zpart.data_ptr<scalar_t>(), dhhat_p, mh_p, dproj_t);
          gemm_rowmajor<scalar_t>(false, false, B, H, R, 1, dproj_t, R,
                                  w_hr.data_ptr<scalar_t>(), H, 0, dhtil.data_ptr<scalar_t>(), H);
          cpu.backward_cell(t, gates_t, c_prev, c_tilde, dhtil.data_ptr<scalar_t>(), dy,
                            zpart.data_ptr<scalar_t>(), dhhat_p, mh_p, dc.data_ptr<scalar_t>(),
                            da_t, htil.data_ptr<scalar_t>() + t * B * H);
        } else {
          cpu.backward_cell(t, gates_t, c_prev, c_tilde, nullptr, dy, zpart.data_ptr<scalar_t>(),
                            dhhat_p, mh_p, dc.data_ptr<scalar_t>(), da_t, nullptr);
        }
        // dL/dĥ_{s-1} = da_t Ŵ_hh
        recurrent.gemm(da_t, 4 * H, 0, dhhat.data_ptr<scalar_t>(), R);
      }
    });
  });

  // dL/dh0 = the zoneout share + dĥ ⊙ mh from the first step.
  Tensor grad_h0 = T > 0 ? zpart + (mh.defined() ? dhhat * mh : dhhat) : zpart;
  Tensor grad_c0 = dc;

  return input_and_weight_gradients(plan, seq, input, weight_ih, da, hs, dproj, htil,
                                    std::move(grad_h0), std::move(grad_c0));
}

TORCH_LIBRARY_IMPL(rnnfused, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace rnnfused
