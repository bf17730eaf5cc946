"""SPEC §3: where the randomness comes from. The masks `lstm_masks` and `gru_masks` materialize, and their
statistics. Tests of a promise both cells make run for both (the GRU has every kind but zoneout_c)."""

import math

import pytest
import torch

from conftest import CELLS
from rnnfused.functional import draw_seed, gru_masks, lstm_masks

KEEP_KINDS = {"input": "input_dropout", "recurrent": "recurrent_dropout", "weight": "weight_drop",
              "candidate": "candidate_dropout"}
ZONEOUT_KINDS = {"zoneout_c": "zoneout_c", "zoneout_h": "zoneout_h"}
RATE_OF_KIND = {**KEEP_KINDS, **ZONEOUT_KINDS}
PER_STEP = ("candidate", "zoneout_c", "zoneout_h")
PER_SEQUENCE = ("input", "recurrent")
ALL_ON = dict(input_dropout=0.3, recurrent_dropout=0.4, weight_drop=0.5, candidate_dropout=0.2,
              zoneout_c=0.15, zoneout_h=0.25)
SEED = 0x1234_5678_9ABC

KINDS_OF = {"LSTM": tuple(RATE_OF_KIND), "GRU": tuple(k for k in RATE_OF_KIND if k != "zoneout_c")}


def cells_with(kinds):
    """(cell, kind) for every cell that has the kind, for parametrizing."""
    return [(cell, kind) for cell in CELLS for kind in kinds if kind in KINDS_OF[cell]]


def all_on(cell):
    """The rates of ALL_ON that `cell` has."""
    return {RATE_OF_KIND[k]: ALL_ON[RATE_OF_KIND[k]] for k in KINDS_OF[cell]}


def masks(seed=SEED, T=6, B=5, I=7, H=9, cell="LSTM", **kw):
    """The masks of `cell` with every rate of ALL_ON it has, updated by kw."""
    kw = {**all_on(cell), **kw}
    return CELLS[cell].masks(seed, T, B, I, H, **kw)


def masks_at(cell, kind, p, *shape):
    """The `kind` mask of `cell` at rate p (every other rate 0)."""
    return CELLS[cell].masks(SEED, *shape, **{RATE_OF_KIND[kind]: p})[kind]


@pytest.mark.parametrize("cell,P", [("LSTM", 0), ("LSTM", 4), ("GRU", 0)])
def test_masks_have_the_documented_shapes_and_are_binary(cell, P):
    T, B, I, H = 6, 5, 7, 9
    R = P if P > 0 else H
    m = masks(T=T, B=B, I=I, H=H, cell=cell, **(dict(proj_size=P) if P else {}))
    gates = 4 if cell == "LSTM" else 3
    want = dict(input=(B, I), recurrent=(B, R), weight=(gates * H, R), candidate=(T, B, H), zoneout_c=(T, B, H),
                zoneout_h=(T, B, R))
    want = {kind: shape for kind, shape in want.items() if kind in KINDS_OF[cell]}
    assert set(m) == set(want)
    for kind, shape in want.items():
        assert tuple(m[kind].shape) == shape, kind
        assert m[kind].dtype == torch.float32, kind
        assert torch.all((m[kind] == 0) | (m[kind] == 1)), kind


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masks_take_the_requested_dtype(dtype, cell):
    m = masks(dtype=dtype, cell=cell)
    assert all(v.dtype == dtype for v in m.values())


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_zero_rate_gives_the_trivial_mask(cell):
    m = CELLS[cell].masks(SEED, 6, 5, 7, 9)
    assert set(m) == set(KINDS_OF[cell])
    for kind in m:
        assert torch.all(m[kind] == (1 if kind in KEEP_KINDS else 0)), kind


@pytest.mark.parametrize("cell", list(CELLS))
def test_masks_are_a_pure_function_of_the_seed(cell):
    a, b = masks(cell=cell), masks(cell=cell)
    for kind in a:
        assert torch.equal(a[kind], b[kind]), kind


@pytest.mark.parametrize("cell", list(CELLS))
def test_manual_seed_reproduces_the_masks_of_a_drawn_seed(cell):
    runs = []
    for s in (3, 3, 4):
        torch.manual_seed(s)
        runs.append(masks(seed=draw_seed(), cell=cell, T=8, B=8, I=16, H=16))
    for kind in runs[0]:
        assert torch.equal(runs[0][kind], runs[1][kind]), kind
        assert not torch.equal(runs[0][kind], runs[2][kind]), kind


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("change", ["seed", "layer", "reverse"])
def test_masks_differ_across_seeds_layers_and_directions(change, cell):
    other = dict(seed=SEED + 1) if change == "seed" else {change: 1 if change == "layer" else True}
    a, b = masks(T=8, B=8, I=16, H=16, cell=cell), masks(T=8, B=8, I=16, H=16, cell=cell, **other)
    for kind in a:
        assert not torch.equal(a[kind], b[kind]), kind


def test_the_gru_draws_the_lstm_s_streams():
    # One generator, one stream per kind: the GRU's per-sequence and per-step masks are the LSTM's of
    # the same (seed, layer, direction).
    kw = dict(layer=2, reverse=True, **all_on("GRU"))
    gru, lstm = gru_masks(SEED, 4, 3, 5, 6, **kw), lstm_masks(SEED, 4, 3, 5, 6, **kw)
    for kind in PER_SEQUENCE + PER_STEP:
        if kind in gru:
            assert torch.equal(gru[kind], lstm[kind]), kind


def test_mask_kinds_are_independent_streams():
    # zoneout_c and zoneout_h at the same rate and shape must not share bits.
    m = masks(T=8, B=8, H=16, zoneout_c=0.5, zoneout_h=0.5)
    assert not torch.equal(m["zoneout_c"], m["zoneout_h"])


@pytest.mark.parametrize("cell", list(CELLS))
def test_mask_bits_depend_on_position_not_on_the_call_shape(cell):
    # A pure function of (seed, layer, direction, kind, t, b, j): a bigger call contains the smaller one.
    # Per-sequence kinds (input, recurrent) have no t: one mask serves every step of a sequence of any length.
    small = masks(T=4, B=3, I=5, H=6, layer=2, reverse=True, cell=cell)
    big = masks(T=9, B=7, I=11, H=13, layer=2, reverse=True, cell=cell)
    for kind in PER_SEQUENCE + PER_STEP:  # the weight mask is indexed by W_hh's rows, not (t, b, j)
        if kind not in small:
            continue
        m = small[kind]
        index = tuple(slice(0, n) for n in m.shape)
        assert torch.equal(big[kind][index], m), kind


def _tolerance(p, n, sigmas=6.0):
    return sigmas * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("cell,kind", cells_with(RATE_OF_KIND))
def test_mask_mean_is_the_keep_probability_or_the_zoneout_rate(cell, kind, p):
    m = masks_at(cell, kind, p, 32, 64, 128, 128)
    expected = 1 - p if kind in KEEP_KINDS else p
    assert abs(m.mean().item() - expected) < _tolerance(expected, m.numel())


@pytest.mark.parametrize("cell,kind", cells_with(PER_STEP))
def test_per_step_masks_are_new_at_each_step(cell, kind):
    # Independent across t: two steps agree on a fraction p^2 + (1-p)^2 of the units, not more.
    p = 0.5
    m = masks_at(cell, kind, p, 16, 32, 8, 64)
    for t in range(m.shape[0] - 1):
        assert not torch.equal(m[t], m[t + 1]), t
    agree = (m[1:] == m[:-1]).double().mean().item()
    expected = p * p + (1 - p) * (1 - p)
    assert abs(agree - expected) < _tolerance(expected, m[1:].numel())


@pytest.mark.parametrize("cell,kind", cells_with(PER_SEQUENCE + PER_STEP + ("weight",)))
def test_masks_are_independent_across_samples_and_units(cell, kind):
    p = 0.5
    m = masks_at(cell, kind, p, 4, 64, 64, 64)
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


def test_draw_seed_on_a_device_uses_that_devices_generator():
    # draw_seed(device=d) is what a layer on d draws: on the CPU the CPU generator's next seed.
    torch.manual_seed(13)
    a = draw_seed(device="cpu")
    torch.manual_seed(13)
    assert draw_seed() == a
    if torch.cuda.is_available():
        torch.manual_seed(13)
        b = draw_seed(device="cuda")
        torch.manual_seed(13)
        assert draw_seed(device="cuda") == b and 0 <= b < 2 ** 63


def test_a_seed_tensor_given_on_another_device_is_refused_by_name():
    from rnnfused import lstm_layer
    torch.manual_seed(14)
    x, h0, c0 = torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh = torch.randn(20, 4), torch.randn(20, 5)
    with pytest.raises(ValueError, match="seed"):
        lstm_layer(x, h0, c0, w_ih, w_hh, seed=torch.tensor(3, device="meta"), zoneout_h=0.1)
    # a one-element int64 CPU tensor is the int it holds
    a = lstm_layer(x, h0, c0, w_ih, w_hh, seed=torch.tensor([3]), zoneout_h=0.1)
    b = lstm_layer(x, h0, c0, w_ih, w_hh, seed=3, zoneout_h=0.1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# --- the generator itself, against an independent implementation ---------------------------------------

def philox4x32_10(counter, key):
    """Philox-4x32-10 (Salmon et al., SC'11) in plain Python: four 32-bit words of a counter and a key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c3 ^ k1, p0 & 0xFFFFFFFF)
        k0, k1 = (k0 + 0x9E3779B9) & 0xFFFFFFFF, (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return c0, c1, c2, c3


def test_the_python_philox_gives_random123_s_known_answers():
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                                   0x6D5451FD)
    assert philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)


@pytest.mark.parametrize("layer,reverse", [(0, False), (2, True)])
def test_every_mask_bit_is_the_documented_philox_word_against_its_threshold(layer, reverse):
    """SPEC §3 bit by bit: the word of unit j of row r at step t is word j % 4 of the block at counter
    (j // 4, r, t, layer << 16 | reverse << 8 | kind) under key (seed low, seed high); dropout keeps a unit
    when the word is >= floor(p * 2**32), zoneout keeps the previous value when it is below. Widths that
    are not multiples of 4 or 8 and more than 64 units, so partial blocks and partial vectors are drawn."""
    T, B, I, H = 3, 2, 70, 37
    m = lstm_masks(SEED, T, B, I, H, layer=layer, reverse=reverse, dtype=torch.float64, **ALL_ON)
    key = (SEED & 0xFFFFFFFF, SEED >> 32)
    kinds = [("input", 0, 1, B, I), ("recurrent", 1, 1, B, H), ("weight", 2, 1, 4 * H, H),
             ("candidate", 3, T, B, H), ("zoneout_c", 4, T, B, H), ("zoneout_h", 5, T, B, H)]
    for name, kind, steps, rows, cols in kinds:
        threshold = math.floor(ALL_ON[RATE_OF_KIND[name]] * 2**32)
        tag = layer << 16 | int(reverse) << 8 | kind
        got = m[name].reshape(steps, rows, cols)
        for t in range(steps):
            for r in range(rows):
                for q in range((cols + 3) // 4):
                    words = philox4x32_10((q, r, t, tag), key)
                    for i in range(min(4, cols - 4 * q)):
                        bit = words[i] >= threshold if kind < 4 else words[i] < threshold
                        assert got[t, r, 4 * q + i] == float(bit), (name, t, r, 4 * q + i)
