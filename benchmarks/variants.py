"""The implementations the benchmarks compare, all built from one shared set of LSTM weights.

Each builder takes the reference `nn.LSTM` and returns a module with nn.LSTM's call signature
(`module(x) -> (output, (h_n, c_n))`, time-major input), or raises `Unavailable` with a reason that
the scripts record in their JSON. The regularized variants use SPEC §7's rates (`REG`).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# SPEC §7: zoneout 0.1 on c and h, input and recurrent dropout 0.25, weight drop 0.5.
REG = dict(zoneout=0.1, input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5)


class Unavailable(Exception):
    """A variant that cannot run here (library not installed, dtype not supported, ...)."""


class CellLoopLSTM(nn.Module):
    """What users write today: `nn.LSTMCell` in a Python loop with AWD-LSTM-style regularizers.

    Variational (locked) dropout on the input and on h with one `torch.bernoulli` mask per sequence,
    weight drop as `F.dropout` on W_hh once per forward (AWD-LSTM's WeightDrop) fed to the functional
    cell, and zoneout on c and h with fresh Bernoulli masks every step. Same math as SPEC §2.
    """

    def __init__(self, input_size, hidden_size, *, zoneout=0.0, input_dropout=0.0,
                 recurrent_dropout=0.0, weight_drop=0.0, device=None, dtype=None):
        super().__init__()
        self.cell = nn.LSTMCell(input_size, hidden_size, device=device, dtype=dtype)
        self.zoneout = zoneout
        self.input_dropout = input_dropout
        self.recurrent_dropout = recurrent_dropout
        self.weight_drop = weight_drop

    @staticmethod
    def _locked_mask(like: torch.Tensor, p: float) -> torch.Tensor:
        keep = 1.0 - p
        return torch.bernoulli(torch.full_like(like, keep)) / keep

    def forward(self, x, hx=None):
        T, B, _ = x.shape
        cell = self.cell
        if hx is None:
            h = c = x.new_zeros(B, cell.hidden_size)
        else:
            h, c = hx[0][0], hx[1][0]
        w_hh = F.dropout(cell.weight_hh, self.weight_drop, self.training)
        mh = None
        if self.training and self.input_dropout:
            x = x * self._locked_mask(x[0], self.input_dropout)
        if self.training and self.recurrent_dropout:
            mh = self._locked_mask(h, self.recurrent_dropout)
        z = self.zoneout
        outputs = []
        for t in range(T):
            h_in = h * mh if mh is not None else h
            h_new, c_new = torch._VF.lstm_cell(x[t], (h_in, c), cell.weight_ih, w_hh,
                                               cell.bias_ih, cell.bias_hh)
            if z and self.training:
                zc = torch.bernoulli(torch.full_like(c, z))
                zh = torch.bernoulli(torch.full_like(h, z))
                c = zc * c + (1 - zc) * c_new
                h = zh * h + (1 - zh) * h_new
            elif z:
                c = z * c + (1 - z) * c_new
                h = z * h + (1 - z) * h_new
            else:
                h, c = h_new, c_new
            outputs.append(h)
        return torch.stack(outputs), (h.unsqueeze(0), c.unsqueeze(0))


def reference_lstm(T, B, I, H, *, dtype, device, seed=0) -> nn.LSTM:
    """The nn.LSTM whose weights every other variant copies."""
    torch.manual_seed(seed)
    return nn.LSTM(I, H, device=device, dtype=dtype)


SUBJECTS = ("rnnfused", "rnnfused-reg")   # the variants that measure rnnfused itself


def import_rnnfused():
    """The rnnfused under test: the importable one (installed, or on PYTHONPATH), else this checkout's,
    built in place (`make build`). An unbuilt checkout raises an ImportError that says what to run."""
    try:
        import rnnfused
    except ModuleNotFoundError as e:
        if e.name != "rnnfused":
            raise
        sys.path.insert(0, REPO)
        import rnnfused
    return rnnfused


def require_subject(names) -> str | None:
    """Exits with the reason when `names` holds an rnnfused variant and rnnfused cannot be imported: a
    results file without the library it is about is worse than none. Returns 'version at path'."""
    if not any(n in SUBJECTS for n in names):
        return None
    try:
        rnnfused = import_rnnfused()
    except ImportError as e:
        sys.exit(f"benchmarks: cannot import rnnfused, whose variants ({', '.join(n for n in names if n in SUBJECTS)}) "
                 f"were asked for; nothing was measured or written.\n{e}")
    return f"{rnnfused.__version__} at {os.path.dirname(rnnfused.__file__)}"


def build_nn_lstm(ref: nn.LSTM, **_) -> nn.Module:
    return ref


def build_rnnfused(ref: nn.LSTM, *, regularized=False, **_) -> nn.Module:
    rnnfused = import_rnnfused()
    w = ref.weight_ih_l0
    m = rnnfused.LSTM(ref.input_size, ref.hidden_size, device=w.device, dtype=w.dtype,
                      **(REG if regularized else {}))
    m.load_state_dict(ref.state_dict())
    return m


def build_cell_loop(ref: nn.LSTM, **_) -> nn.Module:
    w = ref.weight_ih_l0
    m = CellLoopLSTM(ref.input_size, ref.hidden_size, device=w.device, dtype=w.dtype, **REG)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(m.cell, name).copy_(getattr(ref, name + "_l0"))
    return m


def build_haste(ref: nn.LSTM, **_) -> nn.Module:
    """Haste's fused LSTM with its own regularizers: zoneout (0.1) and DropConnect on W_hh (0.5).

    Haste has no input or recurrent dropout, so this variant does somewhat less work than the others.
    """
    try:
        import haste_pytorch
    except Exception as e:
        raise Unavailable(f"haste_pytorch not importable ({type(e).__name__}: {e})") from None
    w = ref.weight_ih_l0
    m = haste_pytorch.LSTM(ref.input_size, ref.hidden_size, zoneout=REG["zoneout"],
                           dropout=REG["weight_drop"])
    return m.to(device=w.device, dtype=w.dtype)


# name -> (builder, keyword arguments, one-line description for the JSON)
VARIANTS: dict[str, tuple[Callable, dict, str]] = {
    "nn.LSTM": (build_nn_lstm, {}, "torch.nn.LSTM, no regularization (cuDNN on GPU, oneDNN on CPU)"),
    "rnnfused": (build_rnnfused, {}, "rnnfused.LSTM, every rate 0"),
    "rnnfused-reg": (build_rnnfused, {"regularized": True}, f"rnnfused.LSTM({REG})"),
    "cell-loop-reg": (build_cell_loop, {}, f"Python loop over nn.LSTMCell with {REG}"),
    "compile-loop-reg": (build_cell_loop, {}, "cell-loop-reg under torch.compile"),
    "haste-reg": (build_haste, {}, "haste_pytorch.LSTM(zoneout=0.1, dropout=0.5 DropConnect on W_hh)"),
}
BASELINE = "nn.LSTM"


def nn_lstm_backend(device: torch.device, dtype: torch.dtype) -> str:
    """Which library nn.LSTM dispatches to here, for the JSON."""
    if device.type == "cuda":
        return f"cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.enabled else "native"
    if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
        return "oneDNN"
    return "native"


def build(name: str, ref: nn.LSTM) -> nn.Module:
    """Builds variant `name` from `ref`, in training mode; raises Unavailable if it cannot run here."""
    builder, kwargs, _ = VARIANTS[name]
    m = builder(ref, **kwargs)
    m.train()
    return m
