"""Scaling study: forward+backward time per time step as T, B and H grow, one at a time.

    python3 benchmarks/scaling.py --device cpu [--quick] [--out DIR] [--cell lstm|gru|lnlstm|both|all]
    python3 benchmarks/scaling.py --device cuda
    python3 benchmarks/scaling.py --device cpu --gemm-backend small   # rnnfused's CPU GEMMs pinned

Each sweep changes one size of a base configuration (H sweeps set I = H) and times the cell's torch
module (nn.LSTM / nn.GRU; nn.LSTM for the LN-LSTM), rnnfused, rnnfused-reg and cell-loop-reg on it,
interleaved, as run.py does. Only the LSTM by default (--cell gru, lnlstm, both or all add the others,
each one more run's time). Writes
<out>/<device>-<name>-<date>[-<cell>][-gemm-<backend>]-scaling.json (on the CPU <name> names the processor, as
run.py's; the file records it and rnnfused's GEMM backend choice at every point) plus the tables (.md)
and, per cell, one PNG with three log-log panels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import _harness
import _timing
import variants

VARIANTS = ["rnnfused", "rnnfused-reg", "cell-loop-reg"]  # after the cell's torch module
PLANS = {  # base (T, B, I, H) and the values each sweep takes
    ("cpu", "full"): dict(base=dict(T=100, B=32, I=256, H=256),
                          sweeps=dict(T=[25, 50, 100, 200, 400, 800], B=[1, 4, 16, 64, 256],
                                      H=[64, 128, 256, 512, 1024]),
                          warmup=2, repeats=10, budget_s=30.0),
    ("cpu", "quick"): dict(base=dict(T=50, B=16, I=128, H=128),
                           sweeps=dict(T=[12, 25, 50, 100, 200], B=[1, 4, 16, 64],
                                       H=[32, 64, 128, 256, 512]),
                           warmup=1, repeats=3, budget_s=4.0),
    ("cuda", "full"): dict(base=dict(T=100, B=64, I=512, H=512),
                           sweeps=dict(T=[25, 50, 100, 200, 400, 800, 1600], B=[1, 4, 16, 64, 256, 1024],
                                       H=[128, 256, 512, 1024, 2048]),
                           warmup=3, repeats=20, budget_s=30.0),
    ("cuda", "quick"): dict(base=dict(T=100, B=64, I=512, H=512),
                            sweeps=dict(T=[25, 100, 400], B=[4, 64, 256], H=[128, 512, 1024]),
                            warmup=2, repeats=5, budget_s=5.0),
}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (~2 min on CPU)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    _harness.add_tf32_argument(p)
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: benchmarks/results/)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's choice")
    _harness.add_cell_argument(p, default="lstm")
    _harness.add_gemm_argument(p)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    tf32 = _harness.set_tf32(device, args.tf32)
    plan = PLANS[(device.type, "quick" if args.quick else "full")]
    cells = _harness.cells_of(args.cell)

    subject = variants.require_subject(VARIANTS)
    gemm, gemm_header, no_gemm = _harness.open_cpu_gemm(device, args.gemm_backend, subject)
    data = _timing.provenance(device, "scaling")
    data["rnnfused"] = subject
    if device.type == "cpu":  # as run.py: rnnfused.cpu_gemm's state, and per sweep point and cell its choices
        data.update(cpu_gemm=gemm_header, gemm_choices=[])
        if no_gemm:
            data["cpu_gemm_unavailable"] = no_gemm
    data.update({"dtype": args.dtype, "tf32": tf32, "quick": args.quick, "cells": cells, "base": plan["base"],
                 "sweeps": plan["sweeps"], "settings": {k: plan[k] for k in ("warmup", "repeats", "budget_s")},
                 "metric": "fwd+bwd ms per time step (median fwd+bwd time / T), training mode",
                 "results": [], "skipped": []})
    t_start = time.perf_counter()
    for sweep, values in plan["sweeps"].items():
        for v in values:
            cfg = dict(plan["base"], **{sweep: v})
            if sweep == "H":
                cfg["I"] = v
            for cell in cells:
                print(f"[{time.perf_counter() - t_start:5.0f} s] {cell} {sweep} = {v}: {cfg}", file=sys.stderr)
                _harness.clear_gemm_choices(gemm)
                rows, skipped = _harness.measure_config(
                    cfg, [variants.CELLS[cell].baseline] + VARIANTS, cell=cell, dtype=args.dtype,
                    device=device, warmup=plan["warmup"], repeats=plan["repeats"], budget_s=plan["budget_s"],
                    compile_budget_s=None, modes=("fwdbwd",), log=lambda msg: None)
                for r in rows:
                    r["sweep"] = sweep
                    r["per_step_ms"] = round(r["fwdbwd_ms"]["median"] / cfg["T"], 5)
                data["results"] += rows
                data["skipped"] += [dict(config=cfg, sweep=sweep, cell=cell, **k) for k in skipped]
                if "gemm_choices" in data:
                    data["gemm_choices"].append({"sweep": sweep, "config": cfg, "cell": cell,
                                                 "choices": _harness.gemm_choices(gemm)})
    data["wall_s"] = round(time.perf_counter() - t_start, 1)

    return _harness.finish(data, _harness.results_path(args, device, default_cell="lstm",
                                                    tail=_harness.gemm_tail(gemm_header)
                                                    + ("-tf32" if tf32 == "on" else "") + "-scaling"))


if __name__ == "__main__":
    main()
