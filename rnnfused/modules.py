"""rnnfused.LSTM: a drop-in for torch.nn.LSTM with regularizers inside the recurrence (SPEC §4).

The stack and the directions live here; each (layer, direction) is one call of the fused layer
op (`rnnfused.functional.lstm_layer`). The parameters, their names, shapes, initialisation and
state_dict keys are torch.nn.LSTM's, so weights move between the two both ways.

It is an nn.Module rather than an nn.LSTM subclass on purpose: torch.compile refuses to trace
anything that is an instance of nn.LSTM, and tracing without graph breaks is one of the things
this module offers over nn.LSTM.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .functional import check_rate, lstm_layer, _seed_tensor

__all__ = ["LSTM"]

Rate = Union[float, Sequence[float]]
_RATE_ARGS = ("input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout",
              "zoneout_c", "zoneout_h")


def _per_layer(name: str, value: Rate, num_layers: int) -> Tuple[float, ...]:
    """A rate given as one float or one value per layer, as a tuple with one value per layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"rnnfused.LSTM: {name} must be a float or hold one value per layer "
                             f"({num_layers}), got {len(value)} values")
        return tuple(check_rate(name, v) for v in value)
    return (check_rate(name, value),) * num_layers


class LSTM(nn.Module):
    r"""Multi-layer LSTM with zoneout, variational dropout, candidate dropout and weight drop
    applied inside fused kernels; with every rate 0 it computes exactly what torch.nn.LSTM does.

    Arguments before ``*`` are torch.nn.LSTM's. The regularizers (each a float for all layers or a
    sequence with one value per layer; rates lie in [0, 1)):

    - ``zoneout``: zoneout rate on both the cell and the hidden state (Krueger et al., 2017);
      ``zoneout_c`` / ``zoneout_h`` override one of them.
    - ``input_dropout``: variational dropout on each layer's input, one mask per sequence
      (Gal & Ghahramani, 2016).
    - ``recurrent_dropout``: variational dropout on the recurrent state h_{t-1}, one mask per
      sequence.
    - ``weight_drop``: DropConnect on the recurrent weights W_hh, one mask per forward call
      (Merity et al., 2018, AWD-LSTM).
    - ``candidate_dropout``: dropout on the cell candidate g, a new mask each step
      (Semeniuta et al., 2016).

    In evaluation mode dropout and weight drop are the identity and zoneout takes its expectation.
    ``dropout`` keeps nn.LSTM's meaning: ordinary dropout on each layer's output but the last.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, zoneout: Rate = 0.0,
                 zoneout_c: Optional[Rate] = None, zoneout_h: Optional[Rate] = None,
                 input_dropout: Rate = 0.0, recurrent_dropout: Rate = 0.0, weight_drop: Rate = 0.0,
                 candidate_dropout: Rate = 0.0):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"rnnfused.LSTM: {name} must be a positive integer, got {value!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size < 0:
            raise ValueError(f"rnnfused.LSTM: proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError("rnnfused.LSTM: proj_size has to be smaller than hidden_size")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError("rnnfused.LSTM: dropout should be a number in range [0, 1] representing "
                             "the probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            import warnings
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}")
        self.mode = "LSTM"
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        self.zoneout_c = _per_layer("zoneout_c", zoneout if zoneout_c is None else zoneout_c,
                                    self.num_layers)
        self.zoneout_h = _per_layer("zoneout_h", zoneout if zoneout_h is None else zoneout_h,
                                    self.num_layers)
        self.input_dropout = _per_layer("input_dropout", input_dropout, self.num_layers)
        self.recurrent_dropout = _per_layer("recurrent_dropout", recurrent_dropout, self.num_layers)
        self.weight_drop = _per_layer("weight_drop", weight_drop, self.num_layers)
        self.candidate_dropout = _per_layer("candidate_dropout", candidate_dropout, self.num_layers)

        factory = {"device": device, "dtype": dtype}
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        gate_size = 4 * self.hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(self.num_layers):
            for direction in range(num_directions):
                layer_input = self.input_size if layer == 0 else real_hidden * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input)),
                          ("weight_hh", (gate_size, real_hidden))]
                if self.bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if self.proj_size > 0:
                    shapes += [("weight_hr", (self.proj_size, self.hidden_size))]
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    # -- nn.LSTM's surface ------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """nn.LSTM's initialisation: U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for all."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """A no-op: the fused kernels read the parameters where they are."""

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        for name in _RATE_ARGS:
            values = getattr(self, name)
            if any(v > 0 for v in values):
                shown = values[0] if len(set(values)) == 1 else list(values)
                s += f", {name}={shown}"
        return s

    # -- conversion --------------------------------------------------------------------------

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **rates) -> "LSTM":
        """A rnnfused.LSTM with `lstm`'s configuration and weights (on its device and dtype) and
        the given regularization rates."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"rnnfused.LSTM.from_lstm: lstm must be a torch.nn.LSTM, got "
                            f"{type(lstm).__name__}")
        ref = next(lstm.parameters())
        model = cls(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                    lstm.batch_first, lstm.dropout, lstm.bidirectional, lstm.proj_size,
                    device=ref.device, dtype=ref.dtype, **rates)
        model.load_state_dict(lstm.state_dict())
        model.train(lstm.training)
        return model

    def to_lstm(self) -> nn.LSTM:
        """A torch.nn.LSTM with this module's configuration and weights (the regularizers inside
        the recurrence have no nn.LSTM equivalent and are dropped)."""
        ref = next(self.parameters())
        lstm = nn.LSTM(self.input_size, self.hidden_size, self.num_layers, self.bias,
                       self.batch_first, self.dropout, self.bidirectional, self.proj_size,
                       device=ref.device, dtype=ref.dtype)
        lstm.load_state_dict(self.state_dict())
        lstm.train(self.training)
        return lstm

    # -- forward -----------------------------------------------------------------------------

    def _needs_seed(self) -> bool:
        if not self.training:
            return False
        return any(v > 0 for name in _RATE_ARGS for v in getattr(self, name))

    def _check_hx(self, hx, batch: int, unbatched: bool, ref: Tensor):
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        expected = [(self.num_layers * num_directions, batch, real_hidden),
                    (self.num_layers * num_directions, batch, self.hidden_size)]
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("rnnfused.LSTM: hx must be a tuple (h_0, c_0) of tensors")
        out = []
        for k, (state, shape, name) in enumerate(zip(hx, expected, ("h_0", "c_0"))):
            if not isinstance(state, Tensor):
                raise TypeError(f"rnnfused.LSTM: hx[{k}] ({name}) must be a Tensor, got "
                                f"{type(state).__name__}")
            want_dim = 2 if unbatched else 3
            if state.dim() != want_dim:
                raise ValueError(f"rnnfused.LSTM: for {'unbatched 2-D' if unbatched else 'batched 3-D'} "
                                 f"input, hx[{k}] ({name}) should be {want_dim}-D but got "
                                 f"{state.dim()}-D tensor")
            if unbatched:
                state = state.unsqueeze(1)
            if tuple(state.shape) != shape:
                got = tuple(state.shape if not unbatched else state.squeeze(1).shape)
                want = shape if not unbatched else (shape[0], shape[2])
                raise ValueError(f"rnnfused.LSTM: hx[{k}] ({name}) must have shape {want}, "
                                 f"got {got}")
            if state.dtype != ref.dtype or state.device != ref.device:
                raise ValueError(f"rnnfused.LSTM: hx[{k}] ({name}) must have the input's dtype "
                                 f"and device ({ref.dtype}, {ref.device}), got "
                                 f"({state.dtype}, {state.device})")
            out.append(state)
        return out

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        sorted_indices = unsorted_indices = None
        batch_sizes = None
        if packed:
            batch_sizes, sorted_indices, unsorted_indices = (
                input.batch_sizes, input.sorted_indices, input.unsorted_indices)
            x, lengths = pad_packed_sequence(input, batch_first=False)  # original sample order
            unbatched = False
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"rnnfused.LSTM: input must be a Tensor or a PackedSequence, got "
                                f"{type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"rnnfused.LSTM: input must be 2-D (unbatched) or 3-D, got "
                                 f"{input.dim()}-D of shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(1) if unbatched else input
            if self.batch_first and not unbatched:
                x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"rnnfused.LSTM: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {x.shape[-1]}")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype or x.device != weight.device:
            raise ValueError(f"rnnfused.LSTM: input must have the parameters' dtype and device "
                             f"({weight.dtype}, {weight.device}), got ({x.dtype}, {x.device})")
        if x.shape[0] == 0:
            raise ValueError("rnnfused.LSTM: input has a zero-length sequence (seq_len = 0); "
                             "nn.LSTM cannot run it either")
        batch = x.shape[1]
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        if hx is None:
            h0 = x.new_zeros((self.num_layers * num_directions, batch, real_hidden))
            c0 = x.new_zeros((self.num_layers * num_directions, batch, self.hidden_size))
        else:
            h0, c0 = self._check_hx(hx, batch, unbatched, x)

        seed = _seed_tensor(None) if self._needs_seed() else torch.zeros((), dtype=torch.int64)
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                idx = layer * num_directions + direction
                names = self._all_weights[idx]
                params = dict((name.split("_l")[0], getattr(self, name)) for name in names)
                out, h, c = lstm_layer(
                    layer_input, h0[idx], c0[idx], params["weight_ih"], params["weight_hh"],
                    params.get("bias_ih"), params.get("bias_hh"), params.get("weight_hr"),
                    seed=seed, training=self.training, layer=layer, reverse=direction == 1,
                    lengths=lengths,
                    input_dropout=self.input_dropout[layer],
                    recurrent_dropout=self.recurrent_dropout[layer],
                    weight_drop=self.weight_drop[layer],
                    candidate_dropout=self.candidate_dropout[layer],
                    zoneout_c=self.zoneout_c[layer], zoneout_h=self.zoneout_h[layer])
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        output = layer_input
        h_n = torch.stack(h_n, 0)
        c_n = torch.stack(c_n, 0)

        if packed:
            if sorted_indices is not None:
                output = output.index_select(1, sorted_indices)
                sorted_lengths = lengths.index_select(0, sorted_indices.cpu())
            else:
                sorted_lengths = lengths
            data = pack_padded_sequence(output, sorted_lengths, enforce_sorted=True).data
            return PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)


def _register_safe_globals() -> None:
    # torch.load(weights_only=True) of a whole model holding an rnnfused.LSTM.
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add([LSTM])


_register_safe_globals()
