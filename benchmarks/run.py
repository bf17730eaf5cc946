"""Side-by-side kernel benchmark: rnnfused against nn.LSTM / nn.GRU and the loops users write (SPEC §7).

    python3 benchmarks/run.py --device cpu                 # the committed CPU numbers, LSTM and GRU
    python3 benchmarks/run.py --device cuda                # the committed GPU numbers
    python3 benchmarks/run.py --device cpu --quick --cell gru --out /tmp/bench
    python3 benchmarks/run.py --device cpu --cell lnlstm   # the layer-normalized LSTM against nn.LSTM
    python3 benchmarks/run.py --device cpu --packed        # variable lengths: padded against packed
    python3 benchmarks/run.py --device cpu --gemm-backend onednn   # rnnfused's CPU GEMMs pinned to oneDNN

Every configuration is timed once per cell (--cell lstm, gru, lnlstm, both = lstm and gru, or all),
each cell's variants against its own torch module (the LN-LSTM's: the plain nn.LSTM). Writes
<out>/<device>-<name>-<date>[-<cell>].json, <name> on the CPU the processor's (model, family and model
number, widest vector ISA: cpu-amd-epyc-f25m1-avx2-...), with the processor's details and the GEMM
backend rnnfused chose for each product at each config (--gemm-backend pins one). Its schema is in
benchmarks/README.md; it is rewritten after every configuration, so a run cut short keeps what it
measured; report.py renders the Markdown tables (.md) and one plot per cell (.png) from it.
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

# The main job's shape on the CPU (`make demo`, the char-demo preset): bptt 100, batch 16,
# embedding 64, one layer of 384.
DEMO_CONFIG = (100, 16, 64, 384)
CONFIGS = {  # (T, B, I, H): SPEC §7's, and on the CPU the demo's
    "cuda": [(100, 64, 512, 512), (100, 8, 512, 512), (50, 64, 1024, 1024), (1024, 16, 768, 768)],
    "cpu": [(100, 32, 256, 256), (50, 64, 512, 512), (200, 8, 128, 128), DEMO_CONFIG],
}
# --packed: the same shapes (on the CPU the demo's is already among them).
PACKED_EXTRA_CONFIGS: list = []
# --quick drops the GPU's longest sequence (the cell loops take minutes on it).
QUICK_DROPS = {"cuda": [(1024, 16, 768, 768)], "cpu": []}
SETTINGS = {  # warm-up rounds, timed rounds, per-config time budget (s), torch.compile budget (s)
    "full": dict(warmup=3, repeats=30, budget_s=240.0, compile_budget_s=300.0),
    "quick": dict(warmup=1, repeats=5, budget_s=15.0, compile_budget_s=0.0),
}
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_config(text: str) -> tuple[int, int, int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected T,B,I,H (four positive integers), got {text!r}")
    return tuple(int(p) for p in parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--quick", action="store_true",
                   help="few repeats, no torch.compile; finishes in ~3 minutes on a 2-core CPU")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    _harness.add_tf32_argument(p)
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: benchmarks/results/)")
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="T,B,I,H",
                   help="override the SPEC §7 configurations")
    _harness.add_cell_argument(p, default="both")
    p.add_argument("--variants", nargs="+", choices=variants.ALL_NAMES, metavar="NAME",
                   help="time only these (each cell times the ones it has; nn.LSTM and nn.GRU are the "
                   f"baselines); default all of: {', '.join(variants.ALL_NAMES)}")
    p.add_argument("--packed", action="store_true",
                   help="variable-length input: each cell's baseline and rnnfused-reg on the padded batch and "
                   "on the same batch packed with lengths uniform in [T/4, T] (their '-packed' variants; "
                   "other variants only when --variants names them); results file ends in -packed")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--compile-budget", type=float, metavar="S",
                   help="seconds allowed to compile the cell loop per config and cell (default 300; 0 with --quick)")
    p.add_argument("--repeats", type=int, help="timed rounds per config (default 30; 5 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up rounds per config (default 3; 1 with --quick)")
    p.add_argument("--budget", type=float, metavar="S",
                   help="stop timing a config's cell after S seconds, once 3 rounds are done")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's choice")
    _harness.add_gemm_argument(p)
    return p.parse_args(argv)


def add_vs_padded(rows: list[dict]) -> None:
    """Each '-packed' (and '-lengths') row's median time over its padded variant's, as vs_padded
    {fwd, fwdbwd}."""
    by = {r["variant"]: r for r in rows}
    for r in rows:
        name = r["variant"]
        suffix = next((s for s in ("-packed", "-lengths") if name.endswith(s)), None)
        base = by.get(name.removesuffix(suffix)) if suffix else None
        if base:
            r["vs_padded"] = {mode: round(r[f"{mode}_ms"]["median"] / base[f"{mode}_ms"]["median"], 3)
                              for mode in ("fwd", "fwdbwd") if f"{mode}_ms" in r and f"{mode}_ms" in base}


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    tf32 = _harness.set_tf32(device, args.tf32)

    s = dict(SETTINGS["quick" if args.quick else "full"])
    for key, value in (("repeats", args.repeats), ("warmup", args.warmup), ("budget_s", args.budget),
                       ("compile_budget_s", args.compile_budget)):
        if value is not None:
            s[key] = value
    if args.no_compile:
        s["compile_budget_s"] = 0.0
    notes = []
    if args.quick:
        notes.append("--quick: fewer repeats; torch.compile variant skipped unless --compile-budget given")
    cells = _harness.cells_of(args.cell)
    def wanted(c, n):
        if args.variants is not None:
            return n in args.variants
        return n in variants.packed_names(variants.CELLS[c]) if args.packed else True
    names = {c: [n for n in variants.variants(variants.CELLS[c], packed=args.packed) if wanted(c, n)]
             for c in cells}
    configs = args.configs or CONFIGS[device.type] + (PACKED_EXTRA_CONFIGS if args.packed else [])
    if args.quick and not args.configs:
        dropped = QUICK_DROPS[device.type]
        configs = [c for c in configs if c not in dropped]
        if dropped:
            notes.append(f"--quick: dropped configs {dropped}")

    subject = variants.require_subject(args.variants or variants.ALL_NAMES)
    gemm, gemm_header, no_gemm = _harness.open_cpu_gemm(device, args.gemm_backend, subject)
    run = _timing.provenance(device, "kernels")
    run["rnnfused"] = subject
    if device.type == "cpu":  # rnnfused's GEMM backends: the state of rnnfused.cpu_gemm, and per config
        run["cpu_gemm"] = gemm_header  # and cell the choice of every product (null: not recorded)
        run["gemm_choices"] = []
        if no_gemm:
            run["cpu_gemm_unavailable"] = no_gemm
    run.update({
        "dtype": args.dtype, "tf32": tf32, "quick": args.quick, "settings": s, "notes": notes, "cells": cells,
        "variants": {c: {name: desc for name, (_, _, desc) in
                         variants.variants(variants.CELLS[c], packed=args.packed).items()
                         if name in names[c]} for c in cells},
        **{f"nn_{c}_backend": variants.nn_backend(variants.CELLS[c], device, _harness.DTYPES[args.dtype])
           for c in cells},
        "results": [], "skipped": [], "complete": False,
    })
    if args.packed:
        run["packed_lengths"] = variants.PACKED_LENGTHS
    path = _harness.results_path(args, device, default_cell="both",
                                 tail=_harness.gemm_tail(gemm_header) + ("-tf32" if tf32 == "on" else "")
                                 + ("-packed" if args.packed else ""))
    t_start = time.perf_counter()
    compile_failed_at_T = {}  # per cell: the shortest T whose loop did not compile within the budget
    for T, B, I, H in configs:
        cfg = {"T": T, "B": B, "I": I, "H": H}
        for cell in cells:
            print(f"[{time.perf_counter() - t_start:5.0f} s] {cell} config T={T} B={B} I={I} H={H}",
                  file=sys.stderr)
            compile_budget, why = s["compile_budget_s"], "torch.compile skipped (--no-compile, or --quick)"
            failed_at = compile_failed_at_T.get(cell)
            if failed_at is not None and T >= failed_at:
                # a longer unrolled loop will not compile faster
                compile_budget, why = 0.0, f"torch.compile not tried: T={failed_at} already exceeded the budget"
            _harness.clear_gemm_choices(gemm)
            rows, skipped = _harness.measure_config(
                cfg, names[cell], cell=cell, dtype=args.dtype, device=device, warmup=s["warmup"],
                repeats=s["repeats"], budget_s=s["budget_s"], compile_budget_s=compile_budget,
                compile_skip_reason=why, log=lambda msg: print(msg, file=sys.stderr))
            if any(k["variant"] == _harness.COMPILED and "budget" in k["reason"] for k in skipped):
                compile_failed_at_T[cell] = min(T, failed_at or T)
            add_vs_padded(rows)
            if "gemm_choices" in run:
                run["gemm_choices"].append({"config": cfg, "cell": cell, "choices": _harness.gemm_choices(gemm)})
            run["results"] += rows
            run["skipped"] += [dict(config=cfg, cell=cell, **k) for k in skipped]
            run["wall_s"] = round(time.perf_counter() - t_start, 1)
            _harness.save(run, path)
    run["complete"] = True
    return _harness.finish(run, path)


if __name__ == "__main__":
    main()
