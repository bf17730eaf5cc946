"""SPEC §4: rnnfused.convert swaps every torch.nn.LSTM (and torch.nn.GRU)
inside an existing model, keeping its weights, device, dtype, training mode and state_dict keys; at
zero rates the converted model computes what it did before."""

import copy

import pytest
import torch
from torch import nn

import rnnfused
from conftest import assert_close

GRU = rnnfused.GRU


class Tagger(nn.Module):
    """LSTMs as an attribute, inside a Sequential, a ModuleList and a ModuleDict, plus other layers."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        f = dict(dtype=dtype)
        self.embed = nn.Linear(3, 6, **f)
        self.encoder = nn.LSTM(6, 5, num_layers=2, bidirectional=True, **f)
        self.stack = nn.Sequential(nn.Identity(), nn.LSTM(10, 4, batch_first=True, proj_size=2, **f))
        self.layers = nn.ModuleList([nn.LSTM(2, 3, bias=False, **f)])
        self.heads = nn.ModuleDict({"tag": nn.Linear(3, 2, **f), "rnn": nn.LSTM(3, 3, **f)})

    def forward(self, x):                                   # x: (T, B, 3)
        y, _ = self.encoder(torch.tanh(self.embed(x)))
        y, _ = self.stack[1](self.stack[0](y).transpose(0, 1))
        y, _ = self.layers[0](y.transpose(0, 1))
        y, (h, c) = self.heads["rnn"](y)
        return self.heads["tag"](y), h, c


def lstms(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.LSTM)]


def fused(model):
    return [name for name, m in model.named_modules() if isinstance(m, rnnfused.LSTM)]


def test_converted_model_computes_what_it_did_at_zero_rates_with_the_same_gradients():
    torch.manual_seed(0)
    model = Tagger()
    before = copy.deepcopy(model)
    x = torch.randn(7, 4, 3, dtype=torch.float64)
    converted = rnnfused.convert(model)
    assert converted is model
    assert sorted(fused(model)) == sorted(lstms(before)) and lstms(model) == []
    for mode in ("train", "eval"):
        getattr(before, mode)()
        getattr(model, mode)()
        want, got = before(x), model(x)
        for a, b in zip(got, want):
            assert_close(a, b, what=mode)
    want_grads = torch.autograd.grad(sum(t.sum() for t in before(x)), list(before.parameters()))
    got_grads = torch.autograd.grad(sum(t.sum() for t in model(x)), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), got_grads, want_grads):
        assert_close(a, b, what=f"grad {name}")


def test_state_dict_keys_and_values_are_unchanged():
    torch.manual_seed(1)
    model = Tagger()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rnnfused.convert(model, zoneout=0.1)
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert torch.equal(after[k], before[k]), k
    model.load_state_dict(before)                # and it loads the old model's checkpoints


def test_parameters_are_the_same_objects_so_optimizers_and_ties_carry_over():
    torch.manual_seed(2)
    model = Tagger()
    model.encoder.weight_hh_l0.requires_grad_(False)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rnnfused.convert(model)
    assert all(a is b for a, b in zip(model.parameters(), params))
    assert not model.encoder.weight_hh_l0.requires_grad
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    model(x)[0].sum().backward()
    before = model.encoder.weight_ih_l0.detach().clone()
    optimizer.step()                              # the optimizer built before the call still trains
    assert not torch.equal(model.encoder.weight_ih_l0, before)


def test_dtype_device_and_training_mode_are_kept():
    model = nn.Sequential(nn.LSTM(3, 4).float().train(), nn.LSTM(4, 4).double().eval())
    rnnfused.convert(model)
    assert model[0].weight_ih_l0.dtype == torch.float32 and model[0].training
    assert model[1].weight_ih_l0.dtype == torch.float64 and not model[1].training
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_is_kept_on_cuda():
    model = nn.Sequential(nn.LSTM(3, 4).cuda())
    rnnfused.convert(model)
    assert model[0].weight_ih_l0.is_cuda and isinstance(model[0], rnnfused.LSTM)


def test_rates_are_applied_to_every_lstm():
    model = Tagger()
    rnnfused.convert(model, zoneout=0.1, input_dropout=0.2, recurrent_dropout=0.3,
                     weight_drop=0.4, candidate_dropout=0.05)
    for name in fused(model):
        m = model.get_submodule(name)
        assert set(m.zoneout_c) == set(m.zoneout_h) == {0.1}, name
        assert set(m.input_dropout) == {0.2} and set(m.weight_drop) == {0.4}, name
        assert set(m.recurrent_dropout) == {0.3} and set(m.candidate_dropout) == {0.05}, name
    assert "zoneout_c=0.1" in repr(model)


def test_per_layer_rates_and_zoneout_overrides():
    model = nn.Sequential(nn.LSTM(3, 4, num_layers=2))
    rnnfused.convert(model, zoneout=0.2, zoneout_h=[0.0, 0.3], weight_drop=[0.1, 0.2])
    m = model[0]
    assert m.zoneout_c == (0.2, 0.2) and m.zoneout_h == (0.0, 0.3) and m.weight_drop == (0.1, 0.2)


def test_rates_change_the_training_output_and_not_the_evaluation_expectation():
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 5, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    plain = rnnfused.convert(copy.deepcopy(lstm))
    dropped = rnnfused.convert(copy.deepcopy(lstm), input_dropout=0.5, weight_drop=0.5)
    assert not torch.allclose(plain(x)[0], dropped(x)[0])
    plain.eval()
    dropped.eval()
    assert_close(dropped(x)[0], plain(x)[0])      # dropouts are the identity in evaluation


def test_a_bare_lstm_is_returned_converted():
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    out = rnnfused.convert(lstm, zoneout_c=0.0)
    assert isinstance(out, rnnfused.LSTM) and out.batch_first and out.num_layers == 2
    assert_close(out(x)[0], lstm(x)[0])


def test_a_module_used_twice_becomes_one_module():
    shared = nn.LSTM(3, 3)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    rnnfused.convert(model)
    assert model["a"] is model["b"][0] and isinstance(model["a"], rnnfused.LSTM)


def test_a_model_without_lstms_and_already_fused_modules_are_left_alone():
    model = nn.Sequential(nn.Linear(2, 2), rnnfused.LSTM(2, 3))
    inner = model[1]
    assert rnnfused.convert(model, zoneout=0.1) is model
    assert model[1] is inner and inner.zoneout_c == (0.0,)


def test_a_non_module_argument_raises_type_error():
    for bad in (None, torch.randn(2), [nn.LSTM(2, 2)], "lstm"):
        with pytest.raises(TypeError, match="torch.nn.Module"):
            rnnfused.convert(bad)


def test_an_unknown_rate_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="zonout"):
        rnnfused.convert(nn.LSTM(2, 2), zonout=0.1)


def test_bad_rate_values_are_refused_by_the_module():
    with pytest.raises(ValueError, match="zoneout"):
        rnnfused.convert(nn.Sequential(nn.LSTM(2, 2)), zoneout=1.5)


def test_gru_gets_its_zoneout_from_zoneout_h_and_no_cell_rate():
    gru = nn.GRU(2, 3, num_layers=2)
    model = nn.Sequential(gru, nn.LSTM(3, 3))
    rnnfused.convert(model, zoneout_c=0.1, zoneout_h=0.2, weight_drop=0.3)
    assert isinstance(model[0], rnnfused.GRU) and isinstance(model[1], rnnfused.LSTM)
    assert model[0].zoneout_h == (0.2, 0.2) and model[0].weight_drop == (0.3, 0.3)  # a GRU has no c
    assert model[1].zoneout_c == (0.1,) and model[1].zoneout_h == (0.2,)
    assert model[0].weight_hh_l0 is gru.weight_hh_l0
    assert list(model.state_dict()) == list(nn.Sequential(nn.GRU(2, 3, num_layers=2), nn.LSTM(3, 3)).state_dict())


def test_converted_gru_computes_what_it_did_at_zero_rates():
    torch.manual_seed(5)
    model = nn.Sequential(nn.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64))
    before = copy.deepcopy(model)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    rnnfused.convert(model)
    assert isinstance(model[0], GRU) and list(model.state_dict()) == list(before.state_dict())
    for a, b in zip(model[0](x), before[0](x)):
        assert_close(a, b)
