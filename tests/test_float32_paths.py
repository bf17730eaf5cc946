"""float32 through every CPU GEMM backend, against the float64 layer.

The float64 tests (test_layer_vs_reference.py and the per-cell files) check the math; the float32
layer takes other code: its products run through whichever backend of csrc/cpu_gemm.h is fastest
on the machine (oneDNN, MKL's packed products split by columns over the threads, or the small-batch
kernel of csrc/cpu_small_gemm.h with register tiles of 1 to 6 rows and a last panel of fewer than 16
columns). Each backend this process can run is forced in turn (rnnfused.cpu_gemm.using), and the
shapes walk the edges (batch 1 to 40, 4H and H not multiples of 16, projection, packed sequences and
lengths=, every cell): forward, the final states and every gradient (input, h0, c0, every
parameter), with fresh random inputs and masks drawn from the same seed in both precisions. float64
never takes a backend: its results are the same whichever is forced.
"""
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused
from rnnfused import cpu_gemm

REG = dict(zoneout=0.1, input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5,
           candidate_dropout=0.1)

SHAPES = [  # (T, B, I, H, proj_size)
    (7, 3, 5, 13, 0),
    (5, 8, 16, 128, 0),
    (6, 5, 9, 33, 7),
    (4, 40, 32, 72, 0),
    (9, 1, 3, 1, 0),
    (5, 17, 11, 40, 24),
    (3, 32, 8, 20, 0),
    (3, 33, 8, 20, 0),
]


def build(cell, I, H, P, rates):
    if cell == "gru":
        return rnnfused.GRU(I, H, **rates)
    return rnnfused.LSTM(I, H, proj_size=P, layer_norm=cell == "lnlstm", **rates)


def run(module, inp, hx, mode, lengths):
    """(output, final states) of a call on padded input, a PackedSequence or lengths=."""
    torch.manual_seed(5)  # the same masks in both precisions
    if mode == "padded":
        return module(inp, hx)
    if mode == "lengths":
        return module(inp, hx, lengths=lengths)
    out, state = module(pack_padded_sequence(inp, lengths, enforce_sorted=False), hx)
    return pad_packed_sequence(out, total_length=inp.shape[0])[0], state


def initial_state(cell, B, H, P, dtype):
    h0 = torch.randn(1, B, P or H, dtype=dtype)
    return h0 if cell == "gru" else (h0, torch.randn(1, B, H, dtype=dtype))


@pytest.mark.parametrize("backend", cpu_gemm.available())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
@pytest.mark.parametrize("regularized", [False, True], ids=["plain", "reg"])
@pytest.mark.parametrize("mode", ["padded", "packed", "lengths"])
def test_float32_layer_agrees_with_float64(backend, shape, cell, regularized, mode):
    T, B, I, H, P = shape
    if cell == "gru" and P:
        pytest.skip("the GRU has no projection")
    torch.manual_seed(zlib.crc32(repr((shape, cell, regularized, mode)).encode()))
    single = build(cell, I, H, P, REG if regularized else {})
    double = build(cell, I, H, P, REG if regularized else {}).double()
    double.load_state_dict(single.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    hx64 = initial_state(cell, B, H, P, torch.float64)
    lengths = torch.randint(1, T + 1, (B,))
    leaves64 = [x, *(hx64 if cell != "gru" else (hx64,))]
    leaves64 = [t.clone().requires_grad_() for t in leaves64]
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]

    def call(module, leaves):
        hx = leaves[1] if cell == "gru" else (leaves[1], leaves[2])
        out, state = run(module, leaves[0], hx, mode, lengths)
        return [out, *(state if isinstance(state, tuple) else (state,))]

    with cpu_gemm.using(backend):
        outs32 = call(single, leaves32)
        outs64 = call(double, leaves64)
        grads = [torch.randn_like(o) for o in outs64]
        g32 = torch.autograd.grad(outs32, leaves32 + list(single.parameters()), [g.float() for g in grads])
        g64 = torch.autograd.grad(outs64, leaves64 + list(double.parameters()), grads)
    names = ["input", "h0", "c0"][:len(leaves64)] + [n for n, _ in single.named_parameters()]
    for o32, o64 in zip(outs32, outs64):
        assert torch.isfinite(o32).all()
        torch.testing.assert_close(o32.double(), o64, atol=2e-5, rtol=1e-4)
    for name, a, b in zip(names, g32, g64):
        # A weight gradient sums T * B products: its float32 rounding grows with them.
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
def test_float64_is_the_same_whichever_backend_is_forced(cell):
    torch.manual_seed(11)
    module = build(cell, 9, 20, 0, REG).double()
    x = torch.randn(6, 5, 9, dtype=torch.float64, requires_grad=True)
    results = []
    for backend in cpu_gemm.available():
        with cpu_gemm.using(backend):
            torch.manual_seed(3)
            out = module(x)[0]
            results.append((out, *torch.autograd.grad(out.sum(), [x, *module.parameters()])))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
