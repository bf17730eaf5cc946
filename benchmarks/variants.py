"""The implementations the benchmarks compare, per cell (LSTM, GRU, LN-LSTM), all built from one set of
weights.

A cell (`CELLS`) names its torch module (`nn.LSTM` / `nn.GRU`), whose freshly seeded instance is the
reference every variant copies its weights from, and the baseline the others are compared with. The
layer-normalized LSTM (SPEC §2c, key `lnlstm`) has no torch module: its baseline is the plain nn.LSTM,
the fastest thing a user has, and its variants get the weights of that nn.LSTM plus layer-norm gains at
their initial values. Each builder takes that reference and the cell and returns a module with the torch
module's call signature (`module(x) -> (output, state)`, time-major input), or raises `Unavailable` with
a reason that the scripts record in their JSON. The regularized variants use SPEC §7's rates (`REG`)
for every cell.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# SPEC §7: zoneout 0.1 (on c and h for the LSTM, on h for the GRU, which has no c), input and
# recurrent dropout 0.25, weight drop 0.5.
REG = dict(zoneout=0.1, input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5)


class Unavailable(Exception):
    """A variant that cannot run here (library not installed, dtype not supported, ...)."""


LN_EPS = 1e-5  # SPEC §2c's epsilon, the one F.layer_norm uses by default


class LayerNormLSTMCell(nn.Module):
    """The layer-normalized LSTM cell as users write it (Ba et al. 2016; SPEC §2c): nn.LSTMCell's
    parameters plus the gains of the two GEMM terms' layer norms and the gain and bias of the cell's."""

    def __init__(self, input_size, hidden_size, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        lstm = nn.LSTMCell(input_size, hidden_size, **kw)  # torch's parameters and initialisation
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih, self.weight_hh = lstm.weight_ih, lstm.weight_hh
        self.bias_ih, self.bias_hh = lstm.bias_ih, lstm.bias_hh
        self.ln_weight_ih = nn.Parameter(torch.ones(4 * hidden_size, **kw))
        self.ln_weight_hh = nn.Parameter(torch.ones(4 * hidden_size, **kw))
        self.ln_weight_c = nn.Parameter(torch.ones(hidden_size, **kw))
        self.ln_bias_c = nn.Parameter(torch.zeros(hidden_size, **kw))


def _lstm_step(cell, x, h_in, rest, w_hh):
    return torch._VF.lstm_cell(x, (h_in, rest[0]), cell.weight_ih, w_hh, cell.bias_ih, cell.bias_hh)


def _gru_step(cell, x, h_in, rest, w_hh):
    return (torch._VF.gru_cell(x, h_in, cell.weight_ih, w_hh, cell.bias_ih, cell.bias_hh),)


def _ln_lstm_step(cell, x, h_in, rest, w_hh):
    G, H = cell.weight_ih.shape[0], cell.hidden_size
    a = (F.layer_norm(x @ cell.weight_ih.t(), (G,), cell.ln_weight_ih, None, LN_EPS)
         + F.layer_norm(h_in @ w_hh.t(), (G,), cell.ln_weight_hh, None, LN_EPS)
         + cell.bias_ih + cell.bias_hh)
    i, f, g, o = a.chunk(4, 1)
    c = torch.sigmoid(f) * rest[0] + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), cell.ln_weight_c, cell.ln_bias_c, LN_EPS))
    return h, c


@dataclass(frozen=True)
class Cell:
    """One recurrent cell: the name torch, rnnfused and haste_pytorch give it, its state and its step."""
    key: str            # "lstm" | "gru" | "lnlstm": the --cell value and the "cell" field of the JSON rows
    name: str           # "LSTM" | "GRU": the class name in torch.nn and rnnfused (the LN-LSTM's is "LSTM")
    state: tuple        # names of the state tensors, h first: ("h", "c") | ("h",)
    step: Callable      # (loop cell module, x_t, h_in, rest of the state, dropped w_hh) -> new state tuple
    layer_norm: bool = False   # rnnfused.LSTM(layer_norm=True); the loop uses LayerNormLSTMCell

    @property
    def haste_name(self) -> str:
        """haste_pytorch's class: 'LSTM' | 'GRU' | 'LayerNormLSTM'."""
        return "LayerNorm" + self.name if self.layer_norm else self.name

    @property
    def baseline(self) -> str:
        """The variant every other one is compared with: 'nn.LSTM' (also for the LN-LSTM) | 'nn.GRU'."""
        return f"nn.{self.name}"

    @property
    def ratio_key(self) -> str:
        """The rows' ratio field, named after the baseline: 'vs_nn_lstm' | 'vs_nn_gru'."""
        return f"vs_nn_{self.name.lower()}"

    def loop_cell(self, input_size, hidden_size, **factory) -> nn.Module:
        """The cell module of the Python loop: nn.LSTMCell | nn.GRUCell | LayerNormLSTMCell."""
        if self.layer_norm:
            return LayerNormLSTMCell(input_size, hidden_size, **factory)
        return getattr(nn, self.name + "Cell")(input_size, hidden_size, **factory)


CELLS = {"lstm": Cell("lstm", "LSTM", ("h", "c"), _lstm_step),
         "gru": Cell("gru", "GRU", ("h",), _gru_step),
         "lnlstm": Cell("lnlstm", "LSTM", ("h", "c"), _ln_lstm_step, layer_norm=True)}


class CellLoop(nn.Module):
    """What users write today: `nn.LSTMCell` / `nn.GRUCell` / a layer-normalized LSTM cell in a Python
    loop with AWD-LSTM-style regularizers.

    Variational (locked) dropout on the input and on h with one `torch.bernoulli` mask per sequence,
    weight drop as `F.dropout` on W_hh once per forward (AWD-LSTM's WeightDrop) fed to the functional
    cell (`torch._VF.lstm_cell` / `gru_cell`, or the LN-LSTM's step: `F.layer_norm` on both GEMM terms
    and on the new cell), and zoneout on every state tensor (c and h; h for the GRU) with fresh
    Bernoulli masks every step. The LSTM's and the LN-LSTM's are SPEC §2's and §2c's math; the GRU's
    differs from SPEC §2b in one term: `nn.GRUCell` takes one h, so the masked h also enters
    `z ⊙ h_{t-1}` (the same work, which is what the timing compares).
    """

    def __init__(self, cell: Cell, input_size, hidden_size, *, zoneout=0.0, input_dropout=0.0,
                 recurrent_dropout=0.0, weight_drop=0.0, device=None, dtype=None):
        super().__init__()
        self.kind = cell
        self.cell = cell.loop_cell(input_size, hidden_size, device=device, dtype=dtype)
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
            state = tuple(x.new_zeros(B, cell.hidden_size) for _ in self.kind.state)
        else:
            state = tuple(s[0] for s in (hx if isinstance(hx, tuple) else (hx,)))
        w_hh = F.dropout(cell.weight_hh, self.weight_drop, self.training)
        mh = None
        if self.training and self.input_dropout:
            x = x * self._locked_mask(x[0], self.input_dropout)
        if self.training and self.recurrent_dropout:
            mh = self._locked_mask(state[0], self.recurrent_dropout)
        z = self.zoneout
        outputs = []
        for t in range(T):
            h_in = state[0] * mh if mh is not None else state[0]
            new = self.kind.step(cell, x[t], h_in, state[1:], w_hh)
            if z and self.training:
                keep = [torch.bernoulli(torch.full_like(s, z)) for s in state]
                state = tuple(k * s + (1 - k) * n for k, s, n in zip(keep, state, new))
            elif z:
                state = tuple(z * s + (1 - z) * n for s, n in zip(state, new))
            else:
                state = tuple(new)
            outputs.append(state[0])
        final = tuple(s.unsqueeze(0) for s in state)
        return torch.stack(outputs), (final if len(final) > 1 else final[0])


def reference(cell: Cell, T, B, I, H, *, dtype, device, seed=0) -> nn.Module:
    """The nn.LSTM / nn.GRU whose weights every other variant of the cell copies."""
    torch.manual_seed(seed)
    return getattr(nn, cell.name)(I, H, device=device, dtype=dtype)


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


def _rnnfused(cell: Cell):
    module = getattr(import_rnnfused(), cell.name, None)
    if module is None:  # a build of rnnfused that predates this cell
        raise Unavailable(f"rnnfused.{cell.name} does not exist in this rnnfused")
    return module


def build_baseline(ref: nn.Module, cell: Cell, **_) -> nn.Module:
    return ref


def build_rnnfused(ref: nn.Module, cell: Cell, *, regularized=False, **_) -> nn.Module:
    w = ref.weight_ih_l0
    module = _rnnfused(cell)
    options = dict(REG if regularized else {})
    if cell.layer_norm:
        if not hasattr(torch.ops.rnnfused, "ln_lstm_forward"):  # a build that predates SPEC §2c
            raise Unavailable("this rnnfused has no layer-normalized LSTM (torch.ops.rnnfused.ln_lstm_forward)")
        options["layer_norm"] = True
    m = module(ref.input_size, ref.hidden_size, device=w.device, dtype=w.dtype, **options)
    m.load_state_dict(ref.state_dict(), strict=not cell.layer_norm)  # the LN gains stay at 1 and 0
    return m


def build_cell_loop(ref: nn.Module, cell: Cell, **_) -> nn.Module:
    w = ref.weight_ih_l0
    m = CellLoop(cell, ref.input_size, ref.hidden_size, device=w.device, dtype=w.dtype, **REG)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(m.cell, name).copy_(getattr(ref, name + "_l0"))
    return m  # the LN-LSTM cell's gains keep their initial values, as rnnfused's do


def build_haste(ref: nn.Module, cell: Cell, **_) -> nn.Module:
    """Haste's fused LSTM / GRU / LayerNormLSTM with its own regularizers: zoneout (0.1) and
    DropConnect on W_hh (0.5).

    Haste has no input or recurrent dropout, so this variant does somewhat less work than the others.
    """
    try:
        import haste_pytorch
    except Exception as e:
        raise Unavailable(f"haste_pytorch not importable ({type(e).__name__}: {e})") from None
    w = ref.weight_ih_l0
    m = getattr(haste_pytorch, cell.haste_name)(ref.input_size, ref.hidden_size, zoneout=REG["zoneout"],
                                                dropout=REG["weight_drop"])
    return m.to(device=w.device, dtype=w.dtype)


# Variable-length input (run.py --packed): the same batch with lengths drawn uniformly from [T/4, T] by a
# fixed seed, in random order, handed over as a PackedSequence.
PACKED_SEED = 4321
PACKED_LENGTHS = (f"lengths uniform in [T/4, T] (torch.randint, seed {PACKED_SEED}), unsorted; '-packed': "
                  "pack_padded_sequence(enforce_sorted=False) in, pad_packed_sequence out, both timed")


@functools.lru_cache(maxsize=None)
def packed_lengths(T: int, B: int) -> torch.Tensor:
    """The lengths of a packed benchmark batch: B integers uniform in [max(1, T // 4), T], fixed seed."""
    g = torch.Generator().manual_seed(PACKED_SEED)
    return torch.randint(max(1, T // 4), T + 1, (B,), generator=g)


class Packed(nn.Module):
    """`inner` on the padded (T, B, I) batch cut at packed_lengths(T, B), the output padded back to
    (T, B, ·) (zeros past each length), in one of two forms:

    - "packed": the way users call an RNN on variable-length data: pack_padded_sequence
      (enforce_sorted=False), the module, pad_packed_sequence; packing and unpacking are timed;
    - "lengths": rnnfused's own form, the padded batch with lengths= to the module's forward (its
      `lengths` extension; nothing of nn.LSTM's has it), no PackedSequence.
    """

    def __init__(self, inner: nn.Module, form: str = "packed"):
        super().__init__()
        if form not in ("packed", "lengths"):
            raise ValueError(f"form must be 'packed' or 'lengths', got {form!r}")
        self.inner, self.form = inner, form

    def forward(self, x, hx=None):
        T, B, _ = x.shape
        lengths = packed_lengths(T, B)
        if self.form == "lengths":
            return self.inner(x, hx, lengths=lengths)
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, state = self.inner(packed, hx)
        return pad_packed_sequence(out, total_length=T)[0], state


def build_packed(ref: nn.Module, cell: Cell, *, inner: Callable, form: str = "packed",
                 **kwargs) -> nn.Module:
    return Packed(inner(ref, cell, **kwargs), form)


# The description of the '-lengths' variants (Packed's "lengths" form).
LENGTHS_FORM = "the padded batch and lengths=packed_lengths(T, B) to rnnfused's forward (no PackedSequence)"


def nn_backend(cell: Cell, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str:
    """Which library the torch module dispatches to; without a device, both (for the descriptions)."""
    if device is None:
        return f"cuDNN on GPU, {nn_backend(cell, torch.device('cpu'))} on CPU"
    if device.type == "cuda":
        return f"cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.enabled else "native"
    # ATen sends only the LSTM to oneDNN (aten::mkldnn_rnn_layer); nn.GRU runs ATen's own loop.
    if cell.name == "LSTM" and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled:
        return "oneDNN"
    return "native (ATen)"


def variants(cell: Cell, packed: bool = False) -> dict[str, tuple[Callable, dict, str]]:
    """name -> (builder, keyword arguments, one-line description for the JSON), the baseline first. With
    `packed`, also the variable-length variants (opt-in: run.py --packed): each the padded variant of the
    name without '-packed' on the same batch as a PackedSequence (PACKED_LENGTHS), and for rnnfused's,
    '-lengths', the padded batch with its lengths (LENGTHS_FORM)."""
    if packed:
        plain = variants(cell)
        extra = {f"{name}-packed": (build_packed, dict(kwargs, inner=builder), f"{desc}; {PACKED_LENGTHS}")
                 for name, (builder, kwargs, desc) in plain.items() if name in (cell.baseline, *SUBJECTS)}
        lengths = {f"{name}-lengths": (build_packed, dict(kwargs, inner=builder, form="lengths"),
                                       f"{desc}; {LENGTHS_FORM}")
                   for name, (builder, kwargs, desc) in plain.items() if name in SUBJECTS}
        return {**plain, **extra, **lengths}
    n = cell.name
    ln = "layer_norm=True" if cell.layer_norm else ""
    loop = ("a layer-normalized LSTM cell (F.layer_norm on both GEMM terms and on c)" if cell.layer_norm
            else f"nn.{n}Cell")
    return {
        cell.baseline: (build_baseline, {}, f"torch.nn.{n}, no regularization ({nn_backend(cell)})"),
        "rnnfused": (build_rnnfused, {}, f"rnnfused.{n}{f'({ln})' if ln else ''}, every rate 0"),
        "rnnfused-reg": (build_rnnfused, {"regularized": True},
                         f"rnnfused.{n}({ln + ', ' if ln else ''}{REG})"),
        "cell-loop-reg": (build_cell_loop, {}, f"Python loop over {loop} with {REG}"),
        "compile-loop-reg": (build_cell_loop, {}, "cell-loop-reg under torch.compile"),
        "haste-reg": (build_haste, {}, f"haste_pytorch.{cell.haste_name}(zoneout=0.1, dropout=0.5 "
                      "DropConnect on W_hh)"),
    }


ALL_NAMES = list(dict.fromkeys(name for cell in CELLS.values() for name in variants(cell, packed=True)))


def packed_names(cell: Cell) -> list[str]:
    """run.py --packed's default: the baseline and rnnfused-reg, each padded and packed; rnnfused-reg also
    padded with lengths."""
    return [cell.baseline, f"{cell.baseline}-packed", "rnnfused-reg", "rnnfused-reg-packed",
            "rnnfused-reg-lengths"]


def build(name: str, ref: nn.Module, cell: Cell | str = "lstm") -> nn.Module:
    """Builds `cell`'s variant `name` from `ref`, in training mode; raises Unavailable if it cannot run
    here (or if the cell has no such variant)."""
    cell = CELLS[cell] if isinstance(cell, str) else cell
    every = variants(cell, packed=True)
    if name not in every:
        raise Unavailable(f"no {name} variant for the {cell.name}")
    builder, kwargs, _ = every[name]
    m = builder(ref, cell, **kwargs)
    m.train()
    return m
