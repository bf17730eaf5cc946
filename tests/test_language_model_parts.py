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


def test_char_corpus_reads_the_tokenized_text_as_characters(tmp_path):
    from data import UNK_CHAR, CharCorpus

    (tmp_path / "train.txt").write_text(" = Title = \n \n The cat sat <unk> . \n")
    (tmp_path / "valid.txt").write_text(" The dog ! \n")
    (tmp_path / "test.txt").write_text(" cat \n")
    corpus = CharCorpus(tmp_path)
    vocab = corpus.dictionary.idx2word
    decode = lambda ids: "".join(vocab[i] for i in ids.tolist())        # noqa: E731
    assert vocab[0] == UNK_CHAR and len(set(vocab)) == len(vocab)
    assert decode(corpus.train) == "= Title =\n\nThe cat sat <unk> .\n"    # tokens joined by one space
    assert decode(corpus.valid) == f"The {UNK_CHAR * 3} {UNK_CHAR}\n"  # 'd', 'o', 'g', '!' are not in train
    assert corpus.unknown == dict(train=0, valid=4, test=0)
    cut = CharCorpus(tmp_path, train_chars=12, valid_chars=3, test_chars=0)
    assert (cut.train.numel(), cut.valid.numel(), cut.test.numel()) == (12, 3, 4)
    assert "".join(cut.dictionary.idx2word[1:]) == "= Title\n"    # the slice's characters, first seen first


def test_char_metric_is_bits_per_character_and_word_metric_perplexity():
    import math

    main = _lm_main()
    char = main.parse_args(["--preset", "char-demo"])
    word = main.parse_args(["--preset", "cpu-demo"])
    assert char.char and not word.char and (char.softmax, char.tied) == ("full", False)
    assert main.metric(char, math.log(2.0) * 1.5) == pytest.approx(1.5)
    assert main.metric(word, math.log(100.0)) == pytest.approx(100.0)
    assert main.metric_name(char) == "bpc" and main.metric_name(word) == "ppl"


def test_torch_arm_of_a_preset_takes_its_own_tuned_rates_and_flags_still_win():
    main = _lm_main()
    ours = main.parse_args(["--preset", "char-demo"])
    theirs = main.parse_args(["--preset", "char-demo", "--lstm", "torch"])
    for key, value in main.TORCH_RATES["char-demo"].items():
        assert getattr(theirs, key) == value and getattr(ours, key) == main.PRESETS["char-demo"][key]
    assert main.TORCH_RATES["char-demo"] != {k: main.PRESETS["char-demo"][k] for k in main.TORCH_RATES["char-demo"]}
    assert main.parse_args(["--preset", "char-demo", "--lstm", "torch", "--dropout", "0.2"]).dropout == 0.2
    assert main.parse_args(["--preset", "cpu-demo", "--lstm", "torch"]).dropout == main.PRESETS["cpu-demo"]["dropout"]


def test_cell_loop_computes_the_fused_layers_function_in_eval_and_trains_a_step():
    import rnnfused
    from cell_loop import LSTMCellLoop, time_cell_loop

    torch.manual_seed(0)
    fused = rnnfused.LSTM(6, 10, input_dropout=0.2, weight_drop=0.3, zoneout_c=0.2, zoneout_h=0.1,
                          recurrent_dropout=0.1)
    loop = LSTMCellLoop(fused)
    assert (loop.weight_drop, loop.zoneout_c, loop.zoneout_h) == (pytest.approx(0.3), pytest.approx(0.2),
                                                                   pytest.approx(0.1))
    x, hx = torch.randn(7, 3, 6), (torch.randn(1, 3, 10), torch.randn(1, 3, 10))
    fused.eval(), loop.eval()
    with torch.no_grad():                      # eval: dropouts off, zoneout its expectation, in both
        (y1, (h1, c1)), (y2, (h2, c2)) = fused(x, hx), loop(x, hx)
    torch.testing.assert_close(y2, y1), torch.testing.assert_close(c2, c1)
    with pytest.raises(ValueError, match="candidate"):
        LSTMCellLoop(rnnfused.LSTM(6, 10, candidate_dropout=0.1))

    model = RNNModel(V, 8, 16, 1, softmax="full", tie_weights=False, wdrop=0.2, zoneout_c=0.1)
    tokens = torch.randint(0, V, (9, 2))
    t = time_cell_loop(model, [(tokens[:-1], tokens[1:])] * 2, clip=1.0, lr=1e-3)
    assert t["batches"] == 2 and t["fused_s"] > 0 and t["loop_s"] > 0
    assert isinstance(model.rnns[0], rnnfused.LSTM)          # the model itself is left as it was
