"""SPEC §2b, §4 and §6: `rnnfused.GRU` is a drop-in `torch.nn.GRU` that regularizes inside the recurrence.

The promises are the LSTM's (tests/test_module.py); the checks are shared in conftest.py. Rates are written in
gru_layer's names (zoneout_h); the module's argument for it is `zoneout`."""

import pytest
import torch
from torch import nn

import rnnfused
from conftest import (GRU_ALL_RATES, GRU_REGULARIZERS, output_tensors, packed_outputs_and_gradients,
                      random_input_and_state, random_lengths, twin_modules)
# The promises shared with rnnfused.LSTM, checked by the same code as in test_module.py:
from conftest import (assert_all_close, assert_computes_what_torch_does, assert_converts_both_ways,
                      assert_deepcopy_is_an_independent_equal_model, assert_dropout_between_layers_has_torch_s_meaning,
                      assert_eval_is_deterministic_and_draws_no_randomness, assert_initialisation_is_torch_s_uniform,
                      assert_parameters_and_keys_are_torch_s, assert_replays_the_reference,
                      assert_state_dict_loads_both_ways, assert_torch_save_and_load_round_trip_a_whole_model,
                      assert_training_is_deterministic_under_manual_seed, assert_works_under_cpu_autocast)

I, H, T, B = 4, 5, 6, 3
EXCEPTIONS = (ValueError, TypeError, RuntimeError)
# The module's rate arguments, as a user spells them.
RATE_ARGUMENTS = ("zoneout", "input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout")


def twin_models(num_layers=1, bidirectional=False, batch_first=False, bias=True, dropout=0.0, **rates):
    """An nn.GRU and an rnnfused.GRU with the same configuration and weights (float64); rates in gru_layer's
    names."""
    return twin_modules("GRU", I, H, rates, seed=num_layers * 100 + bidirectional, num_layers=num_layers,
                        bidirectional=bidirectional, batch_first=batch_first, bias=bias, dropout=dropout)


# --- with every rate 0 it is torch.nn.GRU ---------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_zero_rates_equal_nn_gru(num_layers, bidirectional, batch_first, bias, with_hx, training):
    theirs, ours = twin_models(num_layers, bidirectional, batch_first, bias)
    x, hx = random_input_and_state(ours, batch_first)
    assert_computes_what_torch_does(theirs, ours, x, hx if with_hx else None, training)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
def test_packed_input_with_mixed_lengths_equals_nn_gru(bidirectional, num_layers, enforce_sorted):
    theirs, ours = twin_models(num_layers, bidirectional)
    x, hx = random_input_and_state(ours, batch=5, steps=7)
    lengths = random_lengths(7, 5)  # unsorted, one full-length and one length-1 sequence
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    want = packed_outputs_and_gradients(theirs, x, hx, lengths, enforce_sorted)
    got = packed_outputs_and_gradients(ours, x, hx, lengths, enforce_sorted)
    assert_all_close(sum(got, []), sum(want, []), "packed: output, h_n, gradients")


@pytest.mark.parametrize("with_hx", [True, False])
def test_unbatched_input_equals_nn_gru(with_hx):
    theirs, ours = twin_models(2, True)
    x, h0 = random_input_and_state(ours, batch=1)
    x, h0 = x[:, 0].detach().requires_grad_(), h0[:, 0].detach().requires_grad_()
    assert ours(x, h0)[0].shape == (T, 2 * H) and ours(x, h0)[1].shape == (4, H)
    assert_computes_what_torch_does(theirs, ours, x, h0 if with_hx else None)


# --- training mode replays gru_masks(seed, layer=k, reverse=d) for each layer and direction -------------

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2), (False, 3)])
def test_training_forward_replays_the_masks_of_one_drawn_seed(num_layers, bidirectional, batch_first):
    _, ours = twin_models(num_layers, bidirectional, batch_first, **GRU_ALL_RATES)
    assert_replays_the_reference(ours, *random_input_and_state(ours, batch_first), GRU_ALL_RATES)


@pytest.mark.parametrize("regularizer", list(GRU_REGULARIZERS))
def test_each_regularizer_alone_replays_the_reference(regularizer):
    rates = GRU_REGULARIZERS[regularizer]
    _, ours = twin_models(2, True, **rates)
    assert_replays_the_reference(ours, *random_input_and_state(ours), rates)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_packed_input_with_rates_replays_the_reference_with_lengths(training):
    _, ours = twin_models(2, True, **GRU_ALL_RATES)
    x, hx = random_input_and_state(ours, batch=4, steps=6)
    assert_replays_the_reference(ours.train(training), x, hx, GRU_ALL_RATES, lengths=torch.tensor([6, 3, 5, 1]))


def test_rates_given_per_layer_apply_to_their_layer():
    rates = dict(zoneout_h=[0.3, 0.0], input_dropout=[0.0, 0.5], recurrent_dropout=[0.2, 0.1],
                 weight_drop=[0.5, 0.0], candidate_dropout=[0.0, 0.3])
    _, ours = twin_models(2, True, **rates)
    assert all(getattr(ours, name) == tuple(values) for name, values in rates.items())
    assert_replays_the_reference(ours, *random_input_and_state(ours), rates)


def test_zoneout_is_the_zoneout_on_h():
    ours = rnnfused.GRU(I, H, num_layers=2, zoneout=0.25)
    assert ours.zoneout_h == (0.25, 0.25) and not hasattr(ours, "zoneout_c")


def test_evaluation_uses_zoneout_expectation_and_no_dropout():
    _, ours = twin_models(2, True, **GRU_ALL_RATES)
    assert_replays_the_reference(ours.eval(), *random_input_and_state(ours), GRU_ALL_RATES)


def test_training_is_deterministic_under_manual_seed_and_seeds_give_different_masks():
    _, ours = twin_models(2, True, dropout=0.3, **GRU_ALL_RATES)
    assert_training_is_deterministic_under_manual_seed(ours, *random_input_and_state(ours))


def test_each_training_forward_draws_new_masks():
    _, ours = twin_models(1, False, **GRU_ALL_RATES)
    x, hx = random_input_and_state(ours)
    assert not torch.allclose(ours(x, hx)[0], ours(x, hx)[0])


def test_eval_output_is_deterministic_and_draws_no_randomness():
    _, ours = twin_models(2, True, dropout=0.3, **GRU_ALL_RATES)
    assert_eval_is_deterministic_and_draws_no_randomness(ours, *random_input_and_state(ours))


def test_dropout_between_layers_has_nn_gru_meaning():
    assert_dropout_between_layers_has_torch_s_meaning(lambda layers, dropout: twin_models(layers, True,
                                                                                           dropout=dropout))


def test_missing_hx_means_zero_state():
    _, ours = twin_models(2, True, **GRU_ALL_RATES)
    x, h0 = random_input_and_state(ours)
    torch.manual_seed(1)
    a = output_tensors(ours(x))
    torch.manual_seed(1)
    b = output_tensors(ours(x, torch.zeros_like(h0)))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# --- parameters, state_dict and the idioms of user code -------------------------------------------------

@pytest.mark.parametrize("bidirectional,bias", [(False, True), (True, True), (True, False)])
def test_parameters_and_state_dict_keys_are_nn_gru_s(bidirectional, bias):
    kw = dict(num_layers=2, bidirectional=bidirectional, bias=bias)
    assert_parameters_and_keys_are_torch_s(nn.GRU(I, H, **kw), rnnfused.GRU(I, H, **kw))
    assert rnnfused.GRU(I, H, **kw).weight_hh_l1.shape == (3 * H, H)


def test_initialisation_is_nn_gru_s_uniform():
    assert_initialisation_is_torch_s_uniform(rnnfused.GRU(8, 64, num_layers=2))


def test_state_dict_loads_both_ways_with_nn_gru():
    assert_state_dict_loads_both_ways(*twin_models(2, True))


@pytest.mark.parametrize("batch_first", [False, True])
def test_from_gru_and_to_gru_convert(batch_first):
    theirs, _ = twin_models(2, True, batch_first=batch_first, dropout=0.25)
    ours = assert_converts_both_ways(theirs, rnnfused.GRU, zoneout=0.1, weight_drop=0.3)
    assert ours.zoneout_h == (0.1, 0.1) and ours.weight_drop == (0.3, 0.3)


def test_extra_repr_shows_the_rates():
    text = repr(rnnfused.GRU(3, 4, num_layers=2, zoneout=0.1, input_dropout=0.3, recurrent_dropout=0.25,
                             weight_drop=[0.5, 0.0], candidate_dropout=0.15))
    for piece in ("GRU(3, 4", "zoneout=0.1", "input_dropout=0.3", "recurrent_dropout=0.25",
                  "weight_drop=[0.5, 0.0]", "candidate_dropout=0.15", "num_layers=2"):
        assert piece in text, (piece, text)
    assert "zoneout_c" not in text and repr(rnnfused.GRU(3, 4)) == "GRU(3, 4)"


def test_deepcopy_is_an_independent_equal_model():
    _, ours = twin_models(2, True, **GRU_ALL_RATES)
    assert_deepcopy_is_an_independent_equal_model(ours, *random_input_and_state(ours))


def test_torch_save_and_load_weights_only_round_trip_a_whole_model(tmp_path):
    rnn = rnnfused.GRU(I, H, num_layers=2, bidirectional=True, zoneout=0.1, weight_drop=0.2)
    assert_torch_save_and_load_round_trip_a_whole_model(rnn, torch.randn(T, B, I), tmp_path / "model.pt")


def test_float32_module_agrees_with_nn_gru():
    theirs, ours = twin_modules("GRU", I, H, dtype=torch.float32, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, I)
    got = output_tensors(ours(x))
    assert got[0].dtype == torch.float32
    for a, b in zip(got, output_tensors(theirs(x))):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_works_under_cpu_autocast():
    torch.manual_seed(0)
    ours = rnnfused.GRU(I, H, num_layers=2, bidirectional=True, **{name: 0.2 for name in RATE_ARGUMENTS})
    assert_works_under_cpu_autocast(ours, torch.randn(T, B, I))


# --- SPEC §6: bad input is an exception naming the argument ---------------------------------------------

def model(**kw):
    return rnnfused.GRU(3, 4, num_layers=2, **kw)


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
@pytest.mark.parametrize("name", RATE_ARGUMENTS)
def test_rate_outside_0_1_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        model(**{name: value})


@pytest.mark.parametrize("values", [[0.1, 1.2], [0.1, 0.2, 0.3]], ids=["bad_in_one_layer", "wrong_length"])
@pytest.mark.parametrize("name", RATE_ARGUMENTS)
def test_rate_list_bad_in_one_layer_or_of_the_wrong_length_is_a_value_error_naming_it(name, values):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        model(**{name: values})


@pytest.mark.parametrize("kw,name", [(dict(hidden_size=0), "hidden_size"), (dict(input_size=0), "input_size"),
                                     (dict(num_layers=0), "num_layers"), (dict(dropout=1.5), "dropout")])
def test_bad_sizes_are_value_errors_naming_them(kw, name):
    with pytest.raises(ValueError, match=name):
        rnnfused.GRU(**dict(dict(input_size=3, hidden_size=4), **kw))


def test_lstm_only_arguments_are_refused():
    for kw in (dict(proj_size=2), dict(zoneout_c=0.1), dict(zoneout_h=0.1)):
        with pytest.raises(TypeError):
            rnnfused.GRU(3, 4, **kw)


@pytest.mark.parametrize("x", [torch.randn(5), torch.randn(5, 2, 3, 1), torch.randn(5, 2, 6), torch.randn(5, 6)],
                         ids=["1-D", "4-D", "feature_size", "unbatched_feature_size"])
def test_wrong_input_rank_or_feature_size_names_input(x):
    with pytest.raises(EXCEPTIONS, match="input"):
        model()(x)


@pytest.mark.parametrize("x,hx", [
    (torch.randn(5, 2, 3), torch.randn(1, 2, 4)),           # layers
    (torch.randn(5, 2, 3), torch.randn(2, 3, 4)),           # batch
    (torch.randn(5, 2, 3), torch.randn(2, 2, 5)),           # hidden size
    (torch.randn(5, 2, 3), torch.randn(2, 4)),              # 2-D state for batched input
    (torch.randn(5, 3), torch.randn(2, 1, 4)),              # 3-D state for unbatched input
    (torch.randn(5, 3), torch.randn(1, 4)),                 # unbatched, layers
], ids=["layers", "batch", "hidden", "rank", "unbatched_rank", "unbatched_layers"])
def test_wrong_hx_shape_names_hx(x, hx):
    with pytest.raises(ValueError, match=r"hx \(h_0\)"):
        model()(x, hx)


def test_hx_a_pair_instead_of_a_tensor_is_a_type_error_naming_hx():
    with pytest.raises(TypeError, match="hx"):
        model()(torch.randn(5, 2, 3), (torch.randn(2, 2, 4), torch.randn(2, 2, 4)))


@pytest.mark.parametrize("x,hx,what", [
    (torch.randn(5, 2, 3, dtype=torch.float64), None, "input.*dtype"),
    (torch.randn(5, 2, 3), torch.randn(2, 2, 4, dtype=torch.float64), "hx.*dtype"),
    (torch.randn(5, 2, 3, device="meta"), None, "input.*device"),
    (torch.randn(5, 2, 3), torch.randn(2, 2, 4, device="meta"), "hx.*device"),
], ids=["input_dtype", "hx_dtype", "input_device", "hx_device"])
def test_dtype_or_device_mismatch_names_the_argument(x, hx, what):
    with pytest.raises(ValueError, match=what):
        model()(x, hx)
