"""Regularizers that live *around* the LSTM rather than inside its recurrence.

``rnnfused.LSTM`` applies zoneout, variational input/recurrent dropout, candidate dropout and weight drop
inside the fused kernel. A regularized language model (AWD-LSTM, Merity, Keskar & Socher 2017,
"Regularizing and Optimizing LSTM Language Models", arXiv:1708.02182) needs a few more pieces outside
it, collected here:

- :func:`ar_loss`, :func:`tar_loss` — activation regularization and temporal activation regularization
  (Merity, McCann & Socher 2017, "Revisiting Activation Regularization for Language RNNs",
  arXiv:1708.01009).
- :class:`LockedDropout` — variational dropout on a sequence: one mask per sequence, reused at every
  step (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout in Recurrent Neural
  Networks", arXiv:1512.05287).
- :class:`EmbeddingDropout` / :func:`embedding_dropout` — drop whole words from the embedding matrix
  (Gal & Ghahramani 2016, section 4.2; AWD-LSTM's ``embedded_dropout``).
- :class:`EarlyStopping` — stop when a validation metric stops improving and go back to the best
  weights (Prechelt 1998, "Early Stopping — But When?", in Neural Networks: Tricks of the Trade).

Everything here is plain PyTorch and works on any device and with ``torch.nn.LSTM`` as well.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

__all__ = ["ar_loss", "tar_loss", "LockedDropout", "EmbeddingDropout", "embedding_dropout",
           "EarlyStopping"]


def _check_rate(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p}")
    return p


def _check_coefficient(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def ar_loss(output: torch.Tensor, alpha: float) -> torch.Tensor:
    """Activation regularization (AR): ``alpha * mean(h_t ** 2)``.

    Merity, McCann & Socher 2017 (arXiv:1708.01009), as used by AWD-LSTM (arXiv:1708.02182, section 4.6):
    an L2 penalty on the last layer's output *after* dropout (AWD-LSTM's ``dropped_rnn_hs[-1]``),
    averaged over every element. Add the result to the loss. ``alpha = 0`` gives a zero that costs
    nothing. Layout does not matter (time-major or batch-first).

    >>> ar_loss(torch.tensor([[1., 3.]]), alpha=2.0)      # 2 * (1 + 9) / 2
    tensor(10.)
    """
    alpha = _check_coefficient("alpha", alpha)
    if alpha == 0.0:
        return output.new_zeros(())
    return alpha * output.pow(2).mean()


def tar_loss(output: torch.Tensor, beta: float, batch_first: bool = False) -> torch.Tensor:
    """Temporal activation regularization (TAR): ``beta * mean((h_t - h_{t+1}) ** 2)``.

    Merity, McCann & Socher 2017 (arXiv:1708.01009), as used by AWD-LSTM (arXiv:1708.02182, section 4.6):
    a slowness penalty on the last layer's *raw* output, before any dropout (AWD-LSTM's
    ``rnn_hs[-1]``), averaged over the T-1 differences and every batch element and unit. ``output`` is
    (T, B, H), or (B, T, H) with ``batch_first=True``; a sequence of length 1 gives 0.

    >>> tar_loss(torch.tensor([[[1.]], [[3.]], [[0.]]]), beta=1.0)   # ((3-1)^2 + (0-3)^2) / 2
    tensor(6.5000)
    """
    beta = _check_coefficient("beta", beta)
    time_dim = 1 if batch_first else 0
    if output.dim() <= time_dim:
        raise ValueError(f"tar_loss: output needs a time dimension {time_dim}, got shape {tuple(output.shape)}")
    steps = output.size(time_dim)
    if beta == 0.0 or steps < 2:
        return output.new_zeros(())
    diff = output.narrow(time_dim, 1, steps - 1) - output.narrow(time_dim, 0, steps - 1)
    return beta * diff.pow(2).mean()


class LockedDropout(nn.Module):
    """Variational ("locked") dropout: one mask per sequence, the same at every time step.

    Gal & Ghahramani 2016 (arXiv:1512.05287); AWD-LSTM applies it to the embeddings, between LSTM
    layers and to the last layer's output (arXiv:1708.02182, section 4.2). Each (sample, feature) is
    zeroed with probability ``p`` for the whole sequence and the survivors are scaled by ``1/(1-p)``,
    so the expectation is unchanged. In eval mode (or with ``p = 0``) it is the identity.

    Input: (T, B, *) time-major, or (B, T, *) with ``batch_first=True``; an unbatched (T, *) sequence
    (then ``batch_first`` is ignored: dim 0 is time); or a ``PackedSequence`` (each sample keeps one mask
    over its own steps; the result is packed the same way).

    ``rnnfused.LSTM(input_dropout=p)`` does the same to a layer's input inside the fused kernel; this
    module is for places outside an LSTM, and for ``torch.nn.LSTM``.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False):
        super().__init__()
        self.p = _check_rate("p", p)
        self.batch_first = bool(batch_first)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"

    def _mask(self, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        keep = 1.0 - self.p
        return like.new_empty(shape).bernoulli_(keep).div_(keep)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if isinstance(x, PackedSequence):
            batch_sizes = x.batch_sizes
            features = x.data.shape[1:]
            mask = self._mask(x.data, (int(batch_sizes[0]),) + tuple(features))
            # Row r of the packed data at step t is sample r (in sorted order) for r < batch_sizes[t].
            rows = torch.cat([torch.arange(int(n)) for n in batch_sizes]).to(x.data.device)
            return x._replace(data=x.data * mask[rows])
        if x.dim() < 2:
            raise ValueError(f"LockedDropout expects (T, B, *), (B, T, *) or (T, *) input, got shape {tuple(x.shape)}")
        time_dim = 1 if (self.batch_first and x.dim() >= 3) else 0
        shape = list(x.shape)
        shape[time_dim] = 1
        return x * self._mask(x, tuple(shape))


def embedding_dropout(embed: nn.Embedding, words: torch.Tensor, p: float, training: bool = True,
                      scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Look up ``words`` in ``embed`` with whole rows of the embedding matrix dropped.

    AWD-LSTM's ``embedded_dropout`` (arXiv:1708.02182, section 4.3; Gal & Ghahramani 2016,
    arXiv:1512.05287, section 4.2): each vocabulary entry is removed with probability ``p`` for this
    call — every occurrence of a dropped word in the batch becomes the zero vector — and the kept rows
    are scaled by ``1/(1-p)``. ``scale`` optionally multiplies the weight too (AWD-LSTM's argument).
    Not training, or ``p = 0``: a plain lookup. The gradient reaches the kept rows only.
    """
    p = _check_rate("p", p)
    weight = embed.weight
    if training and p > 0.0:
        keep = 1.0 - p
        mask = weight.new_empty((weight.size(0), 1)).bernoulli_(keep).div_(keep)
        if scale is None and embed.max_norm is None:
            # The same function, but the mask meets only the looked-up rows: masking the whole (V, d)
            # matrix costs two V*d passes per step, which for a 33k-word vocabulary outweighs the lookup.
            rows = F.embedding(words, weight, embed.padding_idx, None, embed.norm_type,
                               embed.scale_grad_by_freq, embed.sparse)
            return rows * F.embedding(words, mask)
        weight = weight * mask
    if scale is not None:
        weight = scale.expand_as(weight) * weight
    return F.embedding(words, weight, embed.padding_idx, embed.max_norm, embed.norm_type,
                       embed.scale_grad_by_freq, embed.sparse)


class EmbeddingDropout(nn.Embedding):
    """``nn.Embedding`` that drops whole words in training (see :func:`embedding_dropout`).

    A drop-in for ``nn.Embedding(num_embeddings, embedding_dim, ...)`` with one extra argument ``p``, the
    probability of dropping a vocabulary entry for one forward call. Parameters and ``state_dict`` are
    ``nn.Embedding``'s (one ``weight``), so weight tying (``decoder.weight = encoder.weight``) works as
    usual. Eval mode: a plain lookup.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, p: float = 0.1, **kwargs: Any):
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.p = _check_rate("p", p)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, p: float) -> "EmbeddingDropout":
        """Wrap an existing ``nn.Embedding``: same settings, and it shares (not copies) the weight."""
        new = cls(embedding.num_embeddings, embedding.embedding_dim, p=p, padding_idx=embedding.padding_idx,
                  max_norm=embedding.max_norm, norm_type=embedding.norm_type,
                  scale_grad_by_freq=embedding.scale_grad_by_freq, sparse=embedding.sparse,
                  _weight=embedding.weight.data, device=embedding.weight.device, dtype=embedding.weight.dtype)
        new.weight = embedding.weight
        return new

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        return embedding_dropout(self, words, self.p, self.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", p={self.p}"


class EarlyStopping:
    """Stop training when a monitored metric has not improved for ``patience`` evaluations.

    Prechelt 1998, "Early Stopping — But When?" (Neural Networks: Tricks of the Trade, LNCS 1524);
    semantics as Keras' ``EarlyStopping``. An evaluation *improves* when, in ``mode='min'``,
    ``metric < best - min_delta`` (``mode='max'``: ``metric > best + min_delta``); NaN never improves.
    After ``patience`` evaluations in a row without improvement, :meth:`step` returns True.

    With ``restore_best_weights=True`` (the default) each improvement stores a copy of
    ``model.state_dict()`` (tensors cloned, so later training cannot change it), and :meth:`restore`
    loads it back::

        stopper = EarlyStopping(patience=3)
        for epoch in range(epochs):
            train(...)
            if stopper.step(evaluate(...), model):
                break
        stopper.restore(model)        # the weights of the best epoch

    ``state_dict()`` / ``load_state_dict()`` save and resume the stopper itself (with the best weights).
    """

    def __init__(self, patience: int = 5, min_delta: float = 0.0, mode: str = "min",
                 restore_best_weights: bool = True):
        if int(patience) < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not float(min_delta) >= 0.0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = mode
        self.restore_best_weights = bool(restore_best_weights)
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.num_bad_steps = 0
        self.steps = 0
        self.should_stop = False
        self.best_state: Optional[dict[str, torch.Tensor]] = None

    def is_improvement(self, metric: float) -> bool:
        if math.isnan(metric):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return metric < self.best - self.min_delta
        return metric > self.best + self.min_delta

    def step(self, metric: float, model: Optional[nn.Module] = None) -> bool:
        """Record one evaluation; returns True when training should stop."""
        metric = float(metric)
        self.steps += 1
        if self.is_improvement(metric):
            self.best = metric
            self.best_step = self.steps
            self.num_bad_steps = 0
            if self.restore_best_weights and model is not None:
                self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.num_bad_steps += 1
        self.should_stop = self.num_bad_steps > 0 and self.num_bad_steps >= self.patience
        return self.should_stop

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; returns False (and leaves it alone) when none are stored."""
        if self.best_state is None:
            return False
        model.load_state_dict(self.best_state)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {k: copy.copy(getattr(self, k)) for k in (
            "patience", "min_delta", "mode", "restore_best_weights", "best", "best_step",
            "num_bad_steps", "steps", "should_stop", "best_state")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def __repr__(self) -> str:
        return (f"EarlyStopping(patience={self.patience}, min_delta={self.min_delta}, mode={self.mode!r}, "
                f"best={self.best}, best_step={self.best_step}, num_bad_steps={self.num_bad_steps})")
