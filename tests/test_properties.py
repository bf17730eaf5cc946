"""SPEC §2-§3 as a property: for any shapes, rates, direction, lengths, projection, bias, layer index and
seed, the fused layer computes what the reference computes with the masks `lstm_masks` materializes for
that seed — forward and every gradient, in float64.

Hypothesis draws the cases (test_layer_vs_reference.py holds the hand-picked ones). The run is bounded by
the number of examples, not by a per-example deadline, which a loaded CI machine would trip at random;
with CI set (as CI runs it) the examples are derandomized, so a failure there reproduces exactly.
"""

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import RATE_NAMES, assert_close, grads, layer_args, weighted_sum  # noqa: E402
from rnnfused import functional as F  # noqa: E402
from rnnfused import reference  # noqa: E402

settings.register_profile("rnnfused", max_examples=60, deadline=None, print_blob=True,
                          derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "rnnfused"))

rate = st.one_of(st.just(0.0), st.floats(0.05, 0.9))   # often off, so that every switch is exercised


@st.composite
def layer_cases(draw):
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    I = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    P = draw(st.integers(0, H - 1)) if H > 1 and draw(st.booleans()) else 0
    lengths = None
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    return dict(T=T, B=B, I=I, H=H, P=P, lengths=lengths,
                rates={name: draw(rate) for name in RATE_NAMES},
                reverse=draw(st.booleans()), training=draw(st.booleans()), bias=draw(st.booleans()),
                layer=draw(st.integers(0, 3)), seed=draw(st.integers(0, 2**63 - 1)),
                data_seed=draw(st.integers(0, 2**32 - 1)))


def random_inputs(case):
    T, B, I, H, P = (case[k] for k in "TBIHP")
    R = P if P > 0 else H
    g = torch.Generator().manual_seed(case["data_seed"])
    scale = 1.0 / H ** 0.5

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).requires_grad_()

    return dict(input=rand(T, B, I), h0=rand(B, R, s=0.5), c0=rand(B, H, s=0.5),
                weight_ih=rand(4 * H, I, s=scale), weight_hh=rand(4 * H, R, s=scale),
                bias_ih=rand(4 * H, s=0.3) if case["bias"] else None,
                bias_hh=rand(4 * H, s=0.3) if case["bias"] else None,
                weight_hr=rand(P, H, s=scale) if P > 0 else None)


@given(layer_cases())
def test_fused_layer_equals_reference_for_any_case(case):
    inputs = random_inputs(case)
    T, B, I, H, P = (case[k] for k in "TBIHP")
    common = dict(training=case["training"], reverse=case["reverse"], lengths=case["lengths"], **case["rates"])
    fused = F.lstm_layer(*layer_args(inputs), seed=case["seed"], layer=case["layer"], **common)
    masks = None
    if case["training"]:
        masks = F.lstm_masks(case["seed"], T, B, I, H, proj_size=P, layer=case["layer"],
                             reverse=case["reverse"], dtype=torch.float64, **case["rates"])
    expected = reference.lstm_layer(*layer_args(inputs), masks=masks, **common)

    for name, a, b in zip(("output", "h_n", "c_n"), fused, expected):
        assert_close(a, b, what=name)
    params = list(inputs.values())
    for name, a, b in zip(inputs, grads(weighted_sum(fused), params), grads(weighted_sum(expected), params)):
        if inputs[name] is not None:
            assert_close(a, b, what=f"grad {name}")
