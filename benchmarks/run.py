"""Side-by-side kernel benchmark: rnnfused against nn.LSTM and the loops users write (SPEC §7).

    python3 benchmarks/run.py --device cpu                 # the committed CPU numbers
    python3 benchmarks/run.py --device cuda                # the committed GPU numbers
    python3 benchmarks/run.py --device cpu --quick --out /tmp/bench

Writes <out>/<device>-<name>-<date>.json (its schema is in benchmarks/README.md), plus the Markdown
table (.md) and the plot (.png) that report.py renders from it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import _harness
import _timing
import report
import variants

CONFIGS = {  # (T, B, I, H), SPEC §7
    "cuda": [(100, 64, 512, 512), (100, 8, 512, 512), (50, 64, 1024, 1024), (1024, 16, 768, 768)],
    "cpu": [(100, 32, 256, 256), (50, 64, 512, 512), (200, 8, 128, 128)],
}
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
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: benchmarks/results/)")
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="T,B,I,H",
                   help="override the SPEC §7 configurations")
    p.add_argument("--variants", nargs="+", choices=list(variants.VARIANTS),
                   default=list(variants.VARIANTS))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--compile-budget", type=float, metavar="S",
                   help="seconds allowed to compile the cell loop per config (default 300; 0 with --quick)")
    p.add_argument("--repeats", type=int, help="timed rounds per config (default 30; 5 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up rounds per config (default 3; 1 with --quick)")
    p.add_argument("--budget", type=float, metavar="S",
                   help="stop timing a config after S seconds, once 3 rounds are done")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU); default: torch's choice")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)

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
    configs = args.configs or CONFIGS[device.type]
    if args.quick and not args.configs:
        dropped = QUICK_DROPS[device.type]
        configs = [c for c in configs if c not in dropped]
        if dropped:
            notes.append(f"--quick: dropped configs {dropped}")

    subject = variants.require_subject(args.variants)
    run = _timing.provenance(device, "kernels")
    run["rnnfused"] = subject
    run.update({
        "dtype": args.dtype, "quick": args.quick, "settings": s, "notes": notes,
        "variants": {name: desc for name, (_, _, desc) in variants.VARIANTS.items() if name in args.variants},
        "nn_lstm_backend": variants.nn_lstm_backend(device, _harness.DTYPES[args.dtype]),
        "results": [], "skipped": [],
    })
    t_start = time.perf_counter()
    compile_failed_at_T = None
    for T, B, I, H in configs:
        cfg = {"T": T, "B": B, "I": I, "H": H}
        print(f"[{time.perf_counter() - t_start:5.0f} s] config T={T} B={B} I={I} H={H}", file=sys.stderr)
        compile_budget, why = s["compile_budget_s"], "torch.compile skipped (--no-compile, or --quick)"
        if compile_failed_at_T is not None and T >= compile_failed_at_T:
            # a longer unrolled loop will not compile faster
            compile_budget, why = 0.0, f"torch.compile not tried: T={compile_failed_at_T} already exceeded the budget"
        rows, skipped = _harness.measure_config(
            cfg, args.variants, dtype=args.dtype, device=device, warmup=s["warmup"],
            repeats=s["repeats"], budget_s=s["budget_s"], compile_budget_s=compile_budget, compile_skip_reason=why,
            log=lambda msg: print(msg, file=sys.stderr))
        if any(k["variant"] == _harness.COMPILED and "budget" in k["reason"] for k in skipped):
            compile_failed_at_T = T if compile_failed_at_T is None else min(T, compile_failed_at_T)
        run["results"] += rows
        run["skipped"] += [dict(config=cfg, **k) for k in skipped]
    run["wall_s"] = round(time.perf_counter() - t_start, 1)

    os.makedirs(args.out, exist_ok=True)
    suffix = ("" if args.dtype == "float32" else f"-{args.dtype}") + ("-quick" if args.quick else "")
    path = os.path.join(args.out, _timing.results_stem(device, suffix) + ".json")
    with open(path, "w") as f:
        json.dump(run, f, indent=1)
    md_path, png_path = report.render_run(path)
    print(open(md_path).read())
    print(f"wrote {path}\n      {md_path}\n      {png_path}  ({run['wall_s']} s)", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
