"""SPEC §2c, §3, §5, §6 for the layer-normalized LSTM: `rnnfused.functional.lstm_layer` given the four LN
parameters computes the reference's LN-LSTM cell (`rnnfused.reference.lstm_layer` with the same parameters),
up to rounding, with the masks `lstm_masks` materializes for its seed — forward and every gradient, the four
LN parameters' included; its op `torch.ops.rnnfused.ln_lstm_forward` passes `torch.library.opcheck`; its
arguments are checked.

Every tensor is drawn with torch.randn, the LN gains and shift too (never ones and zeros)."""

import gc
import zlib

import pytest
import torch

from conftest import ALL_RATES, NO_RATES, REGULARIZERS, RATE_NAMES, OpCalls, assert_close, \
    check_forward_and_gradients, in_every_call_mode, layer_args, make_layer_inputs, random_lengths, \
    weighted_sum
from rnnfused import functional as F
from rnnfused import reference

SEED = 20240611
LN_NAMES = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")
EXCEPTIONS = (ValueError, TypeError, RuntimeError)

# (T, B, I, H, P): odd sizes, and the degenerate ones T = 1, B = 1, H = 1, I = 1; two with a projection.
SIZES = [(5, 3, 4, 6, 0), (1, 2, 3, 4, 0), (4, 1, 2, 3, 0), (3, 2, 2, 1, 0), (6, 4, 5, 7, 3), (4, 3, 1, 5, 1)]


def make_ln_inputs(T, B, I, H, P=0, dtype=torch.float64, device="cpu", bias=True, requires_grad=True):
    """make_layer_inputs' arguments plus random LN parameters: gains (4H), (4H), (H) and shift (H)."""
    inputs = make_layer_inputs(T, B, I, H, P, dtype=dtype, device=device, bias=bias, requires_grad=requires_grad)
    for name, size in zip(LN_NAMES, (4 * H, 4 * H, H, H)):
        inputs[name] = torch.randn(size, dtype=dtype, device=device).requires_grad_(requires_grad)
    return inputs


def ln_kwargs(inputs):
    return {name: inputs[name] for name in LN_NAMES}


def fused_ln(inputs, seed=SEED, **kw):
    """F.lstm_layer with the LN parameters in `inputs`."""
    return F.lstm_layer(*layer_args(inputs), seed=seed, **ln_kwargs(inputs), **kw)


def reference_ln(inputs, rates, seed=SEED, *, training=True, layer=0, reverse=False, lengths=None):
    """The reference's replay of fused_ln(inputs, seed=seed, ...): with lstm_masks(seed, ...) in training."""
    x = inputs["input"]
    T, B, I = x.shape
    H = inputs["c0"].shape[1]
    P = inputs["weight_hr"].shape[0] if inputs["weight_hr"] is not None else 0
    masks = None
    if training:
        masks = F.lstm_masks(seed, T, B, I, H, proj_size=P, layer=layer, reverse=reverse, dtype=x.dtype,
                             device=x.device, **rates)
    return reference.lstm_layer(*layer_args(inputs), masks=masks, training=training, reverse=reverse,
                                lengths=lengths, **rates, **ln_kwargs(inputs))


def assert_fused_replays_reference(inputs, rates, **kw):
    """Forward and every gradient (input, h0, c0, weights, biases, weight_hr, the four LN parameters) of the
    fused call equal the reference's replay of it."""
    fused = fused_ln(inputs, **rates, **kw)
    assert len(fused) == 3
    check_forward_and_gradients(inputs, fused, reference_ln(inputs, rates, **kw))
    return fused


# --- the reference is SPEC §2c's LN-LSTM -------------------------------------------------------------------

def test_reference_is_spec_2c_written_with_f_layer_norm():
    # An independent spelling of SPEC §2c (torch's own layer norm, eps 1e-5, biased variance), so that the
    # oracle the kernels are held to is not merely consistent with them.
    torch.manual_seed(1)
    T, B, I, H, P = 5, 3, 4, 6, 2
    x = make_ln_inputs(T, B, I, H, P, requires_grad=False)
    ln = torch.nn.functional.layer_norm
    h, c, outputs = x["h0"], x["c0"], []
    for t in range(T):
        a = (ln(x["input"][t] @ x["weight_ih"].t(), (4 * H,), x["ln_weight_ih"], eps=1e-5)
             + ln(h @ x["weight_hh"].t(), (4 * H,), x["ln_weight_hh"], eps=1e-5) + x["bias_ih"] + x["bias_hh"])
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        cell = ln(c, (H,), x["ln_weight_c"], x["ln_bias_c"], eps=1e-5)
        h = (torch.sigmoid(o) * torch.tanh(cell)) @ x["weight_hr"].t()
        outputs.append(h)
    got = reference_ln(x, NO_RATES, training=False)
    for a, b in zip(got, (torch.stack(outputs), h, c)):
        assert_close(a, b)


# --- the fused LN-LSTM layer is the reference's, forward and every gradient -------------------------------

@in_every_call_mode
@pytest.mark.parametrize("regularizer", ["none", "all"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
def test_fused_ln_lstm_equals_reference_forward_and_gradients(size, regularizer, training, reverse, with_lengths,
                                                              device):
    T, B, I, H, P = size
    torch.manual_seed(zlib.crc32(repr((size, regularizer, "ln")).encode()))
    inputs = make_ln_inputs(T, B, I, H, P, device=device)
    lengths = random_lengths(T, B) if with_lengths else None   # unsorted, with a full and a length-1 one
    assert_fused_replays_reference(inputs, REGULARIZERS[regularizer], training=training, reverse=reverse,
                                   lengths=lengths)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("regularizer", [r for r in REGULARIZERS if r not in ("none", "all")])
def test_each_regularizer_alone_replays_the_reference(regularizer, training):
    torch.manual_seed(zlib.crc32(regularizer.encode()))
    inputs = make_ln_inputs(5, 3, 4, 6, P=2)
    assert_fused_replays_reference(inputs, REGULARIZERS[regularizer], training=training, reverse=True,
                                   lengths=torch.tensor([3, 5, 1]))


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("layer", [1, 3])
def test_fused_ln_lstm_uses_the_masks_of_its_layer_index(layer, reverse):
    torch.manual_seed(3)
    inputs = make_ln_inputs(4, 3, 3, 4)
    assert_fused_replays_reference(inputs, ALL_RATES, layer=layer, reverse=reverse)
    with torch.no_grad():   # ... and not those of layer 0
        other = reference_ln(inputs, ALL_RATES, layer=0, reverse=reverse)[0]
        assert not torch.allclose(fused_ln(inputs, layer=layer, reverse=reverse, **ALL_RATES)[0], other)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_ln_lstm_without_bias_equals_reference(training):
    torch.manual_seed(4)
    inputs = make_ln_inputs(4, 3, 3, 4, P=2, bias=False)
    assert_fused_replays_reference(inputs, ALL_RATES, training=training, lengths=torch.tensor([4, 2, 3]))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_ln_lstm_output_element_is_written(training):
    # NaN-filled memory is left behind for the allocator to hand out again; every output and gradient
    # element must then be the reference's (padded positions included, where the output is 0).
    torch.manual_seed(5)
    T, B, I, H = 7, 4, 3, 5
    for reverse, P in ((False, 0), (True, 2)):
        junk = [torch.full((T + 1, B, 4 * H), float("nan"), dtype=torch.float64) for _ in range(8)]
        del junk
        gc.collect()
        lengths = random_lengths(T, B)
        fused = assert_fused_replays_reference(make_ln_inputs(T, B, I, H, P), ALL_RATES, training=training,
                                               reverse=reverse, lengths=lengths)
        assert not any(torch.isnan(t).any() for t in fused)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(fused[0][n:, b] == 0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_ln_lstm_gradient_of_the_input_is_zero_at_padded_positions(reverse):
    torch.manual_seed(6)
    inputs = make_ln_inputs(5, 3, 2, 3)
    lengths = torch.tensor([5, 1, 3])
    out = fused_ln(inputs, lengths=lengths, reverse=reverse, **ALL_RATES)
    (g,) = torch.autograd.grad(weighted_sum(out), [inputs["input"]])
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(g[n:, b] == 0)


def test_the_carried_cell_is_not_normalized():
    # c_n is f ⊙ c + i ⊙ g itself; the normalized cell only enters h. A shift of the cell's LN changes h,
    # and changes c_n only through the later steps' h, so with T = 1 not at all.
    torch.manual_seed(7)
    inputs = make_ln_inputs(1, 3, 4, 5, requires_grad=False)
    shifted = dict(inputs, ln_bias_c=inputs["ln_bias_c"] + 1.0)
    (out_a, h_a, c_a), (out_b, h_b, c_b) = fused_ln(inputs), fused_ln(shifted)
    assert torch.equal(c_a, c_b) and not torch.allclose(h_a, h_b)


def test_ln_lstm_at_zero_rates_training_equals_evaluation_and_the_seed_is_ignored_in_evaluation():
    torch.manual_seed(8)
    inputs = make_ln_inputs(5, 3, 4, 4, requires_grad=False)
    plain = fused_ln(inputs, training=True)
    for seed in (1, 2):
        for a, b in zip(plain, fused_ln(inputs, seed=seed, training=False)):
            assert_close(a, b)
    first, second = (fused_ln(inputs, seed=s, training=False, **ALL_RATES) for s in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_ln_lstm_different_seeds_give_different_outputs_in_training():
    torch.manual_seed(9)
    inputs = make_ln_inputs(5, 3, 4, 4, requires_grad=False)
    first, second = (fused_ln(inputs, seed=s, **ALL_RATES)[0] for s in (1, 2))
    assert not torch.allclose(first, second)


def test_ln_lstm_seed_none_draws_one_seed_from_torch_rng():
    torch.manual_seed(10)
    inputs = make_ln_inputs(5, 3, 4, 4, requires_grad=False)
    want = fused_ln(inputs, seed=F.draw_seed(generator=torch.Generator().manual_seed(77)), **ALL_RATES)
    got = fused_ln(inputs, seed=None, generator=torch.Generator().manual_seed(77), **ALL_RATES)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_ln_lstm_inference_without_grad_gives_the_same_output_and_keeps_no_workspace():
    torch.manual_seed(11)
    inputs = make_ln_inputs(5, 3, 4, 4)
    calls = {}
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled), OpCalls() as mode:
            calls[grad_enabled] = fused_ln(inputs, **ALL_RATES)
        ((name, args),) = mode.calls
        assert name.startswith("ln_lstm_forward")
        assert args[-1] is grad_enabled, "need_workspace"
    for a, b in zip(calls[True], calls[False]):
        assert torch.equal(a.detach(), b)
        assert not b.requires_grad


def test_ln_lstm_non_contiguous_arguments_are_handled():
    torch.manual_seed(12)
    inputs = make_ln_inputs(5, 3, 4, 4, requires_grad=False)
    strided = dict(inputs, input=inputs["input"].transpose(0, 1).contiguous().transpose(0, 1),
                   weight_hh=inputs["weight_hh"].t().contiguous().t(),
                   ln_weight_ih=torch.stack([inputs["ln_weight_ih"]] * 2, 1)[:, 1],
                   ln_bias_c=torch.stack([inputs["ln_bias_c"]] * 2, 1)[:, 0])
    assert not any(strided[k].is_contiguous() for k in ("input", "weight_hh", "ln_weight_ih", "ln_bias_c"))
    for a, b in zip(fused_ln(strided, **ALL_RATES), fused_ln(inputs, **ALL_RATES)):
        assert_close(a, b)


def test_ln_lstm_float32_agrees_with_the_float64_reference():
    torch.manual_seed(13)
    inputs = make_ln_inputs(8, 4, 6, 8, requires_grad=False)
    single = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    for a, b in zip(fused_ln(single, **ALL_RATES), reference_ln(inputs, ALL_RATES)):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def test_ln_lstm_double_backward_is_a_clear_error():
    torch.manual_seed(14)
    inputs = make_ln_inputs(3, 2, 2, 3)
    out = fused_ln(inputs, **ALL_RATES)
    (g,) = torch.autograd.grad(weighted_sum(out), [inputs["weight_hh"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# --- gradcheck: float64, tiny sizes, every regularizer on, a fixed seed -----------------------------------

def gradcheck_ln(inputs, **kw):
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        return fused_ln(dict(inputs, **dict(zip(names, tensors))), seed=987654321, **kw)

    return torch.autograd.gradcheck(f, tuple(inputs[k] for k in names), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_with_every_regularizer_on(training, reverse):
    torch.manual_seed(15)
    assert gradcheck_ln(make_ln_inputs(4, 3, 2, 3), training=training, reverse=reverse, layer=1,
                        lengths=torch.tensor([4, 2, 3]), **ALL_RATES)


def test_gradcheck_with_projection_and_every_regularizer_on():
    torch.manual_seed(16)
    assert gradcheck_ln(make_ln_inputs(3, 2, 2, 3, P=2), reverse=True, lengths=torch.tensor([3, 1]), **ALL_RATES)


def test_gradcheck_with_hidden_size_1_and_without_bias():
    # H = 1: LN(c̃) is 0 whatever c̃ is, so only ln_bias_c reaches h through the cell.
    torch.manual_seed(17)
    assert gradcheck_ln(make_ln_inputs(3, 2, 2, 1, bias=False), **ALL_RATES)


# --- opcheck: the op's schema, fake implementation and autograd registration -----------------------------

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")

# name -> (T, B, I, H, P, bias, lengths, training, rates, requires_grad)
SAMPLES = {
    "plain": (4, 3, 2, 5, 0, True, None, True, NO_RATES, True),
    "regularized": (4, 3, 2, 5, 0, True, None, True, ALL_RATES, True),
    "eval_zoneout": (4, 3, 2, 5, 0, True, None, False, ALL_RATES, True),
    "lengths_reverse": (5, 3, 2, 4, 0, False, [5, 2, 3], True, ALL_RATES, True),
    "projection": (4, 2, 3, 5, 2, True, [4, 1], True, ALL_RATES, True),
    "inference": (4, 3, 2, 5, 0, True, None, True, ALL_RATES, False),
}


def ln_forward_args(name):
    """The arguments of torch.ops.rnnfused.ln_lstm_forward for the sample `name`."""
    T, B, I, H, P, bias, lengths, training, rates, requires_grad = SAMPLES[name]
    torch.manual_seed(len(name))
    x = make_ln_inputs(T, B, I, H, P, bias=bias, requires_grad=requires_grad)
    return (*layer_args(x), *ln_kwargs(x).values(), None if lengths is None else torch.tensor(lengths),
            torch.tensor(1234), 1, name == "lengths_reverse", training, [float(rates[n]) for n in RATE_NAMES],
            requires_grad)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_opcheck_passes_on_ln_lstm_forward(name):
    torch.library.opcheck(torch.ops.rnnfused.ln_lstm_forward.default, ln_forward_args(name),
                          test_utils=OPCHECK_TESTS)


@pytest.mark.parametrize("name", ["regularized", "lengths_reverse", "projection"])
def test_opcheck_passes_on_ln_lstm_backward(name):
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in ln_forward_args(name))
    output, h_n, c_n, *workspace = torch.ops.rnnfused.ln_lstm_forward(*args)
    (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, *ln, lengths, seed, layer, reverse,
     training, rates, _) = args
    backward_args = (torch.randn_like(output), torch.randn_like(h_n), torch.randn_like(c_n), input, weight_ih,
                     weight_hh, weight_hr, *ln, lengths, seed, layer, reverse, training, rates, *workspace,
                     bias_ih is not None)
    torch.library.opcheck(torch.ops.rnnfused.ln_lstm_backward.default, backward_args, test_utils=OPCHECK_TESTS)


# --- SPEC §6: bad LN arguments are exceptions naming the argument -----------------------------------------

@pytest.mark.parametrize("given", [("ln_weight_ih",), ("ln_weight_ih", "ln_weight_hh", "ln_weight_c"),
                                   ("ln_bias_c",)], ids=["one", "three", "shift_only"])
@pytest.mark.parametrize("fn", ["fused", "reference"])
def test_ln_parameters_given_partly_are_a_value_error_naming_the_missing_ones(given, fn):
    inputs = make_ln_inputs(3, 2, 2, 3, requires_grad=False)
    kw = {name: inputs[name] for name in given}
    missing = [name for name in LN_NAMES if name not in given]
    layer = F.lstm_layer if fn == "fused" else reference.lstm_layer
    with pytest.raises(ValueError, match=missing[0]):
        layer(*layer_args(inputs), training=False, **kw)


@pytest.mark.parametrize("name,shape", [("ln_weight_c", (4,)), ("ln_weight_c", (3, 1)), ("ln_weight_ih", (3,)),
                                        ("ln_weight_hh", (13,)), ("ln_bias_c", (12,))])
@pytest.mark.parametrize("fn", ["fused", "reference"])
def test_ln_parameter_of_the_wrong_shape_is_an_error_naming_it(name, shape, fn):
    inputs = make_ln_inputs(3, 2, 2, 3, requires_grad=False)
    inputs[name] = torch.randn(shape, dtype=torch.float64)
    layer = F.lstm_layer if fn == "fused" else reference.lstm_layer
    with pytest.raises(EXCEPTIONS, match=name):
        layer(*layer_args(inputs), training=False, **ln_kwargs(inputs))


@pytest.mark.parametrize("name", LN_NAMES)
@pytest.mark.parametrize("what", ["dtype", "device"])
def test_ln_parameter_of_another_dtype_or_device_is_an_error_naming_it(name, what):
    inputs = make_ln_inputs(3, 2, 2, 3, requires_grad=False)
    inputs[name] = inputs[name].float() if what == "dtype" else inputs[name].to("meta")
    with pytest.raises(EXCEPTIONS, match=name):
        fused_ln(inputs)


def test_ln_parameter_that_is_not_a_tensor_is_a_type_error_naming_it():
    inputs = make_ln_inputs(3, 2, 2, 3, requires_grad=False)
    inputs["ln_weight_hh"] = [1.0] * 12
    with pytest.raises(TypeError, match="ln_weight_hh"):
        fused_ln(inputs)
