"""SPEC §5: gradients flow to the input, h0, c0, every weight and bias — checked numerically, for the
LSTM layer and the GRU layer.

float64, tiny sizes, a fixed seed: the masks are a pure function of the seed, so finite differences
see the same masks as the analytic backward."""

import pytest
import torch

from conftest import ALL_RATES, CELLS, layer_args, make_layer_inputs
from rnnfused import functional as F

SEED = 987654321


def gradcheck_layer(inputs, fn=F.lstm_layer, args_of=layer_args, **kw):
    """gradcheck of fn(*args_of(inputs), seed=SEED, **kw) wrt every tensor in inputs."""
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        return fn(*args_of(dict(inputs, **dict(zip(names, tensors)))), seed=SEED, **kw)

    return torch.autograd.gradcheck(f, tuple(inputs[k] for k in names), atol=1e-7, rtol=1e-5)


def gradcheck_cell(cell, size, bias=True, **kw):
    """gradcheck of the cell's layer function on random arguments of size (T, B, I, H)."""
    c = CELLS[cell]
    return gradcheck_layer(c.make_inputs(*size, bias=bias), c.layer, c.args_of, **kw)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_with_every_regularizer_on(training, reverse, cell):
    torch.manual_seed(0)
    assert gradcheck_cell(cell, (4, 3, 2, 3), training=training, reverse=reverse, layer=1,
                          lengths=torch.tensor([4, 2, 3]), **CELLS[cell].all_rates)


@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_with_projection(training):
    torch.manual_seed(1)
    rates = dict(ALL_RATES, zoneout_h=0.0)
    assert gradcheck_layer(make_layer_inputs(3, 2, 2, 3, P=2), training=training, reverse=True,
                           lengths=torch.tensor([3, 1]), **rates)


def test_gradcheck_with_projection_and_zoneout_h():
    torch.manual_seed(2)
    assert gradcheck_layer(make_layer_inputs(3, 2, 2, 3, P=2), **ALL_RATES)


@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_without_bias_and_without_regularizers(cell):
    torch.manual_seed(3)
    assert gradcheck_cell(cell, (3, 2, 3, 2), bias=False, **CELLS[cell].no_rates)


@pytest.mark.parametrize("cell,rate", [(cell, rate) for cell, c in CELLS.items() for rate in sorted(c.all_rates)])
def test_gradcheck_with_each_regularizer_alone(cell, rate):
    torch.manual_seed(4)
    assert gradcheck_cell(cell, (3, 2, 2, 3), **{rate: 0.4})

