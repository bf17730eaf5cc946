"""The language model: embedding -> stack of LSTM layers -> softmax decoder, AWD-LSTM style.

Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language Models" (arXiv:1708.02182).
Every regularizer is a constructor argument, 0 turns it off:

==================  =======================================================  ==========================
argument            what it does                                             where it runs
==================  =======================================================  ==========================
dropoute            drop whole words from the embedding matrix               EmbeddingDropout
dropouti            locked (variational) dropout on the embeddings           LSTM kernel or LockedDropout
dropouth            locked dropout on the input of each layer above the 1st  LSTM kernel or LockedDropout
dropout             locked dropout on the last layer's output                LockedDropout
wdrop               DropConnect on the hidden-to-hidden weights (AWD)        rnnfused LSTM kernel
zoneout_c/_h        zoneout on the cell / hidden state                       rnnfused LSTM kernel
recurrent_dropout   variational dropout on h_{t-1} (Gal & Ghahramani)        rnnfused LSTM kernel
candidate_dropout   dropout on the candidate g_t (Semeniuta et al.)          rnnfused LSTM kernel
tie_weights         decoder.weight is encoder.weight (Inan et al.; Press &   the model (full softmax)
                    Wolf), the last layer's size is then the embedding size
layer_norm          layer-normalized LSTM (Ba et al. 2016): LN on both       rnnfused LSTM kernel
                    GEMM terms and on the cell where it enters h
==================  =======================================================  ==========================

The decoder (``softmax.py``) is a full softmax (``softmax='full'``, tied or not) or an adaptive softmax
(``softmax='adaptive'``, with ``cutoffs`` and the training set's ``word_counts``), which the CPU preset
uses because the full softmax over 33,278 words is most of a small model's cost.

Each layer is its own single-layer LSTM (as in AWD-LSTM) so that layers can have different sizes (tying)
and so that the training loop gets the last layer's raw and dropped outputs for TAR and AR.

``lstm='rnnfused'`` uses ``rnnfused.LSTM``: locked dropout on each layer's input is its ``input_dropout``
(the same thing — one mask per sequence — applied inside the fused kernel, no extra tensor), and the
in-recurrence regularizers are available. ``lstm='torch'`` uses ``torch.nn.LSTM``: locked dropout runs as
separate ``LockedDropout`` modules and the in-recurrence regularizers (wdrop, zoneout, recurrent and
candidate dropout) cannot be applied, so the model refuses them unless ``ignore_unsupported=True``.
Parameter names are the same with both, so a checkpoint trained with one loads into the other.
``layer_norm=True`` (``rnnfused.LSTM(..., layer_norm=True)``) is refused with ``lstm='torch'`` whatever
``ignore_unsupported`` says: torch.nn.LSTM has no layer norm, so the model would be another model, with
other parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from rnnfused.regularization import EmbeddingDropout, LockedDropout

from softmax import AdaptiveSoftmax, FullSoftmax

IN_RECURRENCE = ("wdrop", "zoneout_c", "zoneout_h", "recurrent_dropout", "candidate_dropout")


def make_lstm_layer(kind: str, input_size: int, hidden_size: int, input_dropout: float, rates: dict,
                    layer_norm: bool = False):
    """One single-layer, unidirectional LSTM of the chosen implementation."""
    if kind == "torch":
        return nn.LSTM(input_size, hidden_size, 1)
    if kind == "rnnfused":
        import rnnfused
        return rnnfused.LSTM(input_size, hidden_size, 1, input_dropout=input_dropout,
                             weight_drop=rates["wdrop"], zoneout_c=rates["zoneout_c"],
                             zoneout_h=rates["zoneout_h"], recurrent_dropout=rates["recurrent_dropout"],
                             candidate_dropout=rates["candidate_dropout"], layer_norm=layer_norm)
    raise ValueError(f"lstm must be 'rnnfused' or 'torch', got {kind!r}")


class RNNModel(nn.Module):
    def __init__(self, ntoken: int, emsize: int, nhid: int, nlayers: int, *, lstm: str = "rnnfused",
                 tie_weights: bool = True, dropout: float = 0.4, dropouth: float = 0.25,
                 dropouti: float = 0.4, dropoute: float = 0.1, wdrop: float = 0.0, zoneout_c: float = 0.0,
                 zoneout_h: float = 0.0, recurrent_dropout: float = 0.0, candidate_dropout: float = 0.0,
                 softmax: str = "full", cutoffs=(2000, 10000), word_counts: torch.Tensor | None = None,
                 ignore_unsupported: bool = False, layer_norm: bool = False):
        super().__init__()
        if layer_norm and lstm == "torch":
            raise ValueError("layer_norm needs lstm='rnnfused': torch.nn.LSTM has no layer norm")
        if softmax not in ("full", "adaptive"):
            raise ValueError(f"softmax must be 'full' or 'adaptive', got {softmax!r}")
        if softmax == "adaptive" and tie_weights:
            raise ValueError("tie_weights needs softmax='full': the adaptive softmax has no single output "
                             "matrix to tie to the embedding")
        rates = dict(wdrop=wdrop, zoneout_c=zoneout_c, zoneout_h=zoneout_h,
                     recurrent_dropout=recurrent_dropout, candidate_dropout=candidate_dropout)
        self.lstm_kind = lstm
        self.layer_norm = layer_norm
        self.ignored = {k: v for k, v in rates.items() if v} if lstm == "torch" else {}
        if self.ignored and not ignore_unsupported:
            raise ValueError(f"torch.nn.LSTM cannot apply {sorted(self.ignored)} inside its recurrence; "
                             "set them to 0 or pass ignore_unsupported=True")
        self.ntoken, self.emsize, self.nhid, self.nlayers = ntoken, emsize, nhid, nlayers
        self.tie_weights = tie_weights

        self.encoder = EmbeddingDropout(ntoken, emsize, p=dropoute)
        sizes = [emsize] + [nhid] * (nlayers - 1) + [emsize if tie_weights else nhid]
        input_rates = [dropouti] + [dropouth] * (nlayers - 1)
        # rnnfused: the layer's own input_dropout is the locked dropout; torch: a LockedDropout before it.
        self.kernel_locked_dropout = lstm == "rnnfused"
        self.rnns = nn.ModuleList(
            make_lstm_layer(lstm, sizes[l], sizes[l + 1], input_rates[l], rates, layer_norm)
            for l in range(nlayers))
        self.input_drops = nn.ModuleList(
            LockedDropout(0.0 if self.kernel_locked_dropout else p) for p in input_rates)
        self.output_drop = LockedDropout(dropout)
        if softmax == "full":
            self.decoder = FullSoftmax(sizes[-1], ntoken)
        else:
            self.decoder = AdaptiveSoftmax(sizes[-1], ntoken, cutoffs, word_counts)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        if isinstance(self.decoder, FullSoftmax):
            nn.init.zeros_(self.decoder.bias)
            if not self.tie_weights:
                nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weight = self.encoder.weight
        return [(weight.new_zeros(1, batch_size, rnn.hidden_size), weight.new_zeros(1, batch_size, rnn.hidden_size))
                for rnn in self.rnns]

    def forward(self, tokens: torch.Tensor, hidden):
        """tokens (T, B) -> the dropped output (T, B, d) that feeds the decoder, new hidden, raw output.

        ``model.decoder.nll(output, targets)`` is the loss. AR uses the dropped output, TAR the raw one
        (AWD-LSTM's ``dropped_rnn_hs[-1]`` / ``rnn_hs[-1]``).
        """
        x = self.encoder(tokens)
        new_hidden = []
        for rnn, drop, hx in zip(self.rnns, self.input_drops, hidden):
            x, hx = rnn(drop(x), hx)
            new_hidden.append(hx)
        raw_output = x
        output = self.output_drop(raw_output)
        return output, new_hidden, raw_output


def repackage_hidden(hidden):
    """Detach the carried state from the previous batch's graph (truncated BPTT)."""
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return type(hidden)(repackage_hidden(h) for h in hidden)
