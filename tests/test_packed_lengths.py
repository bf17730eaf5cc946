"""Variable-length input (`lengths`, PackedSequence) on the CPU: the layer driver sorts the samples by
descending length and runs each step on the samples still running only, as cuDNN does for packed
sequences (layer_cpu.cpp, Batching). What it computes is still the reference's, with every mask drawn by the
sample's own index (SPEC §3): sorted, unsorted and tied lengths, a zero length, every length T, both
directions, a projection, every regularizer on, for the LSTM, the GRU and the layer-normalized LSTM —
forward and every gradient. And the shrunk path is the one taken: the workspace is in the sorted order with
nothing computed at padded positions, and padded positions of the input are never read.

Every tensor is drawn with torch.randn (never zeros or ones), in float64."""

import zlib

import pytest
import torch

import rnnfused
from conftest import ALL_RATES, CELLS, NO_RATES, assert_all_close, assert_close, check_forward_and_gradients, \
    layer_args, make_layer_inputs, packed_outputs_and_gradients, weighted_sum
from rnnfused import functional as F
from rnnfused import reference

SEED = 20240611
T = 7
LN_NAMES = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")

# name -> lengths of a batch of 6 over T = 7 steps.
LENGTHS = {
    "sorted": [7, 7, 5, 4, 2, 1],          # descending: PackedSequence's order, nothing permuted
    "unsorted": [3, 7, 1, 5, 2, 6],
    "ties": [4, 7, 4, 1, 7, 4],
    "zero": [5, 0, 7, 3, 0, 2],            # the op allows empty sequences: output 0, h_n = h0
    "full": [7, 7, 7, 7, 7, 7],
    "ascending": [1, 2, 3, 5, 6, 7],
}


def ln_lstm_inputs(T, B, I, H, P=0):
    inputs = make_layer_inputs(T, B, I, H, P)
    for name, size in zip(LN_NAMES, (4 * H, 4 * H, H, H)):
        inputs[name] = torch.randn(size, dtype=torch.float64).requires_grad_()
    return inputs


def run_cell(cell, P, lengths, *, training, reverse, rates_on=True):
    """(inputs, fused outputs, reference outputs) for one call of `cell` ('LSTM', 'GRU' or 'LN-LSTM')."""
    B, I, H = len(lengths), 5, 6
    lengths = torch.tensor(lengths)
    kw = dict(seed=SEED, training=training, reverse=reverse, layer=1)
    if cell == "GRU":
        c = CELLS["GRU"]
        rates = c.all_rates if rates_on else c.no_rates
        inputs = c.make_inputs(T, B, I, H)
        fused = c.fused(inputs, lengths=lengths, **kw, **rates)
        expected = c.replay(inputs, SEED, layer=1, reverse=reverse, training=training, lengths=lengths, **rates)
        return inputs, fused, expected
    rates = ALL_RATES if rates_on else NO_RATES
    inputs = ln_lstm_inputs(T, B, I, H, P) if cell == "LN-LSTM" else make_layer_inputs(T, B, I, H, P)
    ln = {name: inputs[name] for name in LN_NAMES} if cell == "LN-LSTM" else {}
    fused = F.lstm_layer(*layer_args(inputs), lengths=lengths, **kw, **rates, **ln)
    masks = F.lstm_masks(SEED, T, B, I, H, proj_size=P, layer=1, reverse=reverse, dtype=torch.float64,
                         **rates) if training else None
    expected = reference.lstm_layer(*layer_args(inputs), masks=masks, training=training, reverse=reverse,
                                    lengths=lengths, **rates, **ln)
    return inputs, fused, expected


CELL_SHAPES = [("LSTM", 0), ("LSTM", 3), ("GRU", 0), ("LN-LSTM", 0), ("LN-LSTM", 2)]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("case", list(LENGTHS))
@pytest.mark.parametrize("cell,P", CELL_SHAPES, ids=lambda v: str(v))
def test_lengths_replay_the_reference_forward_and_gradients(cell, P, case, reverse, training):
    torch.manual_seed(zlib.crc32(repr((cell, P, case, reverse, training)).encode()))
    inputs, fused, expected = run_cell(cell, P, LENGTHS[case], training=training, reverse=reverse)
    check_forward_and_gradients(inputs, fused, expected)
    for b, n in enumerate(LENGTHS[case]):
        assert torch.all(fused[0][n:, b] == 0)


@pytest.mark.parametrize("cell,P", CELL_SHAPES, ids=lambda v: str(v))
def test_lengths_without_regularizers_replay_the_reference(cell, P):
    torch.manual_seed(zlib.crc32(repr((cell, P)).encode()))
    inputs, fused, expected = run_cell(cell, P, LENGTHS["unsorted"], training=True, reverse=True, rates_on=False)
    check_forward_and_gradients(inputs, fused, expected)


def test_a_batch_of_empty_sequences_passes_the_state_through():
    torch.manual_seed(1)
    inputs, fused, expected = run_cell("LSTM", 0, [0, 0, 0], training=True, reverse=False)
    check_forward_and_gradients(inputs, fused, expected)
    assert torch.all(fused[0] == 0)
    assert torch.equal(fused[1], inputs["h0"]) and torch.equal(fused[2], inputs["c0"])


def test_the_order_of_the_samples_does_not_change_what_each_computes():
    # The same samples in another order (masks drawn by sample index, so the seed's masks move with the
    # sample only when the masks are off: compare in evaluation with zoneout, where every mask is a rate).
    torch.manual_seed(2)
    B, I, H = 6, 4, 5
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    lengths = torch.tensor(LENGTHS["unsorted"])
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    rates = dict(NO_RATES, zoneout_c=0.3, zoneout_h=0.2)
    a = F.lstm_layer(*layer_args(inputs), lengths=lengths, training=False, **rates)
    moved = dict(inputs, input=inputs["input"][:, perm], h0=inputs["h0"][perm], c0=inputs["c0"][perm])
    b = F.lstm_layer(*layer_args(moved), lengths=lengths[perm], training=False, **rates)
    assert_close(b[0], a[0][:, perm])
    assert_close(b[1], a[1][perm])
    assert_close(b[2], a[2][perm])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "LN-LSTM"])
def test_padded_positions_of_the_input_are_never_read(cell):
    # NaN at every padded position of x: a driver that computed them and masked the result afterwards
    # would get NaN in the weight gradients (0 * NaN); the packed driver never touches them.
    torch.manual_seed(3)
    lengths = LENGTHS["unsorted"]
    B, I, H = len(lengths), 5, 6
    if cell == "GRU":
        inputs = CELLS["GRU"].make_inputs(T, B, I, H)
        args, ln = CELLS["GRU"].args_of(inputs), {}
        layer, rates = F.gru_layer, CELLS["GRU"].all_rates
    else:
        inputs = ln_lstm_inputs(T, B, I, H) if cell == "LN-LSTM" else make_layer_inputs(T, B, I, H)
        args = layer_args(inputs)
        ln = {name: inputs[name] for name in LN_NAMES} if cell == "LN-LSTM" else {}
        layer, rates = F.lstm_layer, ALL_RATES
    with torch.no_grad():
        for b, n in enumerate(lengths):
            inputs["input"][n:, b] = float("nan")
    out = layer(*args, seed=SEED, lengths=torch.tensor(lengths), **rates, **ln)
    params = [v for v in inputs.values() if v is not None]
    got = torch.autograd.grad(weighted_sum(out), params)
    for t in list(out) + list(got[1:]):
        assert torch.isfinite(t).all()
    g = got[0]
    for b, n in enumerate(lengths):
        assert torch.isfinite(g[:n, b]).all() and torch.all(g[n:, b] == 0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_workspace_holds_only_the_running_rows_in_sorted_order(reverse):
    # The op's workspace shows the layout of the time loop: row i of step t is the i-th longest sample, and
    # only the rows still running at t (a prefix: n_t = #{lengths > t}) were computed; the rest are 0.
    torch.manual_seed(4)
    lengths = torch.tensor(LENGTHS["ties"])
    B, I, H = len(lengths), 4, 5
    inputs = make_layer_inputs(T, B, I, H, requires_grad=False)
    args = layer_args(inputs)
    output, h_n, c_n, gates, hs, cs, ctil = torch.ops.rnnfused.lstm_forward(
        *args, lengths, torch.tensor(SEED), 0, reverse, True, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], True)
    order = torch.sort(lengths, descending=True, stable=True).indices
    for t in range(T):
        running = int((lengths > t).sum())
        assert torch.all(gates[t, running:] == 0)
        assert torch.all(gates[t, :running] != 0)
        # The output (samples' order) is the state the sorted workspace recorded at that step.
        s = T - 1 - t if reverse else t
        assert torch.equal(output[t, order[:running]], hs[s + 1, :running])
    assert torch.equal(h_n[order], hs[T])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_modules_equal_torch_with_the_shrunk_path(mode, enforce_sorted):
    torch.manual_seed(5)
    kw = dict(num_layers=2, bidirectional=True)
    if mode == "LSTM":
        kw["proj_size"] = 3
    theirs = getattr(torch.nn, mode)(4, 6, dtype=torch.float64, **kw)
    ours = getattr(rnnfused, mode)(4, 6, dtype=torch.float64, **kw)
    ours.load_state_dict(theirs.state_dict())
    lengths = [7, 7, 5, 4, 2, 1] if enforce_sorted else LENGTHS["unsorted"]
    x = torch.randn(T, len(lengths), 4, dtype=torch.float64)
    want = packed_outputs_and_gradients(theirs, x, None, lengths, enforce_sorted=enforce_sorted)
    got = packed_outputs_and_gradients(ours, x, None, lengths, enforce_sorted=enforce_sorted)
    assert_all_close(got, want, "packed")


def test_float32_with_lengths_agrees_with_the_float64_reference():
    # float32 takes MKL's packed-weight GEMM on fewer rows than it was packed for.
    torch.manual_seed(6)
    lengths = torch.tensor([9, 3, 12, 1, 7, 12, 5, 10])
    B, I, H = len(lengths), 6, 8
    inputs = make_layer_inputs(12, B, I, H, requires_grad=False)
    single = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    fused = F.lstm_layer(*layer_args(single), seed=SEED, lengths=lengths, reverse=True, **ALL_RATES)
    masks = F.lstm_masks(SEED, 12, B, I, H, reverse=True, dtype=torch.float64, **ALL_RATES)
    expected = reference.lstm_layer(*layer_args(inputs), masks=masks, reverse=True, lengths=lengths, **ALL_RATES)
    for a, b in zip(fused, expected):
        assert a.dtype == torch.float32
        assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
