"""The oracle itself: rnnfused.reference.lstm_layer agrees with torch.nn.LSTM and with SPEC §2, and
rnnfused.reference.gru_layer with torch.nn.GRU and with SPEC §2b.

These tests use no compiled code, so they hold the reference honest independently of the kernels."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import ALL_RATES, GRU_ALL_RATES, assert_close, grads, make_gru_inputs, make_layer_inputs, \
    module_layer_weights, random_lengths, weighted_sum
from rnnfused import reference

# mode -> (random layer arguments, in the layer's order; the reference layer)
LAYERS = {"LSTM": (make_layer_inputs, reference.lstm_layer), "GRU": (make_gru_inputs, reference.gru_layer)}


def nn_lstm_and_state(I, H, P, B, bias=True):
    m = torch.nn.LSTM(I, H, bidirectional=True, proj_size=P, bias=bias, dtype=torch.float64)
    R = P if P > 0 else H
    return m, (torch.randn(2, B, R, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64))


def nn_gru_and_state(I, H, P, B, bias=True):
    assert P == 0, "nn.GRU has no projection"
    return torch.nn.GRU(I, H, bidirectional=True, bias=bias, dtype=torch.float64), torch.randn(2, B, H, dtype=torch.float64)


def reference_bidirectional(m, x, hx, lengths=None, training=True):
    """The reference's replay of a one-layer bidirectional nn.LSTM or nn.GRU: (output, h_n[, c_n]);
    hx is (h0, c0) for an LSTM, h0 for a GRU."""
    gru = isinstance(m, torch.nn.GRU)
    layer, states = (reference.gru_layer, [hx]) if gru else (reference.lstm_layer, list(hx))
    per_direction = [layer(x, *[s[d] for s in states], *module_layer_weights(m, 0, d)[:4 if gru else 5],
                           training=training, reverse=(d == 1), lengths=lengths) for d in range(2)]
    finals = [torch.stack(f) for f in zip(*[r[1:] for r in per_direction])]
    return (torch.cat([r[0] for r in per_direction], 2), *finals)


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
@pytest.mark.parametrize("mode,P", [("LSTM", 0), ("LSTM", 3), ("GRU", 0)])
def test_reference_with_lengths_equals_torch_on_packed_sequence(mode, P, enforce_sorted):
    torch.manual_seed(1)
    T, B, I, H = 7, 5, 3, 4
    m, hx = (nn_gru_and_state if mode == "GRU" else nn_lstm_and_state)(I, H, P, B)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = random_lengths(T, B)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    want_packed, want_state = m(packed, hx)
    want_out, _ = pad_packed_sequence(want_packed, total_length=T)
    want_finals = [want_state] if mode == "GRU" else list(want_state)
    got = reference_bidirectional(m, x, hx, lengths=lengths)
    for name, a, b in zip(["output", "h_n", "c_n"], got, [want_out] + want_finals):
        assert_close(a, b, what=name)


@pytest.mark.parametrize("mode", list(LAYERS))
def test_reference_output_is_zero_at_padded_positions(mode):
    torch.manual_seed(2)
    make_inputs, layer = LAYERS[mode]
    inputs = make_inputs(5, 3, 2, 3)
    lengths = torch.tensor([5, 2, 1])
    for reverse in (False, True):
        out = layer(*inputs.values(), reverse=reverse, lengths=lengths)[0]
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


@pytest.mark.parametrize("mode", list(LAYERS))
def test_reference_training_with_a_rate_and_no_masks_is_a_value_error(mode):
    make_inputs, layer = LAYERS[mode]
    with pytest.raises(ValueError, match="mask"):
        layer(*make_inputs(2, 2, 2, 2).values(), zoneout_h=0.1)


@pytest.mark.parametrize("mode", list(LAYERS))
def test_reference_rate_outside_0_1_is_a_value_error_naming_it(mode):
    make_inputs, layer = LAYERS[mode]
    with pytest.raises(ValueError, match="candidate_dropout"):
        layer(*make_inputs(2, 2, 2, 2).values(), training=False, candidate_dropout=1.0)


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


# --- the GRU ----------------------------------------------------------------------------------------

def _flip_time(result):
    """(output, h_n) of a run over the time-reversed input, as the reverse direction's."""
    return result[0].flip(0), result[1]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_reference_with_zero_rates_equals_nn_gru(bias, training, reverse):
    # nn.GRU's single layer, run over the flipped sequence for the reverse direction: outputs, h_n
    # and the gradients of the input, h0 and every weight and bias.
    torch.manual_seed(7)
    T, B, I, H = 6, 3, 4, 5
    m = torch.nn.GRU(I, H, bias=bias, dtype=torch.float64).train(training)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    params = [x, h0] + list(m.parameters())
    if reverse:
        want = _flip_time(m(x.flip(0), h0.unsqueeze(0)))
    else:
        want = m(x, h0.unsqueeze(0))
    want = (want[0], want[1].squeeze(0))
    got = reference.gru_layer(x, h0, *module_layer_weights(m, 0, 0)[:4], training=training, reverse=reverse)
    assert_close(got[0], want[0], what="output")
    assert_close(got[1], want[1], what="h_n")
    names = ["input", "h0"] + [n for n, _ in m.named_parameters()]
    for name, a, b in zip(names, grads(weighted_sum(got), params), grads(weighted_sum(want), params)):
        assert_close(a, b, what=f"grad {name}")


def _gru_spec_2b(inputs, masks, rates, training, reverse):
    """SPEC §2b written out, gate by gate, with the weight blocks named (no chunking, no shared code)."""
    x, h = inputs["input"], inputs["h0"]
    H = h.shape[1]
    W_ir, W_iz, W_in = (inputs["weight_ih"][k * H:(k + 1) * H] for k in range(3))
    b_ir, b_iz, b_in = (inputs["bias_ih"][k * H:(k + 1) * H] for k in range(3))
    b_hr, b_hz, b_hn = (inputs["bias_hh"][k * H:(k + 1) * H] for k in range(3))
    W_hh = inputs["weight_hh"]
    if training:
        x = x * masks["input"] / (1 - rates["input_dropout"])
        W_hh = W_hh * masks["weight"] / (1 - rates["weight_drop"])
    W_hr, W_hz, W_hn = (W_hh[k * H:(k + 1) * H] for k in range(3))
    out = torch.empty(x.shape[0], x.shape[1], H, dtype=x.dtype)
    for t in (reversed(range(x.shape[0])) if reverse else range(x.shape[0])):
        h_hat = h * masks["recurrent"] / (1 - rates["recurrent_dropout"]) if training else h
        r = torch.sigmoid(x[t] @ W_ir.T + b_ir + h_hat @ W_hr.T + b_hr)
        z = torch.sigmoid(x[t] @ W_iz.T + b_iz + h_hat @ W_hz.T + b_hz)
        n = torch.tanh(x[t] @ W_in.T + b_in + r * (h_hat @ W_hn.T + b_hn))
        if training:
            n = n * masks["candidate"][t] / (1 - rates["candidate_dropout"])
        h_tilde = (1 - z) * n + z * h
        zh = masks["zoneout_h"][t] if training else rates["zoneout_h"]
        h = zh * h + (1 - zh) * h_tilde
        out[t] = h
    return out, h


def random_gru_masks(T, B, I, H, keep=0.6):
    def bits(*shape, p):
        return (torch.rand(shape) < p).double()
    return dict(input=bits(B, I, p=keep), recurrent=bits(B, H, p=keep), weight=bits(3 * H, H, p=keep),
                candidate=bits(T, B, H, p=keep), zoneout_h=bits(T, B, H, p=1 - keep))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gru_reference_applies_each_regularizer_where_spec_2b_says(training, reverse):
    # Dropouts on x, h_{t-1} (only inside the GEMM), W_hh and n; h̃ uses the undropped h_{t-1};
    # zoneout mixes h_{t-1} and h̃; evaluation: no dropout, zoneout's expectation.
    torch.manual_seed(8)
    T, B, I, H = 5, 3, 4, 3
    inputs = make_gru_inputs(T, B, I, H, requires_grad=False)
    masks = random_gru_masks(T, B, I, H)
    rates = GRU_ALL_RATES
    out, h = reference.gru_layer(*inputs.values(), masks=masks, training=training, reverse=reverse, **rates)
    want_out, want_h = _gru_spec_2b(inputs, masks, rates, training, reverse)
    assert_close(out, want_out, what="output")
    assert_close(h, want_h, what="h_n")


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_reference_zoneout_masks_of_ones_keep_the_initial_state(reverse):
    torch.manual_seed(9)
    T, B, I, H = 4, 2, 3, 3
    inputs = make_gru_inputs(T, B, I, H, requires_grad=False)
    masks = random_gru_masks(T, B, I, H)
    masks["zoneout_h"].fill_(1)
    out, h = reference.gru_layer(*inputs.values(), masks=masks, reverse=reverse, **GRU_ALL_RATES)
    assert_close(out, inputs["h0"].expand(T, B, H))
    assert_close(h, inputs["h0"])


def test_gru_reference_is_differentiable_by_autograd():
    torch.manual_seed(10)
    T, B, I, H = 3, 2, 2, 3
    inputs = make_gru_inputs(T, B, I, H)
    masks = random_gru_masks(T, B, I, H)

    def f(*args):
        return reference.gru_layer(*args, masks=masks, lengths=torch.tensor([3, 2]), reverse=True, **GRU_ALL_RATES)

    assert torch.autograd.gradcheck(f, tuple(inputs.values()))
