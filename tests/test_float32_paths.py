"""float32 through every CPU GEMM path of the time loop, against the float64 layer.

The float64 tests (test_layer_vs_reference.py and the per-cell files) check the math; the float32
layer takes other code: MKL's packed products split by columns over the threads, and on AVX2
builds the small-batch kernel (csrc/cpu_small_gemm.h) for up to 32 rows, with register tiles of
1 to 6 rows and a last panel of fewer than 16 columns. These shapes walk those edges (batch 1 to
40, 4H and H not multiples of 16, projection, packed lengths, every cell), forward and the input
gradient, with fresh random inputs and masks drawn from the same seed in both precisions.
"""
import zlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnfused

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


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
@pytest.mark.parametrize("regularized", [False, True], ids=["plain", "reg"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_float32_layer_agrees_with_float64(shape, cell, regularized, packed):
    T, B, I, H, P = shape
    if cell == "gru" and P:
        pytest.skip("the GRU has no projection")
    torch.manual_seed(zlib.crc32(repr((shape, cell, regularized, packed)).encode()))
    single = build(cell, I, H, P, REG if regularized else {})
    double = build(cell, I, H, P, REG if regularized else {}).double()
    double.load_state_dict(single.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,))

    def run(module, inp):
        torch.manual_seed(5)  # the same masks in both precisions
        if not packed:
            return module(inp)[0]
        out = module(pack_padded_sequence(inp, lengths, enforce_sorted=False))[0]
        return pad_packed_sequence(out, total_length=T)[0]

    x32 = x.float().requires_grad_()
    x64 = x.clone().requires_grad_()
    out32, out64 = run(single, x32), run(double, x64)
    grad = torch.randn_like(out64)
    (g32,) = torch.autograd.grad(out32, x32, grad.float())
    (g64,) = torch.autograd.grad(out64, x64, grad)
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.double(), out64, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(g32.double(), g64, atol=5e-5, rtol=1e-4)
