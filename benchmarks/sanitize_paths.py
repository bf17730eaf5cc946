"""Every path of rnnfused's CUDA ops at tiny sizes, for compute-sanitizer (issue 11, SPEC §5).

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 benchmarks/sanitize_paths.py
    compute-sanitizer --tool racecheck python3 benchmarks/sanitize_paths.py --one

Runs the fused LSTM layer (functional.lstm_layer) with and without projection, forward and reverse,
with and without per-sample lengths, in training and evaluation, with and without a gradient
(forward+backward, or the inference path that keeps no workspace), with every regularizer on: every
combination of these in float32 and float64, and in float16 and bfloat16 every combination of
projection, direction and lengths with the modes taken in turn (the indexing is one code for every
dtype). In float32 also with no regularizer and with each one alone, and the seed drawn by torch.
Each dtype also at an odd size (no multiple of the launch's 128 threads nor of Philox's 4 draws).
Then the modules: rnnfused.LSTM stacked, bidirectional, projected, on packed input and under
bfloat16 autocast. The GRU (functional.gru_layer, rnnfused.GRU) the same way where this rnnfused has
it, and the layer-normalized LSTM (functional.lstm_layer with its LN parameters, and the module
with layer_norm=True) the same way.

Prints one line per path and a last line with the counts; exits 1 when any path raised (or gave a
non-finite result), 2 when it cannot run at all (no CUDA device, rnnfused not built with its CUDA
kernels). A path the library refuses by design (NotImplementedError) is printed as "refused" and
does not fail the run. `--one` runs one small LSTM call (forward+backward, every regularizer,
lengths) and nothing else: enough for racecheck, which is slow. `--device cpu` runs the same paths
on the CPU kernels (float32 and float64 only), to check this script on a machine without a GPU.
"""
from __future__ import annotations

import argparse
import inspect
import itertools
import os
import sys
import time
import zlib

import torch

# The repository root, so that an in-place build of rnnfused (setup.py build_ext --inplace) is used.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALL_RATES = dict(input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5, candidate_dropout=0.2,
                 zoneout_c=0.1, zoneout_h=0.1)
GRU_RATE_NAMES = ("input_dropout", "recurrent_dropout", "weight_drop", "candidate_dropout", "zoneout_h")
SIZES = {"tiny": (5, 3, 4, 6, 3), "odd": (3, 5, 33, 37, 19)}  # T, B, I, H, P (proj_size when used)
# mode -> (training, requires grad)
MODES = {"train+grad": (True, True), "eval+grad": (False, True), "train,no-grad": (True, False),
         "eval,no-grad": (False, False)}
SEED = 20240611


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--one", action="store_true",
                   help="one small LSTM call, forward+backward (for racecheck)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: the same paths on the CPU kernels, to check this script without a GPU")
    p.add_argument("--cell", choices=["all", "lstm", "gru", "lnlstm"], default="all", help="which cells to run")
    return p.parse_args(argv)


def fail_setup(msg: str) -> None:
    print(f"sanitize_paths: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def accepted(fn, kwargs: dict) -> dict:
    """The keyword arguments `fn` takes (the GRU and layer norm are being added as this is written)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


class Runner:
    def __init__(self, device: torch.device):
        self.device = device
        self.ok = self.failed = self.refused = 0

    def path(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            tensors = fn()
            bad = [i for i, t in enumerate(tensors) if t is not None and not torch.isfinite(t).all()]
            if bad:
                raise FloatingPointError(f"non-finite values in result(s) {bad}")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # an asynchronous kernel error surfaces here
        except NotImplementedError as e:
            self.refused += 1
            print(f"refused {name}: {str(e).splitlines()[0][:200] if str(e) else 'NotImplementedError'}",
                  flush=True)
            return
        except Exception as e:  # noqa: BLE001 -- every failure is reported, then the next path runs
            self.failed += 1
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            print(f"FAIL    {name}: {type(e).__name__}: {first}", flush=True)
            return
        self.ok += 1
        print(f"ok      {name} ({time.perf_counter() - t0:.2f} s)", flush=True)


def seed_of(*key) -> int:
    """A seed for the inputs of one path (stable across runs, unlike hash())."""
    return zlib.crc32(repr(key).encode())


def rand(gen, *shape, dtype, device, scale=1.0, grad=False):
    t = (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def lengths_for(T: int, B: int, gen) -> torch.Tensor:
    """Lengths in [1, T], the full length and 1 among them."""
    lengths = torch.randint(1, T + 1, (B,), generator=gen)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1
    return lengths


def run_layer(fn, args: tuple, kw: dict, grad: bool, gen, n_states: int):
    """Calls the layer; with grad, backward through the output and every final state. Returns the
    outputs and the gradients, to be checked for finiteness."""
    with torch.set_grad_enabled(grad):
        out = fn(*args, **accepted(fn, kw))
    results = list(out)
    if grad:
        leaves = [a for a in args if a is not None and a.requires_grad]
        g = torch.randn(out[0].shape, generator=gen, dtype=torch.float64).to(out[0])
        loss = (out[0] * g).sum() + sum(s.float().sum() for s in out[1:1 + n_states])
        results += torch.autograd.grad(loss, leaves, allow_unused=True)
    return results


def lstm_call(device, dtype, size, P, reverse, with_lengths, mode, rates, seed=SEED, layer=1,
              layer_norm=False):
    from rnnfused import functional as F

    def call():
        T, B, I, H, P_ = SIZES[size]
        p = P_ if P else 0
        R = p or H
        training, grad = MODES[mode]
        gen = torch.Generator().manual_seed(seed_of(size, P, reverse, with_lengths, mode))
        s = 1.0 / H ** 0.5
        args = (rand(gen, T, B, I, dtype=dtype, device=device, grad=grad),
                rand(gen, B, R, dtype=dtype, device=device, scale=0.5, grad=grad),
                rand(gen, B, H, dtype=dtype, device=device, scale=0.5, grad=grad),
                rand(gen, 4 * H, I, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 4 * H, R, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 4 * H, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 4 * H, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, p, H, dtype=dtype, device=device, scale=s, grad=grad) if p else None)
        kw = dict(seed=seed, training=training, layer=layer, reverse=reverse,
                  lengths=lengths_for(T, B, gen) if with_lengths else None, **rates)
        if layer_norm:  # the layer-normalized LSTM: gains around 1, a shift around 0
            kw.update(ln_weight_ih=1 + rand(gen, 4 * H, dtype=dtype, device=device, scale=0.1, grad=grad),
                      ln_weight_hh=1 + rand(gen, 4 * H, dtype=dtype, device=device, scale=0.1, grad=grad),
                      ln_weight_c=1 + rand(gen, H, dtype=dtype, device=device, scale=0.1, grad=grad),
                      ln_bias_c=rand(gen, H, dtype=dtype, device=device, scale=0.1, grad=grad))
        return run_layer(F.lstm_layer, args, kw, grad, gen, n_states=2)
    return call


def gru_call(device, dtype, size, reverse, with_lengths, mode, rates, seed=SEED, layer=1):
    from rnnfused import functional as F

    def call():
        T, B, I, H, _ = SIZES[size]
        training, grad = MODES[mode]
        gen = torch.Generator().manual_seed(seed_of(size, reverse, with_lengths, mode))
        s = 1.0 / H ** 0.5
        args = (rand(gen, T, B, I, dtype=dtype, device=device, grad=grad),
                rand(gen, B, H, dtype=dtype, device=device, scale=0.5, grad=grad),
                rand(gen, 3 * H, I, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 3 * H, H, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 3 * H, dtype=dtype, device=device, scale=s, grad=grad),
                rand(gen, 3 * H, dtype=dtype, device=device, scale=s, grad=grad))
        kw = dict(seed=seed, training=training, layer=layer, reverse=reverse,
                  lengths=lengths_for(T, B, gen) if with_lengths else None,
                  **{k: v for k, v in rates.items() if k in GRU_RATE_NAMES})
        return run_layer(F.gru_layer, args, kw, grad, gen, n_states=1)
    return call


def module_call(device, dtype, cls_name, *, packed=False, autocast=False, **kwargs):
    import rnnfused
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    def call():
        cls = getattr(rnnfused, cls_name)
        kw = accepted(cls.__init__, dict(kwargs))
        missing = set(kwargs) - set(kw)
        if missing:  # e.g. layer_norm on an LSTM that does not have it yet
            raise NotImplementedError(f"{cls_name} takes no {sorted(missing)}")
        torch.manual_seed(7)
        m = cls(6, 8, device=device, dtype=dtype, **kw).train()
        T, B = 5, 3
        x = torch.randn(T, B, 6, device=device, dtype=dtype, requires_grad=True)
        inp = x
        if packed:
            inp = pack_padded_sequence(x, torch.tensor([5, 3, 2]), enforce_sorted=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out, state = m(inp)
            if packed:
                out = pad_packed_sequence(out)[0]
            states = list(state) if isinstance(state, tuple) else [state]
            loss = out.float().sum() + sum(s.float().sum() for s in states)
        grads = torch.autograd.grad(loss, [x] + list(m.parameters()), allow_unused=True)
        return [out, *states, *grads]
    return call


def gru_available() -> bool:
    import rnnfused
    return hasattr(rnnfused, "GRU") and hasattr(rnnfused.functional, "gru_layer")


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail_setup(f"needs a CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}, "
                   "sees no GPU)")
    try:
        import rnnfused
    except Exception as e:  # noqa: BLE001
        fail_setup(f"import rnnfused failed: {type(e).__name__}: {e} "
                   "(build it: python3 setup.py build_ext --inplace)")
    if device.type == "cuda" and not rnnfused.has_cuda_kernels():
        fail_setup("rnnfused._C was built without its CUDA kernels (no nvcc under CUDA_HOME at build time?)")

    r = Runner(device)
    t_start = time.perf_counter()
    if args.one:
        r.path("lstm float32 tiny P=0 forward lengths train+grad regs=all",
               lstm_call(device, torch.float32, "tiny", False, False, True, "train+grad", ALL_RATES))
        return finish(r, t_start)

    dtypes = [torch.float32, torch.float64]
    if device.type == "cuda":
        dtypes += [torch.float16, torch.bfloat16]
    gru = gru_available()
    cells = ["lstm", "gru", "lnlstm"] if args.cell == "all" else [args.cell]
    if "gru" in cells and not gru:
        print("skip    gru: this rnnfused has no rnnfused.GRU / functional.gru_layer", flush=True)
        cells.remove("gru")
    alone = [(name, {name: ALL_RATES[name]}) for name in ALL_RATES]

    for cell in cells:
        def call(dtype, size, P, reverse, with_lengths, mode, rates, seed=SEED, cell=cell):
            if cell in ("lstm", "lnlstm"):
                return lstm_call(device, dtype, size, P, reverse, with_lengths, mode, rates, seed,
                                 layer_norm=cell == "lnlstm")
            return gru_call(device, dtype, size, reverse, with_lengths, mode, rates, seed)
        projections = [False, True] if cell != "gru" else [False]
        for dtype in dtypes:
            dt = str(dtype).replace("torch.", "")
            # every regularizer on; in float32 and float64 every combination of projection,
            # direction, lengths and mode; in float16 and bfloat16 every combination of the first
            # three, the modes taken in turn (the indexing is the same code for every dtype)
            combos = list(itertools.product(projections, [False, True], [False, True]))
            if dtype in (torch.float32, torch.float64):
                combos = [c + (mode,) for c in combos for mode in MODES]
            else:
                combos = [c + (list(MODES)[i % len(MODES)],) for i, c in enumerate(combos)]
            for P, reverse, with_lengths, mode in combos:
                name = (f"{cell} {dt} tiny P={3 if P else 0} {'reverse' if reverse else 'forward'} "
                        f"{'lengths' if with_lengths else 'full'} {mode} regs=all")
                r.path(name, call(dtype, "tiny", P, reverse, with_lengths, mode, ALL_RATES))
            # launch geometry: sizes that are no multiple of the block or of Philox's 4 draws
            for P, reverse in itertools.product(projections, [False, True]):
                name = (f"{cell} {dt} odd P={19 if P else 0} {'reverse' if reverse else 'forward'} "
                        "lengths train+grad regs=all")
                r.path(name, call(dtype, "odd", P, reverse, True, "train+grad", ALL_RATES))
        # float32: no regularizer at all (the mask-free branch), and each regularizer alone
        for P, reverse, with_lengths, mode in itertools.product(projections, [False, True], [False, True],
                                                                MODES):
            name = (f"{cell} float32 tiny P={3 if P else 0} {'reverse' if reverse else 'forward'} "
                    f"{'lengths' if with_lengths else 'full'} {mode} regs=none")
            r.path(name, call(torch.float32, "tiny", P, reverse, with_lengths, mode, {}))
        for rate, rates in alone:
            if cell == "gru" and rate not in GRU_RATE_NAMES:
                continue
            for P in projections:
                r.path(f"{cell} float32 tiny P={3 if P else 0} reverse lengths train+grad regs={rate}",
                       call(torch.float32, "tiny", P, True, True, "train+grad", rates))
        r.path(f"{cell} float32 tiny P=0 forward lengths train+grad regs=all seed drawn by torch",
               call(torch.float32, "tiny", False, False, True, "train+grad", ALL_RATES, seed=None))

    # the modules: stacked, bidirectional, projected, packed, autocast
    mod_rates = dict(zoneout=0.1, input_dropout=0.25, recurrent_dropout=0.25, weight_drop=0.5,
                     candidate_dropout=0.2)
    if "lstm" in cells:
        r.path("LSTM module float32 2 layers bidirectional proj_size=4 dropout=0.3 packed train+grad",
               module_call(device, torch.float32, "LSTM", packed=True, num_layers=2, bidirectional=True,
                           proj_size=4, dropout=0.3, **mod_rates))
        r.path("LSTM module float32 2 layers bidirectional layer_norm packed train+grad",
               module_call(device, torch.float32, "LSTM", packed=True, num_layers=2, bidirectional=True,
                           layer_norm=True, **mod_rates))
        if device.type == "cuda":
            r.path("LSTM module float32 under bfloat16 autocast train+grad",
                   module_call(device, torch.float32, "LSTM", autocast=True, **mod_rates))
    if "gru" in cells:
        r.path("GRU module float32 2 layers bidirectional dropout=0.3 packed train+grad",
               module_call(device, torch.float32, "GRU", packed=True, num_layers=2, bidirectional=True,
                           dropout=0.3, **mod_rates))
        if device.type == "cuda":
            r.path("GRU module float32 under bfloat16 autocast train+grad",
                   module_call(device, torch.float32, "GRU", autocast=True, **mod_rates))
    return finish(r, t_start)


def finish(r: Runner, t_start: float) -> int:
    total = r.ok + r.failed + r.refused
    print(f"sanitize_paths: {total} paths, {r.ok} ok, {r.failed} failed, {r.refused} refused "
          f"in {time.perf_counter() - t_start:.1f} s", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
