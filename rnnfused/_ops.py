"""The compiled ops under torch.ops.rnnfused: their fake (meta) implementations and autograd.

The schemas and the CPU/CUDA kernels are registered in C++ (csrc/registration.cpp); this file
adds what torch.compile and autograd need, following pytorch/extension-cpp:
  lstm_forward  -> fake impl, autograd formula calling lstm_backward
  lstm_backward -> fake impl, and an autograd formula that refuses double backward
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

# Index of zoneout_c in the rates list: the only rate that changes the workspace's shape.
_ZONEOUT_C = 4


@torch.library.register_fake("rnnfused::lstm_forward")
def _lstm_forward_fake(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths,
                       seed, layer, reverse, training, rates, need_workspace):
    T, B, _ = input.shape
    H = weight_ih.shape[0] // 4
    R = weight_hr.shape[0] if weight_hr is not None else H
    output = input.new_empty((T, B, R))
    h_n = input.new_empty((B, R))
    c_n = input.new_empty((B, H))
    if need_workspace:
        gates = input.new_empty((T, B, 4 * H))
        hs = input.new_empty((T + 1, B, R))
        cs = input.new_empty((T + 1, B, H))
        ctil = input.new_empty((T, B, H) if rates[_ZONEOUT_C] > 0 else (0,))
    else:
        gates, hs, cs, ctil = (input.new_empty((0,)) for _ in range(4))
    return output, h_n, c_n, gates, hs, cs, ctil


@torch.library.register_fake("rnnfused::lstm_backward")
def _lstm_backward_fake(grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr,
                        lengths, seed, layer, reverse, training, rates, gates, hs, cs, ctil,
                        has_bias):
    H = weight_ih.shape[0] // 4
    return (
        torch.empty_like(input),
        torch.empty_like(grad_h_n),
        torch.empty_like(grad_c_n),
        torch.empty_like(weight_ih),
        torch.empty_like(weight_hh),
        input.new_empty((4 * H,) if has_bias else (0,)),
        torch.empty_like(weight_hr) if weight_hr is not None else input.new_empty((0,)),
    )


def _forward_setup_context(ctx, inputs, output):
    (input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, seed, layer,
     reverse, training, rates, need_workspace) = inputs
    _, _, _, gates, hs, cs, ctil = output
    ctx.save_for_backward(input, weight_ih, weight_hh, weight_hr, lengths, seed, gates, hs, cs,
                          ctil)
    ctx.layer, ctx.reverse, ctx.training, ctx.rates = layer, reverse, training, list(rates)
    ctx.has_bias = bias_ih is not None
    ctx.need_workspace = need_workspace


def _forward_backward(ctx, grad_output, grad_h_n, grad_c_n, *_workspace_grads):
    if not ctx.need_workspace:
        raise RuntimeError(
            "rnnfused: this forward ran with need_workspace=False (no input required grad when "
            "it ran), so it kept nothing for backward")
    input, weight_ih, weight_hh, weight_hr, lengths, seed, gates, hs, cs, ctil = ctx.saved_tensors
    T, B, _ = input.shape
    H = weight_ih.shape[0] // 4
    R = weight_hr.shape[0] if weight_hr is not None else H
    if grad_output is None:
        grad_output = input.new_zeros((T, B, R))
    if grad_h_n is None:
        grad_h_n = input.new_zeros((B, R))
    if grad_c_n is None:
        grad_c_n = input.new_zeros((B, H))
    (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias,
     grad_weight_hr) = lstm_backward(
        grad_output, grad_h_n, grad_c_n, input, weight_ih, weight_hh, weight_hr, lengths, seed,
        ctx.layer, ctx.reverse, ctx.training, ctx.rates, gates, hs, cs, ctil, ctx.has_bias)
    grad_bias_ih = grad_bias if ctx.has_bias else None
    grad_bias_hh = grad_bias.clone() if ctx.has_bias else None
    grad_weight_hr = grad_weight_hr if weight_hr is not None else None
    return (grad_input, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
            grad_bias_hh, grad_weight_hr, None, None, None, None, None, None, None)


def _backward_setup_context(ctx, inputs, output):
    pass


def _backward_backward(ctx, *grads):
    raise RuntimeError(
        "rnnfused: backward of backward (double backward) through the fused LSTM is not "
        "supported; use rnnfused.reference for higher-order gradients")


torch.library.register_autograd("rnnfused::lstm_forward", _forward_backward,
                                setup_context=_forward_setup_context)
torch.library.register_autograd("rnnfused::lstm_backward", _backward_backward,
                                setup_context=_backward_setup_context)


def has_cuda_kernels() -> bool:
    """Whether this build of rnnfused._C contains the CUDA kernels."""
    return _C.has_cuda_kernels()
