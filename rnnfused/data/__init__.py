"""WikiText-2, shipped inside the package, and the word-level loader the language-model example uses.

The corpus (Merity et al. 2016, arXiv:1609.07843, CC BY-SA 3.0 — see ``wikitext-2/README.md`` beside
the files) lives in ``rnnfused/data/wikitext-2/{train,valid,test}.txt.xz``; nothing is downloaded.
Tokenisation follows PyTorch's ``word_language_model`` example exactly: split each line on whitespace
and append ``<eos>``, so the numbers match the published ones (2,088,628 / 217,646 / 245,569 tokens,
vocabulary 33,278).

    >>> from rnnfused.data import Corpus, batchify
    >>> corpus = Corpus()                       # the packaged WikiText-2
    >>> train = batchify(corpus.train, 20)      # (T, 20) LongTensor, time-major
"""

from __future__ import annotations

import gzip
from array import array
import lzma
import os
from pathlib import Path
from typing import Iterable, Union

import torch

__all__ = ["WIKITEXT2_DIR", "Dictionary", "Corpus", "batchify", "wikitext2_path", "read_lines"]

WIKITEXT2_DIR = Path(__file__).resolve().parent / "wikitext-2"
EOS = "<eos>"
SPLITS = ("train", "valid", "test")

PathLike = Union[str, os.PathLike]


def wikitext2_path(split: str) -> Path:
    """Path of the packaged, xz-compressed WikiText-2 file for ``split`` ('train', 'valid' or 'test')."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return WIKITEXT2_DIR / f"{split}.txt.xz"


def read_lines(path: PathLike) -> Iterable[str]:
    """Yield the lines of a UTF-8 text file, decompressing ``.xz`` / ``.gz`` on the fly."""
    path = Path(path)
    if path.suffix == ".xz":
        opener = lzma.open
    elif path.suffix == ".gz":
        opener = gzip.open
    else:
        opener = open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def _find_split(directory: Path, split: str) -> Path:
    for suffix in (".txt.xz", ".txt.gz", ".txt"):
        candidate = directory / f"{split}{suffix}"
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {split}.txt, {split}.txt.xz or {split}.txt.gz in {directory}")


class Dictionary:
    """Two-way mapping word <-> index, in order of first appearance."""

    def __init__(self, words: Iterable[str] = ()):
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []
        for w in words:
            self.add_word(w)

    def add_word(self, word: str) -> int:
        idx = self.word2idx.get(word)
        if idx is None:
            idx = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return idx

    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, word: str) -> bool:
        return word in self.word2idx


class Corpus:
    """Word-level corpus: a shared :class:`Dictionary` and the three splits as 1-D LongTensors.

    ``Corpus()`` loads the packaged WikiText-2. ``Corpus(path)`` loads any directory holding
    ``train``/``valid``/``test`` as ``.txt``, ``.txt.xz`` or ``.txt.gz`` in the same format (one
    sentence or paragraph per line, tokens separated by spaces). ``<eos>`` ends every line, blank lines
    included. Words of valid/test that train lacks are added to the dictionary too (as PyTorch's
    example does; WikiText has none — rare words are already ``<unk>``).
    """

    def __init__(self, path: PathLike | None = None):
        directory = WIKITEXT2_DIR if path is None else Path(path)
        self.path = directory
        self.dictionary = Dictionary()
        self.train = self.tokenize(_find_split(directory, "train"))
        self.valid = self.tokenize(_find_split(directory, "valid"))
        self.test = self.tokenize(_find_split(directory, "test"))

    def tokenize(self, path: PathLike) -> torch.Tensor:
        """Token ids of one file (every line's words, then ``<eos>``), growing the dictionary."""
        w2i = self.dictionary.word2idx
        lookup = w2i.setdefault          # setdefault(w, len(w2i)): existing id, or the next new one
        ids = array("q")
        for line in read_lines(path):
            ids.extend([lookup(w, len(w2i)) for w in line.split()])
            ids.append(lookup(EOS, len(w2i)))
        self.dictionary.idx2word = list(w2i)
        return torch.frombuffer(ids, dtype=torch.long).clone() if ids else torch.empty(0, dtype=torch.long)

    def __repr__(self) -> str:
        return (f"Corpus({str(self.path)!r}: vocab={len(self.dictionary)}, train={self.train.numel()}, "
                f"valid={self.valid.numel()}, test={self.test.numel()} tokens)")


def batchify(data: torch.Tensor, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Cut a 1-D token stream into ``batch_size`` contiguous columns: a time-major (T, batch_size) tensor.

    The ``len(data) % batch_size`` trailing tokens are dropped, as in PyTorch's and AWD-LSTM's examples;
    column b continues where column b-1 ends, so hidden state can be carried across consecutive batches.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify: data must be a 1-D token stream, got shape {tuple(data.shape)}")
    if batch_size < 1 or data.numel() < batch_size:
        raise ValueError(f"batchify: batch_size must be in [1, {data.numel()}], got {batch_size}")
    nbatch = data.numel() // batch_size
    data = data[: nbatch * batch_size]
    return data.view(batch_size, nbatch).t().contiguous().to(device)
