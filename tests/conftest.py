"""Shared helpers for the test suites: random inputs, gradient collection, stacked replays.

Every input is drawn with torch.randn (never zeros), so a kernel that forgets a term cannot pass by
luck. Sizes are small: the suite runs on two CPU cores in a few minutes.
"""

import pytest
import torch

from rnnfused import reference

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


def make_layer_inputs(T, B, I, H, P=0, dtype=torch.float64, device="cpu", bias=True, requires_grad=True):
    """Random arguments of one LSTM layer: input (T,B,I), h0 (B,R), c0 (B,H), weights and biases.

    R = P when P > 0 (weight_hr is then (P, H)), else H. Weights are scaled so gates are neither
    saturated nor linear."""
    R = P if P > 0 else H
    scale = 1.0 / max(H, 1) ** 0.5

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, dtype=dtype, device=device) * s).requires_grad_(requires_grad)

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


def module_layer_weights(model, layer, direction):
    """The weights of (layer, direction) of an nn.LSTM-shaped module, in lstm_layer's order."""
    sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")

    def get(name):
        return getattr(model, name + sfx, None)

    return [get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")]


def reference_stack(model, x, hx, seed, rates, lengths=None, training=True):
    """The reference's output for a whole (time-major, batched) stack with between-layer dropout 0.

    rates: {name: float or one value per layer}. Layer k, direction d replays
    lstm_masks(seed, ..., layer=k, reverse=(d == 1)). Returns (output, (h_n, c_n)) like nn.LSTM."""
    from rnnfused.functional import lstm_masks

    T, B, _ = x.shape
    D = 2 if model.bidirectional else 1
    H, P = model.hidden_size, model.proj_size
    R = P if P > 0 else H
    h0, c0 = hx
    layer_input = x
    h_n, c_n = [], []
    for k in range(model.num_layers):
        rates_k = layer_rates(rates, k)
        outs = []
        for d in range(D):
            masks = None
            if training:
                masks = lstm_masks(seed, T, B, layer_input.shape[2], H, proj_size=P, layer=k, reverse=(d == 1),
                                   dtype=x.dtype, device=x.device, **rates_k)
            out, h, c = reference.lstm_layer(layer_input, h0[k * D + d], c0[k * D + d],
                                             *module_layer_weights(model, k, d),
                                             masks=masks, training=training, reverse=(d == 1), lengths=lengths,
                                             **rates_k)
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = torch.cat(outs, dim=2)
        assert layer_input.shape[2] == D * R
    return layer_input, (torch.stack(h_n), torch.stack(c_n))


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
