"""The language model's output layer: a full softmax, or an adaptive softmax for CPU-sized runs.

Both turn the last LSTM layer's output (..., d) into a distribution over the vocabulary and expose the
same two methods, so the training loop and ``generate.py`` do not care which one a model has:

- ``nll(hidden, targets, reduction)``: the cross-entropy of the targets ("mean" or "sum" over tokens);
- ``log_prob(hidden)``: (N, ntoken) log-probabilities, columns in the corpus's own word ids.

On WikiText-2 (33,278 words) the full softmax is most of a small model's cost: for a 200-wide model the
output layer is ~40 MFLOP per token forward and backward, the two LSTM layers ~4. The adaptive softmax
(Grave et al. 2017, "Efficient softmax approximation for GPUs", arXiv:1609.04309) puts the most frequent
words in a small head and the rarest ones in clusters with narrower projections, reached only through
the head; on two CPU cores it makes a training step of the ``cpu-demo`` model several times cheaper.
It needs the words ranked by frequency: the layer keeps that ranking as buffers, so it travels with the
checkpoint.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FullSoftmax(nn.Linear):
    """A linear layer to ``ntoken`` logits and a softmax; its weight may be tied to the embedding's.

    It is an ``nn.Linear`` (``decoder.weight``, ``decoder.bias``), so checkpoints keep PyTorch's example's
    names.
    """

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self(hidden.reshape(-1, hidden.size(-1))), dim=-1)


class AdaptiveSoftmax(nn.Module):
    """``nn.AdaptiveLogSoftmaxWithLoss`` over the vocabulary ranked by training-set frequency.

    ``cutoffs`` are ranks: with ``(2000, 10000)`` the 2,000 most frequent words are in the head, the next
    8,000 in a first cluster whose projection is ``d / div_value`` wide, the rest in a second one
    ``d / div_value**2`` wide. ``word_counts`` (ntoken,) are training-set counts; ``None`` builds the
    identity ranking, to be replaced by ``load_state_dict`` (``generate.py`` does this).
    """

    def __init__(self, in_features: int, ntoken: int, cutoffs: Sequence[int],
                 word_counts: torch.Tensor | None = None, div_value: float = 4.0):
        super().__init__()
        cutoffs = [int(c) for c in cutoffs]
        if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] <= 0 or cutoffs[-1] >= ntoken:
            raise ValueError(f"cutoffs must increase strictly within (0, {ntoken}), got {cutoffs}")
        if in_features // div_value ** len(cutoffs) < 1:
            raise ValueError(f"in_features={in_features} is too narrow for {len(cutoffs)} clusters: the last "
                             f"one's projection would be {in_features} / {div_value:g}**{len(cutoffs)} < 1 wide")
        if word_counts is None:
            order = torch.arange(ntoken)
        else:
            if word_counts.shape != (ntoken,):
                raise ValueError(f"word_counts must have shape ({ntoken},), got {tuple(word_counts.shape)}")
            # stable: words of equal count keep the corpus's order, so the ranking is reproducible
            order = torch.sort(word_counts, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(ntoken)
        self.register_buffer("rank", rank)        # word id -> frequency rank
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(in_features, ntoken, cutoffs, div_value=div_value)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        target_log_prob = self.asm(hidden.reshape(-1, hidden.size(-1)), self.rank[targets.reshape(-1)]).output
        if reduction == "sum":
            return -target_log_prob.sum()
        if reduction == "mean":
            return -target_log_prob.mean()
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        by_rank = self.asm.log_prob(hidden.reshape(-1, hidden.size(-1)))
        return by_rank[:, self.rank]              # column i is word i
