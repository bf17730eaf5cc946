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

#include <utility>

#include "cell_math.h"
#include "cpu_blas.h"
#include "lstm_layer.h"

namespace rnnfused {

namespace {

// Units per parallel chunk: big enough that a chunk outweighs the cost of a parallel region.
constexpr int64_t kGrainQuads = 64;

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

// The per-step masks of one quad of units (four consecutive j of one row b at step t).
template <typename acc_t, bool kCand, bool kZoneC, bool kZoneH>
struct StepMasks {
  acc_t cand[4] = {1, 1, 1, 1};
  acc_t zc[4] = {0, 0, 0, 0};
  acc_t zh[4] = {0, 0, 0, 0};

  // The identity masks of a padded position (nothing is computed there).
  StepMasks() = default;
  static StepMasks inactive() { return StepMasks(); }

  StepMasks(const LayerPlan& plan, int64_t t, int64_t b, int64_t q, bool draw_zh) {
    if constexpr (kCand) {
      const Philox4x32 w = plan.stream(kMaskCandidate).quad(t, b, q);
      const uint32_t thr = plan.threshold(kMaskCandidate);
      const acc_t inv_keep = static_cast<acc_t>(plan.inv_keep(kMaskCandidate));
      for (int k = 0; k < 4; ++k) cand[k] = dropout_scale<acc_t>(w.v[k], thr, inv_keep);
    }
    if constexpr (kZoneC) zoneout(plan, t, b, q, kMaskZoneoutC, zc);
    if constexpr (kZoneH) {
      if (draw_zh) zoneout(plan, t, b, q, kMaskZoneoutH, zh);
    }
  }

  static void zoneout(const LayerPlan& plan, int64_t t, int64_t b, int64_t q, MaskKind kind,
                      acc_t* z) {
    if (plan.training) {
      const Philox4x32 w = plan.stream(kind).quad(t, b, q);
      const uint32_t thr = plan.threshold(kind);
      for (int k = 0; k < 4; ++k) z[k] = zoneout_value<acc_t>(w.v[k], thr);
    } else {
      for (int k = 0; k < 4; ++k) z[k] = static_cast<acc_t>(plan.rate[kind]);
    }
  }
};

template <typename scalar_t, bool kCand, bool kZoneC, bool kZoneH>
struct CpuLayer {
  using acc_t = scalar_t;
  using Masks = StepMasks<acc_t, kCand, kZoneC, kZoneH>;
  const LayerPlan& plan;
  const int64_t* len;  // (B) or null

  bool active(int64_t t, int64_t b) const { return len == nullptr || t < len[b]; }

  // ---------------------------------------------------------------------------------------
  // Forward
  // ---------------------------------------------------------------------------------------

  // The cell pass of step s over (B, H). Without a projection it also finishes the state
  // (zoneout on h, output, masked state for the next GEMM); with one it leaves h̃ in htil.
  void forward_cell(int64_t t, const scalar_t* pre, const Buffers<scalar_t>& buf,
                    scalar_t* gates, scalar_t* ctil, scalar_t* out, scalar_t* hhat_next,
                    const scalar_t* mh, scalar_t* htil) const {
    const int64_t B = plan.B, H = plan.H, quads = (H + 3) / 4;
    at::parallel_for(0, B * quads, kGrainQuads, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / quads, q = n % quads;
        const bool on = active(t, b);
        const Masks masks = on ? Masks(plan, t, b, q, !plan.has_proj) : Masks::inactive();
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t j = q * 4 + k;
          if (j >= H) break;
          const int64_t bj = b * H + j;
          const acc_t c_prev = buf.c_prev[bj];
          if (!on) {
            buf.c_next[bj] = c_prev;
            if (gates) {
              for (int g = 0; g < 4; ++g) gates[b * 4 * H + g * H + j] = 0;
            }
            if (ctil) ctil[bj] = c_prev;
            if (htil) htil[bj] = 0;
            if (!plan.has_proj) finish_state(b, j, on, 0, 0, buf, out, hhat_next, mh);
            continue;
          }
          const scalar_t* a = pre + b * 4 * H;
          const Gates<acc_t> gate = activate_gates<acc_t>(a[j], a[H + j], a[2 * H + j], a[3 * H + j]);
          const CellForward<acc_t> cell = cell_forward<acc_t>(gate, c_prev, masks.cand[k]);
          buf.c_next[bj] = kZoneC ? zoneout_mix(c_prev, cell.c_tilde, masks.zc[k]) : cell.c_tilde;
          if (gates) {
            scalar_t* g = gates + b * 4 * H;
            g[j] = gate.i;
            g[H + j] = gate.f;
            g[2 * H + j] = gate.g;
            g[3 * H + j] = gate.o;
          }
          if (ctil) ctil[bj] = cell.c_tilde;
          if (plan.has_proj) {
            htil[bj] = cell.h_tilde;
          } else {
            finish_state(b, j, on, cell.h_tilde, masks.zh[k], buf, out, hhat_next, mh);
          }
        }
      }
    });
  }

  // h_t from h̃_t: zoneout, the output, and the recurrent-dropped copy the next GEMM reads.
  void finish_state(int64_t b, int64_t r, bool on, acc_t h_fresh, acc_t zh,
                    const Buffers<scalar_t>& buf, scalar_t* out, scalar_t* hhat_next,
                    const scalar_t* mh) const {
    const int64_t br = b * plan.R + r;
    const acc_t h_prev = buf.h_prev[br];
    const acc_t h = !on ? h_prev : (kZoneH ? zoneout_mix(h_prev, h_fresh, zh) : h_fresh);
    buf.h_next[br] = h;
    out[br] = on ? h : acc_t(0);
    if (mh) hhat_next[br] = h * mh[br];
  }

  // The state pass of step s over (B, P) after the projection GEMM left W_hr h̃ in hproj.
  void forward_projected_state(int64_t t, const scalar_t* hproj, const Buffers<scalar_t>& buf,
                               scalar_t* out, scalar_t* hhat_next, const scalar_t* mh) const {
    const int64_t B = plan.B, R = plan.R, quads = (R + 3) / 4;
    at::parallel_for(0, B * quads, kGrainQuads, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / quads, q = n % quads;
        const bool on = active(t, b);
        acc_t zh[4] = {0, 0, 0, 0};
        if constexpr (kZoneH) {
          if (on) Masks::zoneout(plan, t, b, q, kMaskZoneoutH, zh);
        }
        for (int64_t k = 0; k < 4 && q * 4 + k < R; ++k) {
          const int64_t r = q * 4 + k;
          finish_state(b, r, on, hproj[b * R + r], zh[k], buf, out, hhat_next, mh);
        }
      }
    });
  }

  // ---------------------------------------------------------------------------------------
  // Backward
  // ---------------------------------------------------------------------------------------

  // dL/dh_s for the state after step s (from later steps), then the split through zoneout on h.
  //   zpart: in: the zoneout share carried from step s+1 (or grad_h_n); out: this step's share
  //   dhhat: dL/dĥ_s from step s+1's GEMM (null at the last step)
  //   fresh: out: dL/dh̃_s (the pre-zoneout state, projected or not)
  void backward_state(int64_t t, int64_t b, int64_t r, bool on, acc_t zh, const scalar_t* dy,
                      scalar_t* zpart, const scalar_t* dhhat, const scalar_t* mh,
                      acc_t& fresh) const {
    const int64_t br = b * plan.R + r;
    acc_t dh = zpart[br];
    if (dhhat) dh += mh ? dhhat[br] * mh[br] : dhhat[br];
    if (!on) {
      zpart[br] = dh;
      fresh = 0;
      return;
    }
    dh += dy[br];
    if constexpr (kZoneH) {
      const ZoneoutGrads<acc_t> z = zoneout_backward(dh, zh);
      zpart[br] = z.prev;
      fresh = z.fresh;
    } else {
      zpart[br] = 0;
      fresh = dh;
    }
  }

  // The cell pass of backward step s over (B, H).
  //   dhtil: dL/dh̃ of the pre-projection value (null without projection: computed here from
  //          the state pass, fused)
  //   dc: in: dL/dc after the step, out: before it; da: out: dL/da_t (B, 4H)
  //   htil_out: with a projection, h̃ = o tanh(c̃) for the W_hr gradient
  void backward_cell(int64_t t, const scalar_t* gates, const scalar_t* c_prev,
                     const scalar_t* c_tilde, const scalar_t* dhtil, const scalar_t* dy,
                     scalar_t* zpart, const scalar_t* dhhat, const scalar_t* mh, scalar_t* dc,
                     scalar_t* da, scalar_t* htil_out) const {
    const int64_t B = plan.B, H = plan.H, quads = (H + 3) / 4;
    at::parallel_for(0, B * quads, kGrainQuads, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / quads, q = n % quads;
        const bool on = active(t, b);
        const Masks masks = on ? Masks(plan, t, b, q, !plan.has_proj) : Masks::inactive();
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t j = q * 4 + k;
          if (j >= H) break;
          const int64_t bj = b * H + j;
          acc_t dh_tilde;
          if (plan.has_proj) {
            dh_tilde = on ? dhtil[bj] : acc_t(0);
          } else {
            backward_state(t, b, j, on, masks.zh[k], dy, zpart, dhhat, mh, dh_tilde);
          }
          scalar_t* d = da + b * 4 * H;
          if (!on) {
            d[j] = d[H + j] = d[2 * H + j] = d[3 * H + j] = 0;
            if (htil_out) htil_out[bj] = 0;
            continue;
          }
          const scalar_t* g = gates + b * 4 * H;
          const Gates<acc_t> gate{g[j], g[H + j], g[2 * H + j], g[3 * H + j]};
          if (htil_out) htil_out[bj] = gate.o * act_tanh(static_cast<acc_t>(c_tilde[bj]));
          acc_t dcell = dc[bj];
          const GateGrads<acc_t> grad = cell_backward<acc_t>(
              gate, c_prev[bj], c_tilde[bj], masks.cand[k], masks.zc[k], dh_tilde, dcell);
          dc[bj] = dcell;
          d[j] = grad.a_i;
          d[H + j] = grad.a_f;
          d[2 * H + j] = grad.a_g;
          d[3 * H + j] = grad.a_o;
        }
      }
    });
  }

  // The state pass of backward step s with a projection, over (B, P): writes dL/d(W_hr h̃).
  void backward_projected_state(int64_t t, const scalar_t* dy, scalar_t* zpart,
                                const scalar_t* dhhat, const scalar_t* mh,
                                scalar_t* dproj) const {
    const int64_t B = plan.B, R = plan.R, quads = (R + 3) / 4;
    at::parallel_for(0, B * quads, kGrainQuads, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const int64_t b = n / quads, q = n % quads;
        const bool on = active(t, b);
        acc_t zh[4] = {0, 0, 0, 0};
        if constexpr (kZoneH) {
          if (on) Masks::zoneout(plan, t, b, q, kMaskZoneoutH, zh);
        }
        for (int64_t k = 0; k < 4 && q * 4 + k < R; ++k) {
          const int64_t r = q * 4 + k;
          acc_t fresh;
          backward_state(t, b, r, on, zh[k], dy, zpart, dhhat, mh, fresh);
          dproj[b * R + r] = fresh;
        }
      }
    });
  }
};

// Calls f.template operator()<kCand, kZoneC, kZoneH>() with the switches of this plan.
template <typename F>
void dispatch_switches(const LayerPlan& plan, F&& f) {
  const int code = (plan.candidate_dropout() ? 4 : 0) | (plan.zoneout_c() ? 2 : 0) |
                   (plan.zoneout_h() ? 1 : 0);
  switch (code) {
    case 0: f.template operator()<false, false, false>(); break;
    case 1: f.template operator()<false, false, true>(); break;
    case 2: f.template operator()<false, true, false>(); break;
    case 3: f.template operator()<false, true, true>(); break;
    case 4: f.template operator()<true, false, false>(); break;
    case 5: f.template operator()<true, false, true>(); break;
    case 6: f.template operator()<true, true, false>(); break;
    default: f.template operator()<true, true, true>(); break;
  }
}

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
    // Input projection of all steps, with both biases: Xp = x̂ W_ih^T + b_ih + b_hh.
    Tensor xp = at::empty({T, B, 4 * H}, opts);
    if (plan.has_bias) {
      xp.copy_((*bias_ih + *bias_hh).expand({T, B, 4 * H}));
    }
    gemm_rowmajor<scalar_t>(false, true, T * B, 4 * H, I, 1, xhat.data_ptr<scalar_t>(), I,
                            w_ih.data_ptr<scalar_t>(), I, plan.has_bias ? 1 : 0,
                            xp.data_ptr<scalar_t>(), 4 * H);
    Tensor hhat = mh.defined() ? at::empty({2, B, R}, opts) : Tensor();
    if (mh.defined()) hhat[0].copy_(h0 * mh);
    Tensor htil = plan.has_proj ? at::empty({B, H}, opts) : Tensor();
    Tensor hproj = plan.has_proj ? at::empty({B, R}, opts) : Tensor();

    scalar_t* hs_p = hs.data_ptr<scalar_t>();
    scalar_t* cs_p = cs.data_ptr<scalar_t>();
    const scalar_t* mh_p = ptr_or_null<scalar_t>(mh);
    const int64_t* len_p = plan.has_lengths ? len.data_ptr<int64_t>() : nullptr;

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
        gemm_rowmajor<scalar_t>(false, true, B, 4 * H, R, 1, hhat_prev, R,
                                w_hh.data_ptr<scalar_t>(), R, 1, pre, 4 * H);
        scalar_t* out_t = output.data_ptr<scalar_t>() + t * B * R;
        cpu.forward_cell(t, pre, buf,
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

  const int64_t last = need_workspace ? T : T % 2;
  Tensor h_n = hs[last].clone();
  Tensor c_n = cs[last].clone();
  if (!need_workspace) {
    gates = hs = cs = ctil = at::empty({0}, opts);
  }
  return {output, h_n, c_n, gates, hs, cs, ctil};
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
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R;
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
        gemm_rowmajor<scalar_t>(false, false, B, R, 4 * H, 1, da_t, 4 * H,
                                w_hh.data_ptr<scalar_t>(), R, 0, dhhat.data_ptr<scalar_t>(), R);
      }
    });
  });

  // dL/dh0 = the zoneout share + dĥ ⊙ mh from the first step.
  Tensor grad_h0 = T > 0 ? zpart + (mh.defined() ? dhhat * mh : dhhat) : zpart;
  Tensor grad_c0 = dc;

  // Weight and input gradients, each one GEMM over all steps.
  const Tensor da2 = da.view({T * B, 4 * H});
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  Tensor grad_input = at::mm(da2, weight_ih.contiguous()).view({T, B, I});
  if (seq.input_scale.defined()) grad_input.mul_(seq.input_scale.unsqueeze(0));
  Tensor grad_weight_ih = at::mm(da2.t(), xhat.view({T * B, I}));
  // ĥ_{t-1}: the state each step read, in input order, with its recurrent-dropout mask.
  Tensor hprev = hs.narrow(0, 0, T);
  if (plan.reverse) hprev = hprev.flip(0);
  if (mh.defined()) hprev = hprev * mh.unsqueeze(0);
  Tensor grad_weight_hh = at::mm(da2.t(), hprev.reshape({T * B, R}));
  if (seq.weight_scale.defined()) grad_weight_hh.mul_(seq.weight_scale);
  Tensor grad_bias = plan.has_bias ? da2.sum(0) : at::empty({0}, opts);
  Tensor grad_weight_hr = plan.has_proj
                              ? at::mm(dproj.view({T * B, R}).t(), htil.view({T * B, H}))
                              : at::empty({0}, opts);
  return {grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias, grad_weight_hr};
}

TORCH_LIBRARY_IMPL(rnnfused, CPU, m) {
  m.impl("lstm_forward", &lstm_forward_cpu);
  m.impl("lstm_backward", &lstm_backward_cpu);
}

}  // namespace rnnfused
