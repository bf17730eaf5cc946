"""The language-model example's own parts: its two output layers and the model around them.

The full and the adaptive softmax must be distributions over the corpus's word ids whatever order the
adaptive one ranks them in internally; ``nll`` must be the negative log-probability ``log_prob`` gives
the target; the adaptive one's frequency ranking must travel with ``state_dict``.
"""

import sys
from pathlib import Path

import pytest
import torch

LM = Path(__file__).resolve().parents[1] / "examples" / "word_language_model"
sys.path.insert(0, str(LM))

from model import RNNModel  # noqa: E402
from softmax import AdaptiveSoftmax, FullSoftmax  # noqa: E402

V, D = 50, 32


def skewed_counts(seed: int = 0) -> torch.Tensor:
    """Word counts in an order unrelated to the ids, so a ranking bug cannot hide behind the identity."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 1000, (V,), generator=g)


def make_layers():
    torch.manual_seed(0)
    return {"full": FullSoftmax(D, V).double(),
            "adaptive": AdaptiveSoftmax(D, V, [5, 20], skewed_counts()).double()}


@pytest.mark.parametrize("kind", ["full", "adaptive"])
def test_log_prob_is_a_distribution_over_word_ids(kind):
    layer = make_layers()[kind]
    hidden = torch.randn(3, 4, D, dtype=torch.float64)
    log_p = layer.log_prob(hidden)
    assert log_p.shape == (12, V)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(12, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["full", "adaptive"])
def test_nll_is_the_targets_negative_log_prob(kind):
    layer = make_layers()[kind]
    hidden = torch.randn(3, 4, D, dtype=torch.float64)
    targets = torch.randint(0, V, (3, 4))
    expected = -layer.log_prob(hidden).gather(1, targets.reshape(-1, 1)).squeeze(1)
    torch.testing.assert_close(layer.nll(hidden, targets, reduction="sum"), expected.sum())
    torch.testing.assert_close(layer.nll(hidden, targets), expected.mean())


def test_adaptive_softmax_ranks_words_by_count():
    counts = skewed_counts()
    layer = AdaptiveSoftmax(D, V, [5, 20], counts)
    by_rank = torch.empty(V, dtype=torch.long)
    by_rank[layer.rank] = counts
    assert torch.all(by_rank[:-1] >= by_rank[1:])             # rank 0 is the most frequent word
    assert sorted(layer.rank.tolist()) == list(range(V))        # a permutation


def test_adaptive_softmax_ranking_travels_with_the_state_dict():
    trained = AdaptiveSoftmax(D, V, [5, 20], skewed_counts())
    loaded = AdaptiveSoftmax(D, V, [5, 20])                     # identity ranking until loaded
    loaded.load_state_dict(trained.state_dict())
    hidden = torch.randn(6, D)
    torch.testing.assert_close(loaded.log_prob(hidden), trained.log_prob(hidden))


@pytest.mark.parametrize("cutoffs", [[], [0, 10], [10, 5], [10, V]])
def test_adaptive_softmax_rejects_bad_cutoffs(cutoffs):
    with pytest.raises(ValueError, match="cutoffs"):
        AdaptiveSoftmax(D, V, cutoffs)


def test_adaptive_softmax_rejects_a_cluster_without_width():
    with pytest.raises(ValueError, match="too narrow"):
        AdaptiveSoftmax(10, V, [5, 20])                          # 10 / 4**2 rounds to 0


def test_tied_weights_need_the_full_softmax():
    with pytest.raises(ValueError, match="tie_weights"):
        RNNModel(V, 8, 8, 2, softmax="adaptive", tie_weights=True, word_counts=skewed_counts())


@pytest.mark.parametrize("softmax,tied", [("full", True), ("full", False), ("adaptive", False)])
@pytest.mark.parametrize("lstm", ["rnnfused", "torch"])
def test_model_trains_a_step_with_every_decoder(softmax, tied, lstm):
    torch.manual_seed(0)
    model = RNNModel(V, 8, 16, 2, lstm=lstm, softmax=softmax, tie_weights=tied, cutoffs=[5, 20],
                     word_counts=skewed_counts(), dropoute=0.1, wdrop=0.2 if lstm == "rnnfused" else 0.0)
    if tied:
        assert model.decoder.weight is model.encoder.weight
    tokens = torch.randint(0, V, (7, 3))
    output, hidden, raw = model(tokens, model.init_hidden(3))
    assert output.shape == raw.shape == (7, 3, 8 if tied else 16)
    loss = model.decoder.nll(output[:-1], tokens[1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_with_layer_norm_has_the_gains_and_trains_a_step_and_torch_refuses_it():
    torch.manual_seed(0)
    model = RNNModel(V, 8, 16, 2, layer_norm=True, softmax="full", tie_weights=True, wdrop=0.2, zoneout_c=0.1)
    assert all(rnn.layer_norm for rnn in model.rnns) and model.rnns[1].ln_weight_c_l0.shape == (8,)
    tokens = torch.randint(0, V, (7, 3))
    output, _, _ = model(tokens, model.init_hidden(3))
    model.decoder.nll(output[:-1], tokens[1:]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="layer_norm"):
        RNNModel(V, 8, 16, 2, lstm="torch", layer_norm=True, ignore_unsupported=True)


def _lm_main():
    import importlib.util
    spec = importlib.util.spec_from_file_location("word_language_model_main", LM / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cosine_schedule_anneals_from_lr_to_its_floor_over_all_epochs():
    main = _lm_main()
    args = main.parse_args(["--preset", "cpu-demo", "--schedule", "cosine", "--lr", "0.004",
                            "--lr-min-ratio", "0.1", "--epochs", "4"])
    rates = [main.scheduled_lr(args, 123.0, progress) for progress in torch.linspace(0, 4, 41).tolist()]
    assert rates[0] == pytest.approx(0.004) and rates[-1] == pytest.approx(0.0004)
    assert rates[20] == pytest.approx(0.0022)                  # half-way: the mean of the two ends
    assert all(a > b for a, b in zip(rates, rates[1:]))        # strictly down, never the optimizer's rate
    assert main.scheduled_lr(args, 123.0, 9.0) == pytest.approx(0.0004)   # past the end (a resumed run)


def test_plateau_schedule_keeps_the_optimizers_rate():
    main = _lm_main()
    args = main.parse_args(["--preset", "medium", "--schedule", "plateau"])
    assert main.scheduled_lr(args, 1.25, 0.0) == main.scheduled_lr(args, 1.25, 17.5) == 1.25
