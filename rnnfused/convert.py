"""rnnfused.convert: put rnnfused's recurrent modules into an existing model in one call (SPEC §4).

    model = rnnfused.convert(model, zoneout=0.1, weight_drop=0.3)

Every torch.nn.LSTM inside `model` (at any depth: attributes, Sequential, ModuleList, ModuleDict) is
replaced by an rnnfused.LSTM of the same configuration, and every torch.nn.GRU by an rnnfused.GRU.
The new module takes over the old one's Parameter objects
themselves, so the weights, their device, dtype and requires_grad, the state_dict keys, an optimizer
built before the call and any weight tying all carry over; its training mode is the old module's.
At zero rates the converted model computes what it did before.
"""
from torch import nn

from . import modules

__all__ = ["convert"]

_LSTM_RATES = ("zoneout", "zoneout_c", "zoneout_h", "input_dropout", "recurrent_dropout",
               "weight_drop", "candidate_dropout")


def convert(module: nn.Module, **rates) -> nn.Module:
    """Swaps every torch.nn.LSTM and torch.nn.GRU inside `module` for the rnnfused module with the same configuration and parameters, with the regularization
    `rates` (rnnfused.LSTM's keyword arguments: zoneout, zoneout_c, zoneout_h, input_dropout,
    recurrent_dropout, weight_drop, candidate_dropout; each a float or one value per layer).

    Returns `module`, changed in place; a bare torch.nn.LSTM / GRU passed in is returned converted.
    A GRU has no cell state: it takes `zoneout_h` (or `zoneout`) as its zoneout and ignores
    `zoneout_c`. Subclasses of torch.nn.LSTM / GRU are converted too (their own forward is lost).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"rnnfused.convert: module must be a torch.nn.Module, got "
                        f"{type(module).__name__}")
    unknown = sorted(set(rates) - set(_LSTM_RATES))
    if unknown:
        raise TypeError(f"rnnfused.convert: unknown rate(s) {', '.join(unknown)}; the rates are "
                        f"{', '.join(_LSTM_RATES)}")
    return _convert(module, rates, {})


def _convert(module: nn.Module, rates: dict, done: dict) -> nn.Module:
    if id(module) in done:  # a module that appears twice in the tree stays one module
        return done[id(module)]
    new = _swap(module, rates)
    if new is module:
        for name, child in list(module.named_children()):
            converted = _convert(child, rates, done)
            if converted is not child:
                setattr(module, name, converted)
    done[id(module)] = new
    return new


def _swap(module: nn.Module, rates: dict) -> nn.Module:
    """The rnnfused replacement of one module, or the module itself if it is not an RNN we fuse."""
    if isinstance(module, nn.LSTM):
        new = modules.LSTM.from_lstm(module, **rates)
    elif isinstance(module, nn.GRU):
        new = modules.GRU.from_gru(module, **_gru_rates(rates))
    else:
        return module
    # The very same Parameter objects: optimizers, tied weights and requires_grad carry over.
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    return new


def _gru_rates(rates: dict) -> dict:
    """The LSTM-shaped rates as rnnfused.GRU takes them: its zoneout is zoneout_h (a GRU has no
    cell, so zoneout_c does not apply to it)."""
    out = {k: v for k, v in rates.items() if k not in ("zoneout", "zoneout_c", "zoneout_h")}
    zoneout = rates.get("zoneout_h", rates.get("zoneout"))
    if zoneout is not None:
        out["zoneout"] = zoneout
    return out
