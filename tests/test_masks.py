"""SPEC §3: where the randomness comes from. The masks `lstm_masks` materializes, and their statistics."""

import math

import pytest
import torch

from rnnfused.functional import draw_seed, lstm_masks

KEEP_KINDS = {"input": "input_dropout", "recurrent": "recurrent_dropout", "weight": "weight_drop",
              "candidate": "candidate_dropout"}
ZONEOUT_KINDS = {"zoneout_c": "zoneout_c", "zoneout_h": "zoneout_h"}
RATE_OF_KIND = {**KEEP_KINDS, **ZONEOUT_KINDS}
PER_STEP = ("candidate", "zoneout_c", "zoneout_h")
PER_SEQUENCE = ("input", "recurrent")
ALL_ON = dict(input_dropout=0.3, recurrent_dropout=0.4, weight_drop=0.5, candidate_dropout=0.2,
              zoneout_c=0.15, zoneout_h=0.25)
SEED = 0x1234_5678_9ABC


def masks(seed=SEED, T=6, B=5, I=7, H=9, **kw):
    kw = {**ALL_ON, **kw}
    return lstm_masks(seed, T, B, I, H, **kw)


@pytest.mark.parametrize("P", [0, 4])
def test_masks_have_the_documented_shapes_and_are_binary(P):
    T, B, I, H = 6, 5, 7, 9
    R = P if P > 0 else H
    m = masks(T=T, B=B, I=I, H=H, proj_size=P)
    want = dict(input=(B, I), recurrent=(B, R), weight=(4 * H, R), candidate=(T, B, H), zoneout_c=(T, B, H),
                zoneout_h=(T, B, R))
    assert set(m) == set(want)
    for kind, shape in want.items():
        assert tuple(m[kind].shape) == shape, kind
        assert m[kind].dtype == torch.float32, kind
        assert torch.all((m[kind] == 0) | (m[kind] == 1)), kind


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masks_take_the_requested_dtype(dtype):
    m = masks(dtype=dtype)
    assert all(v.dtype == dtype for v in m.values())


def test_a_zero_rate_gives_the_trivial_mask():
    m = lstm_masks(SEED, 6, 5, 7, 9)
    for kind in KEEP_KINDS:
        assert torch.all(m[kind] == 1), kind
    for kind in ZONEOUT_KINDS:
        assert torch.all(m[kind] == 0), kind


def test_masks_are_a_pure_function_of_the_seed():
    a, b = masks(), masks()
    for kind in a:
        assert torch.equal(a[kind], b[kind]), kind


@pytest.mark.parametrize("change", ["seed", "layer", "reverse"])
def test_masks_differ_across_seeds_layers_and_directions(change):
    other = dict(seed=SEED + 1) if change == "seed" else {change: 1 if change == "layer" else True}
    a, b = masks(T=8, B=8, I=16, H=16), masks(T=8, B=8, I=16, H=16, **other)
    for kind in a:
        assert not torch.equal(a[kind], b[kind]), kind


def test_mask_kinds_are_independent_streams():
    # zoneout_c and zoneout_h at the same rate and shape must not share bits.
    m = masks(T=8, B=8, H=16, zoneout_c=0.5, zoneout_h=0.5)
    assert not torch.equal(m["zoneout_c"], m["zoneout_h"])


def test_mask_bits_depend_on_position_not_on_the_call_shape():
    # A pure function of (seed, layer, direction, kind, t, b, j): a bigger call contains the smaller one.
    small = masks(T=4, B=3, I=5, H=6, layer=2, reverse=True)
    big = masks(T=9, B=7, I=11, H=13, layer=2, reverse=True)
    for kind in PER_SEQUENCE + PER_STEP:  # the weight mask is indexed by W_hh's rows, not (t, b, j)
        m = small[kind]
        index = tuple(slice(0, n) for n in m.shape)
        assert torch.equal(big[kind][index], m), kind


def _tolerance(p, n, sigmas=6.0):
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("kind", list(KEEP_KINDS) + list(ZONEOUT_KINDS))
def test_mask_mean_is_the_keep_probability_or_the_zoneout_rate(kind, p):
    m = lstm_masks(SEED, 32, 64, 128, 128, **{RATE_OF_KIND[kind]: p})[kind]
    expected = 1 - p if kind in KEEP_KINDS else p
    assert abs(m.mean().item() - expected) < _tolerance(expected, m.numel())


@pytest.mark.parametrize("kind", PER_STEP)
def test_per_step_masks_are_new_at_each_step(kind):
    # Independent across t: two steps agree on a fraction p^2 + (1-p)^2 of the units, not more.
    p = 0.5
    m = lstm_masks(SEED, 16, 32, 8, 64, **{RATE_OF_KIND[kind]: p})[kind]
    for t in range(m.shape[0] - 1):
        assert not torch.equal(m[t], m[t + 1]), t
    agree = (m[1:] == m[:-1]).double().mean().item()
    expected = p * p + (1 - p) * (1 - p)
    assert abs(agree - expected) < _tolerance(expected, m[1:].numel())


@pytest.mark.parametrize("kind", PER_SEQUENCE + PER_STEP)
def test_masks_are_independent_across_samples_and_units(kind):
    p = 0.5
    m = lstm_masks(SEED, 4, 64, 64, 64, **{RATE_OF_KIND[kind]: p})[kind]
    rows = m.reshape(-1, m.shape[-2], m.shape[-1]) if m.dim() == 3 else m.unsqueeze(0)
    expected = p * p + (1 - p) * (1 - p)
    across_b = (rows[:, 1:] == rows[:, :-1]).double().mean().item()
    across_j = (rows[:, :, 1:] == rows[:, :, :-1]).double().mean().item()
    n = rows[:, 1:].numel()
    assert abs(across_b - expected) < _tolerance(expected, n)
    assert abs(across_j - expected) < _tolerance(expected, n)


def test_draw_seed_is_a_63_bit_int_reproduced_by_manual_seed():
    torch.manual_seed(7)
    a = draw_seed()
    b = draw_seed()
    torch.manual_seed(7)
    assert draw_seed() == a
    assert isinstance(a, int) and 0 <= a < 2 ** 63
    assert a != b


def test_draw_seed_uses_the_generator_passed_in():
    g = torch.Generator().manual_seed(11)
    a = draw_seed(generator=g)
    g.manual_seed(11)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert draw_seed(generator=g) == a
    assert torch.equal(torch.get_rng_state(), state), "the default generator was used"
