"""The oracle itself: rnnfused.reference.lstm_layer agrees with torch.nn.LSTM and with SPEC §2.

These tests use no compiled code, so they hold the reference honest independently of the kernels."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import ALL_RATES, assert_close, grads, make_layer_inputs, module_layer_weights, random_lengths, \
    weighted_sum
from rnnfused import reference


def nn_lstm_and_state(I, H, P, B, bias=True):
    m = torch.nn.LSTM(I, H, bidirectional=True, proj_size=P, bias=bias, dtype=torch.float64)
    R = P if P > 0 else H
    return m, (torch.randn(2, B, R, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))


def reference_bidirectional(m, x, hx, lengths=None, training=True):
    outs, h_n, c_n = [], [], []
    for d in range(2):
        out, h, c = reference.lstm_layer(x, hx[0][d], hx[1][d], *module_layer_weights(m, 0, d),
                                         training=training, reverse=(d == 1), lengths=lengths)
        outs.append(out)
        h_n.append(h)
        c_n.append(c)
    return torch.cat(outs, 2), torch.stack(h_n), torch.stack(c_n)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("P", [0, 2])
def test_reference_with_zero_rates_equals_nn_lstm(P, bias, training):
    torch.manual_seed(0)
    T, B, I, H = 6, 3, 4, 5
    m, hx = nn_lstm_and_state(I, H, P, B, bias)
    x = torch.randn(T, B, I, dtype=torch.float64)
    want_out, (want_h, want_c) = m(x, hx)
    out, h, c = reference_bidirectional(m, x, hx, training=training)
    assert_close(out, want_out, what="output")
    assert_close(h, want_h, what="h_n")
    assert_close(c, want_c, what="c_n")


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("P", [0, 3])
def test_reference_with_lengths_equals_nn_lstm_on_packed_sequence(P, enforce_sorted):
    torch.manual_seed(1)
    T, B, I, H = 7, 5, 3, 4
    m, hx = nn_lstm_and_state(I, H, P, B)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(T, B)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    want_packed, (want_h, want_c) = m(packed, hx)
    want_out, _ = pad_packed_sequence(want_packed, total_length=T)
    out, h, c = reference_bidirectional(m, x, hx, lengths=lengths)
    assert_close(out, want_out, what="output")
    assert_close(h, want_h, what="h_n")
    assert_close(c, want_c, what="c_n")


def test_reference_output_is_zero_at_padded_positions():
    torch.manual_seed(2)
    inputs = make_layer_inputs(5, 3, 2, 3)
    lengths = torch.tensor([5, 2, 1])
    for reverse in (False, True):
        out, _, _ = reference.lstm_layer(*inputs.values(), reverse=reverse, lengths=lengths)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(out[n:, b] == 0)
            assert torch.all(out[:n, b] != 0)


def trivial_masks(T, B, I, H, R, dtype=torch.float64):
    return dict(input=torch.ones(B, I, dtype=dtype), recurrent=torch.ones(B, R, dtype=dtype),
                weight=torch.ones(4 * H, R, dtype=dtype), candidate=torch.ones(T, B, H, dtype=dtype),
                zoneout_c=torch.zeros(T, B, H, dtype=dtype), zoneout_h=torch.zeros(T, B, R, dtype=dtype))


def test_reference_with_masks_that_keep_everything_is_the_plain_cell_rescaled():
    # Keep masks of ones only rescale; zoneout masks of zeros change nothing.
    torch.manual_seed(3)
    T, B, I, H = 4, 2, 3, 3
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    rates = dict(ALL_RATES, weight_drop=0.0, input_dropout=0.5)
    masks = trivial_masks(T, B, I, H, H)
    out, h, c = reference.lstm_layer(*inputs.values(), masks=masks, **rates)
    doubled = dict(inputs, input=inputs["input"] * 2)
    cand = rates["candidate_dropout"]
    want = _plain_with_candidate_scale(doubled, 1 / (1 - cand), 1 / (1 - rates["recurrent_dropout"]))
    assert_close(out, want[0])
    assert_close(h, want[1])
    assert_close(c, want[2])


def _plain_with_candidate_scale(inputs, g_scale, h_scale):
    x, h, c = inputs["input"], inputs["h0"], inputs["c0"]
    outs = []
    for t in range(x.shape[0]):
        a = x[t] @ inputs["weight_ih"].t() + inputs["bias_ih"] + (h * h_scale) @ inputs["weight_hh"].t() \
            + inputs["bias_hh"]
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g) * g_scale
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


@pytest.mark.parametrize("reverse", [False, True])
def test_reference_zoneout_masks_of_ones_keep_the_initial_state(reverse):
    torch.manual_seed(4)
    T, B, I, H = 4, 2, 3, 3
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    masks = trivial_masks(T, B, I, H, H)
    masks["zoneout_c"].fill_(1)
    masks["zoneout_h"].fill_(1)
    out, h, c = reference.lstm_layer(*inputs.values(), masks=masks, reverse=reverse, zoneout_c=0.5, zoneout_h=0.5)
    assert_close(out, inputs["h0"].expand(T, B, H))
    assert_close(h, inputs["h0"])
    assert_close(c, inputs["c0"])


def test_reference_eval_mode_uses_zoneout_expectation_and_no_dropout():
    torch.manual_seed(5)
    T, B, I, H = 3, 2, 3, 2
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    zc, zh = 0.3, 0.6
    out, h, c = reference.lstm_layer(*inputs.values(), training=False, input_dropout=0.5, recurrent_dropout=0.5,
                                     weight_drop=0.5, candidate_dropout=0.5, zoneout_c=zc, zoneout_h=zh)
    hp, cp = inputs["h0"], inputs["c0"]
    for t in range(T):
        a = inputs["input"][t] @ inputs["weight_ih"].t() + inputs["bias_ih"] + hp @ inputs["weight_hh"].t() \
            + inputs["bias_hh"]
        i, f, g, o = a.chunk(4, 1)
        c_tilde = torch.sigmoid(f) * cp + torch.sigmoid(i) * torch.tanh(g)
        h_tilde = torch.sigmoid(o) * torch.tanh(c_tilde)
        cp = zc * cp + (1 - zc) * c_tilde
        hp = zh * hp + (1 - zh) * h_tilde
        assert_close(out[t], hp)
    assert_close(h, hp)
    assert_close(c, cp)


def test_reference_training_with_a_rate_and_no_masks_is_a_value_error():
    inputs = make_layer_inputs(2, 2, 2, 2)
    with pytest.raises(ValueError, match="mask"):
        reference.lstm_layer(*inputs.values(), zoneout_c=0.1)


def test_reference_is_differentiable_by_autograd():
    torch.manual_seed(6)
    T, B, I, H, P = 3, 2, 2, 3, 2
    inputs = make_layer_inputs(T, B, I, H, P)
    masks = {k: (torch.rand_like(v) < 0.6).double() for k, v in trivial_masks(T, B, I, H, P).items()}
    rates = ALL_RATES

    def f(*args):
        return reference.lstm_layer(*args, masks=masks, lengths=torch.tensor([3, 2]), **rates)

    assert torch.autograd.gradcheck(f, tuple(inputs.values()))
    loss = weighted_sum(f(*inputs.values()))
    assert all(g is not None for g in grads(loss, list(inputs.values())))
