"""SPEC §3, §5: the CUDA kernels compute the CPU kernels' function — same seed, same masks, same
workspace — and the reference's, in every dtype CUDA supports; they write every element they
return, handle every launch geometry, keep nothing when no gradient is needed, and queue their
work on the current stream without synchronizing. Skipped without a GPU or without the CUDA build.
"""

import copy
import gc
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused
from conftest import REGULARIZERS as BASE_REGULARIZERS
from conftest import ALL_RATES, NO_RATES, grads, layer_args, make_layer_inputs, random_lengths, weighted_sum
from rnnfused import functional as F
from rnnfused import reference

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not rnnfused.has_cuda_kernels(), reason="rnnfused._C was built without CUDA"),
]

SEED = 20240611
CUDA = torch.device("cuda")

REGULARIZERS = dict(BASE_REGULARIZERS, all_but_zoneout_h=dict(ALL_RATES, zoneout_h=0.0))


@pytest.fixture(autouse=True)
def no_tf32():
    """float32 GEMMs in full precision, so CUDA and CPU differ by summation order only."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on(inputs, device, dtype=None):
    """The same leaf tensors on another device (and dtype), requiring grad like the originals."""
    out = {}
    for name, t in inputs.items():
        if t is None:
            out[name] = None
            continue
        moved = t.detach().to(device=device, dtype=dtype or t.dtype)
        out[name] = moved.requires_grad_(t.requires_grad)
    return out


def run(inputs, **kw):
    """Outputs (output, h_n, c_n) and the gradient of every argument, as a flat list; None where
    an argument is absent. Gradients are taken when the inputs require grad."""
    out = F.lstm_layer(*layer_args(inputs), **kw)
    result = list(out)
    if any(t is not None and t.requires_grad for t in inputs.values()):
        result += grads(weighted_sum(out), list(inputs.values()))
    return result


NAMES = ["output", "h_n", "c_n"] + ["grad " + n for n in ("input", "h0", "c0", "weight_ih", "weight_hh",
                                                          "bias_ih", "bias_hh", "weight_hr")]


def assert_all_close(got, want, *, atol, rtol, what=""):
    for name, a, b in zip(NAMES, got, want):
        if b is None:
            assert a is None, f"{what} {name}"
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what} {name}: {a.dtype}{tuple(a.shape)}"
        torch.testing.assert_close(a.cpu(), b.cpu(), atol=atol, rtol=rtol, msg=lambda m: f"{what} {name}: {m}")


def max_error(got, want):
    """Largest |got - want| relative to the largest |want| (at least 1), per tensor, in float64."""
    out = []
    for a, b in zip(got, want):
        if b is None:
            continue
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        out.append(((a - b).abs().max() / b.abs().max().clamp(min=1)).item() if b.numel() else 0.0)
    return out


# ---------------------------------------------------------------------------------------------
# CUDA computes the CPU kernels' function
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("P", [0, 3], ids=["noproj", "proj"])
@pytest.mark.parametrize("regularizer", list(REGULARIZERS))
def test_cuda_equals_cpu_in_float64_for_the_same_seed(regularizer, P, training, reverse, with_lengths):
    T, B, I, H = 6, 4, 5, 7
    torch.manual_seed(zlib.crc32(repr((regularizer, P)).encode()))
    inputs = make_layer_inputs(T, B, I, H, P)
    lengths = random_lengths(T, B) if with_lengths else None
    kw = dict(seed=SEED, training=training, reverse=reverse, lengths=lengths, layer=2, **REGULARIZERS[regularizer])
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    assert_all_close(got, want, atol=1e-10, rtol=1e-9, what="cuda vs cpu float64:")


@pytest.mark.parametrize("P", [0, 4])
@pytest.mark.parametrize("regularizer", ["none", "all", "all_but_zoneout_h"])
def test_cuda_equals_cpu_in_float32_without_tf32(regularizer, P):
    T, B, I, H = 12, 6, 16, 24
    torch.manual_seed(11)
    inputs = make_layer_inputs(T, B, I, H, P, dtype=torch.float32)
    kw = dict(seed=SEED, lengths=random_lengths(T, B), **REGULARIZERS[regularizer])
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    # float32 rounding (6e-8) grown over T steps and sums of up to T*B terms.
    for name, err in zip(NAMES, max_error(got, want)):
        assert err < 5e-5, f"{name}: relative error {err:.2e}"


def test_cuda_draws_the_masks_lstm_masks_materializes():
    # CUDA replays the reference given lstm_masks(seed) bit for bit up to rounding.
    T, B, I, H = 5, 3, 4, 6
    torch.manual_seed(12)
    inputs = make_layer_inputs(T, B, I, H, device=CUDA)
    lengths = torch.tensor([5, 2, 4])
    for layer, reverse in [(0, False), (1, True), (5, False)]:
        got = run(inputs, seed=SEED, layer=layer, reverse=reverse, lengths=lengths, **ALL_RATES)
        masks = F.lstm_masks(SEED, T, B, I, H, layer=layer, reverse=reverse, dtype=torch.float64, device=CUDA,
                             **ALL_RATES)
        expected = reference.lstm_layer(*layer_args(inputs), masks=masks, reverse=reverse, lengths=lengths,
                                        **ALL_RATES)
        want = list(expected) + grads(weighted_sum(expected), list(inputs.values()))
        assert_all_close(got, want, atol=1e-10, rtol=1e-9, what=f"layer {layer} reverse {reverse}:")


@pytest.mark.parametrize("P", [0, 2])
def test_cuda_equals_the_reference_with_projection_in_evaluation(P):
    torch.manual_seed(13)
    inputs = make_layer_inputs(5, 3, 4, 5, P, device=CUDA)
    lengths = torch.tensor([5, 1, 3])
    got = run(inputs, training=False, reverse=True, lengths=lengths, **ALL_RATES)
    expected = reference.lstm_layer(*layer_args(inputs), training=False, reverse=True, lengths=lengths, **ALL_RATES)
    want = list(expected) + grads(weighted_sum(expected), list(inputs.values()))
    assert_all_close(got, want, atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("P,rates", [(0, ALL_RATES), (2, dict(ALL_RATES, zoneout_h=0.0)), (2, ALL_RATES),
                                     (0, NO_RATES)], ids=["all", "proj", "proj_zoneout_h", "none"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_on_cuda_in_float64(P, rates, training):
    torch.manual_seed(14)
    inputs = make_layer_inputs(4, 3, 2, 3, P, device=CUDA)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        args = dict(inputs, **dict(zip(names, tensors)))
        return F.lstm_layer(*layer_args(args), seed=SEED, training=training, reverse=True,
                            lengths=torch.tensor([4, 2, 3]), **rates)

    assert torch.autograd.gradcheck(f, tuple(inputs[k] for k in names), atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("regularizer", ["none", "all_but_zoneout_h", "all"])
@pytest.mark.parametrize("P", [0, 4])
def test_half_and_bfloat16_within_their_rounding_of_the_float64_reference(dtype, regularizer, P):
    # The tolerance is the error the same reference makes when run in `dtype` (FlashAttention's
    # rule): the fused kernel, which computes in float32 and rounds only what it stores, must do
    # no worse than a few times that.
    T, B, I, H = 10, 8, 32, 40
    rates = REGULARIZERS[regularizer]
    torch.manual_seed(15)
    exact = make_layer_inputs(T, B, I, H, P, device=CUDA)
    lengths = random_lengths(T, B)
    masks = F.lstm_masks(SEED, T, B, I, H, proj_size=P, dtype=torch.float64, device=CUDA, **rates)

    def reference_run(inputs):
        out = reference.lstm_layer(*layer_args(inputs), masks=masks, lengths=lengths, **rates)
        return list(out) + grads(weighted_sum(out), list(inputs.values()))

    want = reference_run(exact)
    low = on(exact, CUDA, dtype)
    got = run(low, seed=SEED, lengths=lengths, **rates)
    for t in got:
        assert t is None or (t.dtype == dtype and torch.isfinite(t).all())
    baseline = max_error(reference_run(on(exact, CUDA, dtype)), want)
    eps = torch.finfo(dtype).eps
    for name, err, base in zip(NAMES, max_error(got, want), baseline):
        assert err <= 3 * base + 4 * eps, f"{name}: error {err:.2e}, the {dtype} reference's {base:.2e}"


def test_module_runs_under_cuda_autocast_in_bfloat16():
    torch.manual_seed(16)
    model = rnnfused.LSTM(8, 16, num_layers=2, zoneout=0.1, input_dropout=0.2).cuda()
    x = torch.randn(5, 3, 8, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, (h, c) = model(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Launch geometry
# ---------------------------------------------------------------------------------------------

GEOMETRY = [
    (1, 1, 1, 1, 0),      # everything 1
    (1, 5, 3, 33, 0),     # T = 1, H just past a warp
    (4, 1, 6, 37, 0),     # B = 1, H not a multiple of 4
    (3, 7, 2, 1, 0),      # H = 1
    (5, 3, 4, 130, 6),    # projection, H past a block of quads
    (3, 300, 5, 70, 0),   # many samples: several blocks
    (2, 2, 3, 1029, 0),   # 4H past 4096
    (500, 2, 3, 13, 5),   # long sequence with projection
]


@pytest.mark.parametrize("size", GEOMETRY, ids=lambda s: "T{}B{}I{}H{}P{}".format(*s))
def test_launch_geometry_matches_cpu(size):
    T, B, I, H, P = size
    torch.manual_seed(zlib.crc32(repr(size).encode()))
    inputs = make_layer_inputs(T, B, I, H, P)
    lengths = random_lengths(T, B)
    rates = dict(ALL_RATES, zoneout_h=0.0) if P else ALL_RATES
    kw = dict(seed=SEED, lengths=lengths, reverse=True, **rates)
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    assert_all_close(got, want, atol=1e-9, rtol=1e-8, what=str(size))


@pytest.mark.parametrize("T,B", [(0, 3), (4, 0)], ids=["empty_sequence", "empty_batch"])
def test_empty_sizes_behave_like_cpu(T, B):
    torch.manual_seed(17)
    inputs = make_layer_inputs(T, B, 3, 4)
    results = []
    for device in ("cpu", CUDA):
        try:
            results.append(run(on(inputs, device), seed=SEED, **ALL_RATES))
        except Exception as error:  # the CPU's refusal must be CUDA's too
            results.append(type(error))
    if isinstance(results[0], type):
        assert results[1] is results[0]
    else:
        assert_all_close(results[1], results[0], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Every element written; nothing kept without grad; the current stream; no host syncs
# ---------------------------------------------------------------------------------------------

def poison_the_allocator():
    """Leaves NaN-filled blocks of many sizes in the caching allocator for the next call to get."""
    junk = [torch.full((n,), float("nan"), dtype=torch.float64, device=CUDA)
            for n in (1, 7, 64, 500, 4096, 40_000, 300_000, 2_000_000) for _ in range(4)]
    del junk
    gc.collect()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("mode", ["train", "eval", "no_grad"])
@pytest.mark.parametrize("P", [0, 3])
def test_every_output_element_is_written(dtype, mode, P):
    T, B, I, H = 9, 5, 4, 11
    torch.manual_seed(18)
    inputs = make_layer_inputs(T, B, I, H, P, requires_grad=mode != "no_grad")
    lengths = random_lengths(T, B)
    rates = dict(ALL_RATES, zoneout_h=0.0) if P else ALL_RATES
    kw = dict(seed=SEED, lengths=lengths, training=mode != "eval", **rates)
    want = run(inputs, **kw)
    poison_the_allocator()
    got = run(on(inputs, CUDA, dtype), **kw)
    for name, t in zip(NAMES, got):
        assert t is None or not torch.isnan(t).any(), f"{name} has unwritten (NaN) elements"
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(got[0][n:, b] == 0)
    if dtype == torch.float64:
        assert_all_close(got, want, atol=1e-10, rtol=1e-9)


def peak_memory(fn):
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before, result


def test_peak_memory_is_smaller_when_no_gradient_is_needed():
    T, B, I, H = 200, 32, 64, 128
    torch.manual_seed(19)
    inputs = make_layer_inputs(T, B, I, H, dtype=torch.float32, device=CUDA)
    kw = dict(seed=SEED, **ALL_RATES)
    with_grad, out_grad = peak_memory(lambda: F.lstm_layer(*layer_args(inputs), **kw))
    del out_grad
    with torch.no_grad():
        without, out = peak_memory(lambda: F.lstm_layer(*layer_args(inputs), **kw))
    element = 4
    # The workspace beyond the projected inputs (which become the gates in place): hs, cs, ctil.
    workspace = (2 * (T + 1) * B * H + T * B * H) * element
    assert with_grad - without >= 0.9 * workspace, (with_grad, without, workspace)
    # Without a workspace: the output, the projected inputs, the dropped-out inputs, and buffers
    # of (B, ·) or (4H, R) size.
    assert without <= T * B * (H + 4 * H + I) * element + (1 << 20), (without, T * B * (5 * H + I) * element)


def test_kernels_run_on_the_current_stream():
    torch.manual_seed(20)
    inputs = make_layer_inputs(30, 16, 32, 64, 0, dtype=torch.float64, device=CUDA)
    kw = dict(seed=SEED, lengths=random_lengths(30, 16), **ALL_RATES)
    want = run(inputs, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # if anything ran on the default stream it would race ahead
        got = run(inputs, **kw)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_all_close(got, want, atol=1e-12, rtol=0)


def test_forward_and_backward_do_not_synchronize_with_the_host():
    torch.manual_seed(21)
    inputs = make_layer_inputs(8, 4, 5, 6, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = F.lstm_layer(*layer_args(inputs), seed=SEED, lengths=torch.tensor([8, 3, 5, 1]), **ALL_RATES)
        torch.autograd.grad(sum(t.sum() for t in out), [inputs["input"], inputs["weight_hh"]])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_arguments_on_different_devices_are_refused_by_name():
    torch.manual_seed(22)
    inputs = make_layer_inputs(3, 2, 3, 4, device=CUDA, requires_grad=False)
    inputs["weight_hh"] = inputs["weight_hh"].cpu()
    with pytest.raises((ValueError, RuntimeError), match="weight_hh"):
        F.lstm_layer(*layer_args(inputs), seed=SEED)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------

def module_results(model, x, hx, lengths=None):
    torch.manual_seed(23)  # the seed of the forward call, drawn from the CPU generator
    x = x.detach().clone().requires_grad_()
    hx = tuple(h.detach().clone().requires_grad_() for h in hx)
    if lengths is not None:
        out, (h_n, c_n) = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        out = pad_packed_sequence(out)[0]
    else:
        out, (h_n, c_n) = model(x, hx)
    params = [p for _, p in sorted(model.named_parameters())]
    return [out, h_n, c_n] + list(torch.autograd.grad(weighted_sum([out, h_n, c_n]), [x, *hx, *params]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 0), (True, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_module_on_cuda_equals_module_on_cpu(bidirectional, proj_size, packed, training):
    torch.manual_seed(24)
    rates = dict(ALL_RATES, zoneout_h=0.0) if proj_size else ALL_RATES
    cpu = rnnfused.LSTM(5, 6, num_layers=2, bidirectional=bidirectional, proj_size=proj_size,
                        dtype=torch.float64, **rates).train(training)
    gpu = copy.deepcopy(cpu).cuda()
    D, R = (2 if bidirectional else 1), (proj_size or 6)
    x = torch.randn(7, 4, 5, dtype=torch.float64)
    hx = (torch.randn(2 * D, 4, R, dtype=torch.float64), torch.randn(2 * D, 4, 6, dtype=torch.float64))
    lengths = torch.tensor([7, 3, 5, 1]) if packed else None
    want = module_results(cpu, x, hx, lengths)
    got = module_results(gpu, x.cuda(), tuple(h.cuda() for h in hx), lengths)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.is_cuda
        torch.testing.assert_close(a.cpu(), b, atol=1e-10, rtol=1e-9, msg=lambda m: f"result {k}: {m}")
