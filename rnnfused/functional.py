"""The functional form: one fused LSTM or GRU layer, one direction, explicit weights (SPEC §4).

`lstm_layer` and `gru_layer` are the rung of the ladder that the modules stack (cell -> layer ->
direction -> stack); `lstm_masks` / `gru_masks` materialize the masks a call draws, so that
`rnnfused.reference` can replay it bit for bit; `draw_seed` is how a call in training mode gets
its seed from torch's RNG.
"""
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from . import _ops

__all__ = ["lstm_layer", "lstm_masks", "gru_layer", "gru_masks", "draw_seed", "RATE_NAMES",
           "GRU_RATE_NAMES"]

# The order of the rates in the ops' `rates` argument: the mask kinds of csrc/philox.h, named by
# the C++ (csrc/layer.h kRateNames).
RATE_NAMES = tuple(_ops._C.rate_names())
# The GRU's: the same without zoneout_c (it has no cell state); its op gets zoneout_c = 0.
GRU_RATE_NAMES = tuple(n for n in RATE_NAMES if n != "zoneout_c")
_ZONEOUT_C = RATE_NAMES.index("zoneout_c")
_SEED_HIGH = 2**63 - 1


def check_rate(name: str, value) -> float:
    """A rate as a float in [0, 1), or a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"rnnfused: {name} must be a float in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise ValueError(f"rnnfused: {name} must lie in [0, 1), got {value}")
    return value


def _seed_tensor(generator: Optional[torch.Generator], device=None) -> Tensor:
    """A call's seed as a 0-dim int64 tensor, drawn by `generator` if given, else by torch's default
    generator of `device` (the input's; default the CPU). On CUDA it stays on the device, where the
    kernels read it: no host sync, and a CUDA graph replay draws a new one (SPEC §3, §7)."""
    if generator is not None:
        device = generator.device
    elif device is None:
        device = "cpu"
    return torch.randint(0, _SEED_HIGH, (), dtype=torch.int64, generator=generator, device=device)


def draw_seed(generator: Optional[torch.Generator] = None, device=None) -> int:
    """Draws a call's 64-bit seed exactly as `lstm_layer(seed=None)` and `rnnfused.LSTM.forward` do in
    training mode for an input on `device` (default the CPU): from `generator` if given, else from
    torch's default generator of that device, so that after `torch.manual_seed(s)` it returns the seed
    the next such call will draw. (On CUDA the layers keep the seed on the device; this returns its
    value, which waits for the GPU.)"""
    return int(_seed_tensor(generator, device))


def _as_seed(seed, needs_seed: bool, generator, device=None) -> Tensor:
    """The op's seed argument: drawn (seed=None, see _seed_tensor), or the one given, as a 0-dim int64
    tensor on the CPU or, for a tensor given on the input's `device`, left there."""
    if seed is None:
        return _seed_tensor(generator, device) if needs_seed else torch.zeros((), dtype=torch.int64)
    if isinstance(seed, Tensor):
        if seed.numel() != 1 or seed.dtype != torch.int64:
            raise ValueError("rnnfused: seed must be an int or a one-element int64 tensor")
        if seed.device.type != "cpu" and seed.device != torch.device(device or "cpu"):
            raise ValueError(f"rnnfused: a seed tensor must be on the CPU or on the device of input "
                             f"({device or 'cpu'}), got {seed.device}")
        return seed.reshape(())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"rnnfused: seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"rnnfused: seed must lie in [0, 2**63), got {seed}")
    return torch.tensor(seed, dtype=torch.int64)


def _as_lengths(lengths, batch: int, seq_len: int) -> Optional[Tensor]:
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"rnnfused: lengths must hold integers, got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.numel() != batch:
        raise ValueError(f"rnnfused: lengths must be 1-D with one entry per sample ({batch}), "
                         f"got shape {tuple(lengths.shape)}")
    return lengths.to(device="cpu", dtype=torch.int64)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if not torch.is_autocast_enabled(device_type):
        return None
    # The CPU kernels compute in float32/float64; the CUDA ones take autocast's dtype.
    return torch.get_autocast_dtype(device_type) if device_type == "cuda" else torch.float32


def _requires_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _call_setup(named, rates, *, seed, training, generator, lengths):
    """What both layer functions do before calling their op: checks, the seed, the lengths, the
    autocast dtype, and whether backward will need the workspace. named: {argument: tensor or
    None}, in the op's order, input first."""
    input = named["input"]
    if not isinstance(input, Tensor):
        raise TypeError(f"rnnfused: input must be a Tensor, got {type(input).__name__}")
    if input.dim() != 3:
        raise ValueError(f"rnnfused: input must be 3-D (seq_len, batch, input_size), got "
                         f"{input.dim()}-D of shape {tuple(input.shape)}")
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"rnnfused: {name} must be a Tensor, got {type(t).__name__}")
        # Checked here as well as in C++: a tensor on the meta device would otherwise send the
        # whole call to the fake implementation, which computes nothing.
        if t.device != input.device:
            raise ValueError(f"rnnfused: {name} must be on the device of input ({input.device}), "
                             f"got {t.device}")
    tensors = tuple(named.values())
    needs_seed = bool(training) and any(r > 0 for r in rates)
    seed_t = _as_seed(seed, needs_seed, generator, input.device)
    lengths_t = _as_lengths(lengths, input.shape[1], input.shape[0])
    cast = _autocast_dtype(input.device.type)
    if cast is not None:
        tensors = tuple(t.to(cast) if t is not None and t.is_floating_point() else t
                        for t in tensors)
    return tensors, seed_t, lengths_t, _requires_grad(tensors)


def lstm_layer(input: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
               bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               weight_hr: Optional[Tensor] = None, *, seed: Union[int, Tensor, None] = None,
               training: bool = True, layer: int = 0, reverse: bool = False,
               lengths: Union[Tensor, Sequence[int], None] = None, input_dropout: float = 0.0,
               recurrent_dropout: float = 0.0, weight_drop: float = 0.0,
               candidate_dropout: float = 0.0, zoneout_c: float = 0.0, zoneout_h: float = 0.0,
               generator: Optional[torch.Generator] = None, ln_weight_ih: Optional[Tensor] = None,
               ln_weight_hh: Optional[Tensor] = None, ln_weight_c: Optional[Tensor] = None,
               ln_bias_c: Optional[Tensor] = None):
    """One LSTM layer over a whole sequence, with the regularizers of SPEC §2 applied inside the
    recurrence. Returns (output (T, B, R), h_n (B, R), c_n (B, H)).

    input: (T, B, I) time-major. h0: (B, R), c0: (B, H), R = proj_size if weight_hr (P, H) is
    given else H. Weights in torch.nn.LSTM's layout and gate order. With `seed=None` in training
    mode (and a rate > 0) a seed is drawn from torch's default generator of input's device (or
    `generator`; on CUDA the seed stays on the device, so the call is safe under CUDA graph
    capture and each replay draws new masks); `seed` may also be an int or a one-element int64
    tensor (on the CPU or input's device). Masks are a pure function of (seed, layer, reverse,
    kind, t, b, j), the same on every device, see `lstm_masks`. `reverse=True` runs the
    sequence backwards (t = T-1 .. 0; masks still indexed by input position t). `lengths` (B,)
    runs sample b over its first lengths[b] positions only: the output is 0 past them and h_n/c_n
    are the state after the sample's own last step. In evaluation (`training=False`) dropout and
    weight drop are the identity and zoneout takes its expectation.

    The layer-normalized LSTM (SPEC §2c) runs when the four LN parameters are given:
    `ln_weight_ih`, `ln_weight_hh` (4H,) the gains of LN(W_ih x̂_t) and LN(Ŵ_hh ĥ_{t-1}),
    `ln_weight_c`, `ln_bias_c` (H,) the gain and bias of LN(c̃_t) where it enters h. Its masks are
    the LSTM's (`lstm_masks`).
    """
    rates = [check_rate(n, v) for n, v in zip(RATE_NAMES, (
        input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_c, zoneout_h))]
    ln = dict(ln_weight_ih=ln_weight_ih, ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c,
              ln_bias_c=ln_bias_c)
    given = [name for name, t in ln.items() if t is not None]
    if given and len(given) != len(ln):
        missing = ", ".join(name for name in ln if name not in given)
        raise ValueError(f"rnnfused: the layer-normalized LSTM needs all four LN parameters; "
                         f"{', '.join(given)} given without {missing}")
    named = dict(input=input, h0=h0, c0=c0, weight_ih=weight_ih, weight_hh=weight_hh,
                 bias_ih=bias_ih, bias_hh=bias_hh, weight_hr=weight_hr)
    if given:
        named.update(ln)
    tensors, seed_t, lengths_t, need_workspace = _call_setup(
        named, rates, seed=seed, training=training, generator=generator, lengths=lengths)
    op = _ops.ln_lstm_forward if given else _ops.lstm_forward
    output, h_n, c_n = op(*tensors, lengths_t, seed_t, int(layer), bool(reverse), bool(training),
                          rates, need_workspace)[:3]
    return output, h_n, c_n


def gru_layer(input: Tensor, h0: Tensor, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None, *,
              seed: Union[int, Tensor, None] = None, training: bool = True, layer: int = 0,
              reverse: bool = False, lengths: Union[Tensor, Sequence[int], None] = None,
              input_dropout: float = 0.0, recurrent_dropout: float = 0.0,
              weight_drop: float = 0.0, candidate_dropout: float = 0.0, zoneout_h: float = 0.0,
              generator: Optional[torch.Generator] = None):
    """One GRU layer over a whole sequence, with the regularizers of SPEC §2b applied inside the
    recurrence. Returns (output (T, B, H), h_n (B, H)).

    input: (T, B, I) time-major, h0: (B, H); weights in torch.nn.GRU's layout, gate order
    (r, z, n) and "reset after" form. Seeds, masks (`gru_masks`), `reverse`, `lengths` and
    evaluation mode work as for `lstm_layer`; the GRU has no cell state, so its only zoneout is
    on h.
    """
    rates = [check_rate(n, v) for n, v in zip(GRU_RATE_NAMES, (
        input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_h))]
    rates.insert(_ZONEOUT_C, 0.0)
    tensors, seed_t, lengths_t, need_workspace = _call_setup(
        dict(input=input, h0=h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
             bias_hh=bias_hh), rates, seed=seed, training=training, generator=generator,
        lengths=lengths)
    output, h_n = _ops.gru_forward(
        *tensors, lengths_t, seed_t, int(layer), bool(reverse), bool(training), rates,
        need_workspace)[:2]
    return output, h_n


_MASK_NAMES = ("input", "recurrent", "weight", "candidate", "zoneout_c", "zoneout_h")


def _masks(gates, seed, seq_len, batch, input_size, hidden_size, recurrent_size, layer, reverse,
           rates, dtype, device):
    seed = int(_as_seed(seed, False, None, seed.device if isinstance(seed, Tensor) else None))
    masks = _ops._C.layer_masks(gates, seed, seq_len, batch, input_size, hidden_size,
                                recurrent_size, int(layer), bool(reverse), rates, dtype)
    return {name: mask.to(device) for name, mask in zip(_MASK_NAMES, masks)}


def lstm_masks(seed: int, seq_len: int, batch: int, input_size: int, hidden_size: int, *,
               proj_size: int = 0, layer: int = 0, reverse: bool = False,
               input_dropout: float = 0.0, recurrent_dropout: float = 0.0,
               weight_drop: float = 0.0, candidate_dropout: float = 0.0, zoneout_c: float = 0.0,
               zoneout_h: float = 0.0, dtype: torch.dtype = torch.float32,
               device: Union[str, torch.device] = "cpu") -> Dict[str, Tensor]:
    """The masks that `lstm_layer(seed=seed, layer=layer, reverse=reverse, ...)` draws in
    training mode, materialized by the same generator (csrc/philox.h) as {0, 1} tensors:

      input (B, I), recurrent (B, R), weight (4H, R): keep-masks (1 = kept, not scaled)
      candidate (T, B, H): keep-mask of the cell candidate, a new one each step
      zoneout_c (T, B, H), zoneout_h (T, B, R): 1 where the previous value is kept

    A rate of 0 gives the trivial mask. This is for tests and for replaying a call with
    `rnnfused.reference`; the kernels never materialize (T, B, H) masks.
    """
    rates = [check_rate(n, v) for n, v in zip(RATE_NAMES, (
        input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_c, zoneout_h))]
    recurrent = proj_size if proj_size > 0 else hidden_size
    return _masks(4, seed, seq_len, batch, input_size, hidden_size, recurrent, layer, reverse,
                  rates, dtype, device)


def gru_masks(seed: int, seq_len: int, batch: int, input_size: int, hidden_size: int, *,
              layer: int = 0, reverse: bool = False, input_dropout: float = 0.0,
              recurrent_dropout: float = 0.0, weight_drop: float = 0.0,
              candidate_dropout: float = 0.0, zoneout_h: float = 0.0,
              dtype: torch.dtype = torch.float32,
              device: Union[str, torch.device] = "cpu") -> Dict[str, Tensor]:
    """The masks that `gru_layer(seed=seed, layer=layer, reverse=reverse, ...)` draws in training
    mode, as {0, 1} tensors: input (B, I), recurrent (B, H), weight (3H, H) keep-masks,
    candidate (T, B, H) keep-mask of n, zoneout_h (T, B, H) (1 = the previous h is kept)."""
    rates = [check_rate(n, v) for n, v in zip(GRU_RATE_NAMES, (
        input_dropout, recurrent_dropout, weight_drop, candidate_dropout, zoneout_h))]
    rates.insert(_ZONEOUT_C, 0.0)
    masks = _masks(3, seed, seq_len, batch, input_size, hidden_size, hidden_size, layer, reverse,
                   rates, dtype, device)
    del masks["zoneout_c"]
    return masks
