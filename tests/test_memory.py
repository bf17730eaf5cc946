"""Thousands of training steps do not grow the process's memory: nothing the forward, backward or the
masks allocate outlives its step (one leaked workspace of this small model is ~0.3 MiB, hundreds of MiB
over the run). Resident memory is read from /proc/self/statm after a warm-up, when the allocator's
pools have reached their working size, and again at the end."""

import gc
import os
import time

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnfused
from conftest import ALL_RATES

STATM = "/proc/self/statm"
WARMUP_STEPS = 200
STEPS = 2000
TOLERANCE_MIB = 8.0


def rss_mib() -> float:
    with open(STATM) as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists(STATM), reason="needs Linux's /proc/self/statm")
def test_thousands_of_training_steps_do_not_grow_memory():
    torch.manual_seed(0)
    T, B, I, H = 16, 16, 8, 32
    lstm = rnnfused.LSTM(I, H, num_layers=2, **ALL_RATES)
    head = nn.Linear(H, 3)
    optimizer = torch.optim.SGD(list(lstm.parameters()) + list(head.parameters()), lr=1e-2)
    x = torch.randn(T, B, I)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    target = torch.randint(0, 3, (B,))

    def step(i):
        lstm.train(i % 10 != 9)                      # every tenth step in evaluation mode
        if i % 4 == 1:                               # every fourth with packed sequences
            _, (h, _) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
        else:
            _, (h, _) = lstm(x)
        loss = nn.functional.cross_entropy(head(h[-1]), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(WARMUP_STEPS):
        step(i)
    gc.collect()
    before = rss_mib()
    start = time.perf_counter()
    for i in range(STEPS):
        step(i)
    gc.collect()
    grown = rss_mib() - before
    assert grown < TOLERANCE_MIB, (f"resident memory grew by {grown:.1f} MiB over {STEPS} steps "
                                   f"({time.perf_counter() - start:.0f} s) after {WARMUP_STEPS} warm-up steps")
