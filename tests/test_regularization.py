"""The regularizers around the LSTM (rnnfused.regularization): one test per promise in their docstrings."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnfused.regularization import (EarlyStopping, EmbeddingDropout, LockedDropout, ar_loss,
                                     embedding_dropout, tar_loss)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- AR / TAR -------------------------------------------------------------------------------------------

def test_ar_is_alpha_times_mean_square():
    h = torch.tensor([[[1.0, -2.0]], [[3.0, 0.0]]])          # (T=2, B=1, H=2): squares 1, 4, 9, 0
    assert ar_loss(h, alpha=2.0).item() == pytest.approx(2.0 * 14.0 / 4.0)


def test_tar_is_beta_times_mean_square_step_difference():
    h = torch.tensor([[[1.0, 0.0]], [[3.0, 1.0]], [[0.0, 1.0]]])    # (T=3, B=1, H=2)
    # differences: (2, 1), (-3, 0) -> squares 4, 1, 9, 0 over 4 elements
    assert tar_loss(h, beta=0.5).item() == pytest.approx(0.5 * 14.0 / 4.0)


def test_tar_batch_first_matches_time_major():
    h = torch.randn(7, 3, 5)
    assert torch.allclose(tar_loss(h, 1.0), tar_loss(h.transpose(0, 1), 1.0, batch_first=True))


def test_tar_ignores_differences_across_samples():
    h = torch.zeros(4, 2, 3)
    h[:, 1] = 5.0        # sample 1 is constant in time, far from sample 0: no temporal change at all
    assert tar_loss(h, 1.0).item() == 0.0


def test_ar_tar_zero_coefficient_and_single_step_give_zero():
    h = torch.randn(1, 2, 3, requires_grad=True)
    assert ar_loss(h, 0.0).item() == 0.0
    assert tar_loss(h, 0.0).item() == 0.0
    assert tar_loss(h, 1.0).item() == 0.0          # one step: no difference


def test_ar_tar_gradients():
    h = torch.tensor([[[1.0]], [[3.0]]], requires_grad=True)
    (ar_loss(h, 1.0) + tar_loss(h, 1.0)).backward()
    # d/dh mean(h^2) = h (mean over 2) ; d/dh (h1-h0)^2 = 2(h1-h0) * (-1, +1)
    assert torch.allclose(h.grad.flatten(), torch.tensor([1.0 - 4.0, 3.0 + 4.0]))


@pytest.mark.parametrize("fn", [ar_loss, tar_loss])
def test_ar_tar_reject_negative_coefficient(fn):
    with pytest.raises(ValueError, match=">= 0"):
        fn(torch.zeros(2, 1, 1), -1.0)


# --- LockedDropout --------------------------------------------------------------------------------------

def test_locked_dropout_same_mask_at_every_step():
    x = torch.ones(50, 8, 16)
    y = LockedDropout(0.5)(x)
    assert torch.equal(y, y[:1].expand_as(y))


def test_locked_dropout_batch_first_same_mask_at_every_step():
    x = torch.ones(8, 50, 16)
    y = LockedDropout(0.5, batch_first=True)(x)
    assert torch.equal(y, y[:, :1].expand_as(y))


def test_locked_dropout_mask_statistics():
    p = 0.3
    y = LockedDropout(p)(torch.ones(3, 400, 500))
    values = y.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1.0 / (1.0 - p))
    kept = (y[0] != 0).float()
    assert kept.mean().item() == pytest.approx(1.0 - p, abs=0.01)     # 200,000 Bernoullis: sd ~ 0.001
    assert y.mean().item() == pytest.approx(1.0, abs=0.015)            # inverted: expectation preserved


def test_locked_dropout_masks_differ_between_samples_and_calls():
    drop = LockedDropout(0.5)
    a = drop(torch.ones(2, 4, 64))
    b = drop(torch.ones(2, 4, 64))
    assert not torch.equal(a[0, 0], a[0, 1])
    assert not torch.equal(a, b)


def test_locked_dropout_eval_and_zero_rate_are_identity():
    x = torch.randn(5, 3, 4)
    drop = LockedDropout(0.5).eval()
    assert drop(x) is x
    assert LockedDropout(0.0)(x) is x


def test_locked_dropout_unbatched_sequence():
    y = LockedDropout(0.5)(torch.ones(20, 32))
    assert torch.equal(y, y[:1].expand_as(y))


def test_locked_dropout_packed_sequence_one_mask_per_sample():
    lengths = torch.tensor([6, 4, 2])
    x = torch.ones(6, 3, 32)
    packed = pack_padded_sequence(x, lengths)
    out, out_lengths = pad_packed_sequence(LockedDropout(0.5)(packed))
    assert torch.equal(out_lengths, lengths)
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(out[:n, b], out[:1, b].expand(n, -1))
        assert torch.all(out[n:, b] == 0)


def test_locked_dropout_rejects_bad_rate():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LockedDropout(1.0)


# --- EmbeddingDropout -----------------------------------------------------------------------------------

def test_embedding_dropout_drops_whole_words():
    emb = EmbeddingDropout(1000, 8, p=0.5)
    words = torch.arange(1000).repeat(3, 1)          # every word appears in each of 3 rows
    out = emb(words)                                  # (3, 1000, 8)
    dropped = (out == 0).all(-1)                      # a word is dropped in all its dimensions...
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])   # ...and everywhere
    assert ((out == 0).any(-1) == dropped).all()
    assert dropped[0].float().mean().item() == pytest.approx(0.5, abs=0.06)
    kept = ~dropped[0]
    assert torch.allclose(out[0, kept], emb.weight[kept] * 2.0)        # scaled by 1/(1-p)


def test_embedding_dropout_eval_is_plain_lookup():
    emb = EmbeddingDropout(50, 4, p=0.5).eval()
    words = torch.randint(0, 50, (7, 3))
    assert torch.equal(emb(words), nn.functional.embedding(words, emb.weight))


def test_embedding_dropout_state_dict_is_nn_embeddings():
    plain = nn.Embedding(20, 6)
    emb = EmbeddingDropout(20, 6, p=0.2)
    emb.load_state_dict(plain.state_dict())
    assert list(emb.state_dict()) == ["weight"]
    shared = EmbeddingDropout.from_embedding(plain, 0.2)
    assert shared.weight is plain.weight


def test_embedding_dropout_masking_rows_equals_masking_the_matrix():
    # The fast path masks only the looked-up rows; with the same RNG state it must give AWD-LSTM's
    # whole-matrix result, value and gradient, bit for bit (the scale= path still masks the matrix).
    emb = nn.Embedding(300, 5).double()
    words = torch.randint(0, 300, (9, 4))
    torch.manual_seed(7)
    fast = embedding_dropout(emb, words, p=0.3)
    (fast * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    grad_fast, emb.weight.grad = emb.weight.grad.clone(), None
    torch.manual_seed(7)
    whole = embedding_dropout(emb, words, p=0.3, scale=torch.ones((), dtype=torch.float64))
    (whole * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(fast, whole)
    assert torch.equal(grad_fast, emb.weight.grad)
    assert (fast == 0).all(-1).any()                  # something was dropped


def test_embedding_dropout_gradient_reaches_kept_rows_only():
    emb = nn.Embedding(200, 3)
    out = embedding_dropout(emb, torch.arange(200), p=0.5)
    out.sum().backward()
    dropped = (out == 0).all(-1)
    assert torch.all(emb.weight.grad[dropped] == 0)
    assert torch.allclose(emb.weight.grad[~dropped], torch.full_like(emb.weight.grad[~dropped], 2.0))


# --- EarlyStopping --------------------------------------------------------------------------------------

def test_early_stopping_waits_patience_evaluations():
    stopper = EarlyStopping(patience=2)
    decisions = [stopper.step(v) for v in [5.0, 4.0, 4.5, 3.9, 4.0, 4.1]]
    assert decisions == [False, False, False, False, False, True]
    assert stopper.best == 3.9 and stopper.best_step == 4


def test_early_stopping_min_delta():
    stopper = EarlyStopping(patience=1, min_delta=0.5)
    assert not stopper.step(10.0)
    assert stopper.step(9.8)                     # better, but not by more than min_delta
    assert stopper.best == 10.0


def test_early_stopping_max_mode():
    stopper = EarlyStopping(patience=1, mode="max")
    assert not stopper.step(0.5)
    assert not stopper.step(0.7)
    assert stopper.step(0.6)
    assert stopper.best == 0.7


def test_early_stopping_nan_is_never_an_improvement():
    stopper = EarlyStopping(patience=1)
    stopper.step(1.0)
    assert stopper.step(math.nan)
    assert stopper.best == 1.0


def test_early_stopping_restores_best_weights():
    model = nn.Linear(2, 2)
    stopper = EarlyStopping(patience=1)
    stopper.step(1.0, model)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)                  # in-place: the stored copy must not follow
    stopper.step(2.0, model)
    assert stopper.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, best[k])


def test_early_stopping_restore_without_weights_is_noop():
    model = nn.Linear(2, 2)
    assert not EarlyStopping().restore(model)
    stopper = EarlyStopping(restore_best_weights=False)
    stopper.step(1.0, model)
    assert stopper.best_state is None and not stopper.restore(model)


def test_early_stopping_state_dict_round_trip():
    model = nn.Linear(2, 2)
    a = EarlyStopping(patience=3)
    for v in [3.0, 2.0, 2.5]:
        a.step(v, model)
    b = EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    assert (b.best, b.best_step, b.num_bad_steps) == (2.0, 2, 1)
    assert [b.step(v) for v in [2.6, 2.7]] == [False, True]
    assert b.restore(nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs", [dict(patience=-1), dict(mode="median"), dict(min_delta=-0.1)])
def test_early_stopping_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EarlyStopping(**kwargs)
