"""What the same regularized training costs with the ``nn.LSTMCell`` loop users write today.

:class:`LSTMCellLoop` is a drop-in for one single-layer ``rnnfused.LSTM`` of the language model: the same
weights and the same regularizers written the usual way in Python — locked (variational) dropout on the
input, weight drop as ``F.dropout`` on W_hh once per forward (AWD-LSTM's WeightDrop), variational dropout
on h_{t-1}, zoneout on c and h with fresh Bernoulli masks each step — around ``torch._VF.lstm_cell``
(the function ``nn.LSTMCell`` calls). Candidate dropout and layer norm are not written out; a model with
them is not timed.

:func:`time_cell_loop` times a few training batches of a copy of the model with its LSTM layers replaced
by such loops, and of a copy with the fused layers, on the same batches, and extrapolates the loop's time
to a whole run: an estimate from a few batches, labelled as such wherever it is printed.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn


class LSTMCellLoop(nn.Module):
    """One layer, one direction; ``forward(x (T, B, I), (h0, c0) each (1, B, H)) -> (y, (h_n, c_n))``."""

    def __init__(self, fused):
        super().__init__()
        if fused.num_layers != 1 or fused.bidirectional or getattr(fused, "proj_size", 0):
            raise ValueError("LSTMCellLoop replaces a single-layer, unidirectional LSTM without projection")
        if getattr(fused, "layer_norm", False) or _rate(fused, "candidate_dropout"):
            raise ValueError("LSTMCellLoop does not write out layer norm or candidate dropout")
        self.cell = nn.LSTMCell(fused.input_size, fused.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(fused, f"{name}_l0"))
        self.hidden_size = fused.hidden_size
        self.input_dropout = _rate(fused, "input_dropout")
        self.recurrent_dropout = _rate(fused, "recurrent_dropout")
        self.weight_drop = _rate(fused, "weight_drop")
        self.zoneout_c, self.zoneout_h = _rate(fused, "zoneout_c"), _rate(fused, "zoneout_h")

    @staticmethod
    def _locked(like: torch.Tensor, p: float) -> torch.Tensor:
        return torch.bernoulli(torch.full_like(like, 1.0 - p)) / (1.0 - p)

    def forward(self, x, hx):
        h, c = hx[0][0], hx[1][0]
        cell = self.cell
        w_hh = F.dropout(cell.weight_hh, self.weight_drop, self.training)
        if self.training and self.input_dropout:
            x = x * self._locked(x[0], self.input_dropout)
        mh = self._locked(h, self.recurrent_dropout) if self.training and self.recurrent_dropout else None
        outputs = []
        for t in range(x.size(0)):
            h_new, c_new = torch._VF.lstm_cell(x[t], (h * mh if mh is not None else h, c), cell.weight_ih, w_hh,
                                               cell.bias_ih, cell.bias_hh)
            if self.training:
                if self.zoneout_c:
                    keep = torch.bernoulli(torch.full_like(c, self.zoneout_c))
                    c_new = keep * c + (1 - keep) * c_new
                if self.zoneout_h:
                    keep = torch.bernoulli(torch.full_like(h, self.zoneout_h))
                    h_new = keep * h + (1 - keep) * h_new
            else:
                c_new = self.zoneout_c * c + (1 - self.zoneout_c) * c_new
                h_new = self.zoneout_h * h + (1 - self.zoneout_h) * h_new
            h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))


def _rate(module, name: str) -> float:
    value = getattr(module, name, 0.0)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return float(value or 0.0)


def _time_batches(model, batches, clip: float, lr: float) -> float:
    """Seconds per training step (forward, backward, clipping, Adam) over ``batches``, after one warm-up."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    hidden = model.init_hidden(batches[0][0].size(1))
    times = []
    for k, (data, targets) in enumerate([batches[0], *batches]):
        start = time.perf_counter()
        hidden = [tuple(s.detach() for s in hx) for hx in hidden]
        output, hidden, _ = model(data, hidden)
        loss = model.decoder.nll(output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if k:                                   # the first is the warm-up
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def time_cell_loop(model, batches, clip: float = 0.0, lr: float = 1e-3) -> dict:
    """Seconds per training step of copies of ``model``: as it is (``fused_s``) and with every LSTM layer an
    :class:`LSTMCellLoop` (``loop_s``), on the same ``batches`` [(data, targets), ...]. The model itself is
    not changed. Raises ValueError for a model whose layers the loop cannot copy."""
    fused = copy.deepcopy(model)
    loop = copy.deepcopy(model)
    loop.rnns = nn.ModuleList(LSTMCellLoop(rnn) for rnn in model.rnns)
    fused_s = _time_batches(fused, batches, clip, lr)
    loop_s = _time_batches(loop, batches, clip, lr)
    return dict(fused_s=fused_s, loop_s=loop_s, batches=len(batches))
