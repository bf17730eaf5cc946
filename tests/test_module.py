"""SPEC §2 and §4: `rnnfused.LSTM` is a drop-in `torch.nn.LSTM` that regularizes inside the recurrence."""

import time

import pytest
import torch
from torch import nn

import rnnfused
from conftest import (ALL_RATES, assert_all_close, assert_computes_what_torch_does, assert_converts_both_ways,
                      assert_deepcopy_is_an_independent_equal_model, assert_dropout_between_layers_has_torch_s_meaning,
                      assert_eval_is_deterministic_and_draws_no_randomness, assert_initialisation_is_torch_s_uniform,
                      assert_parameters_and_keys_are_torch_s, assert_replays_the_reference,
                      assert_state_dict_loads_both_ways, assert_torch_save_and_load_round_trip_a_whole_model,
                      assert_training_is_deterministic_under_manual_seed, assert_works_under_cpu_autocast,
                      output_tensors, packed_outputs_and_gradients, random_input_and_state, random_lengths,
                      twin_modules)

I, H, T, B = 4, 5, 6, 3
DT = torch.float64


def twin_models(num_layers=1, bidirectional=False, proj_size=0, batch_first=False, bias=True, dropout=0.0,
                **rates):
    """An nn.LSTM and an rnnfused.LSTM with the same configuration and weights (float64)."""
    return twin_modules("LSTM", I, H, rates, seed=num_layers * 100 + proj_size, num_layers=num_layers,
                        bidirectional=bidirectional, proj_size=proj_size, batch_first=batch_first, bias=bias,
                        dropout=dropout)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("proj_size", [0, 2], ids=["no_proj", "proj"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_zero_rates_equal_nn_lstm(num_layers, bidirectional, proj_size, batch_first, bias, with_hx, training):
    theirs, ours = twin_models(num_layers, bidirectional, proj_size, batch_first, bias)
    x, hx = random_input_and_state(ours, batch_first)
    assert_computes_what_torch_does(theirs, ours, x, hx if with_hx else None, training)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (True, 3, 2)])
def test_packed_input_with_mixed_lengths_equals_nn_lstm(bidirectional, proj_size, num_layers, enforce_sorted):
    theirs, ours = twin_models(num_layers, bidirectional, proj_size)
    x, hx = random_input_and_state(ours, batch=5, steps=7)
    lengths = random_lengths(7, 5)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    want = packed_outputs_and_gradients(theirs, x, hx, lengths, enforce_sorted)
    got = packed_outputs_and_gradients(ours, x, hx, lengths, enforce_sorted)
    assert_all_close(sum(got, []), sum(want, []), "packed: output, h_n, c_n, gradients")


def test_packed_input_in_eval_mode_with_zoneout_equals_reference_with_lengths():
    rates = dict(zoneout_c=0.3, zoneout_h=0.2, input_dropout=0.5)
    _, ours = twin_models(2, True, **rates)
    x, hx = random_input_and_state(ours, batch=4, steps=6)
    assert_replays_the_reference(ours.eval(), x, hx, rates, lengths=torch.tensor([6, 3, 5, 1]))


def test_packed_input_in_training_mode_replays_the_masks_with_lengths():
    _, ours = twin_models(2, True, **ALL_RATES)
    x, hx = random_input_and_state(ours, batch=4, steps=6)
    assert_replays_the_reference(ours, x, hx, ALL_RATES, lengths=torch.tensor([6, 3, 5, 1]))


@pytest.mark.parametrize("with_hx", [True, False])
def test_unbatched_input_equals_nn_lstm(with_hx):
    theirs, ours = twin_models(2, True, 2)
    x, (h0, c0) = random_input_and_state(ours, batch=1)
    x, hx = x[:, 0].detach().requires_grad_(), (h0[:, 0].detach(), c0[:, 0].detach())
    assert_computes_what_torch_does(theirs, ours, x, hx if with_hx else None)


# --- training mode replays lstm_masks(seed, layer=k, reverse=d) for each layer and direction ---------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (True, 2, 3),
                                                                (False, 3, 2)])
def test_training_forward_replays_the_masks_of_one_drawn_seed(num_layers, bidirectional, proj_size, batch_first):
    rates = dict(ALL_RATES, zoneout_h=0.0 if proj_size else ALL_RATES["zoneout_h"])
    _, ours = twin_models(num_layers, bidirectional, proj_size, batch_first, **rates)
    assert_replays_the_reference(ours, *random_input_and_state(ours, batch_first), rates)


def test_rates_given_per_layer_apply_to_their_layer():
    rates = dict(zoneout_c=[0.1, 0.4], zoneout_h=[0.3, 0.0], input_dropout=[0.0, 0.5],
                 recurrent_dropout=[0.2, 0.1], weight_drop=[0.5, 0.0], candidate_dropout=[0.0, 0.3])
    _, ours = twin_models(2, True, **rates)
    assert all(getattr(ours, name) == tuple(values) for name, values in rates.items())
    assert_replays_the_reference(ours, *random_input_and_state(ours), rates)


def test_zoneout_sets_both_rates_and_zoneout_c_or_h_overrides_one():
    _, ours = twin_models(1, True, zoneout=0.2, zoneout_c=0.5)
    assert (ours.zoneout_c, ours.zoneout_h) == ((0.5,), (0.2,))
    assert_replays_the_reference(ours, *random_input_and_state(ours), dict(zoneout_c=0.5, zoneout_h=0.2))


def test_evaluation_uses_zoneout_expectation_and_no_dropout():
    _, ours = twin_models(2, True, **ALL_RATES)
    assert_replays_the_reference(ours.eval(), *random_input_and_state(ours), ALL_RATES)


def test_training_is_deterministic_under_manual_seed():
    _, ours = twin_models(2, True, dropout=0.3, **ALL_RATES)
    assert_training_is_deterministic_under_manual_seed(ours, *random_input_and_state(ours))


def test_each_training_forward_draws_new_masks():
    _, ours = twin_models(1, False, **ALL_RATES)
    x, hx = random_input_and_state(ours)
    assert not torch.allclose(ours(x, hx)[0], ours(x, hx)[0])


def test_eval_output_is_deterministic_and_draws_no_randomness():
    _, ours = twin_models(2, True, dropout=0.3, **ALL_RATES)
    assert_eval_is_deterministic_and_draws_no_randomness(ours, *random_input_and_state(ours))


def test_dropout_between_layers_has_nn_lstm_meaning():
    assert_dropout_between_layers_has_torch_s_meaning(lambda layers, dropout: twin_models(layers, True,
                                                                                           dropout=dropout))


# --- parameters, state_dict and the idioms of user code ------------------------------------------------

@pytest.mark.parametrize("bidirectional,proj_size,bias", [(False, 0, True), (True, 2, True), (True, 0, False)])
def test_parameters_and_state_dict_keys_are_nn_lstm_s(bidirectional, proj_size, bias):
    kw = dict(num_layers=2, bidirectional=bidirectional, proj_size=proj_size, bias=bias)
    assert_parameters_and_keys_are_torch_s(nn.LSTM(I, H, **kw), rnnfused.LSTM(I, H, **kw))


def test_initialisation_is_nn_lstm_s_uniform():
    assert_initialisation_is_torch_s_uniform(rnnfused.LSTM(8, 64, num_layers=2))


def test_state_dict_loads_both_ways_with_nn_lstm():
    assert_state_dict_loads_both_ways(*twin_models(2, True, 2))


@pytest.mark.parametrize("batch_first", [False, True])
def test_from_lstm_and_to_lstm_convert(batch_first):
    theirs, _ = twin_models(2, True, 2, batch_first=batch_first, dropout=0.25)
    ours = assert_converts_both_ways(theirs, rnnfused.LSTM, zoneout=0.1, weight_drop=0.3)
    assert ours.zoneout_c == ours.zoneout_h == (0.1, 0.1)
    assert "weight_drop=0.3" in repr(ours)


def test_extra_repr_shows_the_rates():
    text = repr(rnnfused.LSTM(3, 4, num_layers=2, zoneout_c=0.1, zoneout_h=0.2, input_dropout=0.3,
                              recurrent_dropout=0.25, weight_drop=0.5, candidate_dropout=0.15))
    for piece in ("zoneout_c=0.1", "zoneout_h=0.2", "input_dropout=0.3", "recurrent_dropout=0.25",
                  "weight_drop=0.5", "candidate_dropout=0.15", "num_layers=2"):
        assert piece in text, (piece, text)


def test_deepcopy_is_an_independent_equal_model():
    _, ours = twin_models(2, True, **ALL_RATES)
    assert_deepcopy_is_an_independent_equal_model(ours, *random_input_and_state(ours))


def test_torch_save_and_load_round_trip_a_whole_model(tmp_path):
    rnn = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, zoneout=0.1, weight_drop=0.2)
    assert_torch_save_and_load_round_trip_a_whole_model(rnn, torch.randn(T, B, I), tmp_path / "model.pt")


def test_double_converts_parameters_and_matches_nn_lstm():
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    theirs, ours = theirs.double(), ours.double()
    assert all(p.dtype == DT for p in ours.parameters())
    x, hx = random_input_and_state(ours)
    assert_all_close(output_tensors(ours(x, hx)), output_tensors(theirs(x, hx)), "float64 after .double()")


def test_float32_module_agrees_with_nn_lstm():
    theirs, ours = twin_modules("LSTM", I, H, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    got = output_tensors(ours(x))
    assert got[0].dtype == torch.float32
    for a, b in zip(got, output_tensors(theirs(x))):
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
    assert_works_under_cpu_autocast(ours, torch.randn(T, B, I))


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
    a = output_tensors(ours(x))
    torch.manual_seed(1)
    b = output_tensors(ours(x, (torch.zeros_like(h0), torch.zeros_like(c0))))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


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
