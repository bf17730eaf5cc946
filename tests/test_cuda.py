"""SPEC §3, §5: the CUDA kernels compute the CPU kernels' function — same seed, same masks, same
workspace — and the reference's, in every dtype CUDA supports; they write every element they
return, handle every launch geometry, keep nothing when no gradient is needed, and queue their
work on the current stream without synchronizing — for the LSTM and the GRU layer alike. Skipped
without a GPU or without the CUDA build.
"""

import copy
import gc
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused
from conftest import REGULARIZERS as BASE_REGULARIZERS
from conftest import ALL_RATES, CELLS, GRU_ALL_RATES, GRU_NO_RATES, GRU_REGULARIZERS, NO_RATES, grads, hx_tensors, \
    in_every_call_mode, module_rates, random_lengths, weighted_sum

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not rnnfused.has_cuda_kernels(), reason="rnnfused._C was built without CUDA"),
]

SEED = 20240611
CUDA = torch.device("cuda")

REGULARIZERS = dict(BASE_REGULARIZERS, all_but_zoneout_h=dict(ALL_RATES, zoneout_h=0.0))
REGULARIZERS_OF = {"LSTM": REGULARIZERS,
                   "GRU": dict(GRU_REGULARIZERS, all_but_zoneout_h=dict(GRU_ALL_RATES, zoneout_h=0.0))}
# The LSTM without and with a projection, and the GRU (which has none).
CELL_P = [("LSTM", 0), ("LSTM", 3), ("GRU", 0)]


def cell_inputs(cell, T, B, I, H, P=0, **kw):
    """Random arguments of the cell's layer; P > 0 gives the LSTM a projection."""
    return CELLS[cell].make_inputs(T, B, I, H, **(dict(P=P) if P else {}), **kw)


def all_rates(cell, P=0):
    """Every regularizer of the cell; with a projection, every one but zoneout_h."""
    return dict(ALL_RATES, zoneout_h=0.0) if P else CELLS[cell].all_rates


def cell_of(inputs):
    return CELLS["LSTM" if "c0" in inputs else "GRU"]


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


def with_grads(out, inputs):
    """A layer's outputs as a list, then the gradient of every argument in `inputs` (None where one
    is absent), when the inputs require grad."""
    result = list(out)
    if any(t is not None and t.requires_grad for t in inputs.values()):
        result += grads(weighted_sum(out), list(inputs.values()))
    return result


def run(inputs, **kw):
    """The fused layer of the cell `inputs` belong to: outputs (output, h_n[, c_n]) and gradients."""
    return with_grads(cell_of(inputs).fused(inputs, **kw), inputs)


NAMES = ["output", "h_n", "c_n"] + ["grad " + n for n in ("input", "h0", "c0", "weight_ih", "weight_hh",
                                                          "bias_ih", "bias_hh", "weight_hr")]
GRU_NAMES = ["output", "h_n"] + ["grad " + n for n in ("input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def names_of(results):
    """The names of run()'s results, told apart by their number: the GRU's 2 outputs (+ 6 gradients)
    or the LSTM's 3 (+ 8)."""
    return GRU_NAMES if len(results) in (2, len(GRU_NAMES)) else NAMES


def assert_all_close(got, want, *, atol, rtol, what=""):
    for name, a, b in zip(names_of(want), got, want):
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

@in_every_call_mode
@pytest.mark.parametrize("cell,P,regularizer", [(cell, P, r) for cell, P in CELL_P for r in REGULARIZERS_OF[cell]])
def test_cuda_equals_cpu_in_float64_for_the_same_seed(cell, P, regularizer, training, reverse, with_lengths):
    T, B, I, H = 6, 4, 5, 7
    torch.manual_seed(zlib.crc32(repr((cell, regularizer, P)).encode()))
    inputs = cell_inputs(cell, T, B, I, H, P)
    lengths = random_lengths(T, B) if with_lengths else None
    kw = dict(seed=SEED, training=training, reverse=reverse, lengths=lengths, layer=2,
              **REGULARIZERS_OF[cell][regularizer])
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    assert_all_close(got, want, atol=1e-10, rtol=1e-9, what="cuda vs cpu float64:")


@pytest.mark.parametrize("cell,P", [("LSTM", 0), ("LSTM", 4), ("GRU", 0)])
@pytest.mark.parametrize("regularizer", ["none", "all", "all_but_zoneout_h"])
def test_cuda_equals_cpu_in_float32_without_tf32(regularizer, cell, P):
    T, B, I, H = 12, 6, 16, 24
    torch.manual_seed(11)
    inputs = cell_inputs(cell, T, B, I, H, P, dtype=torch.float32)
    kw = dict(seed=SEED, lengths=random_lengths(T, B), **REGULARIZERS_OF[cell][regularizer])
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    # float32 rounding (6e-8) grown over T steps and sums of up to T*B terms.
    for name, err in zip(names_of(want), max_error(got, want)):
        assert err < 5e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("cell", list(CELLS))
def test_cuda_draws_the_masks_lstm_masks_and_gru_masks_materialize(cell):
    # CUDA replays the reference given lstm_masks / gru_masks(seed) bit for bit up to rounding.
    T, B, I, H = 5, 3, 4, 6
    torch.manual_seed(12)
    c = CELLS[cell]
    inputs = c.make_inputs(T, B, I, H, device=CUDA)
    lengths = torch.tensor([5, 2, 4])
    for layer, reverse in [(0, False), (1, True), (5, False)]:
        kw = dict(layer=layer, reverse=reverse, lengths=lengths, **c.all_rates)
        got = run(inputs, seed=SEED, **kw)
        want = with_grads(c.replay(inputs, SEED, **kw), inputs)
        assert_all_close(got, want, atol=1e-10, rtol=1e-9, what=f"layer {layer} reverse {reverse}:")


@pytest.mark.parametrize("cell,P", [("LSTM", 0), ("LSTM", 2), ("GRU", 0)])
def test_cuda_equals_the_reference_in_evaluation(cell, P):
    torch.manual_seed(13)
    inputs = cell_inputs(cell, 5, 3, 4, 5, P, device=CUDA)
    kw = dict(training=False, reverse=True, lengths=torch.tensor([5, 1, 3]), **CELLS[cell].all_rates)
    got = run(inputs, **kw)
    want = with_grads(cell_of(inputs).replay(inputs, SEED, **kw), inputs)
    assert_all_close(got, want, atol=1e-10, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cell,P,rates", [("LSTM", 0, ALL_RATES), ("LSTM", 2, dict(ALL_RATES, zoneout_h=0.0)),
                                          ("LSTM", 2, ALL_RATES), ("LSTM", 0, NO_RATES), ("GRU", 0, GRU_ALL_RATES),
                                          ("GRU", 0, GRU_NO_RATES)],
                         ids=["all", "proj", "proj_zoneout_h", "none", "gru_all", "gru_none"])
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_on_cuda_in_float64(cell, P, rates, training):
    torch.manual_seed(14)
    inputs = cell_inputs(cell, 4, 3, 2, 3, P, device=CUDA)
    names = [k for k, v in inputs.items() if v is not None]

    def f(*tensors):
        args = dict(inputs, **dict(zip(names, tensors)))
        return CELLS[cell].fused(args, seed=SEED, training=training, reverse=True, lengths=torch.tensor([4, 2, 3]),
                                 **rates)

    assert torch.autograd.gradcheck(f, tuple(inputs[k] for k in names), atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Half precision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("regularizer", ["none", "all_but_zoneout_h", "all"])
@pytest.mark.parametrize("cell,P", [("LSTM", 0), ("LSTM", 4), ("GRU", 0)])
def test_half_and_bfloat16_within_their_rounding_of_the_float64_reference(dtype, regularizer, cell, P):
    # The tolerance is the error the same reference makes when run in `dtype` (FlashAttention's
    # rule): the fused kernel, which computes in float32 and rounds only what it stores, must do
    # no worse than a few times that.
    T, B, I, H = 10, 8, 32, 40
    rates = REGULARIZERS_OF[cell][regularizer]
    torch.manual_seed(15)
    exact = cell_inputs(cell, T, B, I, H, P, device=CUDA)
    lengths = random_lengths(T, B)

    def reference_run(inputs):  # the masks of SEED, {0, 1} in any dtype
        return with_grads(CELLS[cell].replay(inputs, SEED, lengths=lengths, **rates), inputs)

    want = reference_run(exact)
    low = on(exact, CUDA, dtype)
    got = run(low, seed=SEED, lengths=lengths, **rates)
    for t in got:
        assert t is None or (t.dtype == dtype and torch.isfinite(t).all())
    baseline = max_error(reference_run(on(exact, CUDA, dtype)), want)
    eps = torch.finfo(dtype).eps
    for name, err, base in zip(names_of(want), max_error(got, want), baseline):
        assert err <= 3 * base + 4 * eps, f"{name}: error {err:.2e}, the {dtype} reference's {base:.2e}"


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_module_runs_under_cuda_autocast_in_bfloat16(mode):
    torch.manual_seed(16)
    model = getattr(rnnfused, mode)(8, 16, num_layers=2, zoneout=0.1, input_dropout=0.2).cuda()
    x = torch.randn(5, 3, 8, device=CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)[0]
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


# The GRU runs every size without the projection.
CELL_GEOMETRY = [("LSTM", s) for s in GEOMETRY] + [("GRU", s[:4] + (0,)) for s in GEOMETRY]


@pytest.mark.parametrize("cell,size", CELL_GEOMETRY,
                         ids=lambda v: "T{}B{}I{}H{}P{}".format(*v) if isinstance(v, tuple) else v)
def test_launch_geometry_matches_cpu(cell, size):
    T, B, I, H, P = size
    torch.manual_seed(zlib.crc32(repr(size).encode()))
    inputs = cell_inputs(cell, T, B, I, H, P)
    lengths = random_lengths(T, B)
    kw = dict(seed=SEED, lengths=lengths, reverse=True, **all_rates(cell, P))
    want = run(inputs, **kw)
    got = run(on(inputs, CUDA), **kw)
    assert_all_close(got, want, atol=1e-9, rtol=1e-8, what=str(size))


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0)], ids=["empty_sequence", "empty_batch"])
def test_empty_sizes_behave_like_cpu(T, B, cell):
    # The layer functions run an empty sequence (h_n = h0) and an empty batch on the CPU (the modules
    # refuse seq_len 0 by name: test_errors.py); CUDA must give the same, not an error.
    torch.manual_seed(17)
    inputs = CELLS[cell].make_inputs(T, B, 3, 4)
    kw = dict(seed=SEED, **CELLS[cell].all_rates)
    assert_all_close(run(on(inputs, CUDA), **kw), run(inputs, **kw), atol=0, rtol=0)


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
@pytest.mark.parametrize("cell,P", CELL_P)
def test_every_output_element_is_written(dtype, mode, cell, P):
    T, B, I, H = 9, 5, 4, 11
    torch.manual_seed(18)
    inputs = cell_inputs(cell, T, B, I, H, P, requires_grad=mode != "no_grad")
    lengths = random_lengths(T, B)
    kw = dict(seed=SEED, lengths=lengths, training=mode != "eval", **all_rates(cell, P))
    want = run(inputs, **kw)
    poison_the_allocator()
    got = run(on(inputs, CUDA, dtype), **kw)
    for name, t in zip(names_of(got), got):
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


@pytest.mark.parametrize("cell", list(CELLS))
def test_peak_memory_is_smaller_when_no_gradient_is_needed(cell):
    T, B, I, H = 200, 32, 64, 128
    torch.manual_seed(19)
    c = CELLS[cell]
    inputs = c.make_inputs(T, B, I, H, dtype=torch.float32, device=CUDA)
    kw = dict(seed=SEED, **c.all_rates)
    with_grad, out_grad = peak_memory(lambda: c.fused(inputs, **kw))
    del out_grad
    with torch.no_grad():
        without, out = peak_memory(lambda: c.fused(inputs, **kw))
    element = 4
    # The workspace beyond the projected inputs (which become the gates in place): the LSTM's hs, cs,
    # ctil; at least the GRU's hs.
    workspace = (2 * (T + 1) * B * H + T * B * H if cell == "LSTM" else (T + 1) * B * H) * element
    assert with_grad - without >= 0.9 * workspace, (with_grad, without, workspace)
    # Without a workspace: the output, the projected inputs, the dropped-out inputs, and buffers
    # of (B, ·) or (4H, R) size.
    assert without <= T * B * (H + 4 * H + I) * element + (1 << 20), (without, T * B * (5 * H + I) * element)


@pytest.mark.parametrize("cell", list(CELLS))
def test_kernels_run_on_the_current_stream(cell):
    torch.manual_seed(20)
    inputs = CELLS[cell].make_inputs(30, 16, 32, 64, dtype=torch.float64, device=CUDA)
    kw = dict(seed=SEED, lengths=random_lengths(30, 16), **CELLS[cell].all_rates)
    want = run(inputs, **kw)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # if anything ran on the default stream it would race ahead
        got = run(inputs, **kw)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_all_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_and_backward_do_not_synchronize_with_the_host(cell):
    torch.manual_seed(21)
    c = CELLS[cell]
    inputs = c.make_inputs(8, 4, 5, 6, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = c.fused(inputs, seed=SEED, lengths=torch.tensor([8, 3, 5, 1]), **c.all_rates)
        torch.autograd.grad(sum(t.sum() for t in out), [inputs["input"], inputs["weight_hh"]])
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["h0", "weight_ih", "weight_hh", "bias_hh"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_arguments_on_different_devices_are_refused_by_name(cell, name):
    torch.manual_seed(22)
    inputs = CELLS[cell].make_inputs(3, 2, 3, 4, device=CUDA, requires_grad=False)
    inputs[name] = inputs[name].cpu()
    with pytest.raises((ValueError, RuntimeError), match=name):
        CELLS[cell].fused(inputs, seed=SEED)


# ---------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------

def module_results(model, x, hx, lengths=None):
    """Outputs and final states of the module, then the gradients of x, hx and every parameter; hx is
    (h0, c0) for an LSTM, h0 for a GRU."""
    torch.manual_seed(23)  # the seed of the forward call
    x = x.detach().clone().requires_grad_()
    states = [h.detach().clone().requires_grad_() for h in hx_tensors(hx)]
    hx = states[0] if model.mode == "GRU" else tuple(states)
    if lengths is not None:
        out, final = model(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        out = pad_packed_sequence(out)[0]
    else:
        out, final = model(x, hx)
    outs = [out] + hx_tensors(final)
    params = [p for _, p in sorted(model.named_parameters())]
    return outs + list(torch.autograd.grad(weighted_sum(outs), [x, *states, *params]))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode,bidirectional,proj_size", [("LSTM", False, 0), ("LSTM", True, 0), ("LSTM", True, 3),
                                                          ("GRU", False, 0), ("GRU", True, 0)])
@pytest.mark.parametrize("training", [True, False])
def test_module_on_cuda_equals_module_on_cpu(mode, bidirectional, proj_size, packed, training, monkeypatch):
    # Both modules draw the call's seed from the CPU generator here (a CUDA module draws it from the
    # CUDA generator: test_module_on_cuda_draws_its_seed_from_the_cuda_generator), so that they share
    # their masks and everything else can be compared.
    draw = rnnfused.modules._seed_tensor
    monkeypatch.setattr(rnnfused.modules, "_seed_tensor",
                        lambda generator, device: draw(generator, "cpu").to(device))
    torch.manual_seed(24)
    config = dict(num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    if mode == "LSTM":
        config.update(proj_size=proj_size, **(dict(ALL_RATES, zoneout_h=0.0) if proj_size else ALL_RATES))
    else:
        config.update(module_rates("GRU", GRU_ALL_RATES))
    cpu = getattr(rnnfused, mode)(5, 6, **config).train(training)
    gpu = copy.deepcopy(cpu).cuda()
    D, R = (2 if bidirectional else 1), (proj_size or 6)
    x = torch.randn(7, 4, 5, dtype=torch.float64)
    h0 = torch.randn(2 * D, 4, R, dtype=torch.float64)
    hx = (h0, torch.randn(2 * D, 4, 6, dtype=torch.float64)) if mode == "LSTM" else h0
    lengths = torch.tensor([7, 3, 5, 1]) if packed else None
    want = module_results(cpu, x, hx, lengths)
    got = module_results(gpu, x.cuda(), [h.cuda() for h in hx_tensors(hx)], lengths)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.is_cuda
        torch.testing.assert_close(a.cpu(), b, atol=1e-10, rtol=1e-9, msg=lambda m: f"result {k}: {m}")


# ---------------------------------------------------------------------------------------------
# The seed on the device: CUDA graphs (SPEC §3, §7)
# ---------------------------------------------------------------------------------------------

SPEC7_RATES = dict(zoneout=0.1, input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5)


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_seed_tensor_on_the_device_gives_the_masks_of_its_value(cell):
    # The kernels read a CUDA seed where it lies; its masks are those of the same int on the CPU.
    torch.manual_seed(30)
    c = CELLS[cell]
    inputs = c.make_inputs(6, 4, 5, 7)
    kw = dict(lengths=torch.tensor([6, 2, 5, 1]), reverse=True, layer=1, **c.all_rates)
    want = run(inputs, seed=SEED, **kw)
    got = run(on(inputs, CUDA), seed=torch.tensor(SEED, device=CUDA), **kw)
    assert_all_close(got, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_module_on_cuda_draws_its_seed_from_the_cuda_generator(mode, monkeypatch):
    torch.manual_seed(31)
    rates = module_rates(mode, ALL_RATES if mode == "LSTM" else GRU_ALL_RATES)
    model = getattr(rnnfused, mode)(5, 6, num_layers=2, dtype=torch.float64, **rates).cuda()
    x = torch.randn(7, 3, 5, dtype=torch.float64, device=CUDA)
    torch.cuda.manual_seed(5)
    torch.random.default_generator.manual_seed(1)
    a = model(x)[0]
    torch.cuda.manual_seed(5)
    torch.random.default_generator.manual_seed(2)  # the CPU generator plays no part
    b = model(x)[0]
    torch.cuda.manual_seed(6)
    other = model(x)[0]
    torch.cuda.manual_seed(5)
    seed = rnnfused.draw_seed(device="cuda")
    monkeypatch.setattr(rnnfused.modules, "_seed_tensor",
                        lambda generator, device: torch.tensor(seed, device=device))
    c = model(x)[0]
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, other)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_a_module_training_step_does_not_synchronize_with_the_host(mode):
    torch.manual_seed(32)
    model = getattr(rnnfused, mode)(5, 6, num_layers=2, **SPEC7_RATES).cuda()
    x = torch.randn(8, 4, 5, device=CUDA)
    model(x)[0].sum().backward()  # first call: lazy initialisation may synchronize
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(x)[0].sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def capture_training_step(model, x, weight):
    """A training step (forward, loss, backward into .grad) of `model` on the static input x, warmed up
    on a side stream and captured in a CUDA graph as torch.cuda.graph's documentation does it. Returns
    (graph, step function, the graph's output and gradient tensors)."""
    def step():
        out = model(x)[0]
        (out * weight).sum().backward()
        return out

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    return graph, step, [out] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("mode,proj_size", [("LSTM", 0), ("LSTM", 3), ("GRU", 0)])
def test_a_training_step_in_a_cuda_graph_draws_new_masks_each_replay(mode, proj_size):
    # SPEC §7: the seed comes from torch's CUDA generator on the device, so a replay draws new masks,
    # and a replay after torch.cuda.manual_seed(s) equals an eager step after the same.
    torch.manual_seed(33)
    extra = dict(proj_size=proj_size) if proj_size else {}
    rates = dict(SPEC7_RATES, candidate_dropout=0.1) if mode == "LSTM" else SPEC7_RATES
    model = getattr(rnnfused, mode)(8, 16, num_layers=2, bidirectional=True, dropout=0.2, **extra,
                                    **rates).cuda()
    x = torch.randn(6, 4, 8, device=CUDA)
    weight = torch.randn(6, 4, 2 * (proj_size or 16), device=CUDA)
    graph, step, static = capture_training_step(model, x, weight)
    replays = []
    for s in (101, 102, 101):
        torch.cuda.manual_seed(s)
        graph.replay()
        replay = [t.clone() for t in static]
        torch.cuda.manual_seed(s)
        model.zero_grad(set_to_none=True)
        eager = [step()] + [p.grad for p in model.parameters()]
        for k, (a, b) in enumerate(zip(replay, eager)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"seed {s} result {k}: {m}")
        replays.append(replay)
    assert not torch.equal(replays[0][0], replays[1][0]), "a replay drew the masks of the capture"
    for a, b in zip(replays[0], replays[2]):
        assert torch.equal(a, b), "the same generator state gave different results"


def test_lengths_are_refused_inside_cuda_graph_capture():
    torch.manual_seed(34)
    model = rnnfused.LSTM(4, 5).cuda()
    x = torch.randn(6, 3, 4, device=CUDA)
    c = CELLS["LSTM"]
    inputs = c.make_inputs(6, 3, 4, 5, device=CUDA, requires_grad=False)
    model(x)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises((ValueError, RuntimeError), match="lengths"):
        with torch.cuda.graph(graph):
            model(x, lengths=torch.tensor([6, 2, 4]))
    graph = torch.cuda.CUDAGraph()
    with pytest.raises((ValueError, RuntimeError), match="lengths"):
        with torch.cuda.graph(graph):
            c.fused(inputs, seed=SEED, lengths=torch.tensor([6, 2, 4]))


def test_a_training_mode_forward_under_reduce_overhead_compile_draws_new_masks_each_call():
    # torch.compile(mode="reduce-overhead") replays CUDA graphs; with inductor's fallback_random the
    # seed is drawn by torch's own CUDA generator, so each call equals an eager one after the same
    # torch.cuda.manual_seed. Without grad (a backward left pending keeps cudagraph trees off their
    # replay path); the module stays in training mode, so every regularizer draws.
    import torch._inductor.config as inductor_config

    torch.manual_seed(35)
    model = rnnfused.LSTM(8, 16, **SPEC7_RATES).cuda()
    x = torch.randn(6, 4, 8, device=CUDA)

    @torch.no_grad()
    def forward(x):
        return model(x)[0]

    compiled = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
    with inductor_config.patch(fallback_random=True):
        outs = []
        for s in (201, 202, 201, 202):
            torch.cuda.manual_seed(s)
            outs.append(compiled(x).clone())
    for s, got in zip((201, 202), outs[2:]):
        torch.cuda.manual_seed(s)
        torch.testing.assert_close(got, forward(x), atol=1e-5, rtol=1e-4)
    assert not torch.equal(outs[2], outs[3])
