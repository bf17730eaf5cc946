// Variable lengths: the sorted, packed layout of a batch (batching.h).
#include "batching.h"

#include <algorithm>

namespace rnnfused {

using cpu_gemm::Product;

Batching make_batching(const LayerPlan& plan, const Tensor& lengths) {
  Batching bt;
  const int64_t T = plan.T, B = plan.B;
  bt.T = T;
  bt.B = B;
  bt.active.assign(T, B);
  bt.offset.resize(T + 1);
  for (int64_t t = 0; t <= T; ++t) bt.offset[t] = t * B;
  if (!plan.has_lengths || B == 0) return bt;
  const int64_t* len = lengths.data_ptr<int64_t>();
  bt.order.resize(B);
  for (int64_t b = 0; b < B; ++b) bt.order[b] = b;
  std::stable_sort(bt.order.begin(), bt.order.end(),
                   [&](int64_t a, int64_t b) { return len[a] > len[b]; });
  for (int64_t i = 0; i < B; ++i) bt.permuted = bt.permuted || bt.order[i] != i;
  // active[t] = #{b : len[b] > t}, from the histogram of the lengths.
  std::vector<int64_t> ends(T + 1, 0);
  for (int64_t b = 0; b < B; ++b) ++ends[len[b]];
  int64_t running = B;
  for (int64_t t = 0; t < T; ++t) {
    running -= ends[t];
    bt.active[t] = running;
    bt.offset[t + 1] = bt.offset[t] + running;
  }
  bt.packed = bt.permuted || bt.offset[T] != T * B;
  if (bt.permuted) {
    bt.perm = at::tensor(bt.order, at::TensorOptions().dtype(at::kLong));
    bt.inverse = at::empty({B}, at::kLong);
    int64_t* inv = bt.inverse.data_ptr<int64_t>();
    for (int64_t i = 0; i < B; ++i) inv[bt.order[i]] = i;
  }
  if (bt.packed) {
    const int64_t N = bt.offset[T];
    bt.src_rows = at::empty({N}, at::kLong);
    bt.loop_rows = at::empty({N}, at::kLong);
    int64_t* src = bt.src_rows.data_ptr<int64_t>();
    int64_t* loop = bt.loop_rows.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < bt.active[t]; ++i) {
        const int64_t r = bt.offset[t] + i;
        src[r] = t * B + (bt.permuted ? bt.order[i] : i);
        loop[r] = t * B + i;
      }
    }
  }
  return bt;
}

Tensor initial_state_gradient(const LayerPlan& plan, const Batching& bt, Tensor zpart,
                              const Tensor& dhhat, const Tensor& mh) {
  if (plan.T > 0) {
    const int64_t first = bt.active[plan.time_of(0)];
    Tensor d = dhhat.narrow(0, 0, first);
    if (mh.defined()) d = d * mh.narrow(0, 0, first);
    zpart.narrow(0, 0, first).add_(d);
  }
  return zpart;
}

LayerGrads packed_input_and_weight_gradients(const LayerPlan& plan, const Batching& bt,
                                             const SequenceMasks& seq, const Tensor& input,
                                             const Tensor& weight_ih, const Tensor& da_ih,
                                             const Tensor& da_hh, const Tensor& hs,
                                             const Tensor& dproj, const Tensor& htil,
                                             Tensor grad_h0, Tensor grad_c0) {
  const int64_t T = plan.T, B = plan.B, I = plan.I, H = plan.H, R = plan.R;
  if (!bt.packed) {
    const int64_t GH = plan.G * H;
    const Tensor dx = da_ih.view({T, B, GH});
    return input_and_weight_gradients(
        plan, seq, input, weight_ih, dx, da_ih.is_same(da_hh) ? dx : da_hh.view({T, B, GH}), hs,
        plan.has_proj ? dproj.view({T, B, R}) : dproj, plan.has_proj ? htil.view({T, B, H}) : htil,
        std::move(grad_h0), std::move(grad_c0));
  }
  const auto opts = input.options();
  const bool shared = da_ih.is_same(da_hh);
  Tensor xhat = input.contiguous();
  if (seq.input_scale.defined()) xhat = xhat * seq.input_scale.unsqueeze(0);
  LayerGrads g;
  g.grad_input = at::zeros({T, B, I}, opts);
  g.grad_input.view({T * B, I})
      .index_copy_(0, bt.src_rows, product(Product::kGradInput, da_ih, weight_ih.contiguous()));
  if (seq.input_scale.defined()) g.grad_input.mul_(seq.input_scale.unsqueeze(0));
  g.grad_weight_ih = product(Product::kGradWeight, da_ih.t(), bt.pack(xhat));
  // ĥ_{t-1} of each packed row (t, i): row i of hs at the step that read it, with its mask.
  Tensor hprev = hs.narrow(0, 0, T);
  if (plan.reverse) hprev = hprev.flip(0);
  hprev = hprev.reshape({T * B, R}).index_select(0, bt.loop_rows);
  if (seq.recurrent_scale.defined()) {
    hprev.mul_(bt.to_loop(seq.recurrent_scale).index_select(0, bt.loop_rows.remainder(B)));
  }
  g.grad_weight_hh = product(Product::kGradWeight, da_hh.t(), hprev);
  if (seq.weight_scale.defined()) g.grad_weight_hh.mul_(seq.weight_scale);
  if (plan.has_bias && plan.cell == CellKind::kLnLstm) {
    g.grad_bias_ih = g.grad_bias_hh = Tensor();  // the LN-LSTM's driver sums dL/da itself
  } else if (plan.has_bias) {
    g.grad_bias_ih = da_ih.sum(0);
    g.grad_bias_hh = shared ? g.grad_bias_ih.clone() : da_hh.sum(0);
  } else {
    g.grad_bias_ih = at::empty({0}, opts);
    g.grad_bias_hh = at::empty({0}, opts);
  }
  g.grad_weight_hr = plan.has_proj ? product(Product::kGradWeight, dproj.t(), htil)
                                   : at::empty({0}, opts);
  g.grad_h0 = std::move(grad_h0);
  g.grad_c0 = grad_c0.defined() ? std::move(grad_c0) : at::empty({0}, opts);
  return g;
}

}  // namespace rnnfused
