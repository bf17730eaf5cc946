"""Pure-PyTorch reference of one LSTM or GRU layer with in-recurrence regularizers (SPEC.md §2, §2b).

This is the oracle the fused kernels are tested against: a plain loop over time, written for
reading rather than speed, differentiable by autograd in any dtype. It draws no randomness of its
own; in training mode it replays the masks of a fused call, as materialized by
`rnnfused.functional.lstm_masks(seed, ...)` or `rnnfused.functional.gru_masks(seed, ...)`.

    lstm_layer   one LSTM layer, one direction (SPEC §2); with the four ln_* gains, the
                 layer-normalized LSTM (SPEC §2c)
    gru_layer    one GRU layer, one direction, nn.GRU's "reset after" form (SPEC §2b)

Both share the plumbing below: the rate checks, the masks of a call, the per-call and
per-sequence regularizers, the GEMM terms (layer-normalized when given a gain), the loop over time
with per-sample lengths, and zoneout; each cell is the few lines of its step.
"""

import torch

__all__ = ["lstm_layer", "gru_layer"]

# Which entry of the masks dict each rate uses.
_MASK_OF_RATE = {
    "input_dropout": "input",
    "recurrent_dropout": "recurrent",
    "weight_drop": "weight",
    "candidate_dropout": "candidate",
    "zoneout_c": "zoneout_c",
    "zoneout_h": "zoneout_h",
}

# The layer-normalized LSTM's parameters (SPEC §2c) and the epsilon of its layer norms.
_LN_NAMES = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
LN_EPS = 1e-5


class _Regularizers:
    """The rates and masks of one call: what each step applies, in training or in evaluation."""

    def __init__(self, rates, masks, training, input, masks_helper):
        for name, p in rates.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {p}")
        if training and masks is None and any(p > 0 for p in rates.values()):
            raise ValueError(f"training mode with a rate > 0 needs the masks of the call "
                             f"(masks={masks_helper}(...))")
        self.rates, self.training = rates, training
        # The mask of each rate as a float tensor of the input's dtype, or None when unused.
        self.mask = {name: (masks[_MASK_OF_RATE[name]].to(device=input.device, dtype=input.dtype)
                            if training and p > 0 else None)
                     for name, p in rates.items()}

    def dropped(self, name, value, t=None):
        """value with the inverted keep-mask of `name` applied (at step t for per-step kinds)."""
        m = self.mask[name]
        if m is None:
            return value
        return value * (m if t is None else m[t]) / (1 - self.rates[name])

    def zoned_out(self, name, new, old, t):
        """Zoneout of `name` at step t: the mask in training, its expectation in evaluation."""
        if self.training:
            m = self.mask[name]
            return new if m is None else m[t] * old + (1 - m[t]) * new
        p = self.rates[name]
        return new if p == 0 else p * old + (1 - p) * new


def _run_layer(input, state, step, *, reverse, lengths):
    """The loop over time shared by the cells. state: a tuple whose first entry is the output;
    step(t, state) -> the new state. Sequences that are over keep their state and output 0."""
    T = input.shape[0]
    if lengths is not None:
        lengths = torch.as_tensor(lengths).to(input.device)
    outputs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        new = step(t, state)
        if lengths is not None:
            active = (t < lengths).unsqueeze(1)
            new = tuple(torch.where(active, a, b) for a, b in zip(new, state))
            outputs[t] = torch.where(active, new[0], torch.zeros_like(new[0]))
        else:
            outputs[t] = new[0]
        state = new
    return (torch.stack(outputs),) + tuple(state)


def _layer_norm(v, gain, bias=None):
    """LN(v) ⊙ gain (+ bias) over the last dim: (v - mean) / sqrt(var + 1e-5), biased variance."""
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + LN_EPS) * gain
    return out if bias is None else out + bias


def _gemm_term(product, gain, bias):
    """A GEMM term of the pre-activations: LN(product) ⊙ gain (when a gain is given), then + bias."""
    if gain is not None:
        product = _layer_norm(product, gain)
    return product if bias is None else product + bias


def _projections(reg, input, weight_ih, weight_hh, bias_ih, gain_ih=None):
    """The per-call and per-sequence regularizers, applied once and the same at every step:
    the input term W_ih x̂_t + b_ih of every step (LN(W_ih x̂_t) ⊙ γ_ih + b_ih with a gain), and
    the dropped weight Ŵ_hh."""
    gi = _gemm_term(reg.dropped("input_dropout", input) @ weight_ih.t(), gain_ih, bias_ih)
    return gi, reg.dropped("weight_drop", weight_hh)


def _recurrent(reg, h, w_hh, bias_hh, gain_hh=None):
    """Ŵ_hh ĥ_{t-1} + b_hh (LN(Ŵ_hh ĥ_{t-1}) ⊙ γ_hh + b_hh with a gain)."""
    return _gemm_term(reg.dropped("recurrent_dropout", h) @ w_hh.t(), gain_hh, bias_hh)


def _check_layer_norm(ln, hidden_size):
    """The four LN parameters {name: tensor or None}: all four or none, of their shapes."""
    given = [name for name in _LN_NAMES if ln[name] is not None]
    if given and len(given) != len(_LN_NAMES):
        missing = [name for name in _LN_NAMES if ln[name] is None]
        raise ValueError(f"layer norm needs all four of {', '.join(_LN_NAMES)}; got "
                         f"{', '.join(given)} without {', '.join(missing)}")
    for name in given:
        want = (4 * hidden_size,) if name in ("ln_weight_ih", "ln_weight_hh") else (hidden_size,)
        if tuple(ln[name].shape) != want:
            raise ValueError(f"{name} must have shape {want}, got {tuple(ln[name].shape)}")


def lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None, *,
               masks=None, training=True, reverse=False, lengths=None,
               input_dropout=0., recurrent_dropout=0., weight_drop=0., candidate_dropout=0.,
               zoneout_c=0., zoneout_h=0., ln_weight_ih=None, ln_weight_hh=None, ln_weight_c=None,
               ln_bias_c=None):
    """One layer, one direction of a regularized LSTM, as SPEC.md §2 defines it; with the four
    ln_* parameters the layer-normalized LSTM of SPEC §2c.

    input (T, B, I) time-major; h0 (B, R), c0 (B, H) with R = P when weight_hr (P, H) is given,
    else R = H. weight_ih (4H, I), weight_hh (4H, R), biases (4H,), gate order i, f, g, o.

    masks: dict from `rnnfused.functional.lstm_masks`: keep masks `input` (B, I), `recurrent` (B, R),
    `weight` (4H, R), `candidate` (T, B, H) (1 = kept, unscaled) and zoneout masks `zoneout_c`
    (T, B, H), `zoneout_h` (T, B, R) (1 = the previous value is kept), indexed by the position t in
    the input sequence, also when reverse=True. Used only in training mode, and only for rates > 0.

    lengths: optional (B,) integers in [1, T]; sequence b runs positions 0..lengths[b]-1 only
    (backwards from lengths[b]-1 when reverse=True, starting from h0/c0). Outputs at padded positions
    are 0 and h_n / c_n are the state after the sequence's own last processed step.

    Layer norm (all four or none): ln_weight_ih, ln_weight_hh (4H,) are the gains γ_ih, γ_hh of the
    two GEMM terms, each normalized over its 4H pre-activations without its bias, and
    ln_weight_c, ln_bias_c (H,) the gain and shift γ_c, β_c of the new cell where it enters h:
    a_t = LN(W_ih x̂_t) ⊙ γ_ih + LN(Ŵ_hh ĥ_{t-1}) ⊙ γ_hh + b_ih + b_hh and
    h̃_t = o ⊙ tanh(LN(c̃_t) ⊙ γ_c + β_c); the carried (and zoned-out) cell is c̃_t itself.

    Returns (output (T, B, R), h_n (B, R), c_n (B, H)).
    """
    rates = dict(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                 candidate_dropout=candidate_dropout, zoneout_c=zoneout_c, zoneout_h=zoneout_h)
    reg = _Regularizers(rates, masks, training, input, "lstm_masks")
    _check_layer_norm(dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
                           ln_bias_c=ln_bias_c), weight_ih.shape[0] // 4)
    gi, w_hh = _projections(reg, input, weight_ih, weight_hh, bias_ih, ln_weight_ih)

    def step(t, state):
        h, c = state
        a = gi[t] + _recurrent(reg, h, w_hh, bias_hh, ln_weight_hh)
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
        g = reg.dropped("candidate_dropout", torch.tanh(a_g), t)
        c_new = f * c + i * g
        # h uses the cell before zoneout (with layer norm, normalized; the carried cell is not)
        c_out = c_new if ln_weight_c is None else _layer_norm(c_new, ln_weight_c, ln_bias_c)
        h_new = o * torch.tanh(c_out)
        if weight_hr is not None:
            h_new = h_new @ weight_hr.t()
        return reg.zoned_out("zoneout_h", h_new, h, t), reg.zoned_out("zoneout_c", c_new, c, t)

    return _run_layer(input, (h0, c0), step, reverse=reverse, lengths=lengths)


def gru_layer(input, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *,
              masks=None, training=True, reverse=False, lengths=None,
              input_dropout=0., recurrent_dropout=0., weight_drop=0., candidate_dropout=0.,
              zoneout_h=0.):
    """One layer, one direction of a regularized GRU, as SPEC.md §2b defines it.

    input (T, B, I) time-major; h0 (B, H). weight_ih (3H, I), weight_hh (3H, H), biases (3H,),
    gate order r, z, n and torch.nn.GRU's "reset after" form: n = tanh(gi_n + r ⊙ gh_n) with
    gh_n = (Ŵ_hh ĥ_{t-1})_n + b_hh_n. The candidate n is dropped out, then
    h̃_t = (1 - z) ⊙ n̂_t + z ⊙ h_{t-1} (the undropped h_{t-1}), then zoneout on h.

    masks: dict from `rnnfused.functional.gru_masks`: keep masks `input` (B, I), `recurrent` (B, H),
    `weight` (3H, H), `candidate` (T, B, H) (1 = kept, unscaled) and the zoneout mask `zoneout_h`
    (T, B, H) (1 = the previous value is kept), indexed by the position t in the input sequence,
    also when reverse=True. Used only in training mode, and only for rates > 0.

    lengths: as for `lstm_layer`: padded positions output 0 and h_n is the state after the
    sequence's own last processed step.

    Returns (output (T, B, H), h_n (B, H)).
    """
    rates = dict(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                 candidate_dropout=candidate_dropout, zoneout_h=zoneout_h)
    reg = _Regularizers(rates, masks, training, input, "gru_masks")
    gi, w_hh = _projections(reg, input, weight_ih, weight_hh, bias_ih)

    def step(t, state):
        (h,) = state
        gi_r, gi_z, gi_n = gi[t].chunk(3, dim=1)
        gh_r, gh_z, gh_n = _recurrent(reg, h, w_hh, bias_hh).chunk(3, dim=1)
        r = torch.sigmoid(gi_r + gh_r)
        z = torch.sigmoid(gi_z + gh_z)
        n = reg.dropped("candidate_dropout", torch.tanh(gi_n + r * gh_n), t)
        h_new = (1 - z) * n + z * h
        return (reg.zoned_out("zoneout_h", h_new, h, t),)

    return _run_layer(input, (h0,), step, reverse=reverse, lengths=lengths)
