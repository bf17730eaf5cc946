"""Renders benchmark results JSON into Markdown tables, PNG plots and the README's performance section.

    python3 benchmarks/report.py benchmarks/results/cpu-*.json     # .md and .png next to each JSON
    python3 benchmarks/report.py --readme README.md                 # regenerate the perf section
    python3 benchmarks/report.py --readme README.md FILE.json ...   # ... from these files only

Every figure comes from the JSON files; nothing here is typed by hand. The README section is the text
between `<!-- perf:begin -->` and `<!-- perf:end -->`; without README.md or the markers it is printed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from _readme import replace_section  # noqa: E402

BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
BASELINE = "nn.LSTM"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLORS = {"nn.LSTM": "#4c72b0", "rnnfused": "#55a868", "rnnfused-reg": "#2a7a3b",
          "cell-loop-reg": "#c44e52", "compile-loop-reg": "#dd8452", "haste-reg": "#8172b3"}
MODES = {"fwd": "forward", "fwdbwd": "forward+backward"}
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2, 10 rather than 5×10⁻¹


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def cfg_label(cfg: dict) -> str:
    return f"{cfg['T']}×{cfg['B']}×{cfg['I']}×{cfg['H']}"


def headline(run: dict) -> str:
    commit = (run.get("commit") or "unknown")[:12] + ("-dirty" if str(run.get("commit")).endswith("-dirty") else "")
    where = run["device"] + (f", CUDA {run['cuda']}" if run.get("cuda") else f", {run['threads']} threads")
    quick = ", --quick" if run.get("quick") else ""
    return f"{where}; torch {run['torch']}; {run.get('dtype', 'float32')}; commit {commit}; {run['date'][:10]}{quick}"


def _ms(stat: dict | None) -> str:
    if not stat:
        return "–"
    return f"{stat['median']:.2f} [{stat['p25']:.2f}–{stat['p75']:.2f}]"


def _ratio(row: dict, mode: str) -> str:
    r = row.get("vs_nn_lstm", {}).get(mode)
    return "–" if r is None else f"{r:.2f}×"


# ---- side-by-side run ----------------------------------------------------------------------------

def run_table(run: dict) -> str:
    """One row per config and variant: median [p25–p75] ms and the ratio to nn.LSTM."""
    lines = [f"{headline(run)}",
             "",
             "| T×B×I×H | variant | fwd ms, median [p25–p75] | fwd vs nn.LSTM | fwd+bwd ms | "
             "fwd+bwd vs nn.LSTM | peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    last = None
    for row in run["results"]:
        label = cfg_label(row["config"])
        mem = row.get("peak_mem_mb")
        lines.append(f"| {label if label != last else ''} | {row['variant']} | {_ms(row.get('fwd_ms'))} | "
                     f"{_ratio(row, 'fwd')} | {_ms(row.get('fwdbwd_ms'))} | {_ratio(row, 'fwdbwd')} | "
                     f"{'–' if mem is None else f'{mem:.0f}'} |")
        last = label
    notes = []
    for row in run["results"]:
        if "compile_s" in row:
            notes.append(f"{row['variant']} on {cfg_label(row['config'])}: compiled in {row['compile_s']:.0f} s "
                         "(not included in the times).")
    skipped = {}
    for k in run.get("skipped", []):
        skipped.setdefault((k["variant"], k["reason"]), []).append(cfg_label(k["config"]))
    for (variant, reason), cfgs in skipped.items():
        notes.append(f"{variant} skipped on {', '.join(cfgs)}: {reason}.")
    notes += run.get("notes", [])
    n = sorted({r[m]["n"] for r in run["results"] for m in ("fwd_ms", "fwdbwd_ms") if m in r})
    if n:
        rounds = str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"
        notes.append(f"Timed rounds per variant: {rounds}; "
                     f"nn.LSTM backend: {run.get('nn_lstm_backend', '?')}; peak MiB only on CUDA.")
    notes.append(f"Command: `{run['command']}`")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot_run(run: dict, path: str) -> None:
    """Top row: time per call (log scale, bars at the median, whiskers at the quartiles);
    bottom row: ratio to nn.LSTM. Left forward, right forward+backward."""
    configs = []
    for row in run["results"]:
        if row["config"] not in configs:
            configs.append(row["config"])
    names = list(dict.fromkeys(row["variant"] for row in run["results"]))
    by = {(cfg_label(r["config"]), r["variant"]): r for r in run["results"]}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    width = 0.8 / max(len(names), 1)
    for col, mode in enumerate(MODES):
        for i, name in enumerate(names):
            xs, med, lo, hi, ratio = [], [], [], [], []
            for k, cfg in enumerate(configs):
                row = by.get((cfg_label(cfg), name))
                if not row or f"{mode}_ms" not in row:
                    continue
                s = row[f"{mode}_ms"]
                xs.append(k + (i - (len(names) - 1) / 2) * width)
                med.append(s["median"])
                lo.append(s["median"] - s["p25"])
                hi.append(s["p75"] - s["median"])
                ratio.append(row.get("vs_nn_lstm", {}).get(mode, float("nan")))
            color = COLORS.get(name)
            axes[0, col].bar(xs, med, width, yerr=[lo, hi], color=color, label=name, capsize=2)
            bars = axes[1, col].bar(xs, ratio, width, color=color)
            for bar, r in zip(bars, ratio):
                if r == r:
                    axes[1, col].annotate(f"{r:.2g}", (bar.get_x() + bar.get_width() / 2, r),
                                          ha="center", va="bottom", fontsize=7)
        axes[0, col].set_title(MODES[mode])
        axes[0, col].set_yscale("log")
        axes[0, col].yaxis.set_major_formatter(PLAIN)
        axes[0, col].yaxis.set_minor_formatter(PLAIN)
        axes[0, col].set_ylabel("ms per call (median, IQR)")
        axes[1, col].set_yscale("log")
        axes[1, col].yaxis.set_major_formatter(PLAIN)
        axes[1, col].yaxis.set_minor_formatter(PLAIN)
        axes[1, col].axhline(1.0, color="k", lw=0.8)
        axes[1, col].set_ylabel("time / nn.LSTM time")
        axes[1, col].set_xticks(range(len(configs)), [cfg_label(c) for c in configs])
        axes[1, col].set_xlabel("T×B×I×H")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(names),
               bbox_to_anchor=(0.5, 0.96), fontsize=8, frameon=False)
    fig.suptitle(headline(run), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- scaling study -------------------------------------------------------------------------------

def scaling_table(data: dict) -> str:
    """One table per sweep: fwd+bwd ms per time step, one column per variant."""
    names = list(dict.fromkeys(r["variant"] for r in data["results"]))
    out = [headline(data), ""]
    for sweep in data["sweeps"]:
        rows = [r for r in data["results"] if r["sweep"] == sweep]
        values = list(dict.fromkeys(r["config"][sweep] for r in rows))
        by = {(r["config"][sweep], r["variant"]): r for r in rows}
        fixed = ", ".join(f"{k}={v}" for k, v in data["base"].items() if k not in (sweep, "I" if sweep == "H" else ""))
        out += [f"fwd+bwd ms per time step as {sweep} grows ({fixed}):", "",
                f"| {sweep} | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for v in values:
            cells = [f"{by[(v, n)]['per_step_ms']:.3g}" if (v, n) in by else "–" for n in names]
            out.append(f"| {v} | " + " | ".join(cells) + " |")
        out.append("")
    for k in data.get("skipped", []):
        out.append(f"- {k['variant']} skipped ({k['sweep']}={k['config'][k['sweep']]}): {k['reason']}")
    out.append(f"- Command: `{data['command']}`")
    return "\n".join(out) + "\n"


def plot_scaling(data: dict, path: str) -> None:
    """Three panels (T, B, H), log-log: fwd+bwd time per time step against the swept size."""
    sweeps = list(data["sweeps"])
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4.2))
    for ax, sweep in zip(axes, sweeps):
        rows = [r for r in data["results"] if r["sweep"] == sweep]
        for name in dict.fromkeys(r["variant"] for r in rows):
            pts = sorted((r["config"][sweep], r["per_step_ms"]) for r in rows if r["variant"] == name)
            ax.plot(*zip(*pts), marker="o", label=name, color=COLORS.get(name))
        fixed = ", ".join(f"{k}={v}" for k, v in data["base"].items() if k != sweep and not (sweep == "H" and k == "I"))
        ax.set_title(f"as {sweep + ' (= I)' if sweep == 'H' else sweep} grows ({fixed})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(data["sweeps"][sweep], [str(v) for v in data["sweeps"][sweep]])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(sweep)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fwd+bwd ms per time step")
    axes[0].legend(fontsize=8)
    fig.suptitle(headline(data), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- files and README ----------------------------------------------------------------------------

def render(path: str) -> tuple[str, str]:
    """Writes <stem>.md and <stem>.png next to the results JSON; returns their paths."""
    data = load(path)
    stem = os.path.splitext(path)[0]
    table, plot = (scaling_table, plot_scaling) if data["kind"] == "scaling" else (run_table, plot_run)
    with open(stem + ".md", "w") as f:
        f.write(table(data))
    plot(data, stem + ".png")
    return stem + ".md", stem + ".png"


render_run = render


def newest(paths: list[str]) -> list[str]:
    """The newest file per (kind, device type), preferring full runs over --quick ones."""
    best = {}
    for p in paths:
        d = load(p)
        key = (d["kind"], d["device_type"])
        rank = (not d.get("quick"), d["date"])
        if key not in best or rank > best[key][0]:
            best[key] = (rank, p)
    return [p for _, p in best.values()]


def readme_section(paths: list[str], readme_dir: str) -> str:
    """Kernel tables first (GPU, then CPU), then the scaling studies, each with its plot."""
    order = {("kernels", "cuda"): 0, ("kernels", "cpu"): 1, ("scaling", "cuda"): 2, ("scaling", "cpu"): 3}
    paths = sorted(paths, key=lambda p: order.get((load(p)["kind"], load(p)["device_type"]), 9))
    parts = ["", "_Generated by `python3 benchmarks/report.py --readme README.md` from "
             + ", ".join(f"`{os.path.relpath(p, readme_dir)}`" for p in paths) + "; do not edit by hand._", ""]
    for p in paths:
        d = load(p)
        png = os.path.relpath(os.path.splitext(p)[0] + ".png", readme_dir)
        if d["kind"] == "kernels":
            parts += [f"#### {d['device_type'].upper()}: time per call, and ratio to nn.LSTM", "",
                      run_table(d), f"![{d['device_type']} benchmark]({png})", ""]
        else:
            parts += [f"#### {d['device_type'].upper()}: scaling with T, B and H", "",
                      scaling_table(d), f"![{d['device_type']} scaling]({png})", ""]
    return "\n".join(parts)


def update_readme(readme: str, section: str) -> bool:
    """Replaces the text between the markers; False (nothing written) if file or markers are missing."""
    return replace_section(readme, BEGIN, END, section)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="results JSON files (default for --readme: the newest "
                   "of each kind in benchmarks/results/)")
    p.add_argument("--readme", metavar="README.md", help="regenerate this README's performance section")
    args = p.parse_args(argv)
    files = args.files
    if not args.readme and not files:
        p.error("give results JSON files to render, or --readme")
    for path in files:
        for out in render(path):
            print(f"wrote {out}", file=sys.stderr)
    if args.readme:
        if not files:
            files = newest(sorted(glob.glob(os.path.join(RESULTS, "*.json"))))
            if not files:
                sys.exit(f"no results JSON in {RESULTS}")
            for path in files:
                render(path)
        section = readme_section(files, os.path.dirname(os.path.abspath(args.readme)))
        if update_readme(args.readme, section):
            print(f"updated the performance section of {args.readme}", file=sys.stderr)
        else:
            print(f"{args.readme} or its markers {BEGIN} … {END} not found; the section:\n", file=sys.stderr)
            print(section)


if __name__ == "__main__":
    main()
