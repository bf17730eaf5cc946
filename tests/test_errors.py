"""SPEC §6 (and the error promises of §2, §5): bad input gets a clear Python exception naming the argument."""

import pytest
import torch

import rnnfused
from conftest import CELLS, RATE_NAMES, gru_layer_args, layer_args
from rnnfused import functional as F

BAD_RATES = [-0.1, 1.0, 1.5, float("nan"), float("inf")]
EXCEPTIONS = (ValueError, TypeError, RuntimeError)


def inputs(cell="LSTM", **kw):
    torch.manual_seed(0)
    return CELLS[cell].make_inputs(4, 3, 2, 5, requires_grad=False, **kw)


def call(cell, args=None, **kw):
    """The cell's layer function on `args` (a dict like inputs(cell), by default inputs(cell)), seed=1."""
    return CELLS[cell].fused(inputs(cell) if args is None else args, **{"seed": 1, **kw})


def cells_and(values_of):
    """(cell, value) pairs for parametrizing, from {cell: values}."""
    return [(cell, v) for cell, values in values_of.items() for v in values]


# --- rates --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", BAD_RATES)
@pytest.mark.parametrize("name", RATE_NAMES)
def test_module_rate_outside_0_1_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        rnnfused.LSTM(3, 4, **{name: value})


@pytest.mark.parametrize("value", BAD_RATES)
def test_module_zoneout_outside_0_1_is_a_value_error(value):
    with pytest.raises(ValueError, match="zoneout"):
        rnnfused.LSTM(3, 4, zoneout=value)


@pytest.mark.parametrize("name", RATE_NAMES)
def test_module_rate_bad_in_one_layer_is_a_value_error_naming_it(name):
    with pytest.raises(ValueError, match=name):
        rnnfused.LSTM(3, 4, num_layers=2, **{name: [0.1, 1.2]})


@pytest.mark.parametrize("name", RATE_NAMES)
def test_module_rate_sequence_of_the_wrong_length_is_a_value_error(name):
    with pytest.raises(ValueError, match=name):
        rnnfused.LSTM(3, 4, num_layers=2, **{name: [0.1, 0.2, 0.3]})


RATES_OF = {cell: c.rate_names for cell, c in CELLS.items()}


@pytest.mark.parametrize("value", BAD_RATES)
@pytest.mark.parametrize("cell,name", cells_and(RATES_OF))
def test_functional_rate_outside_0_1_is_a_value_error_naming_it(cell, name, value):
    with pytest.raises(ValueError, match=name):
        call(cell, **{name: value})


@pytest.mark.parametrize("cell,name", cells_and(RATES_OF))
def test_masks_rate_outside_0_1_is_a_value_error_naming_it(cell, name):
    with pytest.raises(ValueError, match=name):
        CELLS[cell].masks(1, 4, 3, 2, 5, **{name: 1.0})


def test_gru_refuses_zoneout_c_by_name():
    # The GRU has no cell state: its functions take no zoneout_c, and its op refuses a nonzero one.
    with pytest.raises(TypeError, match="zoneout_c"):
        call("GRU", zoneout_c=0.1)
    with pytest.raises(TypeError, match="zoneout_c"):
        F.gru_masks(1, 4, 3, 2, 5, zoneout_c=0.1)
    rates = [0.2 if name == "zoneout_c" else 0.0 for name in RATE_NAMES]
    with pytest.raises(EXCEPTIONS, match="zoneout_c"):
        torch.ops.rnnfused.gru_forward(*gru_layer_args(inputs("GRU")), None, torch.tensor(1), 0, False, True, rates,
                                       False)


def test_projection_with_zoneout_h_runs():
    # SPEC §2 allows refusing it; this project runs it (zoneout on the projected state), and the
    # reference and gradcheck tests check its values.
    out, h, c = F.lstm_layer(*layer_args(inputs(P=2)), seed=1, zoneout_h=0.2)
    assert out.shape == (4, 3, 2) and torch.isfinite(out).all()
    out, (h, c) = rnnfused.LSTM(3, 4, proj_size=2, zoneout_h=0.2)(torch.randn(2, 1, 3))
    assert out.shape == (2, 1, 2) and torch.isfinite(out).all()


# --- seeds --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("seed", [-1, 2 ** 63])
def test_seed_outside_its_range_is_a_value_error(seed, cell):
    with pytest.raises(ValueError, match="seed"):
        call(cell, seed=seed, **CELLS[cell].all_rates)


@pytest.mark.parametrize("cell", list(CELLS))
def test_seed_of_the_wrong_type_is_a_type_error(cell):
    with pytest.raises(TypeError, match="seed"):
        call(cell, seed=1.5, **CELLS[cell].all_rates)


# --- functional shapes, dtypes, lengths ---------------------------------------------------------------

def replaced(name, value, cell="LSTM", **kw):
    """inputs(cell, **kw) with `name` replaced by `value`."""
    args = inputs(cell, **kw)
    args[name] = value
    return args


def f64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


BAD_LSTM_ARGS = {
    "input": [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, 2, 1, dtype=torch.float64)],
    "h0": [torch.randn(3, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64),
           torch.randn(1, 3, 5, dtype=torch.float64)],
    "c0": [torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)],
    "weight_ih": [torch.randn(20, 3, dtype=torch.float64), torch.randn(19, 2, dtype=torch.float64),
                  torch.randn(20, dtype=torch.float64)],
    "weight_hh": [torch.randn(20, 4, dtype=torch.float64), torch.randn(16, 5, dtype=torch.float64)],
    "bias_ih": [torch.randn(19, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)],
    "bias_hh": [torch.randn(21, dtype=torch.float64)],
}
# The GRU's (H = 5: 3H = 15 gate rows): the wrong rank, the LSTM's 4H rows, off by one.
BAD_GRU_ARGS = {
    "input": BAD_LSTM_ARGS["input"],
    "h0": [f64(3, 4), f64(2, 5), f64(1, 3, 5)],
    "weight_ih": [f64(15, 3), f64(14, 2), f64(15), f64(20, 2)],
    "weight_hh": [f64(15, 4), f64(12, 5), f64(20, 5)],
    "bias_ih": [f64(14), f64(3, 5), f64(20)],
    "bias_hh": [f64(16)],
}
BAD_ARGS = {"LSTM": BAD_LSTM_ARGS, "GRU": BAD_GRU_ARGS}
# Every argument besides input that must match its dtype and device.
STATES_AND_WEIGHTS = cells_and({cell: c.states + ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                                for cell, c in CELLS.items()})


@pytest.mark.parametrize("cell,name,index", [(cell, n, k) for cell, bad in BAD_ARGS.items() for n, vs in bad.items()
                                             for k in range(len(vs))])
def test_functional_wrong_shape_names_the_argument(cell, name, index):
    with pytest.raises(EXCEPTIONS, match=name):
        call(cell, replaced(name, BAD_ARGS[cell][name][index], cell))


@pytest.mark.parametrize("cell", list(CELLS))
def test_functional_input_size_mismatch_names_input_or_weight_ih(cell):
    # Without an input_size argument, either side of the mismatch may be the one named.
    with pytest.raises(EXCEPTIONS, match="input|weight_ih"):
        call(cell, replaced("input", f64(4, 3, 7), cell))


def test_functional_wrong_projection_shape_names_weight_hr():
    with pytest.raises(EXCEPTIONS, match="weight_hr"):
        call("LSTM", replaced("weight_hr", f64(2, 4), P=2))


@pytest.mark.parametrize("cell,name", STATES_AND_WEIGHTS)
def test_functional_dtype_mismatch_names_the_argument(cell, name):
    with pytest.raises(EXCEPTIONS, match=name):
        call(cell, replaced(name, inputs(cell)[name].float(), cell))


@pytest.mark.parametrize("cell,name", STATES_AND_WEIGHTS)
def test_functional_device_mismatch_names_the_argument(cell, name):
    # A meta tensor stands in for another device on a machine without a GPU (test_cuda.py checks CUDA
    # with CPU arguments): the call must refuse it, not return uninitialized memory.
    with pytest.raises(EXCEPTIONS, match=name):
        call(cell, replaced(name, inputs(cell)[name].to("meta"), cell))


def test_gru_bias_ih_without_bias_hh_is_an_error_naming_them():
    with pytest.raises(EXCEPTIONS, match="bias_ih|bias_hh"):
        call("GRU", replaced("bias_hh", None, "GRU"))


@pytest.mark.parametrize("cell", list(CELLS))
def test_functional_non_tensor_input_is_a_type_error(cell):
    with pytest.raises(TypeError, match="input"):
        call(cell, replaced("input", [[1.0]], cell))


@pytest.mark.parametrize("lengths", [
    torch.tensor([4, 5, 1]),                 # longer than the sequence
    torch.tensor([4, -1, 1]),
    torch.tensor([4, 2]),                    # wrong batch
    torch.tensor([[4, 2, 1]]),               # wrong rank
    torch.tensor([4.0, 2.0, 1.0]),           # not integers
], ids=["too_long", "negative", "wrong_batch", "wrong_rank", "float"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_lengths_that_do_not_fit_are_an_error_naming_lengths(cell, lengths):
    with pytest.raises(EXCEPTIONS, match="lengths"):
        call(cell, lengths=lengths)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_zero_length_in_lengths_keeps_the_state_or_fails_clearly(reverse, cell):
    c = CELLS[cell]
    args = c.make_inputs(4, 3, 2, 5)
    lengths = torch.tensor([4, 0, 1])
    try:
        got = call(cell, args, lengths=lengths, reverse=reverse, **c.all_rates)
    except EXCEPTIONS as e:
        assert "lengths" in str(e)
        return
    want = c.replay(args, 1, lengths=lengths, reverse=reverse, **c.all_rates)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    for final, state in zip(got[1:], c.states):
        assert torch.equal(final[1], args[state][1]), state


# --- module inputs --------------------------------------------------------------------------------------

def model(**kw):
    return rnnfused.LSTM(3, 4, num_layers=2, **kw)


@pytest.mark.parametrize("x", [torch.randn(5), torch.randn(5, 2, 3, 1), torch.randn(5, 2, 6)],
                         ids=["1-D", "4-D", "feature_size"])
def test_module_wrong_input_rank_or_size_names_input(x):
    with pytest.raises(EXCEPTIONS, match="input"):
        model()(x)


@pytest.mark.parametrize("hx", [
    (torch.randn(1, 2, 4), torch.randn(2, 2, 4)),        # layers
    (torch.randn(2, 3, 4), torch.randn(2, 2, 4)),        # batch
    (torch.randn(2, 2, 4), torch.randn(2, 2, 5)),        # hidden size of c
    (torch.randn(2, 4), torch.randn(2, 4)),              # 2-D state for batched input
], ids=["layers", "batch", "hidden", "rank"])
def test_module_wrong_hx_shape_names_hx(hx):
    with pytest.raises(EXCEPTIONS, match=r"hx|h_0|c_0|hidden"):
        model()(torch.randn(5, 2, 3), hx)


def test_module_hx_not_a_pair_is_an_error_naming_hx():
    with pytest.raises(EXCEPTIONS, match="hx"):
        model()(torch.randn(5, 2, 3), torch.randn(2, 2, 4))


def test_module_input_dtype_mismatch_is_an_error_naming_dtype():
    with pytest.raises(EXCEPTIONS, match="dtype"):
        model()(torch.randn(5, 2, 3, dtype=torch.float64))


def test_module_hx_dtype_mismatch_is_an_error_naming_dtype():
    hx = (torch.randn(2, 2, 4, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64))
    with pytest.raises(EXCEPTIONS, match="dtype"):
        model()(torch.randn(5, 2, 3), hx)


@pytest.mark.parametrize("kw,name", [(dict(hidden_size=0), "hidden_size"), (dict(input_size=0), "input_size"),
                                     (dict(num_layers=0), "num_layers"), (dict(proj_size=4), "proj_size"),
                                     (dict(proj_size=-1), "proj_size"), (dict(dropout=1.5), "dropout")])
def test_module_bad_sizes_are_value_errors_naming_them(kw, name):
    args = dict(input_size=3, hidden_size=4, num_layers=1)
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        rnnfused.LSTM(**args)


def test_zero_length_sequence_behaves_like_nn_lstm_or_fails_clearly():
    x = torch.randn(0, 2, 3)
    try:
        out, (h, c) = model()(x)
    except EXCEPTIONS as e:
        assert "seq" in str(e) or "length" in str(e)
    else:
        assert out.shape == (0, 2, 4)


def test_empty_batch_behaves_like_nn_lstm_or_fails_clearly():
    x = torch.randn(5, 0, 3)
    theirs = torch.nn.LSTM(3, 4, num_layers=2)
    try:
        out, (h, c) = model(zoneout=0.1)(x)
    except EXCEPTIONS as e:
        assert "batch" in str(e) or "empty" in str(e)
    else:
        want, (wh, wc) = theirs(x)
        assert out.shape == want.shape and h.shape == wh.shape and c.shape == wc.shape


# --- gradients ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("training", [True, False])
def test_backward_of_backward_is_a_clear_error(training, cell):
    args = CELLS[cell].make_inputs(3, 2, 2, 3)
    out, *finals = call(cell, args, training=training, **CELLS[cell].all_rates)
    loss = (out * out).sum() + sum(f.sum() for f in finals)
    (g,) = torch.autograd.grad(loss, [args["weight_hh"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward|backward of backward"):
        torch.autograd.grad(g.sum(), [args["input"]])
