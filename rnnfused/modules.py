"""rnnfused.LSTM and rnnfused.GRU: drop-ins for torch.nn.LSTM / torch.nn.GRU with regularizers
inside the recurrence (SPEC §2, §2b, §4).

The ladder's top rungs live here: `RNNBase` holds the stack over layers and directions, the
parameters (nn.LSTM's and nn.GRU's names, shapes, initialisation and state_dict keys, so weights
move between the two both ways), the per-layer rates, the hx checks and the packed / unbatched /
batch-first handling. `LSTM` and `GRU` only name their gate count, their state, their rates, any
parameters of their own beyond torch's (the LSTM's layer-norm gains, SPEC §2c) and the
per-(layer, direction) call: one fused layer op, `rnnfused.functional.lstm_layer` / `gru_layer`.

They are nn.Modules rather than nn.LSTM / nn.GRU subclasses on purpose: torch.compile refuses to
trace anything that is an instance of torch's RNN modules, and tracing without graph breaks is one
of the things these modules offer over them.
"""
import math
import numbers
import warnings
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .functional import GRU_RATE_NAMES, RATE_NAMES, _as_lengths, _seed_tensor, check_rate, gru_layer, lstm_layer

__all__ = ["RNNBase", "LSTM", "GRU"]

Rate = Union[float, Sequence[float]]


class RNNBase(nn.Module):
    """What rnnfused.LSTM and rnnfused.GRU share, as torch.nn.RNNBase is for torch's RNNs.

    A subclass names its `mode` ("LSTM" / "GRU", which is also torch's class name), `gate_count`,
    `rate_names` (the per-layer rates, spelled as the layer function's keywords), the constructor
    argument each rate comes from where that differs (`rate_arguments`), and implements
    `_layer` (one layer, one direction), `_hx_tensors` and `_as_hx` (its state as torch's modules
    take and return it) and `_state_sizes`; `_extra_parameters` names the parameters it has
    beyond torch's module (none by default).
    """

    mode: ClassVar[str]
    gate_count: ClassVar[int]
    rate_names: ClassVar[Tuple[str, ...]]
    rate_arguments: ClassVar[Dict[str, str]] = {}
    # The constructor arguments that torch's module has too (from_/to_ conversion copies them).
    _config_names: ClassVar[Tuple[str, ...]] = ("input_size", "hidden_size", "num_layers", "bias",
                                                 "batch_first", "dropout", "bidirectional")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, rates: Dict[str, Rate]):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{self._name}: {name} must be a positive integer, got {value!r}")
        if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) or proj_size < 0:
            raise ValueError(f"{self._name}: proj_size must be a non-negative integer, got "
                             f"{proj_size!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"{self._name}: proj_size has to be smaller than hidden_size")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(f"{self._name}: dropout should be a number in range [0, 1] representing "
                             "the probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          f"non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}")
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = int(proj_size)
        for name in self.rate_names:
            setattr(self, name, self._per_layer(self.rate_arguments.get(name, name), rates[name]))
        self._make_parameters({"device": device, "dtype": dtype})
        self.reset_parameters()

    @property
    def _name(self) -> str:
        return f"rnnfused.{type(self).mode}"

    @property
    def _num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _real_hidden(self) -> int:
        """The size of h (and of each direction's output): proj_size with a projection, else H."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    def _per_layer(self, name: str, value: Rate) -> Tuple[float, ...]:
        """A rate given as one float or one value per layer, as a tuple with one value per layer."""
        if isinstance(value, (list, tuple)):
            if len(value) != self.num_layers:
                raise ValueError(f"{self._name}: {name} must be a float or hold one value per "
                                 f"layer ({self.num_layers}), got {len(value)} values")
            return tuple(check_rate(name, v) for v in value)
        return (check_rate(name, value),) * self.num_layers

    def _make_parameters(self, factory) -> None:
        gate_size = self.gate_count * self.hidden_size
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(self.num_layers):
            for direction in range(self._num_directions):
                layer_input = (self.input_size if layer == 0
                               else self._real_hidden * self._num_directions)
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input)),
                          ("weight_hh", (gate_size, self._real_hidden))]
                if self.bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if self.proj_size > 0:
                    shapes += [("weight_hr", (self.proj_size, self.hidden_size))]
                shapes += [(kind, shape) for kind, (shape, _) in self._extra_parameters().items()]
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)

    # -- torch's RNN surface ------------------------------------------------------------------

    def reset_parameters(self) -> None:
        """torch's initialisation: U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) for torch's
        parameters; the extra ones (`_extra_parameters`) get their constant."""
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        constants = {kind: value for kind, (_, value) in self._extra_parameters().items()}
        for name, weight in self.named_parameters():
            kind = name.split("_l")[0]
            if kind in constants:
                nn.init.constant_(weight, constants[kind])
            else:
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
        for name in self.rate_names:
            values = getattr(self, name)
            if any(v > 0 for v in values):
                shown = values[0] if len(set(values)) == 1 else list(values)
                s += f", {self.rate_arguments.get(name, name)}={shown}"
        return s

    # -- conversion ----------------------------------------------------------------------------

    @classmethod
    def _torch_class(cls) -> type:
        return getattr(nn, cls.mode)

    @classmethod
    def _from_torch(cls, module: nn.Module, **rates) -> "RNNBase":
        """A module of this class with `module`'s configuration and weights (on its device and
        dtype) and the given regularization rates."""
        torch_class, arg = cls._torch_class(), cls.mode.lower()
        if not isinstance(module, torch_class):
            raise TypeError(f"rnnfused.{cls.mode}.from_{arg}: {arg} must be a torch.nn.{cls.mode}, "
                            f"got {type(module).__name__}")
        ref = next(module.parameters())
        config = {name: getattr(module, name) for name in cls._config_names}
        model = cls(**config, device=ref.device, dtype=ref.dtype, **rates)
        # Parameters beyond torch's module (layer-norm gains) keep their initial values.
        model.load_state_dict(module.state_dict(), strict=not model._extra_parameters())
        model.train(module.training)
        return model

    def _to_torch(self) -> nn.Module:
        """torch's module with this configuration and these weights (the regularizers inside the
        recurrence have no equivalent there and are dropped)."""
        ref = next(self.parameters())
        config = {name: getattr(self, name) for name in self._config_names}
        module = self._torch_class()(**config, device=ref.device, dtype=ref.dtype)
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module

    # -- what a subclass says about its cell ----------------------------------------------------

    def _extra_parameters(self) -> Dict[str, Tuple[Tuple[int, ...], float]]:
        """{kind: (shape, initial value)} of the parameters each layer and direction has beyond
        torch's module, in order (named `<kind>_l{k}[_reverse]`, after torch's); passed to
        `_layer` by kind like the others."""
        return {}

    def _state_sizes(self) -> Dict[str, int]:
        """{name of each initial-state tensor: its last size}, in the layer function's order."""
        raise NotImplementedError

    def _hx_tensors(self, hx) -> List[Tensor]:
        """The user's hx as a list of tensors, one per entry of _state_sizes (not yet checked)."""
        raise NotImplementedError

    def _as_hx(self, states: List[Tensor]):
        """The final states as torch's module returns them."""
        raise NotImplementedError

    def _layer(self, input: Tensor, states: List[Tensor], weights: Dict[str, Tensor], **kwargs):
        """One fused layer, one direction -> (output, [final state tensors])."""
        raise NotImplementedError

    # -- forward -------------------------------------------------------------------------------

    def _needs_seed(self) -> bool:
        if not self.training:
            return False
        return any(v > 0 for name in self.rate_names for v in getattr(self, name))

    def _check_hx(self, hx, batch: int, unbatched: bool, ref: Tensor) -> List[Tensor]:
        states = self._hx_tensors(hx)
        num_states = self._num_directions * self.num_layers
        out = []
        for (name, size), state in zip(self._state_sizes().items(), states):
            where = f"hx ({name})" if len(states) == 1 else f"hx[{len(out)}] ({name})"
            if not isinstance(state, Tensor):
                raise TypeError(f"{self._name}: {where} must be a Tensor, got "
                                f"{type(state).__name__}")
            want_dim = 2 if unbatched else 3
            if state.dim() != want_dim:
                kind = "unbatched 2-D" if unbatched else "batched 3-D"
                raise ValueError(f"{self._name}: for {kind} input, {where} should be {want_dim}-D "
                                 f"but got {state.dim()}-D tensor")
            want = (num_states, size) if unbatched else (num_states, batch, size)
            if tuple(state.shape) != want:
                raise ValueError(f"{self._name}: {where} must have shape {want}, "
                                 f"got {tuple(state.shape)}")
            if state.dtype != ref.dtype or state.device != ref.device:
                raise ValueError(f"{self._name}: {where} must have the input's dtype and device "
                                 f"({ref.dtype}, {ref.device}), got "
                                 f"({state.dtype}, {state.device})")
            out.append(state.unsqueeze(1) if unbatched else state)
        return out

    def _time_major(self, input):
        """(x (T, B, I), lengths or None, unbatched) of a Tensor or a PackedSequence."""
        if isinstance(input, PackedSequence):
            # What pad_packed_sequence returns (original sample order, zeros past each length), as one
            # scatter whose backward is one gather (pad_packed_sequence's autograd copies slice by slice).
            rows, lengths = _packed_rows(input)
            T, B = len(input.batch_sizes), lengths.numel()
            data = input.data
            x = data.new_zeros(T * B, data.shape[-1]).index_copy(0, rows, data).view(T, B, -1)
            return x, lengths, False
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._name}: input must be a Tensor or a PackedSequence, got "
                            f"{type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{self._name}: input must be 2-D (unbatched) or 3-D, got "
                             f"{input.dim()}-D of shape {tuple(input.shape)}")
        unbatched = input.dim() == 2
        x = input.unsqueeze(1) if unbatched else input
        if self.batch_first and not unbatched:
            x = x.transpose(0, 1)
        return x, None, unbatched

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{self._name}: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {x.shape[-1]}")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype or x.device != weight.device:
            raise ValueError(f"{self._name}: input must have the parameters' dtype and device "
                             f"({weight.dtype}, {weight.device}), got ({x.dtype}, {x.device})")
        if x.shape[0] == 0:
            raise ValueError(f"{self._name}: input has a zero-length sequence (seq_len = 0); "
                             f"nn.{self.mode} cannot run it either")

    def _stack(self, x: Tensor, states: List[Tensor], lengths: Optional[Tensor]):
        """The layers in sequence, each running its directions on the previous layer's output,
        with nn.LSTM's `dropout` between layers. Returns (output (T, B, D*R), final states)."""
        # One seed per call, from the default generator of x's device (on CUDA it stays there).
        seed = _seed_tensor(None, x.device) if self._needs_seed() else torch.zeros((), dtype=torch.int64)
        finals = []
        layer_input = x
        for layer in range(self.num_layers):
            rates = {name: getattr(self, name)[layer] for name in self.rate_names}
            outputs = []
            for direction in range(self._num_directions):
                idx = layer * self._num_directions + direction
                weights = {name.split("_l")[0]: getattr(self, name)
                           for name in self._all_weights[idx]}
                out, final = self._layer(layer_input, [s[idx] for s in states], weights, seed=seed,
                                         training=self.training, layer=layer,
                                         reverse=direction == 1, lengths=lengths, **rates)
                outputs.append(out)
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, training=True)
        return layer_input, [torch.stack(per_state, 0) for per_state in zip(*finals)]

    def forward(self, input, hx=None, lengths=None):
        if (lengths is not None or isinstance(input, PackedSequence)) and _capturing():
            raise ValueError(f"{self._name}: lengths (or a PackedSequence) cannot be used inside CUDA "
                             f"graph capture: they are read on the host by each call; capture the "
                             f"padded batch without lengths, or run variable-length batches eagerly")
        x, packed_lengths, unbatched = self._time_major(input)
        self._check_input(x)
        if lengths is None:
            lengths = packed_lengths
        elif packed_lengths is not None:
            raise ValueError(f"{self._name}: lengths must be None when the input is a PackedSequence, "
                             f"which carries its own lengths")
        elif unbatched:
            raise ValueError(f"{self._name}: lengths needs batched (3-D) input, got 2-D input of "
                             f"shape {tuple(input.shape)}")
        else:
            # Checked and brought to the CPU once here, not by every layer and direction.
            lengths = _as_lengths(lengths, x.shape[1], x.shape[0])
        batch = x.shape[1]
        if hx is None:
            shape = (self.num_layers * self._num_directions, batch)
            states = [x.new_zeros(shape + (size,)) for size in self._state_sizes().values()]
        else:
            states = self._check_hx(hx, batch, unbatched, x)

        output, finals = self._stack(x, states, lengths)

        if isinstance(input, PackedSequence):
            rows, _ = _packed_rows(input)
            data = output.reshape(-1, output.shape[-1]).index_select(0, rows)
            output = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif unbatched:
            output, finals = output.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, self._as_hx(finals)


def _capturing() -> bool:
    """Whether the current CUDA stream is being captured into a CUDA graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _packed_rows(packed: PackedSequence) -> Tuple[Tensor, Tensor]:
    """(rows, lengths) of a PackedSequence: rows (N,) the position t * B + b in the padded (T, B) batch,
    samples in their original order, of each of its N packed rows; lengths (B,) int64 on the CPU, in the
    original order (as pad_packed_sequence returns them)."""
    sizes = packed.batch_sizes.to("cpu", torch.int64)
    T, B = sizes.numel(), int(sizes[0]) if sizes.numel() else 0
    t = torch.repeat_interleave(torch.arange(T), sizes)
    i = torch.arange(t.numel()) - (torch.cumsum(sizes, 0) - sizes)[t]
    by_rank = (sizes.unsqueeze(0) > torch.arange(B).unsqueeze(1)).sum(1)  # lengths, longest first
    order = packed.sorted_indices
    if order is None:
        return (t * B + i).to(packed.data.device), by_rank
    order = order.to("cpu", torch.int64)
    lengths = torch.empty_like(by_rank).index_copy_(0, order, by_rank)
    return (t * B + order[i]).to(packed.data.device), lengths


class LSTM(RNNBase):
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

    ``layer_norm=True`` makes it the layer-normalized LSTM (Ba, Kiros & Hinton, 2016; SPEC §2c):
    the two GEMM terms W_ih x̂_t and Ŵ_hh ĥ_{t-1} are each normalized over their 4H
    pre-activations (then scaled by ``ln_weight_ih_l{k}`` / ``ln_weight_hh_l{k}``, 4H, and the
    biases added), and the new cell is normalized where it enters h (scaled by
    ``ln_weight_c_l{k}`` and shifted by ``ln_bias_c_l{k}``, H); the carried cell is not. The gains
    start at 1 and the shift at 0. nn.LSTM has no equivalent: ``to_lstm()`` refuses such a module,
    and an nn.LSTM state_dict loads with ``strict=False`` (the gains keep their values).
    """

    mode = "LSTM"
    gate_count = 4
    rate_names = RATE_NAMES
    _config_names = RNNBase._config_names + ("proj_size",)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, zoneout: Rate = 0.0,
                 zoneout_c: Optional[Rate] = None, zoneout_h: Optional[Rate] = None,
                 input_dropout: Rate = 0.0, recurrent_dropout: Rate = 0.0, weight_drop: Rate = 0.0,
                 candidate_dropout: Rate = 0.0, layer_norm: bool = False):
        if not isinstance(layer_norm, bool):
            raise TypeError(f"rnnfused.LSTM: layer_norm must be a bool, got {type(layer_norm).__name__}")
        rates = dict(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout,
                     weight_drop=weight_drop, candidate_dropout=candidate_dropout,
                     zoneout_c=zoneout if zoneout_c is None else zoneout_c,
                     zoneout_h=zoneout if zoneout_h is None else zoneout_h)
        self.layer_norm = layer_norm  # read by _extra_parameters while RNNBase makes the parameters
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, rates=rates)

    @classmethod
    def from_lstm(cls, lstm: nn.LSTM, **rates) -> "LSTM":
        """A rnnfused.LSTM with `lstm`'s configuration and weights (on its device and dtype) and
        the given regularization rates."""
        return cls._from_torch(lstm, **rates)

    def to_lstm(self) -> nn.LSTM:
        """A torch.nn.LSTM with this module's configuration and weights (the regularizers inside
        the recurrence have no nn.LSTM equivalent and are dropped). Refuses a module with
        layer_norm=True: nn.LSTM has no layer norm, so it would compute something else."""
        if self.layer_norm:
            raise ValueError("rnnfused.LSTM.to_lstm: this module has layer_norm=True, and "
                             "torch.nn.LSTM has no layer norm; it cannot compute what this module does")
        return self._to_torch()

    def extra_repr(self) -> str:
        return super().extra_repr() + (", layer_norm=True" if self.layer_norm else "")

    def _extra_parameters(self) -> Dict[str, Tuple[Tuple[int, ...], float]]:
        if not self.layer_norm:
            return {}
        G, H = self.gate_count * self.hidden_size, self.hidden_size
        return {"ln_weight_ih": ((G,), 1.0), "ln_weight_hh": ((G,), 1.0),
                "ln_weight_c": ((H,), 1.0), "ln_bias_c": ((H,), 0.0)}

    def _state_sizes(self) -> Dict[str, int]:
        return {"h_0": self._real_hidden, "c_0": self.hidden_size}

    def _hx_tensors(self, hx) -> List[Tensor]:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("rnnfused.LSTM: hx must be a tuple (h_0, c_0) of tensors")
        return list(hx)

    def _as_hx(self, states: List[Tensor]) -> Tuple[Tensor, Tensor]:
        return states[0], states[1]

    def _layer(self, input, states, weights, **kwargs):
        layer_norm = {kind: weights[kind] for kind in self._extra_parameters()}
        out, h, c = lstm_layer(
            input, states[0], states[1], weights["weight_ih"], weights["weight_hh"],
            weights.get("bias_ih"), weights.get("bias_hh"), weights.get("weight_hr"), **kwargs,
            **layer_norm)
        return out, (h, c)

    def forward(self, input, hx: Optional[Tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None):
        """input: (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
        hx: (h_0, c_0) or None for zeros. Returns (output, (h_n, c_n)) with nn.LSTM's shapes.

        lengths (an rnnfused extension; nn.LSTM has none): (B,) integers in [0, T] with padded
        batched input, sample b running over its first lengths[b] steps only, as if packed: the
        output is 0 past each length and h_n, c_n are taken at each sample's own last step. Steps
        past a length cost nothing, and the padding needs no pack_padded_sequence /
        pad_packed_sequence round trip."""
        return super().forward(input, hx, lengths)


class GRU(RNNBase):
    r"""Multi-layer GRU (torch.nn.GRU's "reset after" form) with zoneout, variational dropout,
    candidate dropout and weight drop applied inside fused kernels; with every rate 0 it computes
    exactly what torch.nn.GRU does.

    Arguments before ``*`` are torch.nn.GRU's. The regularizers (each a float for all layers or a
    sequence with one value per layer; rates lie in [0, 1)):

    - ``zoneout``: zoneout rate on the hidden state (Krueger et al., 2017); kept per layer as
      ``self.zoneout_h``, the GRU having no cell state.
    - ``input_dropout``: variational dropout on each layer's input, one mask per sequence.
    - ``recurrent_dropout``: variational dropout on h_{t-1} where it enters W_hh, one mask per
      sequence.
    - ``weight_drop``: DropConnect on the recurrent weights W_hh, one mask per forward call.
    - ``candidate_dropout``: dropout on the candidate n, a new mask each step.

    In evaluation mode dropout and weight drop are the identity and zoneout takes its expectation.
    ``dropout`` keeps nn.GRU's meaning: ordinary dropout on each layer's output but the last.
    """

    mode = "GRU"
    gate_count = 3
    rate_names = GRU_RATE_NAMES
    rate_arguments = {"zoneout_h": "zoneout"}

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, zoneout: Rate = 0.0, input_dropout: Rate = 0.0,
                 recurrent_dropout: Rate = 0.0, weight_drop: Rate = 0.0,
                 candidate_dropout: Rate = 0.0):
        rates = dict(input_dropout=input_dropout, recurrent_dropout=recurrent_dropout,
                     weight_drop=weight_drop, candidate_dropout=candidate_dropout,
                     zoneout_h=zoneout)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, device, dtype, rates=rates)

    @classmethod
    def from_gru(cls, gru: nn.GRU, **rates) -> "GRU":
        """A rnnfused.GRU with `gru`'s configuration and weights (on its device and dtype) and
        the given regularization rates."""
        return cls._from_torch(gru, **rates)

    def to_gru(self) -> nn.GRU:
        """A torch.nn.GRU with this module's configuration and weights (the regularizers inside
        the recurrence have no nn.GRU equivalent and are dropped)."""
        return self._to_torch()

    def _state_sizes(self) -> Dict[str, int]:
        return {"h_0": self.hidden_size}

    def _hx_tensors(self, hx) -> List[Tensor]:
        if not isinstance(hx, Tensor):
            raise TypeError(f"rnnfused.GRU: hx must be a Tensor (h_0), got {type(hx).__name__}")
        return [hx]

    def _as_hx(self, states: List[Tensor]) -> Tensor:
        return states[0]

    def _layer(self, input, states, weights, **kwargs):
        out, h = gru_layer(
            input, states[0], weights["weight_ih"], weights["weight_hh"],
            weights.get("bias_ih"), weights.get("bias_hh"), **kwargs)
        return out, (h,)

    def forward(self, input, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None):
        """input: (T, B, I), (B, T, I) with batch_first, (T, I) unbatched, or a PackedSequence;
        hx: h_0 or None for zeros. Returns (output, h_n) with nn.GRU's shapes. lengths: as for
        rnnfused.LSTM.forward (padded input, each sample over its first lengths[b] steps)."""
        return super().forward(input, hx, lengths)


def _register_safe_globals() -> None:
    # torch.load(weights_only=True) of a whole model holding an rnnfused.LSTM or rnnfused.GRU.
    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is not None:
        add([LSTM, GRU])


_register_safe_globals()
