"""One configuration and cell, every variant: same inputs, interleaved timing, one result row per variant.

Shared by run.py (the side-by-side table) and scaling.py (the sweeps). Every module stays in training
mode, so the regularizers are applied both in the forward-only timing (under torch.no_grad()) and in
the forward+backward timing.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from typing import Callable

import torch

import _timing
import report
import variants

COMPILED = "compile-loop-reg"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


# --cell values that name several cells, in the order they are timed.
CELL_GROUPS = {"both": ["lstm", "gru"], "all": list(variants.CELLS)}


def add_cell_argument(parser, default: str) -> None:
    """The scripts' --cell option: one cell (lstm, gru, lnlstm), both (LSTM and GRU) or all three."""
    parser.add_argument("--cell", choices=list(variants.CELLS) + list(CELL_GROUPS), default=default,
                        help="which cell's variants to time: lstm, gru, lnlstm (the layer-normalized LSTM, "
                        "against nn.LSTM), both (lstm and gru) or all, the LSTM first "
                        f"(default: {default})")


def cells_of(arg: str) -> list[str]:
    return CELL_GROUPS.get(arg, [arg])


def add_tf32_argument(parser) -> None:
    """The scripts' --tf32 option (CUDA float32; set_tf32 applies it)."""
    parser.add_argument("--tf32", choices=["off", "on"], default="off",
                        help="CUDA float32: TF32 off for both cuDNN and torch's matmuls (the default), or on "
                        "for both (cuDNN's own default is on, torch's matmuls' off: SPEC §7 compares like "
                        "with like); the results file of an 'on' run ends in -tf32")


def set_tf32(device: torch.device, setting: str) -> str | None:
    """TF32 for float32 GEMMs, the same for both sides (SPEC §7): cuDNN's RNNs (torch.backends.cudnn,
    on by default) and torch's matmuls, which rnnfused's CUDA layers use (off by default). Returns the
    setting recorded in the results ("off"/"on"), None on the CPU, which has no TF32."""
    if device.type != "cuda":
        return None
    on = setting == "on"
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return "on" if on else "off"


# ---- rnnfused's CPU GEMM backends (rnnfused.cpu_gemm) ------------------------------------------------

GEMM_BACKENDS = ("auto", "onednn", "mkl", "small")


def add_gemm_argument(parser) -> None:
    """The scripts' --gemm-backend option (CPU; open_cpu_gemm applies it)."""
    parser.add_argument("--gemm-backend", choices=GEMM_BACKENDS, metavar="{" + ",".join(GEMM_BACKENDS) + "}",
                        help="CPU: pin rnnfused's GEMM backend (rnnfused.cpu_gemm.force) for every product, or "
                        "'auto' to measure and choose per product; default: as the process has it "
                        "(RNNFUSED_CPU_GEMM, else auto). A pinned run's results file ends in -gemm-<backend>")


def open_cpu_gemm(device: torch.device, requested: str | None, subject: str | None):
    """rnnfused.cpu_gemm, pinned to `requested` (--gemm-backend) when given. Returns (the module or None,
    the results' "cpu_gemm" header or None, why it is None). None on CUDA, when no rnnfused variant is
    timed (`subject` None) or when this rnnfused has no usable cpu_gemm; pinning a backend that cannot be
    had stops the run before anything is measured (a file that says 'pinned' must be)."""
    pinned = requested not in (None, "auto")
    if device.type != "cpu":
        if pinned:
            sys.exit("--gemm-backend pins rnnfused's CPU GEMMs: it needs --device cpu")
        return None, None, None
    if subject is None:
        if pinned:
            sys.exit("--gemm-backend: no rnnfused variant is timed, so no rnnfused GEMM would run")
        return None, None, "no rnnfused variant timed"
    try:
        gemm = importlib.import_module("rnnfused.cpu_gemm")
        available = list(gemm.available())
    except Exception as e:  # not in this rnnfused (yet), or a build whose _C predates it
        why = f"{type(e).__name__}: {e}"
        if pinned:
            sys.exit(f"--gemm-backend {requested}: rnnfused.cpu_gemm cannot be used ({why}); nothing was "
                     "measured or written")
        return None, None, f"no usable rnnfused.cpu_gemm ({why})"
    if requested is not None:
        if pinned and requested not in available:
            sys.exit(f"--gemm-backend {requested}: not available in this process (available: "
                     f"{', '.join(available) or 'none'}); nothing was measured or written")
        gemm.force(None if requested == "auto" else requested)
    header = {"requested": requested, "forced": gemm.forced(), "available": available,
              "env": os.environ.get("RNNFUSED_CPU_GEMM")}
    return gemm, header, None


def gemm_tail(header: dict | None) -> str:
    """'-gemm-<backend>' for a run whose GEMM backend was pinned (by --gemm-backend or RNNFUSED_CPU_GEMM)."""
    forced = (header or {}).get("forced")
    return f"-gemm-{forced}" if forced not in (None, "auto") else ""


def clear_gemm_choices(gemm) -> None:
    """Forgets the cached choices before a configuration and cell, so that the choices read after it
    (gemm_choices) are the ones its own calls made, measured as a fresh process would."""
    if gemm is not None:
        try:
            gemm.clear()
        except Exception as e:
            print(f"rnnfused.cpu_gemm.clear() failed: {type(e).__name__}: {e}", file=sys.stderr)


def gemm_choices(gemm) -> list[dict] | None:
    """rnnfused.cpu_gemm.choices() as plain JSON (product, m, n, k, dtype, threads, backend, seconds);
    None without the module or when it fails."""
    if gemm is None:
        return None
    try:
        return json.loads(json.dumps([dict(c) for c in gemm.choices()], default=str))
    except Exception as e:
        print(f"rnnfused.cpu_gemm.choices() failed: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def results_path(args, device: torch.device, default_cell: str, tail: str = "") -> str:
    """<out>/<device>-<name>-<date>[-<dtype>][-quick][-<cell>]<tail>.json; the cell only when it is not
    the script's default, so the default runs keep the names they had before there were cells."""
    suffix = (("" if args.dtype == "float32" else f"-{args.dtype}") + ("-quick" if args.quick else "")
              + ("" if args.cell == default_cell else f"-{args.cell}") + tail)
    os.makedirs(args.out, exist_ok=True)
    return os.path.join(args.out, _timing.results_stem(device, suffix) + ".json")


def save(data: dict, path: str) -> None:
    """Writes the results (atomically: a run killed mid-write leaves the previous version)."""
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def finish(data: dict, path: str) -> str:
    """Saves the results, renders their tables and plots (report.py) and prints the tables."""
    save(data, path)
    md_path, png_paths = report.render(path)
    print(open(md_path).read())
    print(f"wrote {path}\n      {md_path}\n      " + "\n      ".join(png_paths) + f"  ({data['wall_s']} s)",
          file=sys.stderr)
    return path


def _calls(m: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> dict[str, Callable[[], None]]:
    params = list(m.parameters())

    def fwd():
        with torch.no_grad():
            m(x)

    def fwdbwd():
        x.grad = None
        for p in params:
            p.grad = None
        out, _ = m(x)
        out.backward(grad)

    return {"fwd": fwd, "fwdbwd": fwdbwd}


def _timed_out(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, _timing.TimeLimitExceeded) or "TimeLimitExceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _compile(m: torch.nn.Module, calls_of, modes, budget_s: float):
    """torch.compile(m); returns (compiled module, seconds spent compiling every mode we time)."""
    torch._dynamo.reset()
    cm = torch.compile(m, dynamic=False)
    t0 = time.perf_counter()
    with _timing.time_limit(budget_s):
        calls = calls_of(cm)
        for mode in modes:  # fwd (no_grad) and fwd+bwd compile separate graphs
            calls[mode]()
    return cm, time.perf_counter() - t0


def measure_config(cfg: dict, names: list[str], *, dtype: str, device: torch.device, warmup: int,
                   repeats: int, budget_s: float | None, compile_budget_s: float | None,
                   cell: str = "lstm", modes=("fwd", "fwdbwd"),
                   compile_skip_reason: str = "torch.compile skipped (--no-compile, or --quick)",
                   log=print) -> tuple[list[dict], list[dict]]:
    """Times `cell`'s variants `names` on one (T, B, I, H), each compared with the cell's torch module
    (nn.LSTM / nn.GRU); returns (result rows, skipped variants with reasons). Every row carries the
    cell; the inputs depend only on the config, so both cells see the same x."""
    kind = variants.CELLS[cell]
    T, B, I, H = cfg["T"], cfg["B"], cfg["I"], cfg["H"]
    torch_dtype = DTYPES[dtype]
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(T, B, I, generator=gen).to(device=device, dtype=torch_dtype).requires_grad_()
    grad = torch.randn(T, B, H, generator=gen).to(device=device, dtype=torch_dtype)
    ref = variants.reference(kind, T, B, I, H, dtype=torch_dtype, device=device)

    modules, skipped, compile_s = {}, [], {}
    for name in names:
        try:
            if name == COMPILED and not compile_budget_s:
                raise variants.Unavailable(compile_skip_reason)
            m = variants.build(name, ref, kind)
            if name == COMPILED:
                log(f"  compiling {name} (budget {compile_budget_s:.0f} s)")
                m, compile_s[name] = _compile(m, lambda cm: _calls(cm, x, grad), modes,
                                              compile_budget_s)
            calls = _calls(m, x, grad)
            for mode in modes:  # one checked call each: a variant that fails is skipped, not fatal
                calls[mode]()
            modules[name] = m
        except variants.Unavailable as e:
            skipped.append({"variant": name, "reason": str(e)})
        except Exception as e:  # e.g. a dtype the implementation does not support
            if _timed_out(e):  # inductor may wrap our TimeLimitExceeded in its own error
                torch._dynamo.reset()
                reason = f"torch.compile exceeded the {compile_budget_s:.0f} s budget (--compile-budget)"
            else:
                reason = f"failed: {type(e).__name__}: {e}"[:300]
            skipped.append({"variant": name, "reason": reason})
    for s in skipped:
        log(f"  skip {s['variant']}: {s['reason']}")

    fns = {(name, mode): fn for name, m in modules.items() for mode, fn in _calls(m, x, grad).items()
           if mode in modes}
    host = {}
    samples = _timing.round_robin(fns, device, warmup=warmup, repeats=repeats, budget_s=budget_s,
                                  log=log, host_samples=host)
    rows = []
    for name, m in modules.items():
        row = {"config": dict(cfg), "dtype": dtype, "cell": cell, "variant": name}
        calls = _calls(m, x, grad)
        for mode in modes:
            row[f"{mode}_ms"] = _timing.quartiles(samples[(name, mode)])
            if (name, mode) in host:  # CUDA: the time to enqueue the call, beside its GPU time
                row[f"{mode}_host_ms"] = _timing.quartiles(host[(name, mode)])
            work = _timing.gpu_work_per_call(calls[mode], device)
            if work is not None:
                row[f"{mode}_gpu_work"] = work
        if "fwdbwd" in modes:
            row["peak_mem_mb"] = _timing.peak_mem_mb(calls["fwdbwd"], device)
        if name in compile_s:
            row["compile_s"] = round(compile_s[name], 2)
        rows.append(row)
    base = next((r for r in rows if r["variant"] == kind.baseline), None)
    if base:
        for r in rows:
            r[kind.ratio_key] = {mode: round(r[f"{mode}_ms"]["median"] / base[f"{mode}_ms"]["median"], 3)
                                 for mode in modes}
    return rows, skipped
