"""SPEC §5: the ops are registered with TORCH_LIBRARY and fake implementations, so torch.library.opcheck
passes and torch.compile(fullgraph=True) traces a model that uses rnnfused.LSTM without a graph break."""

import pytest
import torch
from torch import nn

import rnnfused
from conftest import ALL_RATES, RATE_NAMES, make_layer_inputs

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")

# name -> (T, B, I, H, P, bias, lengths, training, rates, requires_grad)
SAMPLES = {
    "plain": (4, 3, 2, 5, 0, True, None, True, dict(), True),
    "regularized": (4, 3, 2, 5, 0, True, None, True, ALL_RATES, True),
    "eval_zoneout": (4, 3, 2, 5, 0, True, None, False, ALL_RATES, True),
    "lengths_reverse": (5, 3, 2, 4, 0, False, [5, 2, 3], True, ALL_RATES, True),
    "projection": (4, 2, 3, 5, 2, True, [4, 1], True, dict(ALL_RATES, zoneout_h=0.0), True),
    "inference": (4, 3, 2, 5, 0, True, None, True, ALL_RATES, False),
}


def forward_args(name, need_workspace=None):
    T, B, I, H, P, bias, lengths, training, rates, requires_grad = SAMPLES[name]
    torch.manual_seed(len(name))
    x = make_layer_inputs(T, B, I, H, P, bias=bias, requires_grad=requires_grad)
    need_workspace = requires_grad if need_workspace is None else need_workspace
    return (x["input"], x["h0"], x["c0"], x["weight_ih"], x["weight_hh"], x["bias_ih"], x["bias_hh"],
            x["weight_hr"], None if lengths is None else torch.tensor(lengths), torch.tensor(1234),
            1, name == "lengths_reverse", training, [float(rates.get(n, 0.0)) for n in RATE_NAMES], need_workspace)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck_passes_on_lstm_forward(name):
    torch.library.opcheck(torch.ops.rnnfused.lstm_forward.default, forward_args(name), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name", ["regularized", "lengths_reverse", "projection"])
def test_opcheck_passes_on_lstm_backward(name):
    args = forward_args(name)
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    output, h_n, c_n, gates, hs, cs, ctil = torch.ops.rnnfused.lstm_forward(*detached)
    input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed, layer, reverse, training, \
        rates, _ = detached
    backward_args = (torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n), input, weight_ih,
                     weight_hh, weight_hr, lengths, seed, layer, reverse, training, rates, gates, hs, cs, ctil,
                     bias_ih is not None)
    torch.library.opcheck(torch.ops.rnnfused.lstm_backward.default, backward_args, test_utils=OPCHECK_TESTS)


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnfused.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True, **ALL_RATES)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def run(model, x, seed):
    """Output and parameter gradients of one step, replaying torch's RNG from `seed`."""
    torch.manual_seed(seed)
    y = model(x)
    grads = torch.autograd.grad((y * y).sum(), list(model.parameters())) if model.training else []
    return [y.detach()] + list(grads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_matches_eager(backend, training):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger().train(training)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(4, 5, 3)
    for step in range(2):
        want = run(model, x, seed=step)
        got = run(compiled, x, seed=step)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph_inference_without_grad_matches_eager(backend):
    # No gradient needed: the op runs with need_workspace=False.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger().eval()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(4, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-6, rtol=1e-5)
        model.train()
        torch.manual_seed(1)
        want = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(compiled(x), want, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph_with_inductor(training):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Tagger().train(training)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 5, 3)
    first = run(compiled, x, seed=3)
    again = run(compiled, x, seed=3)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    if not training:
        torch.testing.assert_close(first[0], run(model, x, seed=3)[0], atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(t).all() for t in first)
