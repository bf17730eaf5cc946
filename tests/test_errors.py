"""SPEC §6 (and the error promises of §2, §5): bad input gets a clear Python exception naming the argument."""

import pytest
import torch

import rnnfused
from conftest import ALL_RATES, RATE_NAMES, layer_args, make_layer_inputs
from rnnfused import functional as F

BAD_RATES = [-0.1, 1.0, 1.5, float("nan"), float("inf")]
EXCEPTIONS = (ValueError, TypeError, RuntimeError)


def inputs(**kw):
    torch.manual_seed(0)
    return make_layer_inputs(4, 3, 2, 5, requires_grad=False, **kw)


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


@pytest.mark.parametrize("value", BAD_RATES)
@pytest.mark.parametrize("name", RATE_NAMES)
def test_functional_rate_outside_0_1_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=name):
        F.lstm_layer(*layer_args(inputs()), seed=1, **{name: value})


@pytest.mark.parametrize("name", RATE_NAMES)
def test_lstm_masks_rate_outside_0_1_is_a_value_error_naming_it(name):
    with pytest.raises(ValueError, match=name):
        F.lstm_masks(1, 4, 3, 2, 5, **{name: 1.0})


def test_projection_with_zoneout_h_works_or_is_refused_clearly():
    args = inputs(P=2)
    try:
        out, h, c = F.lstm_layer(*layer_args(args), seed=1, zoneout_h=0.2)
    except NotImplementedError as e:
        assert "zoneout_h" in str(e) and "proj" in str(e)
        with pytest.raises(NotImplementedError):
            rnnfused.LSTM(3, 4, proj_size=2, zoneout_h=0.2)(torch.randn(2, 1, 3))
    else:
        assert out.shape == (4, 3, 2) and torch.isfinite(out).all()


# --- seeds --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2 ** 63])
def test_seed_outside_its_range_is_a_value_error(seed):
    with pytest.raises(ValueError, match="seed"):
        F.lstm_layer(*layer_args(inputs()), seed=seed, **ALL_RATES)


def test_seed_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match="seed"):
        F.lstm_layer(*layer_args(inputs()), seed=1.5, **ALL_RATES)


# --- functional shapes, dtypes, lengths ---------------------------------------------------------------

def replaced(name, value, **kw):
    args = inputs(**kw)
    args[name] = value
    return layer_args(args)


BAD_LAYER_ARGS = {
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


@pytest.mark.parametrize("name,index", [(n, k) for n, vs in BAD_LAYER_ARGS.items() for k in range(len(vs))])
def test_functional_wrong_shape_names_the_argument(name, index):
    with pytest.raises(EXCEPTIONS, match=name):
        F.lstm_layer(*replaced(name, BAD_LAYER_ARGS[name][index]), seed=1)


def test_functional_input_size_mismatch_names_input_or_weight_ih():
    # Without an input_size argument, either side of the mismatch may be the one named.
    with pytest.raises(EXCEPTIONS, match="input|weight_ih"):
        F.lstm_layer(*replaced("input", torch.randn(4, 3, 7, dtype=torch.float64)), seed=1)


def test_functional_wrong_projection_shape_names_weight_hr():
    with pytest.raises(EXCEPTIONS, match="weight_hr"):
        F.lstm_layer(*replaced("weight_hr", torch.randn(2, 4, dtype=torch.float64), P=2), seed=1)


@pytest.mark.parametrize("name", ["h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"])
def test_functional_dtype_mismatch_names_the_argument(name):
    args = inputs()
    with pytest.raises(EXCEPTIONS, match=name):
        F.lstm_layer(*replaced(name, args[name].float()), seed=1)


def test_functional_non_tensor_input_is_a_type_error():
    with pytest.raises(TypeError, match="input"):
        F.lstm_layer(*replaced("input", [[1.0]]), seed=1)


@pytest.mark.parametrize("lengths", [
    torch.tensor([4, 5, 1]),                 # longer than the sequence
    torch.tensor([4, -1, 1]),
    torch.tensor([4, 2]),                    # wrong batch
    torch.tensor([[4, 2, 1]]),               # wrong rank
    torch.tensor([4.0, 2.0, 1.0]),           # not integers
], ids=["too_long", "negative", "wrong_batch", "wrong_rank", "float"])
def test_lengths_that_do_not_fit_are_an_error_naming_lengths(lengths):
    with pytest.raises(EXCEPTIONS, match="lengths"):
        F.lstm_layer(*layer_args(inputs()), seed=1, lengths=lengths)


@pytest.mark.parametrize("reverse", [False, True])
def test_zero_length_in_lengths_keeps_the_state_or_fails_clearly(reverse):
    from rnnfused import reference
    args = make_layer_inputs(4, 3, 2, 5)
    lengths = torch.tensor([4, 0, 1])
    try:
        got = F.lstm_layer(*layer_args(args), seed=1, lengths=lengths, reverse=reverse, **ALL_RATES)
    except EXCEPTIONS as e:
        assert "lengths" in str(e)
        return
    masks = F.lstm_masks(1, 4, 3, 2, 5, reverse=reverse, dtype=torch.float64, **ALL_RATES)
    want = reference.lstm_layer(*layer_args(args), masks=masks, lengths=lengths, reverse=reverse, **ALL_RATES)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    assert torch.equal(got[1][1], args["h0"][1]) and torch.equal(got[2][1], args["c0"][1])


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

@pytest.mark.parametrize("training", [True, False])
def test_backward_of_backward_is_a_clear_error(training):
    args = make_layer_inputs(3, 2, 2, 3)
    out, h, c = F.lstm_layer(*layer_args(args), seed=1, training=training, **ALL_RATES)
    (g,) = torch.autograd.grad((out * out).sum() + h.sum() + c.sum(), [args["weight_hh"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward|backward of backward"):
        torch.autograd.grad(g.sum(), [args["input"]])
