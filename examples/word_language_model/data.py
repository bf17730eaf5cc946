"""Data for the word-level language model: WikiText-2 from the package, batches for truncated BPTT.

The corpus and ``batchify`` come from ``rnnfused.data`` (WikiText-2 ships inside the package, nothing is
downloaded). This file adds how the training loop walks over a batchified stream:

- :func:`get_batch` cuts ``seq_len`` steps starting at row ``i`` (inputs, and the targets one step on);
- :func:`bptt_schedule` yields the (start, seq_len) of each batch, with AWD-LSTM's variable-length BPTT
  (Merity et al. 2017, arXiv:1708.02182, section 4.1): the base length is ``bptt`` with probability 0.95
  and ``bptt / 2`` otherwise, and the length is drawn from N(base, 5), at least 5, so the cut points
  move from epoch to epoch and every token gets to be at every position of a window;
- :func:`epoch_window` picks the rows one epoch trains on, when an epoch covers only a fraction of the
  training stream (the ``cpu-demo`` preset): consecutive epochs take consecutive slices.

:class:`CharCorpus` is the character-level view of the same files (the ``char-demo`` preset): the packaged
WikiText-2 is the tokenized word-level text, so its characters are those of that text (words separated
by single spaces, ``<unk>`` spelled out as the five characters it is written with, ``\n`` at each line's
end), optionally cut to the first N characters of each split.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import torch

from rnnfused.data import (WIKITEXT2_DIR, Corpus, Dictionary, _find_split, batchify,  # noqa: F401  (re-exported)
                           read_lines)

UNK_CHAR = "\ufffd"      # the id of every character the training slice lacks (REPLACEMENT CHARACTER)


def char_text(path, max_chars: int = 0) -> str:
    """The characters of a WikiText file as the character-level model reads them: each line's tokens
    joined by single spaces, then ``\n`` (the word-level loader's ``<eos>``); the first ``max_chars``
    of them when ``max_chars > 0``."""
    parts, size = [], 0
    for line in read_lines(path):
        piece = " ".join(line.split()) + "\n"
        parts.append(piece)
        size += len(piece)
        if max_chars and size >= max_chars:
            break
    text = "".join(parts)
    return text[:max_chars] if max_chars else text


class CharCorpus:
    """Character-level corpus with the word-level :class:`Corpus`'s interface (``dictionary``, ``train``,
    ``valid``, ``test`` as 1-D LongTensors), so the training loop does not care which it has.

    The vocabulary is the characters of the training slice (in order of first appearance) plus
    :data:`UNK_CHAR` at id 0, which every character of valid/test that the slice lacks maps to (a
    handful in WikiText-2: accented and non-Latin letters). ``train_chars`` / ``valid_chars`` /
    ``test_chars`` keep the first N characters of each split (0 = all of it).
    """

    def __init__(self, path=None, train_chars: int = 0, valid_chars: int = 0, test_chars: int = 0):
        directory = WIKITEXT2_DIR if path is None else Path(path)
        self.path = directory
        self.limits = dict(train=train_chars, valid=valid_chars, test=test_chars)
        texts = {split: char_text(_find_split(directory, split), self.limits[split])
                 for split in ("train", "valid", "test")}
        self.dictionary = Dictionary([UNK_CHAR])
        for ch in texts["train"]:
            if ch not in self.dictionary.word2idx:
                self.dictionary.add_word(ch)
        w2i = self.dictionary.word2idx
        self.unknown = {}
        for split, text in texts.items():
            ids = [w2i.get(ch, 0) for ch in text]
            self.unknown[split] = ids.count(0)
            setattr(self, split, torch.tensor(ids, dtype=torch.long))

    def __repr__(self) -> str:
        return (f"CharCorpus({str(self.path)!r}: {len(self.dictionary)} characters, train={self.train.numel()}, "
                f"valid={self.valid.numel()}, test={self.test.numel()} characters)")


def get_batch(source: torch.Tensor, i: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``i .. i+seq_len-1`` of a (T, B) stream as input and the next token of each as target.

    Returns ``data`` (L, B) and ``target`` (L, B) with L = min(seq_len, T - 1 - i).
    """
    seq_len = min(seq_len, source.size(0) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len]


def bptt_schedule(start: int, end: int, bptt: int, variable: bool,
                  rng: random.Random | None = None) -> Iterator[tuple[int, int]]:
    """Yield ``(i, seq_len)`` covering rows ``start .. end-1`` (each batch also reads row i+seq_len).

    ``variable=False``: fixed windows of ``bptt``. ``variable=True``: AWD-LSTM's random lengths (see the
    module docstring); scale the learning rate by ``seq_len / bptt`` for such a batch, as AWD-LSTM does,
    so short windows do not get too much weight per token.
    """
    rng = rng or random.Random()
    i = start
    while i < end - 1:
        if variable:
            base = bptt if rng.random() < 0.95 else bptt / 2.0
            seq_len = max(5, int(rng.gauss(base, 5)))
            seq_len = min(seq_len, bptt + 20)     # AWD-LSTM's cap on the rare very long window
        else:
            seq_len = bptt
        seq_len = min(seq_len, end - 1 - i)
        yield i, seq_len
        i += seq_len


def epoch_window(num_rows: int, fraction: float, epoch: int) -> tuple[int, int]:
    """Rows [start, end) that epoch ``epoch`` (1-based) trains on, when it covers ``fraction`` of them.

    ``fraction >= 1`` is the whole stream. Otherwise epoch 1 takes the first slice, epoch 2 the next one,
    and so on, wrapping around: 1/fraction epochs together see every training token once.
    """
    if fraction >= 1.0:
        return 0, num_rows
    length = max(2, int(num_rows * fraction))
    slices = max(1, num_rows // length)
    start = ((epoch - 1) % slices) * length
    return start, min(num_rows, start + length + 1)
