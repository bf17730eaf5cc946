"""The compiled ops under torch.ops.rnnfused: their fake (meta) implementations and autograd.

The schemas and the CPU/CUDA kernels are registered in C++ (csrc/registration.cpp); this file
adds what torch.compile and autograd need, following pytorch/extension-cpp:
  lstm_forward, gru_forward, ln_lstm_forward
      -> fake impl, autograd formula calling the matching backward op
  lstm_backward, gru_backward, ln_lstm_backward
      -> fake impl, and an autograd formula that refuses double backward
"""
import torch

try:
    from . import _C  # noqa: F401  (loading the library registers the ops)
except ImportError as e:  # instead of Python's "partially initialized module (circular import)"
    import glob, os
    _here = os.path.dirname(os.path.abspath(__file__))
    _built = glob.glob(os.path.join(_here, "_C*.so"))
    _why = (f"{_built[0]} does not load ({e}); was it built against another torch than this "
            f"{torch.__version__}?" if _built else f"rnnfused._C is not built in {_here}.")
    raise ImportError(f"rnnfused: {_why} Build it in place with `make build` (or `python setup.py "
                      "build_ext --inplace`), or install rnnfused with `pip install "
                      "--no-build-isolation .`") from e

lstm_forward = torch.ops.rnnfused.lstm_forward
lstm_backward = torch.ops.rnnfused.lstm_backward
gru_forward = torch.ops.rnnfused.gru_forward
gru_backward = torch.ops.rnnfused.gru_backward
ln_lstm_forward = torch.ops.rnnfused.ln_lstm_forward
ln_lstm_backward = torch.ops.rnnfused.ln_lstm_backward

# What the C++ says of the cells (csrc/layer.h), not repeated here: each cell's gate count, the
# index of zoneout_c in the rates (the only rate that changes the workspace's shape) and the width
# of the gates workspace per sample.
_SPECS = _C.cell_specs()
_ZONEOUT_C = _C.rate_names().index("zoneout_c")
_WORKSPACE_GATES = _C.workspace_gates


def _sizes(input, weight_ih, gates, weight_hr=None):
    """(T, B, H, R) of a layer call: H from weight_ih's G*H rows, R = proj_size or H."""
    T, B, _ = input.shape
    H = weight_ih.shape[0] // gates
    R = weight_hr.shape[0] if weight_hr is not None else H
    return T, B, H, R


def _workspace_fake(input, need_workspace, T, B, H, R, with_cell):
    """Fake gates, hs and (LSTM) cs of a forward call."""
    if not need_workspace:
        return [input.new_empty((0,)) for _ in range(3 if with_cell else 2)]
    shapes = [(T, B, _WORKSPACE_GATES * H), (T + 1, B, R)] + ([(T + 1, B, H)] if with_cell else [])
    return [input.new_empty(shape) for shape in shapes]


def _check_devices(input, **named):
    """The device check of the C++ plan, for the fake implementations: a call that mixes a meta
    tensor with real ones lands here and must refuse, not return uninitialized memory."""
    for name, t in named.items():
        if t is not None and t.device != input.device:
            raise ValueError(f"rnnfused: {name} must be on the device of input ({input.device}), "
                             f"got {t.device}")


@torch.library.register_fake("rnnfused::lstm_forward")
def _lstm_forward_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths,
                       seed, layer, reverse, training, rates, need_workspace):
    _check_devices(input, h0=h0, c0=c0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                   bias_hh=bias_hh, weight_hr=weight_hr)
    T, B, H, R = _sizes(input, weight_ih, _SPECS["lstm"]["gates"], weight_hr)
    gates, hs, cs = _workspace_fake(input, need_workspace, T, B, H, R, with_cell=True)
    with_ctil = need_workspace and rates[_ZONEOUT_C] > 0
    ctil = input.new_empty((T, B, H) if with_ctil else (0,))
    return (input.new_empty((T, B, R)), input.new_empty((B, R)), input.new_empty((B, H)), gates, hs,
            cs, ctil)


@torch.library.register_fake("rnnfused::gru_forward")
def _gru_forward_fake(input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, seed, layer,
                      reverse, training, rates, need_workspace):
    _check_devices(input, h0=h0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                   bias_hh=bias_hh)
    T, B, H, R = _sizes(input, weight_ih, _SPECS["gru"]["gates"])
    gates, hs = _workspace_fake(input, need_workspace, T, B, H, R, with_cell=False)
    return input.new_empty((T, B, R)), input.new_empty((B, R)), gates, hs


@torch.library.register_fake("rnnfused::ln_lstm_forward")
def _ln_lstm_forward_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                          ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c, lengths, seed, layer,
                          reverse, training, rates, need_workspace):
    _check_devices(input, h0=h0, c0=c0, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
                   bias_hh=bias_hh, weight_hr=weight_hr, ln_weight_ih=ln_weight_ih,
                   ln_weight_hh=ln_weight_hh, ln_weight_c=ln_weight_c, ln_bias_c=ln_bias_c)
    G = _SPECS["ln_lstm"]["gates"]
    T, B, H, R = _sizes(input, weight_ih, G, weight_hr)
    gates, hs, cs = _workspace_fake(input, need_workspace, T, B, H, R, with_cell=True)
    shapes = [(T, B, G * H), (T, B, G * H), (T, B, H), (T, B, 3)]
    norms = [input.new_empty(shape if need_workspace else (0,)) for shape in shapes]
    return (input.new_empty((T, B, R)), input.new_empty((B, R)), input.new_empty((B, H)), gates, hs,
            cs, *norms)


def _bias_fake(input, weight_ih, has_bias):
    return input.new_empty((weight_ih.shape[0],) if has_bias else (0,))


@torch.library.register_fake("rnnfused::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr,
                        lengths, seed, layer, reverse, training, rates, gates, hs, cs, ctil,
                        has_bias):
    return (
        torch.empty_like(input),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n),
        torch.empty_like(weight_ih),
        torch.empty_like(weight_hh),
        _bias_fake(input, weight_ih, has_bias),
        torch.empty_like(weight_hr) if weight_hr is not None else input.new_empty((0,)),
    )


@torch.library.register_fake("rnnfused::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, input, weight_ih, weight_hh, lengths, seed, layer,
                       reverse, training, rates, gates, hs, has_bias):
    return (torch.empty_like(input), torch.empty_like(grad_h_n), torch.empty_like(weight_ih),
            torch.empty_like(weight_hh), _bias_fake(input, weight_ih, has_bias),
            _bias_fake(input, weight_ih, has_bias))


@torch.library.register_fake("rnnfused::ln_lstm_backward")
def _ln_lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr,
                           ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c, lengths, seed, layer,
                           reverse, training, rates, gates, hs, cs, norm_x, norm_h, norm_c, rstd,
                           has_bias):
    return _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh,
                               weight_hr, lengths, seed, layer, reverse, training, rates, gates, hs,
                               cs, None, has_bias) + (
        torch.empty_like(ln_weight_ih), torch.empty_like(ln_weight_hh),
        torch.empty_like(ln_weight_c), torch.empty_like(ln_bias_c))


# -- autograd: one formula shape for the cells -----------------------------------------------

def _keep_call(ctx, layer, reverse, training, rates, has_bias, need_workspace):
    ctx.layer, ctx.reverse, ctx.training, ctx.rates = layer, reverse, training, list(rates)
    ctx.has_bias = has_bias
    ctx.need_workspace = need_workspace
    # Gradients of outputs nobody used arrive as None instead of zero-filled tensors (the
    # workspace outputs are never used, and zero-filling them would cost a (T, B, 4H) pass).
    ctx.set_materialize_grads(False)


def _check_workspace(ctx):
    if not ctx.need_workspace:
        raise RuntimeError(
            "rnnfused: this forward ran with need_workspace=False (no input required grad when "
            "it ran), so it kept nothing for backward")


def _or_zeros(grad, like, shape):
    return like.new_zeros(shape) if grad is None else grad


def _lstm_setup_context(ctx, inputs, output):
    (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed, layer,
     reverse, training, rates, need_workspace) = inputs
    _, _, _, gates, hs, cs, ctil = output
    ctx.save_for_backward(input, weight_ih, weight_hh, weight_hr, lengths, seed, gates, hs, cs,
                          ctil)
    _keep_call(ctx, layer, reverse, training, rates, bias_ih is not None, need_workspace)


def _lstm_backward_formula(ctx, grad_output, grad_h_n, grad_c_n, *_workspace_grads):
    _check_workspace(ctx)
    input, weight_ih, weight_hh, weight_hr, lengths, seed, gates, hs, cs, ctil = ctx.saved_tensors
    T, B, H, R = _sizes(input, weight_ih, _SPECS["lstm"]["gates"], weight_hr)
    (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias,
     grad_weight_hr) = lstm_backward(
        _or_zeros(grad_output, input, (T, B, R)), _or_zeros(grad_h_n, input, (B, R)),
        _or_zeros(grad_c_n, input, (B, H)), input, weight_ih, weight_hh, weight_hr, lengths, seed,
        ctx.layer, ctx.reverse, ctx.training, ctx.rates, gates, hs, cs, ctil, ctx.has_bias)
    grad_bias_ih = grad_bias if ctx.has_bias else None
    grad_bias_hh = grad_bias.clone() if ctx.has_bias else None
    grad_weight_hr = grad_weight_hr if weight_hr is not None else None
    return (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh, grad_weight_hr) + (None,) * 7


def _ln_lstm_setup_context(ctx, inputs, output):
    (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, ln_weight_ih, ln_weight_hh,
     ln_weight_c, ln_bias_c, lengths, seed, layer, reverse, training, rates,
     need_workspace) = inputs
    gates, hs, cs, norm_x, norm_h, norm_c, rstd = output[3:]
    ctx.save_for_backward(input, weight_ih, weight_hh, weight_hr, ln_weight_ih, ln_weight_hh,
                          ln_weight_c, ln_bias_c, lengths, seed, gates, hs, cs, norm_x, norm_h,
                          norm_c, rstd)
    _keep_call(ctx, layer, reverse, training, rates, bias_ih is not None, need_workspace)


def _ln_lstm_backward_formula(ctx, grad_output, grad_h_n, grad_c_n, *_workspace_grads):
    _check_workspace(ctx)
    (input, weight_ih, weight_hh, weight_hr, ln_weight_ih, ln_weight_hh, ln_weight_c, ln_bias_c,
     lengths, seed, gates, hs, cs, norm_x, norm_h, norm_c, rstd) = ctx.saved_tensors
    T, B, H, R = _sizes(input, weight_ih, _SPECS["ln_lstm"]["gates"], weight_hr)
    (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias, grad_weight_hr,
     *grad_ln) = ln_lstm_backward(
        _or_zeros(grad_output, input, (T, B, R)), _or_zeros(grad_h_n, input, (B, R)),
        _or_zeros(grad_c_n, input, (B, H)), input, weight_ih, weight_hh, weight_hr, ln_weight_ih,
        ln_weight_hh, ln_weight_c, ln_bias_c, lengths, seed, ctx.layer, ctx.reverse, ctx.training,
        ctx.rates, gates, hs, cs, norm_x, norm_h, norm_c, rstd, ctx.has_bias)
    grad_bias_ih = grad_bias if ctx.has_bias else None
    grad_bias_hh = grad_bias.clone() if ctx.has_bias else None
    grad_weight_hr = grad_weight_hr if weight_hr is not None else None
    return (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh, grad_weight_hr, *grad_ln) + (None,) * 7


def _gru_setup_context(ctx, inputs, output):
    (input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, seed, layer, reverse, training,
     rates, need_workspace) = inputs
    _, _, gates, hs = output
    ctx.save_for_backward(input, weight_ih, weight_hh, lengths, seed, gates, hs)
    _keep_call(ctx, layer, reverse, training, rates, bias_ih is not None, need_workspace)


def _gru_backward_formula(ctx, grad_output, grad_h_n, *_workspace_grads):
    _check_workspace(ctx)
    input, weight_ih, weight_hh, lengths, seed, gates, hs = ctx.saved_tensors
    T, B, H, R = _sizes(input, weight_ih, _SPECS["gru"]["gates"])
    (grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
     grad_bias_hh) = gru_backward(
        _or_zeros(grad_output, input, (T, B, R)), _or_zeros(grad_h_n, input, (B, R)), input,
        weight_ih, weight_hh, lengths, seed, ctx.layer, ctx.reverse, ctx.training, ctx.rates,
        gates, hs, ctx.has_bias)
    if not ctx.has_bias:
        grad_bias_ih = grad_bias_hh = None
    return (grad_input, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh) + (None,) * 7


def _backward_setup_context(ctx, inputs, output):
    pass


def _backward_backward(ctx, *grads):
    raise RuntimeError(
        "rnnfused: backward of backward (double backward) through the fused layers is not "
        "supported; use rnnfused.reference for higher-order gradients")


torch.library.register_autograd("rnnfused::lstm_forward", _lstm_backward_formula,
                                setup_context=_lstm_setup_context)
torch.library.register_autograd("rnnfused::gru_forward", _gru_backward_formula,
                                setup_context=_gru_setup_context)
torch.library.register_autograd("rnnfused::ln_lstm_forward", _ln_lstm_backward_formula,
                                setup_context=_ln_lstm_setup_context)
for _name in ("rnnfused::lstm_backward", "rnnfused::gru_backward", "rnnfused::ln_lstm_backward"):
    torch.library.register_autograd(_name, _backward_backward,
                                    setup_context=_backward_setup_context)


def has_cuda_kernels() -> bool:
    """Whether this build of rnnfused._C contains the CUDA kernels."""
    return _C.has_cuda_kernels()
