"""SPEC §2c and §4 for `rnnfused.LSTM(..., layer_norm=True)`: its extra parameters (names, shapes, order,
initialisation), the state_dict with and without nn.LSTM, the conversions that refuse or keep the gains,
the idioms of user code, torch.compile, and that every layer and direction replays the reference's LN-LSTM
(`rnnfused.reference.lstm_layer` with the layer's LN parameters) with the masks of its seed."""

import math

import pytest
import torch
from torch import nn

import rnnfused
from conftest import (ALL_RATES, Tagger, assert_all_close, assert_deepcopy_is_an_independent_equal_model,
                      assert_eval_is_deterministic_and_draws_no_randomness,
                      assert_torch_save_and_load_round_trip_a_whole_model,
                      assert_training_is_deterministic_under_manual_seed, assert_works_under_cpu_autocast, grads,
                      hx_tensors, layer_rates, module_layer_weights, outputs_and_gradients, output_tensors,
                      packed_outputs_and_gradients, random_input_and_state, random_lengths, weighted_sum)
from rnnfused import functional as F
from rnnfused import reference

I, H, T, B = 4, 5, 6, 3
LN_KINDS = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
TORCH_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


def ln_model(num_layers=1, bidirectional=False, proj_size=0, batch_first=False, bias=True, seed=0, **rates):
    """An rnnfused.LSTM with layer_norm=True, float64, every LN parameter random (not its 1 / 0 init)."""
    torch.manual_seed(seed)
    model = rnnfused.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size,
                          batch_first=batch_first, bias=bias, dtype=torch.float64, layer_norm=True, **rates)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn_like(p))
    return model


def ln_parameters(model, layer, direction):
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return {kind: getattr(model, kind + sfx) for kind in LN_KINDS}


def ln_reference_stack(model, x, hx, seed, rates, lengths=None, training=True):
    """The reference's (output, (h_n, c_n)) of a time-major batched LN-LSTM stack with between-layer dropout 0:
    layer k, direction d is reference.lstm_layer with that layer's weights and LN parameters, replaying
    lstm_masks(seed, ..., layer=k, reverse=(d == 1)) in training."""
    T, B, _ = x.shape
    D = 2 if model.bidirectional else 1
    layer_input, finals = x, []
    for k in range(model.num_layers):
        rates_k = layer_rates(rates, k)
        outs = []
        for d in range(D):
            masks = None
            if training:
                masks = F.lstm_masks(seed, T, B, layer_input.shape[2], model.hidden_size, proj_size=model.proj_size,
                                     layer=k, reverse=(d == 1), dtype=x.dtype, **rates_k)
            out, *final = reference.lstm_layer(layer_input, *[s[k * D + d] for s in hx],
                                               *module_layer_weights(model, k, d), masks=masks, training=training,
                                               reverse=(d == 1), lengths=lengths, **rates_k,
                                               **ln_parameters(model, k, d))
            outs.append(out)
            finals.append(final)
        layer_input = torch.cat(outs, dim=2)
    return layer_input, tuple(torch.stack(f) for f in zip(*finals))


def all_inputs(model, x, hx):
    return [x] + hx_tensors(hx) + [p for _, p in sorted(model.named_parameters())]


def assert_replays_the_ln_reference(model, x, hx, rates, lengths=None, unbatched=False, s=31):
    """Outputs and every gradient (x, hx, every parameter, the LN ones included) of the model, after
    torch.manual_seed(s), equal the reference's replay with the seed the model draws. With lengths the model
    gets x packed; unbatched: x (T, I) and hx (L*D, R)."""
    torch.manual_seed(s)
    seed = F.draw_seed(device=x.device)  # the generator of x's device, as the model's call
    torch.manual_seed(s)
    if lengths is None:
        got_out, got_grads = outputs_and_gradients(model, x, hx)
    else:
        got_out, got_grads = packed_outputs_and_gradients(model, x, hx, lengths)
    xt = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if model.batch_first else x)
    hxt = [h.unsqueeze(1) for h in hx] if unbatched else hx
    out, state = ln_reference_stack(model, xt, hxt, seed, rates, lengths=lengths, training=model.training)
    if unbatched:
        out, state = out.squeeze(1), [h.squeeze(1) for h in state]
    elif model.batch_first:
        out = out.transpose(0, 1)
    want_out = [out] + list(state)
    want_grads = grads(weighted_sum(want_out), all_inputs(model, x, hx))
    assert_all_close(got_out, want_out, "output and final states")
    assert all(g is not None for g in got_grads), "every input and parameter gets a gradient"
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")


# --- every layer and direction replays the reference's LN-LSTM --------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (True, 2, 2),
                                                                (False, 3, 3)])
def test_stack_replays_the_reference(num_layers, bidirectional, proj_size, batch_first, training):
    model = ln_model(num_layers, bidirectional, proj_size, batch_first, **ALL_RATES).train(training)
    assert_replays_the_ln_reference(model, *random_input_and_state(model, batch_first), ALL_RATES)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 0), (True, 2)])
def test_packed_input_with_unsorted_lengths_replays_the_reference(bidirectional, proj_size, training):
    model = ln_model(2, bidirectional, proj_size, **ALL_RATES).train(training)
    x, hx = random_input_and_state(model, batch=5, steps=7)
    assert_replays_the_ln_reference(model, x, hx, ALL_RATES, lengths=random_lengths(7, 5))


def test_packed_batch_first_input_replays_the_reference():
    model = ln_model(2, True, batch_first=True, **ALL_RATES)
    x, hx = random_input_and_state(model, batch_first=True, batch=4, steps=6)
    assert_replays_the_ln_reference(model, x, hx, ALL_RATES, lengths=torch.tensor([3, 6, 1, 5]))


@pytest.mark.parametrize("with_hx", [True, False])
def test_unbatched_input_replays_the_reference(with_hx):
    model = ln_model(2, True, 2, **ALL_RATES)
    x, (h0, c0) = random_input_and_state(model, batch=1)
    x = x[:, 0].detach().requires_grad_()
    hx = (h0[:, 0].detach().requires_grad_(), c0[:, 0].detach().requires_grad_())
    output, (h_n, c_n) = model(x, hx if with_hx else None)
    assert output.shape == (T, 4) and h_n.shape == (4, 2) and c_n.shape == (4, H)
    if with_hx:
        assert_replays_the_ln_reference(model, x, hx, ALL_RATES, unbatched=True)


def test_rates_given_per_layer_apply_to_their_layer():
    rates = dict(zoneout_c=[0.1, 0.4], zoneout_h=[0.3, 0.0], input_dropout=[0.0, 0.5],
                 recurrent_dropout=[0.2, 0.1], weight_drop=[0.5, 0.0], candidate_dropout=[0.0, 0.3])
    model = ln_model(2, True, **rates)
    assert_replays_the_ln_reference(model, *random_input_and_state(model), rates)


def test_without_bias_replays_the_reference():
    model = ln_model(2, True, bias=False, **ALL_RATES)
    assert_replays_the_ln_reference(model, *random_input_and_state(model), ALL_RATES)


def test_training_is_deterministic_under_manual_seed_and_eval_draws_no_randomness():
    model = ln_model(2, True, **ALL_RATES)
    x, hx = random_input_and_state(model)
    assert_training_is_deterministic_under_manual_seed(model, x, hx)
    assert_eval_is_deterministic_and_draws_no_randomness(model, x, hx)


def test_the_gains_change_what_it_computes():
    # layer_norm=True is not nn.LSTM's cell, and the LN parameters are used: other gains, other outputs.
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, dtype=torch.float64)
    ours = rnnfused.LSTM.from_lstm(theirs, layer_norm=True).eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert not torch.allclose(ours(x)[0], theirs(x)[0])
    for kind in LN_KINDS:
        other = ln_model().eval()
        other.load_state_dict(ours.state_dict())
        with torch.no_grad():
            getattr(other, kind + "_l0").mul_(1.5).add_(0.1)
        assert not torch.allclose(other(x)[0], ours(x)[0]), kind


# --- parameters, state_dict, conversion --------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional,proj_size,bias", [(False, 0, True), (True, 2, True), (True, 0, False)])
def test_parameters_are_nn_lstm_s_then_the_ln_ones_per_layer_and_direction(bidirectional, proj_size, bias):
    kw = dict(num_layers=2, bidirectional=bidirectional, proj_size=proj_size, bias=bias)
    ours = dict(rnnfused.LSTM(I, H, layer_norm=True, **kw).named_parameters())
    theirs = dict(nn.LSTM(I, H, **kw).named_parameters())
    want = []
    for k in range(2):
        for sfx in [""] + (["_reverse"] if bidirectional else []):
            group = [f"{kind}_l{k}{sfx}" for kind in TORCH_KINDS if f"{kind}_l{k}{sfx}" in theirs]
            want += [(n, tuple(theirs[n].shape)) for n in group]
            want += [(f"{kind}_l{k}{sfx}", (4 * H,) if kind in ("ln_weight_ih", "ln_weight_hh") else (H,))
                     for kind in LN_KINDS]
    assert [(n, tuple(p.shape)) for n, p in ours.items()] == want
    assert list(rnnfused.LSTM(I, H, layer_norm=True, **kw).state_dict()) == [n for n, _ in want]


def test_initialisation_gains_one_shift_zero_the_rest_torch_s_uniform_also_after_reset_parameters():
    model = rnnfused.LSTM(8, 64, num_layers=2, bidirectional=True, layer_norm=True)
    bound = 1 / math.sqrt(64)
    for when in ("init", "reset"):
        for name, p in model.named_parameters():
            if name.startswith("ln_bias_c"):
                assert torch.all(p == 0), (when, name)
            elif name.startswith("ln_"):
                assert torch.all(p == 1), (when, name)
            else:
                assert p.abs().max() <= bound and abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
        model.reset_parameters()


def test_state_dict_round_trips_between_ln_modules():
    a, b = ln_model(2, True, 2, seed=1), ln_model(2, True, 2, seed=2)
    x, hx = random_input_and_state(a)
    assert not torch.allclose(a.eval()(x, hx)[0], b.eval()(x, hx)[0])
    b.load_state_dict(a.state_dict())
    assert_all_close(output_tensors(b(x, hx)), output_tensors(a(x, hx)), "after load_state_dict")


def test_nn_lstm_state_dict_loads_with_strict_false_and_leaves_the_gains_at_their_initial_values():
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2)
    ours = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, layer_norm=True)
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(n for n, _ in ours.named_parameters() if n.startswith("ln_"))
    for name, p in ours.named_parameters():
        if name.startswith("ln_"):
            assert torch.all(p == (0 if name.startswith("ln_bias_c") else 1)), name
        else:
            assert torch.equal(p, theirs.state_dict()[name]), name
    with pytest.raises(RuntimeError, match="ln_weight_ih_l0"):   # strict: the missing gains are named
        ours.load_state_dict(theirs.state_dict())


def test_from_lstm_with_layer_norm_takes_the_weights_and_initial_gains():
    torch.manual_seed(0)
    theirs = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, batch_first=True, dropout=0.25)
    ours = rnnfused.LSTM.from_lstm(theirs, layer_norm=True, zoneout=0.1, weight_drop=0.3)
    assert ours.layer_norm and ours.zoneout_c == (0.1, 0.1) and ours.weight_drop == (0.3, 0.3)
    assert ours.batch_first and ours.proj_size == 2 and ours.dropout == 0.25
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    for name, p in ours.named_parameters():
        if name.startswith("ln_"):
            assert torch.all(p == (0 if name.startswith("ln_bias_c") else 1)), name


def test_to_lstm_refuses_a_layer_normalized_module():
    with pytest.raises((ValueError, NotImplementedError), match="layer_norm"):
        rnnfused.LSTM(I, H, layer_norm=True).to_lstm()
    assert isinstance(rnnfused.LSTM(I, H).to_lstm(), nn.LSTM)


def test_extra_repr_shows_layer_norm():
    text = repr(rnnfused.LSTM(3, 4, num_layers=2, zoneout=0.1, layer_norm=True))
    assert "layer_norm=True" in text and "zoneout_c=0.1" in text, text
    assert "layer_norm" not in repr(rnnfused.LSTM(3, 4)) and repr(rnnfused.LSTM(3, 4)) == "LSTM(3, 4)"


def test_without_layer_norm_nothing_changes():
    model = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True)
    assert model.layer_norm is False
    assert list(model.state_dict()) == list(nn.LSTM(I, H, num_layers=2, bidirectional=True).state_dict())


def test_layer_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="layer_norm"):
        rnnfused.LSTM(I, H, layer_norm=1)


def test_gru_has_no_layer_norm():
    with pytest.raises(TypeError):
        rnnfused.GRU(I, H, layer_norm=True)
    assert list(rnnfused.GRU(I, H, bidirectional=True).state_dict()) == \
        list(nn.GRU(I, H, bidirectional=True).state_dict())


# --- the idioms of user code ---------------------------------------------------------------------------

def test_deepcopy_is_an_independent_equal_model():
    model = ln_model(2, True, **ALL_RATES)
    assert_deepcopy_is_an_independent_equal_model(model, *random_input_and_state(model))


def test_torch_save_and_load_weights_only_round_trip_a_whole_model(tmp_path):
    rnn = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, zoneout=0.1, weight_drop=0.2, layer_norm=True)
    with torch.no_grad():
        rnn.ln_weight_c_l1_reverse.normal_()
    assert_torch_save_and_load_round_trip_a_whole_model(rnn, torch.randn(T, B, I), tmp_path / "model.pt")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_to_dtype_and_half_convert_every_parameter(dtype):
    model = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=2, zoneout=0.1, layer_norm=True)
    converted = model.half() if dtype == torch.float16 else model.to(dtype)
    assert converted is model and all(p.dtype == dtype for p in model.parameters())


def test_float32_module_runs_forward_and_backward_and_agrees_with_float64():
    model = ln_model(2, True, 2, **ALL_RATES)
    x, hx = random_input_and_state(model)
    single = ln_model(2, True, 2, **ALL_RATES).float()
    single.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    torch.manual_seed(3)
    want = output_tensors(model(x, hx))
    torch.manual_seed(3)
    got = output_tensors(single(x.float(), tuple(h.float() for h in hx)))
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)
    got[0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in single.parameters())


def test_works_under_cpu_autocast():
    torch.manual_seed(0)
    model = rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, layer_norm=True, **ALL_RATES)
    assert_works_under_cpu_autocast(model, torch.randn(T, B, I))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_matches_eager(training):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger(rnnfused.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, layer_norm=True,
                                 **ALL_RATES)).train(training)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 5, 3)
    for step in range(2):
        results = []
        for m in (model, compiled):
            torch.manual_seed(step)
            y = m(x)
            results.append([y.detach()] + list(torch.autograd.grad((y * y).sum(), list(model.parameters()))))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
