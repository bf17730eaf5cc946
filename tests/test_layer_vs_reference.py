"""SPEC §2-§3, §5: the fused layer computes the reference's cell, bit for bit up to rounding, with the
masks `lstm_masks` materializes for its seed — forward and every gradient."""

import gc
import zlib

import pytest
import torch

from conftest import ALL_RATES, REGULARIZERS, OpCalls, assert_close, check_forward_and_gradients, grads, \
    in_every_call_mode, layer_args, make_layer_inputs, random_lengths, weighted_sum
from rnnfused import functional as F
from rnnfused import reference

SEED = 20240611

# (T, B, I, H, P): odd sizes, and the degenerate ones B = 1, H = 1, T = 1.
SIZES = [(5, 3, 4, 6, 0), (1, 2, 3, 4, 0), (4, 1, 2, 3, 0), (3, 2, 2, 1, 0), (6, 4, 5, 7, 3), (4, 3, 1, 5, 1)]



def fused_and_reference(inputs, rates, *, training=True, reverse=False, lengths=None, seed=SEED, layer=0):
    """Runs both paths on the same arguments; returns their outputs (output, h_n, c_n)."""
    T, B, I = inputs["input"].shape
    H = inputs["c0"].shape[1]
    P = inputs["weight_hr"].shape[0] if inputs["weight_hr"] is not None else 0
    fused = F.lstm_layer(*layer_args(inputs), seed=seed, training=training, layer=layer, reverse=reverse,
                         lengths=lengths, **rates)
    masks = F.lstm_masks(seed, T, B, I, H, proj_size=P, layer=layer, reverse=reverse, dtype=inputs["input"].dtype,
                         **rates) if training else None
    expected = reference.lstm_layer(*layer_args(inputs), masks=masks, training=training, reverse=reverse,
                                    lengths=lengths, **rates)
    return fused, expected


@in_every_call_mode
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
def test_fused_layer_equals_reference_forward_and_gradients(size, regularizer, training, reverse, with_lengths,
                                                           device):
    T, B, I, H, P = size
    torch.manual_seed(zlib.crc32(repr((size, regularizer)).encode()))
    inputs = make_layer_inputs(T, B, I, H, P, device=device)
    lengths = random_lengths(T, B) if with_lengths else None
    fused, expected = fused_and_reference(inputs, REGULARIZERS[regularizer], training=training, reverse=reverse,
                                          lengths=lengths)
    check_forward_and_gradients(inputs, fused, expected)


@pytest.mark.parametrize("layer", [1, 3])
def test_fused_layer_uses_the_masks_of_its_layer_index(layer):
    torch.manual_seed(3)
    inputs = make_layer_inputs(4, 3, 3, 4)
    fused, expected = fused_and_reference(inputs, ALL_RATES, layer=layer, reverse=True)
    check_forward_and_gradients(inputs, fused, expected)


def test_fused_layer_without_bias_equals_reference():
    torch.manual_seed(4)
    inputs = make_layer_inputs(4, 3, 3, 4, bias=False)
    fused, expected = fused_and_reference(inputs, ALL_RATES, lengths=torch.tensor([4, 2, 3]))
    check_forward_and_gradients(inputs, fused, expected)


@pytest.mark.parametrize("training", [True, False])
def test_every_output_element_is_written(training):
    # Leave NaN-filled memory behind for the allocator to hand out again, then check that every
    # output and gradient element is the reference's (padded positions included, where it is 0).
    torch.manual_seed(5)
    T, B, I, H = 7, 4, 3, 5
    for _ in range(3):
        junk = [torch.full((T + 1, B, 4 * H), float("nan"), dtype=torch.float64) for _ in range(8)]
        del junk
        gc.collect()
        inputs = make_layer_inputs(T, B, I, H)
        lengths = random_lengths(T, B)
        fused, expected = fused_and_reference(inputs, ALL_RATES, training=training, lengths=lengths)
        for a in fused:
            assert not torch.isnan(a).any()
        check_forward_and_gradients(inputs, fused, expected)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(fused[0][n:, b] == 0)


def test_gradient_of_the_input_is_zero_at_padded_positions():
    torch.manual_seed(6)
    inputs = make_layer_inputs(5, 3, 2, 3)
    lengths = torch.tensor([5, 1, 3])
    out, h, c = F.lstm_layer(*layer_args(inputs), seed=SEED, lengths=lengths, **ALL_RATES)
    (g,) = torch.autograd.grad(weighted_sum([out, h, c]), [inputs["input"]])
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(g[n:, b] == 0)


def test_all_zero_rates_in_training_equal_evaluation():
    torch.manual_seed(7)
    inputs = make_layer_inputs(5, 3, 4, 4)
    train = F.lstm_layer(*layer_args(inputs), seed=SEED, training=True)
    evaluation = F.lstm_layer(*layer_args(inputs), training=False)
    for a, b in zip(train, evaluation):
        assert_close(a, b)


def test_evaluation_ignores_the_seed():
    torch.manual_seed(8)
    inputs = make_layer_inputs(5, 3, 4, 4)
    a = F.lstm_layer(*layer_args(inputs), seed=1, training=False, **ALL_RATES)
    b = F.lstm_layer(*layer_args(inputs), seed=2, training=False, **ALL_RATES)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_different_seeds_give_different_outputs_in_training():
    torch.manual_seed(9)
    inputs = make_layer_inputs(5, 3, 4, 4)
    a = F.lstm_layer(*layer_args(inputs), seed=1, **ALL_RATES)[0]
    b = F.lstm_layer(*layer_args(inputs), seed=2, **ALL_RATES)[0]
    assert not torch.allclose(a, b)


def test_seed_none_draws_one_seed_from_torch_rng():
    torch.manual_seed(10)
    inputs = make_layer_inputs(5, 3, 4, 4)
    torch.manual_seed(123)
    seed = F.draw_seed()
    want = F.lstm_layer(*layer_args(inputs), seed=seed, **ALL_RATES)
    torch.manual_seed(123)
    got = F.lstm_layer(*layer_args(inputs), **ALL_RATES)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_seed_none_uses_the_generator_passed_in():
    torch.manual_seed(11)
    inputs = make_layer_inputs(5, 3, 4, 4)
    seed = F.draw_seed(generator=torch.Generator().manual_seed(77))
    want = F.lstm_layer(*layer_args(inputs), seed=seed, **ALL_RATES)
    got = F.lstm_layer(*layer_args(inputs), generator=torch.Generator().manual_seed(77), **ALL_RATES)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_same_seed_gives_identical_results_and_gradients():
    torch.manual_seed(12)
    inputs = make_layer_inputs(6, 3, 4, 5, 2)
    rates = dict(ALL_RATES, zoneout_h=0.0)
    runs = []
    for _ in range(2):
        out = F.lstm_layer(*layer_args(inputs), seed=SEED, **rates)
        runs.append(list(out) + grads(weighted_sum(out), list(inputs.values())))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_non_contiguous_arguments_are_handled():
    torch.manual_seed(13)
    T, B, I, H = 5, 3, 4, 4
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    strided = dict(inputs)
    strided["input"] = inputs["input"].transpose(0, 1).contiguous().transpose(0, 1)
    strided["weight_ih"] = inputs["weight_ih"].t().contiguous().t()
    strided["h0"] = torch.stack([inputs["h0"], inputs["h0"]], 2)[:, :, 0]
    assert not strided["input"].is_contiguous() and not strided["weight_ih"].is_contiguous()
    assert not strided["h0"].is_contiguous()
    a = F.lstm_layer(*layer_args(strided), seed=SEED, **ALL_RATES)
    b = F.lstm_layer(*layer_args(inputs), seed=SEED, **ALL_RATES)
    for x, y in zip(a, b):
        assert_close(x, y)


def test_arguments_are_not_modified():
    torch.manual_seed(14)
    inputs = make_layer_inputs(5, 3, 4, 4, 2)
    before = {k: v.detach().clone() for k, v in inputs.items()}
    out = F.lstm_layer(*layer_args(inputs), seed=SEED, **dict(ALL_RATES, zoneout_h=0.0))
    weighted_sum(out).backward()
    for k, v in inputs.items():
        assert torch.equal(v.detach(), before[k]), k


def test_inference_without_grad_gives_the_same_output():
    torch.manual_seed(15)
    inputs = make_layer_inputs(5, 3, 4, 4)
    with_grad = F.lstm_layer(*layer_args(inputs), seed=SEED, **ALL_RATES)
    with torch.no_grad():
        without = F.lstm_layer(*layer_args(inputs), seed=SEED, **ALL_RATES)
    for a, b in zip(with_grad, without):
        assert torch.equal(a.detach(), b)
        assert not b.requires_grad


def test_forward_keeps_a_workspace_only_when_a_gradient_is_needed():
    torch.manual_seed(17)
    inputs = make_layer_inputs(5, 3, 4, 4)
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled), OpCalls() as mode:
            F.lstm_layer(*layer_args(inputs), seed=SEED, **ALL_RATES)
        ((name, args),) = mode.calls
        assert name.startswith("lstm_forward")
        assert args[-1] is grad_enabled, "need_workspace"


def test_float32_agrees_with_the_float64_reference():
    torch.manual_seed(16)
    inputs = make_layer_inputs(8, 4, 6, 8, dtype=torch.float64, requires_grad=False)
    single = {k: v.float() for k, v in inputs.items() if v is not None}
    single["weight_hr"] = None
    fused = F.lstm_layer(*layer_args(single), seed=SEED, **ALL_RATES)
    _, expected = fused_and_reference(inputs, ALL_RATES)
    for a, b in zip(fused, expected):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
