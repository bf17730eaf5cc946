"""Pure-PyTorch reference of one LSTM layer with in-recurrence regularizers (SPEC.md §2).

This is the oracle the fused kernels are tested against: a plain loop over time, written for
reading rather than speed, differentiable by autograd in any dtype. It draws no randomness of its
own; in training mode it replays the masks of a fused call, as materialized by
`rnnfused.functional.lstm_masks(seed, ...)`.
"""

import torch

__all__ = ["lstm_layer"]

# Which entry of the masks dict each rate uses.
_MASK_OF_RATE = {
    "input_dropout": "input",
    "recurrent_dropout": "recurrent",
    "weight_drop": "weight",
    "candidate_dropout": "candidate",
    "zoneout_c": "zoneout_c",
    "zoneout_h": "zoneout_h",
}


def lstm_layer(input, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None, *,
               masks=None, training=True, reverse=False, lengths=None,
               input_dropout=0., recurrent_dropout=0., weight_drop=0., candidate_dropout=0.,
               zoneout_c=0., zoneout_h=0.):
    """One layer, one direction of a regularized LSTM, as SPEC.md §2 defines it.

    input (T, B, I) time-major; h0 (B, R), c0 (B, H) with R = P when weight_hr (P, H) is given,
    else R = H. weight_ih (4H, I), weight_hh (4H, R), biases (4H,), gate order i, f, g, o.

    masks: dict from `rnnfused.functional.lstm_masks`: keep masks `input` (B, I), `recurrent` (B, R),
    `weight` (4H, R), `candidate` (T, B, H) (1 = kept, unscaled) and zoneout masks `zoneout_c`
    (T, B, H), `zoneout_h` (T, B, R) (1 = the previous value is kept), indexed by the position t in
    the input sequence, also when reverse=True. Used only in training mode, and only for rates > 0.

    lengths: optional (B,) integers in [1, T]; sequence b runs positions 0..lengths[b]-1 only
    (backwards from lengths[b]-1 when reverse=True, starting from h0/c0). Outputs at padded positions
    are 0 and h_n / c_n are the state after the sequence's own last processed step.

    Returns (output (T, B, R), h_n (B, R), c_n (B, H)).
    """
    rates = dict(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, weight_drop=weight_drop,
                 candidate_dropout=candidate_dropout, zoneout_c=zoneout_c, zoneout_h=zoneout_h)
    for name, p in rates.items():
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {p}")
    if training and masks is None and any(p > 0 for p in rates.values()):
        raise ValueError("training mode with a rate > 0 needs the masks of the call (masks=lstm_masks(...))")

    T = input.shape[0]
    dtype = input.dtype

    def mask(rate_name):
        """The mask of a rate as a float tensor of the input's dtype, or None when unused."""
        if not training or rates[rate_name] == 0:
            return None
        return masks[_MASK_OF_RATE[rate_name]].to(device=input.device, dtype=dtype)

    mx, mh, mw = mask("input_dropout"), mask("recurrent_dropout"), mask("weight_drop")
    mg, zc, zh = mask("candidate_dropout"), mask("zoneout_c"), mask("zoneout_h")

    # Per-call and per-sequence regularizers: applied once, the same at every step.
    w_hh = weight_hh if mw is None else weight_hh * mw / (1 - weight_drop)
    x_all = input if mx is None else input * mx / (1 - input_dropout)

    if lengths is not None:
        lengths = torch.as_tensor(lengths).to(input.device)

    h, c = h0, c0
    outputs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        h_in = h if mh is None else h * mh / (1 - recurrent_dropout)
        a = x_all[t] @ weight_ih.t() + h_in @ w_hh.t()
        if bias_ih is not None:
            a = a + bias_ih
        if bias_hh is not None:
            a = a + bias_hh
        a_i, a_f, a_g, a_o = a.chunk(4, dim=1)
        i, f, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.sigmoid(a_o)
        g = torch.tanh(a_g)
        if mg is not None:
            g = g * mg[t] / (1 - candidate_dropout)

        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)          # uses the cell before zoneout
        if weight_hr is not None:
            h_new = h_new @ weight_hr.t()

        if training:
            if zc is not None:
                c_new = zc[t] * c + (1 - zc[t]) * c_new
            if zh is not None:
                h_new = zh[t] * h + (1 - zh[t]) * h_new
        else:                                   # evaluation: zoneout's expectation
            if zoneout_c > 0:
                c_new = zoneout_c * c + (1 - zoneout_c) * c_new
            if zoneout_h > 0:
                h_new = zoneout_h * h + (1 - zoneout_h) * h_new

        if lengths is not None:                 # sequences that are over keep their state, output 0
            active = (t < lengths).unsqueeze(1)
            c_new = torch.where(active, c_new, c)
            h_new = torch.where(active, h_new, h)
            outputs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            outputs[t] = h_new
        h, c = h_new, c_new

    return torch.stack(outputs), h, c
