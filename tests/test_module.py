"""SPEC §2 and §4: `rnnfused.LSTM` is a drop-in `torch.nn.LSTM` that regularizes inside the recurrence."""

import copy
import math
import time

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused
from conftest import ALL_RATES, assert_close, grads, random_lengths, reference_stack, weighted_sum
from rnnfused.functional import draw_seed

I, H, T, B = 4, 5, 6, 3
DT = torch.float64


def twin_models(num_layers=1, bidirectional=False, proj_size=0, batch_first=False, bias=True, dropout=0.0,
                **rates):
    """An nn.LSTM and an rnnfused.LSTM with the same configuration and weights (float64)."""
    torch.manual_seed(num_layers * 100 + proj_size)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size, batch_first=batch_first,
              bias=bias, dropout=dropout, dtype=DT)
    theirs = nn.LSTM(I, H, **kw)
    ours = rnnfused.LSTM(I, H, **kw, **rates)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def random_input_and_state(model, batch_first=False, batch=B, steps=T):
    D = 2 if model.bidirectional else 1
    R = model.proj_size or model.hidden_size
    x = torch.randn(*((batch, steps) if batch_first else (steps, batch)), model.input_size, dtype=DT,
                    requires_grad=True)
    h0 = torch.randn(D * model.num_layers, batch, R, dtype=DT, requires_grad=True)
    c0 = torch.randn(D * model.num_layers, batch, model.hidden_size, dtype=DT, requires_grad=True)
    return x, (h0, c0)


def outputs_and_gradients(model, x, hx):
    out, (h_n, c_n) = model(x, hx)
    wrt = [x] + ([] if hx is None else list(hx)) + [p for _, p in sorted(model.named_parameters())]
    return [out, h_n, c_n], grads(weighted_sum([out, h_n, c_n]), wrt)


def assert_all_close(got, want, what):
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, what=f"{what}[{k}]")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=["no_proj", "proj"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_zero_rates_equal_nn_lstm(num_layers, bidirectional, proj_size, batch_first, bias, with_hx, training):
    theirs, ours = twin_models(num_layers, bidirectional, proj_size, batch_first, bias)
    theirs.train(training)
    ours.train(training)
    x, hx = random_input_and_state(ours, batch_first)
    hx = hx if with_hx else None
    want_out, want_grads = outputs_and_gradients(theirs, x, hx)
    got_out, got_grads = outputs_and_gradients(ours, x, hx)
    assert_all_close(got_out, want_out, "output, h_n, c_n")
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (True, 3, 2)])
def test_packed_input_with_mixed_lengths_equals_nn_lstm(bidirectional, proj_size, num_layers, enforce_sorted):
    theirs, ours = twin_models(num_layers, bidirectional, proj_size)
    x, hx = random_input_and_state(ours, batch=5, steps=7)
    lengths = random_lengths(7, 5)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    results = []
    for model in (theirs, ours):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, (h_n, c_n) = model(packed, hx)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        padded, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        params = [p for _, p in sorted(model.named_parameters())]
        results.append([padded, h_n, c_n] + grads(weighted_sum([padded, h_n, c_n]), [x, *hx, *params]))
    assert_all_close(results[1], results[0], "packed: output, h_n, c_n, gradients")


def test_packed_input_in_eval_mode_with_zoneout_equals_reference_with_lengths():
    _, ours = twin_models(2, True, zoneout_c=0.3, zoneout_h=0.2, input_dropout=0.5)
    ours.eval()
    x, hx = random_input_and_state(ours, batch=4, steps=6)
    lengths = torch.tensor([6, 3, 5, 1])
    out, (h_n, c_n) = ours(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
    padded, _ = pad_packed_sequence(out, total_length=6)
    want = reference_stack(ours, x, hx, None, dict(zoneout_c=0.3, zoneout_h=0.2, input_dropout=0.5),
                           lengths=lengths, training=False)
    assert_all_close([padded, h_n, c_n], [want[0], *want[1]], "output, h_n, c_n")


def test_packed_input_in_training_mode_runs_and_differentiates():
    _, ours = twin_models(2, True, **ALL_RATES)
    x, hx = random_input_and_state(ours, batch=4, steps=6)
    packed = pack_padded_sequence(x, torch.tensor([6, 3, 5, 1]), enforce_sorted=False)
    out, (h_n, c_n) = ours(packed, hx)
    g = grads(weighted_sum([out.data, h_n, c_n]), [x, *hx])
    assert all(torch.isfinite(t).all() for t in [out.data, h_n, c_n, *g])


@pytest.mark.parametrize("with_hx", [True, False])
def test_unbatched_input_equals_nn_lstm(with_hx):
    theirs, ours = twin_models(2, True, 2)
    x, (h0, c0) = random_input_and_state(ours, batch=1)
    x, hx = x[:, 0].detach().requires_grad_(), (h0[:, 0].detach(), c0[:, 0].detach())
    hx = hx if with_hx else None
    want_out, want_grads = outputs_and_gradients(theirs, x, hx)
    got_out, got_grads = outputs_and_gradients(ours, x, hx)
    assert got_out[0].shape == want_out[0].shape and got_out[1].shape == want_out[1].shape
    assert_all_close(got_out, want_out, "unbatched output, h_n, c_n")
    assert_all_close(got_grads, want_grads, "unbatched gradients")


# --- training mode replays lstm_masks(seed, layer=k, reverse=d) for each layer and direction ---------------

def replay(model, x, hx, rates, batch_first=False, s=31):
    """The model's training-mode outputs and gradients, and the reference's for the seed it draws."""
    torch.manual_seed(s)
    seed = draw_seed()
    torch.manual_seed(s)
    got = outputs_and_gradients(model, x, hx)
    xt = x.transpose(0, 1) if batch_first else x
    out, (h_n, c_n) = reference_stack(model, xt, hx, seed, rates)
    out = out.transpose(0, 1) if batch_first else out
    wrt = [x, *hx] + [p for _, p in sorted(model.named_parameters())]
    want = [out, h_n, c_n], grads(weighted_sum([out, h_n, c_n]), wrt)
    return got, want


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (True, 2, 3),
                                                                (False, 3, 2)])
def test_training_forward_replays_the_masks_of_one_drawn_seed(num_layers, bidirectional, proj_size, batch_first):
    rates = dict(ALL_RATES, zoneout_h=0.0 if proj_size else ALL_RATES["zoneout_h"])
    _, ours = twin_models(num_layers, bidirectional, proj_size, batch_first, **rates)
    x, hx = random_input_and_state(ours, batch_first)
    (got_out, got_grads), (want_out, want_grads) = replay(ours, x, hx, rates, batch_first)
    assert_all_close(got_out, want_out, "output, h_n, c_n")
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")


def test_rates_given_per_layer_apply_to_their_layer():
    rates = dict(zoneout_c=[0.1, 0.4], zoneout_h=[0.3, 0.0], input_dropout=[0.0, 0.5],
                 recurrent_dropout=[0.2, 0.1], weight_drop=[0.5, 0.0], candidate_dropout=[0.0, 0.3])
    _, ours = twin_models(2, True, **rates)
    x, hx = random_input_and_state(ours)
    (got_out, got_grads), (want_out, want_grads) = replay(ours, x, hx, rates)
    assert_all_close(got_out, want_out, "output, h_n, c_n")
    assert_all_close(got_grads, want_grads, "gradients")


def test_zoneout_sets_both_rates_and_zoneout_c_or_h_overrides_one():
    _, ours = twin_models(1, True, zoneout=0.2, zoneout_c=0.5)
    x, hx = random_input_and_state(ours)
    (got_out, _), (want_out, _) = replay(ours, x, hx, dict(zoneout_c=0.5, zoneout_h=0.2))
    assert_all_close(got_out, want_out, "output, h_n, c_n")


def test_evaluation_uses_zoneout_expectation_and_no_dropout():
    _, ours = twin_models(2, True, **ALL_RATES)
    ours.eval()
    x, hx = random_input_and_state(ours)
    out, (h_n, c_n) = ours(x, hx)
    want, (want_h, want_c) = reference_stack(ours, x, hx, None, ALL_RATES, training=False)
    assert_all_close([out, h_n, c_n], [want, want_h, want_c], "eval output, h_n, c_n")


def test_training_is_deterministic_under_manual_seed():
    _, ours = twin_models(2, True, dropout=0.3, **ALL_RATES)
    x, hx = random_input_and_state(ours)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(sum(outputs_and_gradients(ours, x, hx), []))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_each_training_forward_draws_new_masks():
    _, ours = twin_models(1, False, **ALL_RATES)
    x, hx = random_input_and_state(ours)
    assert not torch.allclose(ours(x, hx)[0], ours(x, hx)[0])


def test_eval_output_is_deterministic_and_draws_no_randomness():
    _, ours = twin_models(2, True, dropout=0.3, **ALL_RATES)
    ours.eval()
    x, hx = random_input_and_state(ours)
    state = torch.get_rng_state()
    a, b = ours(x, hx), ours(x, hx)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])


def test_dropout_between_layers_has_nn_lstm_meaning():
    theirs, ours = twin_models(2, True, dropout=0.5)
    x, hx = random_input_and_state(ours)
    for m in (theirs, ours):
        m.eval()
    assert_all_close(ours(x, hx)[0:1], theirs(x, hx)[0:1], "eval output with dropout")
    theirs.train()
    ours.train()
    no_dropout = twin_models(2, True)[0](x, hx)[0]
    dropped = [ours(x, hx)[0] for _ in range(2)]
    assert not torch.allclose(dropped[0], dropped[1])
    assert not torch.allclose(dropped[0], no_dropout)
    # Dropout acts between layers only: a one-layer model is unaffected by it.
    with pytest.warns(UserWarning):
        theirs1, ours1 = twin_models(1, True, dropout=0.5)
    assert_all_close([ours1(x)[0]], [theirs1(x)[0]], "one layer with dropout")


# --- parameters, state_dict and the idioms of user code ------------------------------------------------

@pytest.mark.parametrize("bidirectional,proj_size,bias", [(False, 0, True), (True, 2, True), (True, 0, False)])
def test_parameters_and_state_dict_keys_are_nn_lstm_s(bidirectional, proj_size, bias):
    kw = dict(num_layers=2, bidirectional=bidirectional, proj_size=proj_size, bias=bias)
    theirs, ours = nn.LSTM(I, H, **kw), rnnfused.LSTM(I, H, **kw)
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    assert list(theirs.state_dict()) == list(ours.state_dict())


def test_initialisation_is_nn_lstm_s_uniform():
    ours = rnnfused.LSTM(8, 64, num_layers=2)
    bound = 1 / math.sqrt(64)
    for name, p in ours.named_parameters():
        assert p.abs().max() <= bound, name
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name


def test_state_dict_loads_both_ways_with_nn_lstm():
    theirs, ours = twin_models(2, True, 2)
    back = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, dtype=DT)
    back.load_state_dict(ours.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
        assert torch.equal(ours.state_dict()[k], v), k


@pytest.mark.parametrize("batch_first", [False, True])
def test_from_lstm_and_to_lstm_convert(batch_first):
    theirs, _ = twin_models(2, True, 2, batch_first=batch_first, dropout=0.25)
    ours = rnnfused.LSTM.from_lstm(theirs, zoneout=0.1, weight_drop=0.3)
    assert isinstance(ours, rnnfused.LSTM)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    for k, v in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert "weight_drop=0.3" in repr(ours)

    plain = rnnfused.LSTM.from_lstm(theirs)
    back = plain.to_lstm()
    assert type(back) is nn.LSTM
    x, hx = random_input_and_state(plain, batch_first)
    for m in (theirs, plain, back):
        m.eval()
    want = theirs(x, hx)
    for m in (plain, back):
        got = m(x, hx)
        assert_all_close([got[0], *got[1]], [want[0], *want[1]], type(m).__name__)


def test_extra_repr_shows_the_rates():
    text = repr(rnnfused.LSTM(3, 4, num_layers=2, zoneout_c=0.1, zoneout_h=0.2, input_dropout=0.3,
                              recurrent_dropout=0.25, weight_drop=0.5, candidate_dropout=0.15))
    for piece in ("zoneout_c=0.1", "zoneout_h=0.2", "input_dropout=0.3", "recurrent_dropout=0.25",
                  "weight_drop=0.5", "candidate_dropout=0.15", "num_layers=2"):
        assert piece in text, (piece, text)


def test_deepcopy_is_an_independent_equal_model():
    _, ours = twin_models(2, True, **ALL_RATES)
    twin = copy.deepcopy(ours)
    x, hx = random_input_and_state(ours)
    torch.manual_seed(3)
    a = ours(x, hx)[0]
    torch.manual_seed(3)
    b = twin(x, hx)[0]
    assert torch.equal(a, b)
    with torch.no_grad():
        twin.weight_ih_l0.add_(1)
    assert not torch.equal(twin.weight_ih_l0, ours.weight_ih_l0)


class Tagger(nn.Module):
    """A whole model containing an rnnfused.LSTM, as user code saves it."""

    def __init__(self):
        super().__init__()
        self.rnn = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, zoneout=0.1, weight_drop=0.2)
        self.head = nn.Linear(2 * H, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_torch_save_and_load_round_trip_a_whole_model(tmp_path):
    model = Tagger().eval()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    # Default weights_only=True: the user allowlists their own classes; rnnfused.LSTM needs nothing else.
    with torch.serialization.safe_globals([Tagger, nn.Linear, rnnfused.LSTM]):
        loaded = torch.load(path)
    x = torch.randn(T, B, I)
    assert type(loaded.rnn) is rnnfused.LSTM
    assert torch.equal(loaded(x), model(x))
    assert repr(loaded) == repr(model)


def test_double_converts_parameters_and_matches_nn_lstm():
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    theirs, ours = theirs.double(), ours.double()
    assert all(p.dtype == DT for p in ours.parameters())
    x, hx = random_input_and_state(ours)
    want, got = theirs(x, hx), ours(x, hx)
    assert_all_close([got[0], *got[1]], [want[0], *want[1]], "float64 after .double()")


def test_float32_module_agrees_with_nn_lstm():
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, I)
    want, got = theirs(x), ours(x)
    assert got[0].dtype == torch.float32
    for a, b in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_to_dtype_and_half_convert_every_parameter(dtype):
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, zoneout=0.1)
    converted = ours.half() if dtype == torch.float16 else ours.to(dtype)
    assert converted is ours
    assert all(p.dtype == dtype for p in ours.parameters())


def test_works_under_cpu_autocast():
    torch.manual_seed(0)
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, **ALL_RATES)
    x = torch.randn(T, B, I)
    torch.manual_seed(1)
    want = ours(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        got = ours(x)[0]
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters())
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)


def test_flatten_parameters_exists_and_changes_nothing():
    _, ours = twin_models(2, True)
    x, hx = random_input_and_state(ours)
    before = ours(x, hx)[0]
    assert ours.flatten_parameters() is None
    assert torch.equal(ours(x, hx)[0], before)


def test_missing_hx_means_zero_state():
    _, ours = twin_models(2, True, 2, **dict(ALL_RATES, zoneout_h=0.0))
    x, (h0, c0) = random_input_and_state(ours)
    torch.manual_seed(1)
    a = ours(x)
    torch.manual_seed(1)
    b = ours(x, (torch.zeros_like(h0), torch.zeros_like(c0)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and torch.equal(a[1][1], b[1][1])


# --- it trains -------------------------------------------------------------------------------------------

def test_a_regularized_stacked_bidirectional_model_fits_a_toy_task():
    # y_t = x_{t-1} + x_{t+1} (first feature of each): needs both directions and some memory.
    torch.manual_seed(0)
    started = time.perf_counter()
    rnn = rnnfused.LSTM(2, 24, num_layers=2, bidirectional=True, dropout=0.1, zoneout=0.05, input_dropout=0.05,
                        recurrent_dropout=0.1, weight_drop=0.1, candidate_dropout=0.05)
    head = nn.Linear(48, 1)
    params = list(rnn.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)

    def batch(n=32, steps=12):
        x = torch.randn(steps, n, 2)
        y = torch.zeros(steps, n)
        y[1:] += x[:-1, :, 0]
        y[:-1] += x[1:, :, 1]
        return x, y

    def loss_of(x, y):
        return ((head(rnn(x)[0]).squeeze(-1) - y) ** 2).mean()

    x_val, y_val = batch(256)
    rnn.eval()
    with torch.no_grad():
        initial = loss_of(x_val, y_val).item()
    rnn.train()
    for _ in range(300):
        x, y = batch()
        opt.zero_grad()
        loss_of(x, y).backward()
        opt.step()
    rnn.eval()
    with torch.no_grad():
        final = loss_of(x_val, y_val).item()
        again = loss_of(x_val, y_val).item()
    assert final < 0.1 * initial, (initial, final)
    assert final == again
    assert time.perf_counter() - started < 60
