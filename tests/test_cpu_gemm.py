"""The CPU GEMM backends' choice (csrc/cpu_gemm.h, rnnfused.cpu_gemm): measured once per product
shape and cached, pinned by rnnfused.cpu_gemm.force or RNNFUSED_CPU_GEMM, reported by choices().

That every backend computes the right numbers is test_float32_paths.py's; this file checks the
choosing."""
import os
import subprocess
import sys

import pytest
import torch

import rnnfused
from rnnfused import cpu_gemm

# The products the small kernel runs: all but the weight gradients.
SMALL_PRODUCTS = {"input", "recurrent", "projection", "recurrent_backward", "projection_backward", "grad_input"}


@pytest.fixture(autouse=True)
def measured():
    """Each test starts from nothing forced and nothing cached, and leaves it so."""
    cpu_gemm.force(None)
    cpu_gemm.clear()
    yield
    cpu_gemm.force(None)
    cpu_gemm.clear()


def train_step(module, T=6, B=4):
    dtype = next(module.parameters()).dtype
    x = torch.randn(T, B, module.input_size, dtype=dtype, requires_grad=True)
    out = module(x)[0]
    out.sum().backward()


def test_mkl_is_always_available_and_names_are_known():
    names = cpu_gemm.available()
    assert "mkl" in names
    assert set(names) <= set(cpu_gemm.BACKENDS)


def test_onednn_follows_torch_backends_mkldnn_enabled():
    with torch.backends.mkldnn.flags(enabled=False):
        assert "onednn" not in cpu_gemm.available()
    assert ("onednn" in cpu_gemm.available()) == torch.backends.mkldnn.is_available()


def test_every_product_is_timed_on_each_backend_that_runs_it_and_the_fastest_kept():
    torch.manual_seed(0)
    train_step(rnnfused.LSTM(10, 24, proj_size=8, weight_drop=0.2))
    got = cpu_gemm.choices()
    products = {c["product"] for c in got}
    assert products == {"input", "recurrent", "projection", "recurrent_backward", "projection_backward",
                        "grad_input", "grad_weight"}
    for c in got:
        runs = set(cpu_gemm.available())
        if c["product"] not in SMALL_PRODUCTS:
            runs.discard("small")
        if len(runs) > 1:
            assert set(c["seconds"]) == runs, c
            assert c["backend"] == min(c["seconds"], key=c["seconds"].get), c
        assert c["dtype"] == "float32" and c["threads"] == torch.get_num_threads()


def test_a_choice_is_made_once_per_shape():
    torch.manual_seed(0)
    module = rnnfused.LSTM(10, 24)
    train_step(module)
    first = cpu_gemm.choices()
    train_step(module)
    assert cpu_gemm.choices() == first  # the same entries, timings not redone
    train_step(module, B=5)  # a new batch size is a new shape of the loop's products
    assert len(cpu_gemm.choices()) > len(first)


def test_the_products_around_the_loop_are_keyed_by_powers_of_two():
    torch.manual_seed(0)
    module = rnnfused.GRU(10, 24)  # 3H = 72

    def around():
        return {(c["product"], c["m"], c["n"], c["k"]) for c in cpu_gemm.choices()
                if c["product"] in ("input", "grad_input", "grad_weight")}

    train_step(module, T=5, B=4)   # 20 rows
    assert around() == {("input", 32, 72, 10), ("grad_input", 32, 10, 72), ("grad_weight", 72, 10, 32),
                        ("grad_weight", 72, 24, 32)}
    before = cpu_gemm.choices()
    train_step(module, T=7, B=4)   # 28 rows: the same buckets, and no new loop shape either
    assert cpu_gemm.choices() == before
    train_step(module, T=9, B=4)   # 36 rows: the next bucket
    assert ("input", 64, 72, 10) in around()


@pytest.mark.parametrize("backend", cpu_gemm.available())
def test_a_forced_backend_runs_every_product_it_can(backend):
    torch.manual_seed(0)
    with cpu_gemm.using(backend):
        assert cpu_gemm.forced() == backend
        train_step(rnnfused.LSTM(10, 24, proj_size=8))
    assert cpu_gemm.forced() is None
    for c in cpu_gemm.choices():
        can = backend != "small" or c["product"] in SMALL_PRODUCTS
        assert c["backend"] == (backend if can else "mkl"), c
        assert c["seconds"] == {}


def test_float64_makes_no_choice():
    torch.manual_seed(0)
    train_step(rnnfused.LSTM(10, 24).double())
    assert cpu_gemm.choices() == []


def test_timing_leaves_the_users_random_stream_alone():
    module = rnnfused.LSTM(10, 24, zoneout=0.1)
    x = torch.randn(6, 4, 10)
    torch.manual_seed(1)
    module(x)  # times every forward product: nothing cached yet
    after_timing = torch.rand(5)
    assert cpu_gemm.choices()
    torch.manual_seed(1)
    module(x)  # cached: nothing timed
    assert torch.equal(torch.rand(5), after_timing)


def test_bad_names_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="name must be one of"):
        cpu_gemm.force("openblas")
    with cpu_gemm.using("mkl"):
        with pytest.raises(ValueError):
            with cpu_gemm.using("cublas"):
                pass
        assert cpu_gemm.forced() == "mkl"


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def test_the_environment_variable_pins_a_backend():
    done = run_python("import rnnfused; print(rnnfused.cpu_gemm.forced())", RNNFUSED_CPU_GEMM="mkl")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "mkl"


def test_a_bad_environment_variable_is_a_clear_error():
    done = run_python("import torch, rnnfused; rnnfused.LSTM(3, 4)(torch.randn(2, 1, 3))",
                      RNNFUSED_CPU_GEMM="fastest")
    assert done.returncode != 0
    assert "RNNFUSED_CPU_GEMM must be one of auto, onednn, mkl, small; got 'fastest'" in done.stderr
