"""SPEC §8: the CUDA kernels, compiled by the host compiler and run in the simulated CUDA execution
model, compute exactly what the CPU op computes — every output, every workspace tensor, every
gradient — whatever order the simulated threads of a block run in.

The simulated build (`make test-cuda-sim`) is a test-only extension module, `rnnfused_cuda_sim`,
whose path is in RNNFUSED_CUDA_SIM_MODULE. It runs csrc/layer_cuda_driver.cuh on CPU tensors and
registers the ops under `torch.ops.rnnfused_sim` with the schemas of `torch.ops.rnnfused`. Without
the variable this file is skipped; with it, a module that is missing or does not import fails every
test. RNNFUSED_CUDA_SIM_ORDERS (a comma list of forward, reverse, shuffle or shuffle:SEED) picks the
thread orders; by default every test runs under all three (shuffle with seed 1234).

What is checked, each call once with the CPU op and once with the simulated op on identical
arguments (same seed tensor, need_workspace=True, the same fresh grad_output / grad_h_n / grad_c_n):

- float64, rtol 0, atol 1e-10 (the simulator runs the host math of cell_math.h, as the CPU op does;
  only summation order may differ): forward outputs, and without lengths the workspace too, then
  each device's backward from its own workspace (with lengths the CPU packs the rows of the
  active samples, so the workspaces may differ in layout and only outputs and gradients are
  compared there). Cases (FLOAT64_CASES), each under every thread order:
    * core, all factors crossed at H=7, B=3, I=5, T=5: the five cell variants (LSTM, LSTM with a
      projection P=3, GRU, LN-LSTM, LN-LSTM with P=3) x reverse x {no lengths, unsorted lengths}
      x {train with every regularizer, eval with every regularizer, none (train/eval alternating)}:
      60 cases;
    * one regularizer at a time (train, T=6): each pointwise kernel is a template over the
      <candidate, zoneout_c, zoneout_h> switches and the all-on / all-off cases instantiate only two
      of the eight; reverse, lengths, bias and layer alternate: 29 cases;
    * edge sizes H in {1, 33} x B in {1, 3} (H=1: no projection possible; H=33: P=5), T=4, every
      variant, mode / reverse / lengths / bias cycling: 16 cases;
    * zero-length sequences (the CPU op accepts lengths in [0, T]): lengths (0, T, 2) for every
      variant and (0,) for a batch of one: 7 cases.
- float32 (the CPU op routes float32 GEMMs through its own backends, so only agreement to
  rounding can be asked): within twice the CPU float32 op's own error plus 1e-5 of each tensor's
  largest magnitude, both measured against the CPU float64 op on the same values (the LN-LSTM's
  float32 gradients come within 1e-5 of float64 by themselves): H=7 with lengths and H=33 in
  eval, every variant: 10 cases.
- float16 and bfloat16 (the CPU op takes float32/float64 only): the simulated op against the CPU
  float64 op on the same inputs rounded to the low dtype, within 1e-2 (half) / 6e-2 (bfloat16) of
  each tensor's largest magnitude, and nothing left unwritten: every variant, 10 cases. A cell the
  simulated op refuses in half or bfloat16 fails here.
- need_workspace=False (the inference path's rolling state buffers), odd and even T: 10 cases.
- every element written: the simulator poisons every buffer and all shared memory with NaN, so an
  element no kernel wrote is NaN; explicit finite checks on every forward output (workspace
  included) and every gradient of a regularized call with a zero length, per variant: 5 cases.
- the simulated op really launched kernels (the launch log names the cell kernels): 5 cases;
  its six schemas are the CPU ops' schemas.

What the simulation cannot show: speed, memory coalescing, bank conflicts, CUDA-graph capture, the
device's random generator (every seed here is a CPU tensor), the device's own expf/tanhf, and real
warp scheduling. Those need a GPU (tests/test_cuda.py).
"""

import importlib.util
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch

import rnnfused  # noqa: F401  (loads rnnfused._C, which registers torch.ops.rnnfused; first)

_MODULE_ENV = "RNNFUSED_CUDA_SIM_MODULE"
_ORDERS_ENV = "RNNFUSED_CUDA_SIM_ORDERS"

if os.environ.get(_MODULE_ENV) is None:
    pytest.skip(f"{_MODULE_ENV} is not set: the simulated CUDA build comes from `make test-cuda-sim`",
                allow_module_level=True)


def _load_sim(path: str):
    """Imports the simulated build from `path`; it registers torch.ops.rnnfused_sim."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{_MODULE_ENV}={path!r}: no such file")
    spec = importlib.util.spec_from_file_location("rnnfused_cuda_sim", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{_MODULE_ENV}={path!r} is not a loadable Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _NotLoaded:
    """Stands for the module and its ops when the module did not load: every test that reaches for
    them fails with the reason (instead of being skipped, or stopping the collection of the other
    test files)."""

    def __init__(self, why):
        self.why = why

    def __getattr__(self, name):
        if name.startswith("_") or name == "pytestmark":  # pytest's own look-ups at collection
            raise AttributeError(name)
        pytest.fail(self.why)


try:
    sim = _load_sim(os.environ[_MODULE_ENV])
    SIM_OPS = torch.ops.rnnfused_sim
except Exception as e:  # noqa: BLE001  (reported by every test)
    sim = SIM_OPS = _NotLoaded(f"the simulated CUDA build did not load: {type(e).__name__}: {e}")

CPU_OPS = torch.ops.rnnfused


# ---------------------------------------------------------------------------------------------
# Thread orders
# ---------------------------------------------------------------------------------------------

_SHUFFLE_SEED = 1234


def _thread_orders():
    """(order, seed) pairs from RNNFUSED_CUDA_SIM_ORDERS, default forward, reverse, shuffle."""
    names = os.environ.get(_ORDERS_ENV, "forward,reverse,shuffle")
    orders = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        order, _, seed = name.partition(":")
        orders.append((order, int(seed) if seed else (_SHUFFLE_SEED if order == "shuffle" else 0)))
    return orders


def _order_id(order_seed):
    order, seed = order_seed
    return f"shuffle{seed}" if order == "shuffle" else order


@pytest.fixture(autouse=True, params=_thread_orders(), ids=_order_id)
def thread_order(request):
    """Every test, once per thread order of the simulated blocks."""
    order, seed = request.param
    if order not in ("forward", "reverse", "shuffle"):
        pytest.fail(f"{_ORDERS_ENV}: unknown thread order {order!r} (forward, reverse, shuffle)")
    if not isinstance(sim, _NotLoaded):  # otherwise the test fails when it reaches for the ops
        sim.set_thread_order(order, seed)
    return order


# ---------------------------------------------------------------------------------------------
# Cases and the op arguments they make
# ---------------------------------------------------------------------------------------------

# The ops' `rates`, in rnnfused.functional.RATE_NAMES' order: input_dropout, recurrent_dropout,
# weight_drop, candidate_dropout, zoneout_c, zoneout_h. The GRU's zoneout_c is always 0.
RATE_NAMES = rnnfused.functional.RATE_NAMES
ALL_ON = (0.25, 0.25, 0.5, 0.1, 0.1, 0.15)
ALL_OFF = (0.0,) * 6
_ZONEOUT_C = RATE_NAMES.index("zoneout_c")


@dataclass(frozen=True)
class Case:
    """One call of a layer op: the cell ("lstm", "gru", "ln_lstm"), sizes (P > 0: projection),
    direction, lengths (None: all T), mode, the six rates and whether there are biases."""
    cell: str
    H: int
    B: int
    P: int = 0
    T: int = 5
    I: int = 5
    reverse: bool = False
    lengths: Optional[Tuple[int, ...]] = None
    training: bool = True
    rates: Tuple[float, ...] = ALL_OFF
    bias: bool = True
    layer: int = 0

    @property
    def R(self):
        return self.P if self.P else self.H

    @property
    def gates(self):
        return 3 if self.cell == "gru" else 4

    @property
    def id(self):
        if self.rates == ALL_OFF:
            regs = "none"
        elif all(r > 0 for k, r in enumerate(self.rates) if not (self.cell == "gru" and k == _ZONEOUT_C)):
            regs = "all"
        else:
            regs = "+".join(n for n, r in zip(RATE_NAMES, self.rates) if r > 0)
        parts = [self.cell + (f"P{self.P}" if self.P else ""), f"T{self.T}H{self.H}B{self.B}",
                 "rev" if self.reverse else "fwd",
                 "len" + "_".join(map(str, self.lengths)) if self.lengths is not None else "full",
                 "train" if self.training else "eval", regs]
        if not self.bias:
            parts.append("nobias")
        if self.layer:
            parts.append(f"layer{self.layer}")
        return "-".join(parts)

    @property
    def seed(self):
        """The call's mask seed, different for every case."""
        return zlib.crc32(self.id.encode()) * 2654435761 % 2**63


def _rates_of(cell, rates):
    return tuple(0.0 if cell == "gru" and k == _ZONEOUT_C else r for k, r in enumerate(rates))


def make_tensors(case: Case, dtype=torch.float64):
    """The random tensor arguments of the case's forward op (all from torch.randn, none zero, drawn
    in float64 from a generator seeded by the case, then cast to dtype), and the random gradients
    of its outputs for backward."""
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    G, T, B, I, H, R = case.gates, case.T, case.B, case.I, case.H, case.R

    def rand(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    t = dict(input=rand(T, B, I), h0=rand(B, R, s=0.5))
    if case.cell != "gru":
        t["c0"] = rand(B, H, s=0.5)
    t["weight_ih"] = rand(G * H, I, s=I ** -0.5)
    t["weight_hh"] = rand(G * H, R, s=R ** -0.5)
    t["bias_ih"] = rand(G * H, s=0.3) if case.bias else None
    t["bias_hh"] = rand(G * H, s=0.3) if case.bias else None
    if case.cell != "gru":
        t["weight_hr"] = rand(case.P, H, s=H ** -0.5) if case.P else None
    if case.cell == "ln_lstm":
        t["ln_weight_ih"] = 1 + rand(G * H, s=0.2)
        t["ln_weight_hh"] = 1 + rand(G * H, s=0.2)
        t["ln_weight_c"] = 1 + rand(H, s=0.2)
        t["ln_bias_c"] = rand(H, s=0.2)
    t["grad_output"] = rand(T, B, R)
    t["grad_h_n"] = rand(B, R)
    if case.cell != "gru":
        t["grad_c_n"] = rand(B, H)
    return t


def _call_tail(case: Case):
    """The arguments after the tensors: lengths, seed, layer, reverse, training, rates."""
    lengths = torch.tensor(case.lengths, dtype=torch.int64) if case.lengths is not None else None
    return [lengths, torch.tensor(case.seed), case.layer, case.reverse, case.training,
            list(_rates_of(case.cell, case.rates))]


_LN_PARAMS = ("ln_weight_ih", "ln_weight_hh", "ln_weight_c", "ln_bias_c")


def forward_args(case: Case, t, need_workspace=True):
    """The arguments of torch.ops.<ns>.<cell>_forward, in the schema's order."""
    if case.cell == "gru":
        head = [t[k] for k in ("input", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    else:
        head = [t[k] for k in ("input", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh",
                               "weight_hr")]
        if case.cell == "ln_lstm":
            head += [t[k] for k in _LN_PARAMS]
    return head + _call_tail(case) + [need_workspace]


def backward_args(case: Case, t, fwd):
    """The arguments of torch.ops.<ns>.<cell>_backward, with the workspace of `fwd` (the outputs of
    that device's forward)."""
    workspace = list(fwd[2:] if case.cell == "gru" else fwd[3:])
    if case.cell == "gru":
        head = [t[k] for k in ("grad_output", "grad_h_n", "input", "weight_ih", "weight_hh")]
    else:
        head = [t[k] for k in ("grad_output", "grad_h_n", "grad_c_n", "input", "weight_ih",
                               "weight_hh", "weight_hr")]
        if case.cell == "ln_lstm":
            head += [t[k] for k in _LN_PARAMS]
    return head + _call_tail(case) + workspace + [case.bias]


def op_of(ops, case: Case, which: str):
    return getattr(ops, f"{case.cell}_{which}")


def return_names(case: Case, which: str):
    """The names of the op's results, from its schema (the same for both namespaces)."""
    return [r.name for r in op_of(CPU_OPS, case, which).default._schema.returns]


def run(ops, case: Case, t, need_workspace=True):
    """Forward, then (with a workspace) backward of the case on one namespace's ops."""
    fwd = op_of(ops, case, "forward")(*forward_args(case, t, need_workspace))
    bwd = op_of(ops, case, "backward")(*backward_args(case, t, fwd)) if need_workspace else None
    return fwd, bwd


def n_results(case: Case):
    """How many of the forward's outputs are results (the rest is workspace)."""
    return 2 if case.cell == "gru" else 3


def assert_all_finite(tensors, names, what):
    for name, x in zip(names, tensors):
        bad = (~torch.isfinite(x)).nonzero().tolist()
        assert not bad, f"{what} {name} {tuple(x.shape)}: {len(bad)} non-finite elements, first at {bad[:4]}"


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------

CELL_VARIANTS = (("lstm", False), ("lstm", True), ("gru", False), ("ln_lstm", False), ("ln_lstm", True))
PROJ_OF = {7: 3, 33: 5}  # proj_size < H, odd


def _variants(H):
    """(cell, P) of every variant that H allows (no projection for H = 1)."""
    return [(cell, PROJ_OF[H] if proj else 0) for cell, proj in CELL_VARIANTS if not proj or H in PROJ_OF]


def _lengths(kind, T, B):
    """None (all T), unsorted lengths in [1, T] with padding, or lengths with a 0."""
    if kind is None:
        return None
    if kind == "unsorted":
        return (3, T, 1) if B == 3 else (T - 2,)
    return (0, T, 2) if B == 3 else (0,)


MODES = {"train_on": (True, ALL_ON), "eval_on": (False, ALL_ON), "off": (None, ALL_OFF)}


def _core_cases():
    cases = []
    for cell, P in _variants(7):
        for reverse in (False, True):
            for lengths in (None, "unsorted"):
                for training, rates in MODES.values():
                    if training is None:  # no regularizer: train and eval alternate
                        training = reverse != (lengths is not None)
                    cases.append(Case(cell, 7, 3, P, reverse=reverse, lengths=_lengths(lengths, 5, 3),
                                      training=training, rates=rates))
    return cases


def _single_regularizer_cases():
    cases = []
    for cell, P in _variants(7):
        for k in range(6):
            if cell == "gru" and k == _ZONEOUT_C:
                continue
            rates = tuple(ALL_ON[j] if j == k else 0.0 for j in range(6))
            cases.append(Case(cell, 7, 3, P, T=6, reverse=k % 2 == 1,
                              lengths=_lengths("unsorted" if k // 2 % 2 == 0 else None, 6, 3),
                              rates=rates, bias=k != 3, layer=k % 2))
    return cases


def _edge_cases():
    cases, i = [], 0
    for H, B in ((1, 1), (1, 3), (33, 1), (33, 3)):
        for cell, P in _variants(H):
            training, rates = list(MODES.values())[i % 3]
            cases.append(Case(cell, H, B, P, T=4, reverse=i % 2 == 0,
                              lengths=_lengths("unsorted" if i % 4 < 2 else None, 4, B),
                              training=training if training is not None else i % 2 == 1,
                              rates=rates, bias=i % 5 != 4, layer=i % 3))
            i += 1
    return cases


def _zero_length_cases():
    cases = [Case(cell, 7, 3, P, lengths=_lengths("zero", 5, 3), reverse=i % 2 == 1, rates=ALL_ON)
             for i, (cell, P) in enumerate(_variants(7))]
    cases += [Case(cell, 7, 1, lengths=(0,), rates=ALL_ON) for cell in ("lstm", "gru")]
    return cases


FLOAT64_CASES = _core_cases() + _single_regularizer_cases() + _edge_cases() + _zero_length_cases()

FLOAT32_CASES = [c for cell, P in _variants(7) for c in (
    Case(cell, 7, 3, P, reverse=True, lengths=(3, 5, 1), rates=ALL_ON),
    Case(cell, 33, 3, PROJ_OF[33] if P else 0, T=4, training=False, rates=ALL_ON))]

HALF_CASES = [(Case(cell, 7, 3, P, T=4, reverse=i % 2 == 0, lengths=(3, 4, 1), rates=ALL_ON), dtype)
              for i, (cell, P) in enumerate(_variants(7)) for dtype in (torch.float16, torch.bfloat16)]

NO_WORKSPACE_CASES = [c for cell, P in _variants(7) for c in (
    Case(cell, 7, 3, P, T=5, reverse=True, lengths=(3, 5, 1), rates=ALL_ON),
    Case(cell, 7, 3, P, T=4, training=False, rates=ALL_ON))]

FINITE_CASES = [Case(cell, 7, 3, P, reverse=True, lengths=(0, 5, 2), rates=ALL_ON) for cell, P in _variants(7)]


def _ids(cases):
    return [c.id for c in cases]


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

def compared(case: Case, fwd, bwd):
    """(name, tensor) of everything a call's two devices must agree on: the forward's results, its
    workspace when there are no lengths (with lengths the CPU packs its workspace rows and the
    CUDA path does not), and every gradient."""
    names = return_names(case, "forward")
    kept = len(names) if case.lengths is None else n_results(case)
    assert len(fwd) == len(names) and len(bwd) == len(return_names(case, "backward"))
    return (list(zip(["forward " + n for n in names[:kept]], fwd[:kept]))
            + list(zip(["backward " + n for n in return_names(case, "backward")], bwd)))


def as_float64(t):
    return {k: (v.double() if v is not None else None) for k, v in t.items()}


@pytest.mark.parametrize("case", FLOAT64_CASES, ids=_ids(FLOAT64_CASES))
def test_simulated_kernels_compute_the_cpu_op_in_float64(case):
    """Each device's backward reads the workspace of its own forward."""
    t = make_tensors(case)
    want = compared(case, *run(CPU_OPS, case, t))
    got = compared(case, *run(SIM_OPS, case, t))
    for (name, g), (_, w) in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=_ids(FLOAT32_CASES))
def test_simulated_kernels_compute_the_cpu_op_in_float32(case):
    """The CPU op routes float32 GEMMs through its own backends and sums in other orders, and the
    LN-LSTM's gradients come within 1e-5 of float64 there: both devices are measured against
    the CPU float64 op on the same (float32) values, and the simulated op may be off by twice the
    CPU op's own float32 error plus 1e-5 of the tensor's largest magnitude."""
    t = make_tensors(case, torch.float32)
    exact = compared(case, *run(CPU_OPS, case, as_float64(t)))
    cpu = compared(case, *run(CPU_OPS, case, t))
    got = compared(case, *run(SIM_OPS, case, t))
    for (name, g), (_, c), (_, w) in zip(got, cpu, exact):
        assert g.dtype == torch.float32 and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
        if w.numel() == 0:
            continue
        err = (g.double() - w).abs().max().item()
        allowed = 2 * (c.double() - w).abs().max().item() + 1e-5 * max(1.0, w.abs().max().item())
        assert err <= allowed, f"float32 {name}: largest error {err:.3e}, allowed {allowed:.3e}"


HALF_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.mark.parametrize("case,dtype", HALF_CASES, ids=[f"{c.id}-{str(d)[6:]}" for c, d in HALF_CASES])
def test_simulated_half_and_bfloat16_write_everything_close_to_float64(case, dtype):
    """The CPU op takes float32 and float64 only: the reference is the CPU float64 op on the same
    inputs rounded to `dtype`. Tolerance: a fraction of each tensor's largest magnitude; the
    plain-PyTorch reference run entirely in `dtype` stays within half of it on these cases, and
    the kernels compute in float32, rounding only what they store."""
    low = make_tensors(case, dtype)
    fwd, bwd = run(SIM_OPS, case, low)
    assert_all_finite(fwd, return_names(case, "forward"), f"{dtype} forward")
    assert_all_finite(bwd, return_names(case, "backward"), f"{dtype} backward")
    want = compared(case, *run(CPU_OPS, case, as_float64(low)))
    for (name, g), (_, w) in zip(compared(case, fwd, bwd), want):
        assert g.dtype == dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.shape)
        if w.numel() == 0:
            continue
        err = (g.double() - w).abs().max().item()
        allowed = HALF_TOLERANCE[dtype] * max(1.0, w.abs().max().item())
        assert err <= allowed, f"{dtype} {name}: largest error {err:.3e}, allowed {allowed:.3e}"


@pytest.mark.parametrize("case", NO_WORKSPACE_CASES, ids=_ids(NO_WORKSPACE_CASES))
def test_simulated_kernels_without_workspace_compute_the_cpu_op(case):
    t = make_tensors(case)
    cpu_fwd, _ = run(CPU_OPS, case, t, need_workspace=False)
    sim_fwd, _ = run(SIM_OPS, case, t, need_workspace=False)
    k = n_results(case)
    names = return_names(case, "forward")
    for name, g, w in zip(names[:k], sim_fwd[:k], cpu_fwd[:k]):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")
    for name, x in zip(names[k:], sim_fwd[k:]):
        assert x.numel() == 0, f"{name} kept without need_workspace: shape {tuple(x.shape)}"


@pytest.mark.parametrize("case", FINITE_CASES, ids=_ids(FINITE_CASES))
def test_simulated_kernels_write_every_element(case):
    """Every buffer and all shared memory start as NaN in the simulator: an element that no kernel
    writes (or that is computed from one) is NaN here, workspace included."""
    fwd, bwd = run(SIM_OPS, case, make_tensors(case))
    assert_all_finite(fwd, return_names(case, "forward"), "forward")
    assert_all_finite(bwd, return_names(case, "backward"), "backward")


@pytest.mark.parametrize("case", FINITE_CASES, ids=_ids(FINITE_CASES))
def test_simulated_ops_launch_the_cell_kernels(case):
    """The simulated ops run the CUDA kernels (not the CPU op): the launch log names them."""
    t = make_tensors(case)
    sim.set_launch_logging(True)
    try:
        sim.launch_log(True)
        fwd = op_of(SIM_OPS, case, "forward")(*forward_args(case, t))
        forward_launches = sim.launch_log(True)
        op_of(SIM_OPS, case, "backward")(*backward_args(case, t, fwd))
        backward_launches = sim.launch_log(True)
    finally:
        sim.set_launch_logging(False)
    for launches, which in ((forward_launches, "forward"), (backward_launches, "backward")):
        kernels = [name for name, _, _ in launches]
        assert any(f"{which}_cell_kernel" in name for name in kernels), (which, kernels)
        assert all(grid > 0 and 0 < block <= 1024 for _, grid, block in launches), (which, launches)
    if case.P:
        assert any("forward_projected_state_kernel" in name for name, _, _ in forward_launches)


# Variable lengths: each step computes the rows of the samples still running, and nothing else.
# H = 128 gives 32 quads of units per sample, so a 128-thread block holds 4 samples and the cell
# kernels' grids count the running samples in fours (the LN-LSTM's: one block per sample).
LENGTH_SHRINK_LENGTHS = (2, 6, 0, 5, 3, 6, 1, 4, 6, 2, 5, 3)  # unsorted; B = 12, T = 6
LENGTH_SHRINK_CASES = [Case(cell, 128, len(LENGTH_SHRINK_LENGTHS), P, T=6, I=3, reverse=reverse,
                            lengths=LENGTH_SHRINK_LENGTHS, rates=ALL_ON)
                       for cell, P in (("lstm", 0), ("lstm", 40), ("gru", 0), ("ln_lstm", 0))
                       for reverse in (False, True)]


@pytest.mark.parametrize("case", LENGTH_SHRINK_CASES, ids=_ids(LENGTH_SHRINK_CASES))
def test_each_step_computes_only_the_running_samples(case):
    """With lengths the CUDA path runs each step on the samples still running (sorted by length,
    as the CPU path does): the cell kernels' grids shrink with them, the rows that stopped get
    one pass-through kernel, and the results are the CPU op's."""
    t = make_tensors(case)
    sim.set_launch_logging(True)
    try:
        sim.launch_log(True)
        cpu_all = run(CPU_OPS, case, t)
        sim_fwd = op_of(SIM_OPS, case, "forward")(*forward_args(case, t))
        forward_launches = sim.launch_log(True)
        bwd_args = backward_args(case, t, sim_fwd)
        sim_bwd = op_of(SIM_OPS, case, "backward")(*bwd_args)
        backward_launches = sim.launch_log(True)
    finally:
        sim.set_launch_logging(False)
    lengths = torch.tensor(case.lengths)
    steps = range(case.T - 1, -1, -1) if case.reverse else range(case.T)
    running = [int((lengths > t_).sum()) for t_ in steps]  # in processing order

    def grid(rows):
        return rows if case.cell == "ln_lstm" else -(-rows * (case.H // 4) // 128)

    for launches, which, order in ((forward_launches, "forward", running),
                                   (backward_launches, "backward", running[::-1])):
        cell = [g for name, g, _ in launches if f"{which}_cell_kernel" in name]
        assert cell == [grid(r) for r in order if r > 0], (which, cell, order)
    inactive = [name for name, _, _ in forward_launches if "forward_inactive_kernel" in name]
    assert len(inactive) == sum(r < case.B for r in running)
    # And the same numbers as the CPU op (which sorts and packs the same way).
    names = return_names(case, "forward")
    for name, a, b in zip(names, sim_fwd, cpu_all[0]):
        if name in ("output", "h_n", "c_n"):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"{name}: {m}")
    for name, a, b in zip(return_names(case, "backward"), sim_bwd, cpu_all[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"{name}: {m}")


EMPTY_CASES = [Case(cell, 7, B, P, T=T, rates=ALL_ON, lengths=None)
               for cell, P in _variants(7) for T, B in ((0, 3), (4, 0))]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=_ids(EMPTY_CASES))
def test_empty_sequence_and_empty_batch_give_the_cpu_results(case):
    """T = 0 (h_n = h0, nothing launched for the steps) and B = 0 (every grid empty) run as on the
    CPU: the GPU test of the same (test_cuda.py) requires it."""
    t = make_tensors(case)
    cpu_fwd, cpu_bwd = run(CPU_OPS, case, t)
    sim_fwd, sim_bwd = run(SIM_OPS, case, t)
    for name, a, b in zip(return_names(case, "forward") + return_names(case, "backward"),
                          list(sim_fwd) + list(sim_bwd), list(cpu_fwd) + list(cpu_bwd)):
        assert a.shape == b.shape, (name, a.shape, b.shape)
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("op", ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
                                "ln_lstm_forward", "ln_lstm_backward"])
def test_simulated_ops_have_the_schemas_of_the_cpu_ops(op):
    def schema(ops):
        return str(getattr(ops, op).default._schema).split("::", 1)[1]

    assert schema(SIM_OPS) == schema(CPU_OPS)


# ---------------------------------------------------------------------------------------------
# The simulator catches what it is for (csrc/sim/selftest.cpp: a block reduction as the LN-LSTM's
# kernels do it, correct and with each mistake)
# ---------------------------------------------------------------------------------------------

def _rows(blocks=3):
    return torch.randn(blocks, 128, generator=torch.Generator().manual_seed(11))


def test_simulator_runs_a_correct_block_reduction(thread_order):
    x = _rows()
    out = sim.selftest_block_sum(x, "correct")
    torch.testing.assert_close(out, x.sum(1, keepdim=True).expand_as(x), rtol=1e-5, atol=1e-5)


def test_simulator_shows_a_missing_barrier_as_nan(thread_order):
    # Shared memory starts as NaN: whichever thread runs first reads the other warps' partial
    # sums before they are written.
    out = sim.selftest_block_sum(_rows(), "missing_barrier")
    assert out.isnan().any(), "a read of shared memory before its write went unnoticed"


@pytest.mark.parametrize("variant, message", [
    ("lane_left_out", r"block_sum_kernel<2>.*(leaves out its own lane 31|reads lane 31, which is not in)"),
    ("lane_absent", r"block_sum_kernel<3>.*names lane 16, which never arrives"),
    ("divergent_barrier", r"block_sum_kernel<4>.*never reaches the __syncthreads\(\)"),
])
def test_simulator_stops_a_broken_warp_or_barrier_with_the_kernel_name(thread_order, variant, message):
    with pytest.raises(RuntimeError, match=message):
        sim.selftest_block_sum(_rows(), variant)
    # The simulator is usable again after the error.
    x = _rows(1)
    torch.testing.assert_close(sim.selftest_block_sum(x, "correct"),
                               x.sum(1, keepdim=True).expand_as(x), rtol=1e-5, atol=1e-5)


def test_out_of_bounds_access_in_a_kernel_is_reported_by_asan(thread_order):
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("the simulated build runs without AddressSanitizer here (make test-cuda-sim runs it with)")
    x = torch.arange(5, dtype=torch.float32)
    torch.testing.assert_close(sim.selftest_add_one(x, False), x + 1)
    # The off-by-one kills the process that runs it: run it in one of its own.
    code = ("import importlib.util, torch, rnnfused; "
            f"spec = importlib.util.spec_from_file_location('rnnfused_cuda_sim', {os.environ[_MODULE_ENV]!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "m.selftest_add_one(torch.arange(5, dtype=torch.float32), True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr and "add_one_kernel" in done.stderr, done.stderr[-3000:]
