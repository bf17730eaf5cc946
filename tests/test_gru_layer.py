"""SPEC §2b, §3, §5 for the GRU: the fused layer `rnnfused.functional.gru_layer` computes the
reference's cell (`rnnfused.reference.gru_layer`), bit for bit up to rounding, with the masks
`gru_masks` materializes for its seed — forward and every gradient."""

import gc
import zlib

import pytest
import torch

from conftest import CELLS, GRU_ALL_RATES, GRU_REGULARIZERS, OpCalls, assert_close, check_forward_and_gradients, grads, \
    gru_layer_args, in_every_call_mode, make_gru_inputs, random_lengths, weighted_sum
from rnnfused import functional as F

SEED = 20240611

# (T, B, I, H): odd sizes, and the degenerate ones T = 1, B = 1, H = 1, I = 1.
SIZES = [(5, 3, 4, 6), (1, 2, 3, 4), (4, 1, 2, 3), (3, 2, 2, 1), (6, 4, 5, 7), (4, 3, 1, 5)]
GRU = CELLS["GRU"]


def fused_gru(inputs, **kw):
    """F.gru_layer on the arguments in `inputs` (seed=SEED unless given)."""
    return GRU.fused(inputs, **{"seed": SEED, **kw})


def reference_gru(inputs, rates, seed=SEED, **kw):
    """The reference's replay of fused_gru(inputs, seed=seed, **rates, **kw): with gru_masks(seed, ...) in training."""
    return GRU.replay(inputs, seed, **kw, **rates)


def assert_fused_replays_reference(inputs, rates, **kw):
    """Forward and every gradient of the fused call equal the reference's replay of it."""
    fused = fused_gru(inputs, **rates, **kw)
    assert len(fused) == 2
    check_forward_and_gradients(inputs, fused, reference_gru(inputs, rates, **kw))
    return fused


@in_every_call_mode
@pytest.mark.parametrize("regularizer", list(GRU_REGULARIZERS))
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_fused_gru_equals_reference_forward_and_gradients(size, regularizer, training, reverse, with_lengths,
                                                          device):
    T, B, I, H = size
    torch.manual_seed(zlib.crc32(repr((size, regularizer, "gru")).encode()))
    inputs = make_gru_inputs(T, B, I, H, device=device)
    lengths = random_lengths(T, B) if with_lengths else None
    assert_fused_replays_reference(inputs, GRU_REGULARIZERS[regularizer], training=training, reverse=reverse,
                                   lengths=lengths)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("layer", [1, 3])
def test_fused_gru_uses_the_masks_of_its_layer_index(layer, reverse):
    torch.manual_seed(3)
    inputs = make_gru_inputs(4, 3, 3, 4)
    assert_fused_replays_reference(inputs, GRU_ALL_RATES, layer=layer, reverse=reverse)
    # ... and not those of layer 0.
    with torch.no_grad():
        other = reference_gru(inputs, GRU_ALL_RATES, layer=0, reverse=reverse)[0]
        assert not torch.allclose(fused_gru(inputs, layer=layer, reverse=reverse, **GRU_ALL_RATES)[0], other)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_gru_without_bias_equals_reference(training):
    torch.manual_seed(4)
    inputs = make_gru_inputs(4, 3, 3, 4, bias=False)
    assert_fused_replays_reference(inputs, GRU_ALL_RATES, training=training, lengths=torch.tensor([4, 2, 3]))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_gru_output_element_is_written(training):
    # NaN-filled memory is left behind for the allocator to hand out again; every output and
    # gradient element must then be the reference's (padded positions included, where it is 0).
    torch.manual_seed(5)
    T, B, I, H = 7, 4, 3, 5
    for reverse in (False, True):
        junk = [torch.full((T + 1, B, 4 * H), float("nan"), dtype=torch.float64) for _ in range(8)]
        del junk
        gc.collect()
        lengths = random_lengths(T, B)
        fused = assert_fused_replays_reference(make_gru_inputs(T, B, I, H), GRU_ALL_RATES, training=training,
                                               reverse=reverse, lengths=lengths)
        assert not any(torch.isnan(t).any() for t in fused)
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(fused[0][n:, b] == 0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gru_gradient_of_the_input_is_zero_at_padded_positions(reverse):
    torch.manual_seed(6)
    inputs = make_gru_inputs(5, 3, 2, 3)
    lengths = torch.tensor([5, 1, 3])
    out = fused_gru(inputs, lengths=lengths, reverse=reverse, **GRU_ALL_RATES)
    (g,) = torch.autograd.grad(weighted_sum(out), [inputs["input"]])
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(g[n:, b] == 0)


def test_gru_at_zero_rates_training_equals_evaluation_and_the_seed_is_ignored_in_evaluation():
    torch.manual_seed(7)
    inputs = make_gru_inputs(5, 3, 4, 4, requires_grad=False)
    plain = fused_gru(inputs, training=True)
    for seed in (1, 2):
        for a, b in zip(plain, fused_gru(inputs, seed=seed, training=False)):
            assert_close(a, b)
    first, second = (fused_gru(inputs, seed=s, training=False, **GRU_ALL_RATES) for s in (1, 2))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_gru_different_seeds_give_different_outputs_in_training():
    torch.manual_seed(9)
    inputs = make_gru_inputs(5, 3, 4, 4, requires_grad=False)
    first, second = (fused_gru(inputs, seed=s, **GRU_ALL_RATES)[0] for s in (1, 2))
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("source", ["default", "generator"])
def test_gru_seed_none_draws_one_seed_from_torch_rng(source):
    torch.manual_seed(10)
    inputs = make_gru_inputs(5, 3, 4, 4, requires_grad=False)

    def rng():
        return torch.Generator().manual_seed(77) if source == "generator" else torch.manual_seed(123)

    want = fused_gru(inputs, seed=F.draw_seed(generator=rng()), **GRU_ALL_RATES)
    got = F.gru_layer(*gru_layer_args(inputs), generator=rng(), **GRU_ALL_RATES)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_gru_same_seed_gives_identical_results_and_gradients_and_leaves_arguments_alone():
    torch.manual_seed(12)
    inputs = make_gru_inputs(6, 3, 4, 5)
    before = {k: v.detach().clone() for k, v in inputs.items()}
    runs = []
    for _ in range(2):
        out = fused_gru(inputs, **GRU_ALL_RATES)
        runs.append(list(out) + grads(weighted_sum(out), list(inputs.values())))
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert all(torch.equal(v.detach(), before[k]) for k, v in inputs.items())


def test_gru_non_contiguous_arguments_are_handled():
    torch.manual_seed(13)
    inputs = make_gru_inputs(5, 3, 4, 4, requires_grad=False)
    strided = dict(inputs, input=inputs["input"].transpose(0, 1).contiguous().transpose(0, 1),
                   weight_hh=inputs["weight_hh"].t().contiguous().t(),
                   h0=torch.stack([inputs["h0"], inputs["h0"]], 2)[:, :, 0],
                   bias_ih=torch.stack([inputs["bias_ih"], inputs["bias_ih"]], 1)[:, 1])
    assert not any(strided[k].is_contiguous() for k in ("input", "weight_hh", "h0", "bias_ih"))
    for a, b in zip(fused_gru(strided, **GRU_ALL_RATES), fused_gru(inputs, **GRU_ALL_RATES)):
        assert_close(a, b)


def test_gru_inference_without_grad_gives_the_same_output_and_keeps_no_workspace():
    torch.manual_seed(15)
    inputs = make_gru_inputs(5, 3, 4, 4)
    calls = {}
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled), OpCalls() as mode:
            calls[grad_enabled] = fused_gru(inputs, **GRU_ALL_RATES)
        ((name, args),) = mode.calls
        assert name.startswith("gru_forward")
        assert args[-1] is grad_enabled, "need_workspace"
    for a, b in zip(calls[True], calls[False]):
        assert torch.equal(a.detach(), b)
        assert not b.requires_grad


def test_gru_float32_agrees_with_the_float64_reference():
    torch.manual_seed(16)
    inputs = make_gru_inputs(8, 4, 6, 8, requires_grad=False)
    single = {k: v.float() for k, v in inputs.items()}
    fused = fused_gru(single, **GRU_ALL_RATES)
    for a, b in zip(fused, reference_gru(inputs, GRU_ALL_RATES)):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, atol=1e-5, rtol=1e-5)

