"""`lengths` on the modules (an rnnfused extension of nn.LSTM's forward): a padded batch with per-sample
lengths computes what the same batch packed into a PackedSequence computes (the PackedSequence path is
checked against nn.LSTM / nn.GRU in test_module.py and test_gru_module.py): output 0 past each length,
h_n (and c_n) at each sample's own last step, the same gradients, the same masks in training (the masks
are drawn by the sample's own index, SPEC §3). Every tensor is drawn with torch.randn, in float64."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused
from conftest import _inputs_and_parameters, assert_all_close, grads, hx_tensors, random_input_and_state, \
    random_lengths, weighted_sum

I, H, T, B = 4, 5, 7, 5

# (class, constructor arguments): every cell, with and without what changes the layer stack.
MODELS = {
    "lstm-bi-2layers": (rnnfused.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm-proj-batch_first": (rnnfused.LSTM, dict(proj_size=3, batch_first=True)),
    "lstm-regularized": (rnnfused.LSTM, dict(num_layers=2, zoneout=0.3, input_dropout=0.2,
                                             recurrent_dropout=0.25, weight_drop=0.4,
                                             candidate_dropout=0.1)),
    "ln-lstm-regularized-bi": (rnnfused.LSTM, dict(layer_norm=True, bidirectional=True, zoneout=0.2,
                                                   recurrent_dropout=0.3)),
    "gru-bi-batch_first": (rnnfused.GRU, dict(bidirectional=True, batch_first=True)),
    "gru-regularized-2layers": (rnnfused.GRU, dict(num_layers=2, zoneout=0.3, input_dropout=0.2,
                                                   recurrent_dropout=0.25, weight_drop=0.4,
                                                   candidate_dropout=0.1)),
}


def make(name):
    cls, kw = MODELS[name]
    torch.manual_seed(11)
    return cls(I, H, dtype=torch.float64, **kw)


def run_packed(model, x, hx, lengths, seed):
    torch.manual_seed(seed)  # the module draws its mask seed from torch's generator
    packed = pack_padded_sequence(x, lengths, batch_first=model.batch_first, enforce_sorted=False)
    out, state = model(packed, hx)
    out = pad_packed_sequence(out, batch_first=model.batch_first, total_length=T)[0]
    outs = [out] + hx_tensors(state)
    return outs, grads(weighted_sum(outs), _inputs_and_parameters(model, x, hx))


def run_lengths(model, x, hx, lengths, seed):
    torch.manual_seed(seed)
    out, state = model(x, hx, lengths=lengths)
    outs = [out] + hx_tensors(state)
    return outs, grads(weighted_sum(outs), _inputs_and_parameters(model, x, hx))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("name", list(MODELS))
def test_padded_input_with_lengths_equals_the_packed_sequence_path(name, with_hx, training):
    model = make(name).train(training)
    x, hx = random_input_and_state(model, model.batch_first, batch=B, steps=T)
    lengths = random_lengths(T, B, torch.Generator().manual_seed(3))
    assert len(set(lengths.tolist())) > 2, "the lengths should be mixed"
    hx = hx if with_hx else None
    want_out, want_grads = run_packed(model, x, hx, lengths, seed=7)
    got_out, got_grads = run_lengths(model, x, hx, lengths, seed=7)
    assert_all_close(got_out, want_out, "output and final states")
    assert_all_close(got_grads, want_grads, "gradients of x, hx, parameters")
    # Padded positions of the output are 0, and the output does not depend on the padding.
    out = got_out[0] if not model.batch_first else got_out[0].transpose(0, 1)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[n:, b], torch.zeros_like(out[n:, b]))
        assert out[:n, b].abs().sum(-1).min() > 0  # every running step wrote something


def test_lengths_may_be_a_list_and_every_length_t_is_the_padded_call():
    model = make("lstm-regularized")
    x, hx = random_input_and_state(model, batch=B, steps=T)
    torch.manual_seed(2)
    full, (h, c) = model(x, hx, lengths=[T] * B)
    torch.manual_seed(2)
    want, (h_want, c_want) = model(x, hx)
    assert torch.equal(full, want) and torch.equal(h, h_want) and torch.equal(c, c_want)


@pytest.mark.parametrize("lengths,error,match", [
    ([T] * (B - 1), ValueError, "lengths"),                      # one per sample
    ([[T] * B], ValueError, "lengths"),                          # 1-D
    ([T + 1] + [T] * (B - 1), (ValueError, RuntimeError), "lengths"),  # beyond seq_len
    ([-1] + [T] * (B - 1), (ValueError, RuntimeError), "lengths"),
    (torch.full((B,), 2.0), TypeError, "lengths"),               # integers
])
def test_lengths_that_do_not_fit_are_an_error_naming_lengths(lengths, error, match):
    model = make("lstm-bi-2layers")
    x, _ = random_input_and_state(model, batch=B, steps=T)
    with pytest.raises(error, match=match):
        model(x, lengths=lengths)


def test_lengths_with_a_packed_sequence_or_unbatched_input_is_an_error():
    model = make("gru-bi-batch_first")
    x = torch.randn(B, T, I, dtype=torch.float64)
    packed = pack_padded_sequence(x, [T] * B, batch_first=True)
    with pytest.raises(ValueError, match="lengths must be None when the input is a PackedSequence"):
        model(packed, lengths=[T] * B)
    with pytest.raises(ValueError, match="lengths needs batched"):
        model(x[0], lengths=[T])
