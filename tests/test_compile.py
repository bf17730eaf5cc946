"""SPEC §5: the ops are registered with TORCH_LIBRARY and fake implementations, so torch.library.opcheck
passes and torch.compile(fullgraph=True) traces a model that uses rnnfused.LSTM or rnnfused.GRU without a
graph break."""

import pytest
import torch

import rnnfused
from conftest import ALL_RATES, GRU_ALL_RATES, RATE_NAMES, Tagger, gru_layer_args, layer_args, make_gru_inputs, \
    make_layer_inputs, module_rates
from rnnfused import functional as F

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


# The GRU's: the same samples without the projection.
GRU_SAMPLES = {name: (T, B, I, H, bias, lengths, training, {n: r for n, r in rates.items() if n in GRU_ALL_RATES},
                      requires_grad)
               for name, (T, B, I, H, P, bias, lengths, training, rates, requires_grad) in SAMPLES.items() if P == 0}


def op_options(name, lengths, training, rates, need_workspace):
    """The arguments of a forward op after the tensors: lengths, seed, layer, reverse, training, rates (all six,
    in the ops' order), need_workspace."""
    return (None if lengths is None else torch.tensor(lengths), torch.tensor(1234), 1, name == "lengths_reverse",
            training, [float(rates.get(n, 0.0)) for n in RATE_NAMES], need_workspace)


def forward_args(name, need_workspace=None):
    T, B, I, H, P, bias, lengths, training, rates, requires_grad = SAMPLES[name]
    torch.manual_seed(len(name))
    x = make_layer_inputs(T, B, I, H, P, bias=bias, requires_grad=requires_grad)
    need_workspace = requires_grad if need_workspace is None else need_workspace
    return (*layer_args(x), *op_options(name, lengths, training, rates, need_workspace))


def gru_forward_args(name):
    T, B, I, H, bias, lengths, training, rates, requires_grad = GRU_SAMPLES[name]
    torch.manual_seed(len(name))
    x = make_gru_inputs(T, B, I, H, bias=bias, requires_grad=requires_grad)
    return (*gru_layer_args(x), *op_options(name, lengths, training, rates, requires_grad))


def detached(args):
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck_passes_on_lstm_forward(name):
    torch.library.opcheck(torch.ops.rnnfused.lstm_forward.default, forward_args(name), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name", ["regularized", "lengths_reverse", "projection"])
def test_opcheck_passes_on_lstm_backward(name):
    args = detached(forward_args(name))
    output, h_n, c_n, gates, hs, cs, ctil = torch.ops.rnnfused.lstm_forward(*args)
    input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed, layer, reverse, training, \
        rates, _ = args
    backward_args = (torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n), input, weight_ih,
                     weight_hh, weight_hr, lengths, seed, layer, reverse, training, rates, gates, hs, cs, ctil,
                     bias_ih is not None)
    torch.library.opcheck(torch.ops.rnnfused.lstm_backward.default, backward_args, test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name", list(GRU_SAMPLES))
def test_opcheck_passes_on_gru_forward(name):
    torch.library.opcheck(torch.ops.rnnfused.gru_forward.default, gru_forward_args(name), test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name", ["plain", "regularized", "eval_zoneout", "lengths_reverse"])
def test_opcheck_passes_on_gru_backward(name):
    args = detached(gru_forward_args(name))
    output, h_n, gates, hs = torch.ops.rnnfused.gru_forward(*args)
    input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, seed, layer, reverse, training, rates, _ = args
    backward_args = (torch.randn_like(output), torch.randn_like(h_n), input, weight_ih, weight_hh, lengths, seed,
                     layer, reverse, training, rates, gates, hs, bias_ih is not None)
    torch.library.opcheck(torch.ops.rnnfused.gru_backward.default, backward_args, test_utils=OPCHECK_TESTS)


MODES = ["LSTM", "GRU"]


def tagger(mode):
    """A batch-first, stacked, bidirectional rnnfused.<mode> with every regularizer on, and a linear head."""
    rates = ALL_RATES if mode == "LSTM" else module_rates("GRU", GRU_ALL_RATES)
    return Tagger(getattr(rnnfused, mode)(3, 6, num_layers=2, bidirectional=True, batch_first=True, **rates))


def run(model, x, seed):
    """Output and parameter gradients of one step, replaying torch's RNG from `seed`."""
    torch.manual_seed(seed)
    y = model(x)
    grads = torch.autograd.grad((y * y).sum(), list(model.parameters())) if model.training else []
    return [y.detach()] + list(grads)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_matches_eager(mode, backend, training):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tagger(mode).train(training)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    x = torch.randn(4, 5, 3)
    for step in range(2):
        want = run(model, x, seed=step)
        got = run(compiled, x, seed=step)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_inference_without_grad_matches_eager(mode, backend):
    # No gradient needed: the op runs with need_workspace=False.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tagger(mode).eval()
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
@pytest.mark.parametrize("mode", MODES)
def test_compile_fullgraph_with_inductor(mode, training):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = tagger(mode).train(training)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 5, 3)
    first = run(compiled, x, seed=3)
    again = run(compiled, x, seed=3)
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    if not training:
        torch.testing.assert_close(first[0], run(model, x, seed=3)[0], atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(t).all() for t in first)


def gru_loss(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, training):
    """A function calling gru_layer, as user code that builds its own module would."""
    output, h_n = F.gru_layer(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, training=training, layer=1,
                              reverse=True, lengths=lengths, **GRU_ALL_RATES)
    return (torch.tanh(output) ** 2).sum() + h_n.sum()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_of_a_function_calling_gru_layer_matches_eager(backend, training):
    # The seed is drawn inside the compiled function: the same torch.manual_seed gives the same masks.
    torch._dynamo.reset()
    torch.manual_seed(0)
    args = gru_layer_args(make_gru_inputs(5, 3, 2, 4, dtype=torch.float32))
    lengths = torch.tensor([5, 2, 4])
    compiled = torch.compile(gru_loss, backend=backend, fullgraph=True)
    results = {}
    for fn in (gru_loss, compiled):
        for seed in (1, 2):
            torch.manual_seed(seed)
            loss = fn(*args, lengths, training)
            results[fn, seed] = [loss.detach()] + list(torch.autograd.grad(loss, args))
    for seed in (1, 2):
        for a, b in zip(results[compiled, seed], results[gru_loss, seed]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert training != torch.equal(results[compiled, 1][0], results[compiled, 2][0]), "a new seed, new masks"
