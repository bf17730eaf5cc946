"""Shared helpers for the test suites: random inputs, gradient collection, stacked replays.

Every input is drawn with torch.randn (never zeros), so a kernel that forgets a term cannot pass by
luck. Sizes are small: the suite runs on two CPU cores in a few minutes.
"""

import copy
from typing import Callable, NamedTuple

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rnnfused
from rnnfused import functional, reference

torch.set_num_threads(1)

RATE_NAMES = ("input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout", "zoneout_c", "zoneout_h")

# Every regularizer on at once, at rates high enough to matter in a short sequence.
ALL_RATES = dict(input_dropout=0.3, recurrent_dropout=0.25, weight_drop=0.4, candidate_dropout=0.2,
                 zoneout_c=0.3, zoneout_h=0.2)
NO_RATES = {name: 0.0 for name in RATE_NAMES}

# float64 comparisons: the fused kernels and the reference sum in different orders, nothing more.
ATOL = 1e-10
RTOL = 1e-9



def pytest_report_header(config):
    import rnnfused

    return f"rnnfused {rnnfused.__version__} from {rnnfused.__file__}"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles with inductor (tens of seconds); deselect with -m 'not slow'")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """The devices a test runs on: the CPU always, CUDA where there is one."""
    return torch.device(request.param)


def _random(dtype, device, requires_grad):
    """rand(*shape, s=1.0): a new leaf tensor of N(0, s²) entries."""
    def rand(*shape, s=1.0):
        return (torch.randn(*shape, dtype=dtype, device=device) * s).requires_grad_(requires_grad)

    return rand


def _weight_scale(H):
    """The weights' standard deviation: gates neither saturated nor linear."""
    return 1.0 / max(H, 1) ** 0.5


def make_layer_inputs(T, B, I, H, P=0, dtype=torch.float64, device="cpu", bias=True, requires_grad=True):
    """Random arguments of one LSTM layer: input (T,B,I), h0 (B,R), c0 (B,H), weights and biases.

    R = P when P > 0 (weight_hr is then (P, H)), else H. Weights are scaled so gates are neither
    saturated nor linear."""
    R = P if P > 0 else H
    rand, scale = _random(dtype, device, requires_grad), _weight_scale(H)
    return dict(
        input=rand(T, B, I),
        h0=rand(B, R, s=0.5),
        c0=rand(B, H, s=0.5),
        weight_ih=rand(4 * H, I, s=scale),
        weight_hh=rand(4 * H, R, s=scale),
        bias_ih=rand(4 * H, s=0.3) if bias else None,
        bias_hh=rand(4 * H, s=0.3) if bias else None,
        weight_hr=rand(P, H, s=scale) if P > 0 else None,
    )


def layer_args(inputs):
    """The positional arguments of lstm_layer, in order."""
    return [inputs[k] for k in ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]


def make_gru_inputs(T, B, I, H, dtype=torch.float64, device="cpu", bias=True, requires_grad=True):
    """Random arguments of one GRU layer, in gru_layer's order: input (T,B,I), h0 (B,H), weight_ih (3H,I),
    weight_hh (3H,H), bias_ih and bias_hh (3H) (None without bias)."""
    rand, scale = _random(dtype, device, requires_grad), _weight_scale(H)
    return dict(input=rand(T, B, I), h0=rand(B, H, s=0.5), weight_ih=rand(3 * H, I, s=scale),
                weight_hh=rand(3 * H, H, s=scale), bias_ih=rand(3 * H, s=0.3) if bias else None,
                bias_hh=rand(3 * H, s=0.3) if bias else None)


def gru_layer_args(inputs):
    """The positional arguments of gru_layer, in order."""
    return [inputs[k] for k in ("input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def random_lengths(T, B, generator=None):
    """Mixed lengths in [1, T] with at least one full-length sequence (when B > 1, one length-1 one)."""
    lengths = torch.randint(1, T + 1, (B,), generator=generator, dtype=torch.int64)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1
    return lengths


def weighted_sum(tensors, seed=1234):
    """A scalar loss that gives every element of every tensor its own random weight."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in tensors:
        w = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device, t.dtype)
        total = total + (t * w).sum()
    return total


def grads(loss, tensors):
    """d loss / d tensor for each tensor (None entries stay None)."""
    present = [t for t in tensors if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(loss, present, allow_unused=True))
    return [next(got) if (t is not None and t.requires_grad) else None for t in tensors]


def assert_close(actual, expected, atol=ATOL, rtol=RTOL, what=""):
    if expected is None:
        assert actual is None or not torch.any(actual), what
        return
    assert actual is not None, f"{what}: no gradient"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def in_every_call_mode(test):
    """Parametrizes a layer test over its arguments training (train / eval), reverse (forward /
    reverse) and with_lengths (full / lengths), outermost, after the test's own parameters."""
    for mark in (pytest.mark.parametrize("training", [True, False], ids=["train", "eval"]),
                 pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"]),
                 pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])):
        test = mark(test)
    return test


def check_forward_and_gradients(inputs, fused, expected):
    """A fused layer call's outputs equal the reference's, and so do the gradients of a weighted sum
    of them wrt every argument in `inputs` (the dict the call's arguments came from)."""
    for name, a, b in zip(["output", "h_n", "c_n"], fused, expected):
        assert torch.isfinite(a).all(), name
        assert_close(a, b, what=name)
    params = list(inputs.values())
    got = grads(weighted_sum(fused), params)
    want = grads(weighted_sum(expected), params)
    for name, a, b in zip(inputs, got, want):
        if inputs[name] is not None:
            assert_close(a, b, what=f"grad {name}")


class OpCalls(TorchDispatchMode):
    """Records the name and arguments of every rnnfused op call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "rnnfused":
            self.calls.append((func.__name__, args))
        return func(*args, **(kwargs or {}))


def module_layer_weights(model, layer, direction):
    """The weights of (layer, direction) of an nn.LSTM-shaped module, in lstm_layer's order."""
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def get(name):
        return getattr(model, name + sfx, None)

    return [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")]


def reference_stack(model, x, hx, seed, rates, lengths=None, training=True):
    """The reference's output for a whole (time-major, batched) stack of an rnnfused.LSTM or
    rnnfused.GRU with between-layer dropout 0.

    hx: (h0, c0) for an LSTM, h0 for a GRU. rates: {name: float or one value per layer}, in the layer
    functions' names (a GRU ignores zoneout_c). Layer k, direction d replays lstm_masks / gru_masks(seed,
    ..., layer=k, reverse=(d == 1)). Returns (output, (h_n, c_n)) like nn.LSTM, (output, h_n) like nn.GRU."""
    from rnnfused import functional

    gru = model.mode == "GRU"
    if gru:
        masks_of, layer_fn, names, states, mask_kw = functional.gru_masks, reference.gru_layer, GRU_RATE_NAMES, [hx], {}
    else:
        masks_of, layer_fn, names, states, mask_kw = (functional.lstm_masks, reference.lstm_layer, RATE_NAMES,
                                                      list(hx), dict(proj_size=model.proj_size))
    T, B, _ = x.shape
    D = 2 if model.bidirectional else 1
    H, R = model.hidden_size, model.proj_size or model.hidden_size
    layer_input = x
    finals = []
    for k in range(model.num_layers):
        rates_k = {name: value for name, value in layer_rates(rates, k).items() if name in names}
        outs = []
        for d in range(D):
            masks = None
            if training:
                masks = masks_of(seed, T, B, layer_input.shape[2], H, layer=k, reverse=(d == 1), dtype=x.dtype,
                                 device=x.device, **mask_kw, **rates_k)
            weights = module_layer_weights(model, k, d)[:4 if gru else 5]
            out, *final = layer_fn(layer_input, *[s[k * D + d] for s in states], *weights, masks=masks,
                                   training=training, reverse=(d == 1), lengths=lengths, **rates_k)
            outs.append(out)
            finals.append(final)
        layer_input = torch.cat(outs, dim=2)
        assert layer_input.shape[2] == D * R
    finals = [torch.stack(f) for f in zip(*finals)]
    return layer_input, (finals[0] if gru else tuple(finals))


def layer_rates(rates, k):
    """The six rates of layer k, from {name: float for all layers, or a sequence with one per layer}."""
    out = dict(NO_RATES)
    for name, value in rates.items():
        out[name] = float(value[k] if isinstance(value, (list, tuple)) else value)
    return out


# One setting per regularizer alone, none, and all at once; tests parametrize over these.
REGULARIZERS = {
    "none": NO_RATES,
    "all": ALL_RATES,
    "input_dropout": dict(NO_RATES, input_dropout=0.4),
    "recurrent_dropout": dict(NO_RATES, recurrent_dropout=0.4),
    "weight_drop": dict(NO_RATES, weight_drop=0.5),
    "candidate_dropout": dict(NO_RATES, candidate_dropout=0.3),
    "zoneout_c": dict(NO_RATES, zoneout_c=0.3),
    "zoneout_h": dict(NO_RATES, zoneout_h=0.3),
}

# The GRU's rates: the LSTM's without zoneout_c (no cell state), and its settings of REGULARIZERS.
GRU_RATE_NAMES = ("input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout", "zoneout_h")
GRU_ALL_RATES = {name: ALL_RATES[name] for name in GRU_RATE_NAMES}
GRU_NO_RATES = {name: 0.0 for name in GRU_RATE_NAMES}
GRU_REGULARIZERS = {setting: {name: rates[name] for name in GRU_RATE_NAMES}
                    for setting, rates in REGULARIZERS.items() if setting != "zoneout_c"}


class Cell(NamedTuple):
    """What a layer-level test needs of one cell, so that a promise both cells make is one test run for both."""
    layer: Callable          # rnnfused.functional.lstm_layer / gru_layer
    masks: Callable          # rnnfused.functional.lstm_masks / gru_masks
    reference: Callable      # rnnfused.reference.lstm_layer / gru_layer
    make_inputs: Callable    # make_layer_inputs / make_gru_inputs
    args_of: Callable        # layer_args / gru_layer_args
    gates: int
    rate_names: tuple
    all_rates: dict
    no_rates: dict
    states: tuple            # the initial states' names in `inputs`

    def fused(self, inputs, **kw):
        """The fused layer on the arguments in `inputs` (a dict from make_inputs)."""
        return self.layer(*self.args_of(inputs), **kw)

    def replay(self, inputs, seed, *, layer=0, reverse=False, training=True, lengths=None, **rates):
        """The reference's replay of fused(inputs, seed=seed, ...): with the masks of the seed in training."""
        x = inputs["input"]
        T, B, I = x.shape
        H = inputs["weight_ih"].shape[0] // self.gates
        masks = None
        if training:
            proj = inputs.get("weight_hr")
            extra = {} if proj is None else dict(proj_size=proj.shape[0])
            masks = self.masks(seed, T, B, I, H, layer=layer, reverse=reverse, dtype=x.dtype, device=x.device,
                               **extra, **rates)
        return self.reference(*self.args_of(inputs), masks=masks, training=training, reverse=reverse, lengths=lengths,
                              **rates)


CELLS = {
    "LSTM": Cell(functional.lstm_layer, functional.lstm_masks, reference.lstm_layer, make_layer_inputs, layer_args, 4,
                 RATE_NAMES, ALL_RATES, NO_RATES, ("h0", "c0")),
    "GRU": Cell(functional.gru_layer, functional.gru_masks, reference.gru_layer, make_gru_inputs, gru_layer_args, 3,
                GRU_RATE_NAMES, GRU_ALL_RATES, GRU_NO_RATES, ("h0",)),
}


# --- the modules: rnnfused.LSTM and rnnfused.GRU beside torch.nn.LSTM and torch.nn.GRU ---------------------
# test_module.py and test_gru_module.py state the same promises for both; the checks live here once.

# torch's constructor arguments that both modules share (proj_size is 0 for every GRU).
MODULE_CONFIG = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size")


def module_rates(mode, rates):
    """Rates in the layer functions' names as `rnnfused.<mode>`'s keywords: the GRU's zoneout_h is `zoneout`."""
    if mode == "GRU":
        return {("zoneout" if name == "zoneout_h" else name): value for name, value in rates.items()}
    return dict(rates)


def twin_modules(mode, input_size, hidden_size, rates=None, seed=0, dtype=torch.float64, **config):
    """torch.nn.<mode> and rnnfused.<mode> with the same configuration and weights; only ours gets the
    rates (given in the layer functions' names)."""
    torch.manual_seed(seed)
    theirs = getattr(nn, mode)(input_size, hidden_size, dtype=dtype, **config)
    ours = getattr(rnnfused, mode)(input_size, hidden_size, dtype=dtype, **config,
                                   **module_rates(mode, rates or {}))
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def random_input_and_state(model, batch_first=False, batch=3, steps=6):
    """x (time-major, or batch-first) and hx for `model`: (h0, c0) for an LSTM, h0 for a GRU; float64,
    requiring grad."""
    D = 2 if model.bidirectional else 1
    R = model.proj_size or model.hidden_size
    dims = (batch, steps) if batch_first else (steps, batch)
    x = torch.randn(*dims, model.input_size, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(D * model.num_layers, batch, R, dtype=torch.float64, requires_grad=True)
    if model.mode == "GRU":
        return x, h0
    c0 = torch.randn(D * model.num_layers, batch, model.hidden_size, dtype=torch.float64, requires_grad=True)
    return x, (h0, c0)


def hx_tensors(hx):
    """A state as a list: [] for None, [h] for a GRU's tensor, [h, c] for an LSTM's pair."""
    if hx is None:
        return []
    return [hx] if isinstance(hx, torch.Tensor) else list(hx)


def output_tensors(result):
    """(output, h_n) or (output, (h_n, c_n)) as one flat list."""
    output, state = result
    return [output] + hx_tensors(state)


def _inputs_and_parameters(model, x, hx):
    return [x] + hx_tensors(hx) + [p for _, p in sorted(model.named_parameters())]


def outputs_and_gradients(model, x, hx):
    """The model's outputs and the gradients of a weighted sum of them wrt x, hx and every parameter."""
    outs = output_tensors(model(x, hx))
    return outs, grads(weighted_sum(outs), _inputs_and_parameters(model, x, hx))


def packed_outputs_and_gradients(model, x, hx, lengths, enforce_sorted=False):
    """As outputs_and_gradients, with x packed by `lengths`; the packed output comes back padded to x's length."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    out, state = model(pack_padded_sequence(x, lengths, batch_first=model.batch_first,
                                            enforce_sorted=enforce_sorted), hx)
    assert isinstance(out, PackedSequence)
    padded, out_lengths = pad_packed_sequence(out, batch_first=model.batch_first,
                                              total_length=x.shape[1 if model.batch_first else 0])
    assert torch.equal(out_lengths, torch.as_tensor(lengths))
    outs = [padded] + hx_tensors(state)
    return outs, grads(weighted_sum(outs), _inputs_and_parameters(model, x, hx))


def assert_all_close(got, want, what):
    assert len(got) == len(want), what
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, what=f"{what}[{k}]")


def assert_computes_what_torch_does(theirs, ours, x, hx, training=True):
    """Outputs, final states and every gradient (x, hx, parameters) of ours equal theirs."""
    theirs.train(training)
    ours.train(training)
    want_out, want_grads = outputs_and_gradients(theirs, x, hx)
    got_out, got_grads = outputs_and_gradients(ours, x, hx)
    assert_all_close(got_out, want_out, "output and final states")
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")


def replay(model, x, hx, rates, lengths=None, s=31):
    """The model's outputs and gradients after torch.manual_seed(s), and the reference's replay of the same call
    (in training mode: with the masks of the seed the model draws). x is batch-first when the model is; with
    lengths the model gets x packed and the reference gets the lengths."""
    from rnnfused.functional import draw_seed

    torch.manual_seed(s)
    seed = draw_seed(device=x.device)  # the generator of x's device, as the model's call
    torch.manual_seed(s)
    if lengths is None:
        got = outputs_and_gradients(model, x, hx)
    else:
        got = packed_outputs_and_gradients(model, x, hx, lengths)
    xt = x.transpose(0, 1) if model.batch_first else x
    out, state = reference_stack(model, xt, hx, seed, rates, lengths=lengths, training=model.training)
    outs = [out.transpose(0, 1) if model.batch_first else out] + hx_tensors(state)
    return got, (outs, grads(weighted_sum(outs), _inputs_and_parameters(model, x, hx)))


def assert_replays_the_reference(model, x, hx, rates, lengths=None):
    (got_out, got_grads), (want_out, want_grads) = replay(model, x, hx, rates, lengths)
    assert_all_close(got_out, want_out, "output and final states")
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")


def assert_training_is_deterministic_under_manual_seed(model, x, hx):
    """The same torch.manual_seed gives the same outputs and gradients; another seed gives other masks."""
    model.train()
    runs = []
    for s in (5, 5, 6):
        torch.manual_seed(s)
        runs.append(sum(outputs_and_gradients(model, x, hx), []))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.allclose(runs[0][0], runs[2][0])


def assert_eval_is_deterministic_and_draws_no_randomness(model, x, hx):
    model.eval()
    state = torch.get_rng_state()
    a, b = output_tensors(model(x, hx)), output_tensors(model(x, hx))
    assert torch.equal(torch.get_rng_state(), state)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def assert_dropout_between_layers_has_torch_s_meaning(twins):
    """twins(num_layers, dropout) -> (torch's module, ours) with the same weights and no other rates. In
    evaluation dropout is off, as in torch; in training each call drops anew, between layers only."""
    theirs, ours = twins(2, 0.5)
    x, hx = random_input_and_state(ours)
    theirs.eval()
    ours.eval()
    assert_all_close(output_tensors(ours(x, hx)), output_tensors(theirs(x, hx)), "eval output with dropout")
    ours.train()
    dropped = [ours(x, hx)[0] for _ in range(2)]
    assert not torch.allclose(dropped[0], dropped[1])
    ours.dropout = 0.0
    assert not torch.allclose(dropped[0], ours(x, hx)[0])
    with pytest.warns(UserWarning):
        theirs, ours = twins(1, 0.5)
    assert_all_close([ours(x)[0]], [theirs(x)[0]], "one layer with dropout")


def assert_same_state_dict(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k, v in sb.items():
        assert torch.equal(sa[k], v), k


def assert_parameters_and_keys_are_torch_s(theirs, ours):
    assert [(n, p.shape) for n, p in theirs.named_parameters()] == [(n, p.shape) for n, p in ours.named_parameters()]
    assert list(theirs.state_dict()) == list(ours.state_dict())


def assert_initialisation_is_torch_s_uniform(model):
    import math

    bound = 1 / math.sqrt(model.hidden_size)
    for name, p in model.named_parameters():
        assert p.abs().max() <= bound, name
        assert abs(p.std().item() - bound / math.sqrt(3)) < 0.1 * bound, name


def assert_state_dict_loads_both_ways(theirs, ours):
    back = copy.deepcopy(theirs)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    back.load_state_dict(ours.state_dict())
    assert_same_state_dict(back, theirs)
    assert_same_state_dict(ours, theirs)


def assert_converts_both_ways(theirs, ours_class, **rates):
    """ours_class.from_<mode>(theirs, **rates) has theirs' configuration and weights; without rates, it and
    its to_<mode>() compute what theirs does. Returns the converted module with the rates."""
    mode = ours_class.mode.lower()
    from_torch = getattr(ours_class, f"from_{mode}")
    ours = from_torch(theirs, **rates)
    assert type(ours) is ours_class
    for attr in MODULE_CONFIG:
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert_same_state_dict(ours, theirs)
    plain = from_torch(theirs)
    back = getattr(plain, f"to_{mode}")()
    assert type(back) is type(theirs)
    assert_same_state_dict(back, theirs)
    x, hx = random_input_and_state(plain, theirs.batch_first)
    for m in (theirs, plain, back):
        m.eval()
    want = output_tensors(theirs(x, hx))
    for m in (plain, back):
        assert_all_close(output_tensors(m(x, hx)), want, type(m).__name__)
    with pytest.raises(TypeError, match=f"from_{mode}"):
        from_torch(nn.RNN(theirs.input_size, theirs.hidden_size))
    return ours


def assert_deepcopy_is_an_independent_equal_model(model, x, hx):
    twin = copy.deepcopy(model)
    torch.manual_seed(3)
    a = output_tensors(model(x, hx))
    torch.manual_seed(3)
    b = output_tensors(twin(x, hx))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    with torch.no_grad():
        twin.weight_ih_l0.add_(1)
    assert not torch.equal(twin.weight_ih_l0, model.weight_ih_l0)


class Tagger(nn.Module):
    """A whole model holding an rnnfused module, as user code builds and saves it."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear((rnn.proj_size or rnn.hidden_size) * (2 if rnn.bidirectional else 1), 2,
                              dtype=rnn.weight_ih_l0.dtype)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def assert_torch_save_and_load_round_trip_a_whole_model(rnn, x, path):
    """torch.save of a Tagger holding `rnn`, then torch.load with weights_only=True: the user allowlists their
    own classes only; the rnnfused module registers itself."""
    model = Tagger(rnn).eval()
    torch.save(model, path)
    with torch.serialization.safe_globals([Tagger, nn.Linear]):
        loaded = torch.load(path, weights_only=True)
    assert type(loaded.rnn) is type(rnn)
    assert torch.equal(loaded(x), model(x))
    assert repr(loaded) == repr(model)


def assert_works_under_cpu_autocast(model, x):
    """Under CPU autocast to bfloat16 a float32 model runs, differentiates, and stays close to float32."""
    model.train()
    torch.manual_seed(1)
    want = model(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        got = model(x)[0]
    got.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)
