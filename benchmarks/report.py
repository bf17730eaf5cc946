"""Renders benchmark results JSON into Markdown tables, PNG plots and the README's performance section.

    python3 benchmarks/report.py benchmarks/results/cpu-*.json     # .md and .png(s) next to each JSON
    python3 benchmarks/report.py --readme README.md                 # regenerate the perf section
    python3 benchmarks/report.py --readme README.md FILE.json ...   # ... from these files only

Every figure comes from the JSON files; nothing here is typed by hand. The README section is the text
between `<!-- perf:begin -->` and `<!-- perf:end -->`; without README.md or the markers it is printed.

One table and one plot per cell: each row carries its cell ("lstm" when the file predates the field) and
is compared with that cell's torch module (nn.LSTM, nn.GRU; nn.LSTM for the layer-normalized LSTM,
"lnlstm"). The plot of a file's first cell (the LSTM first) is `<stem>.png`, the next ones'
`<stem>-<cell>.png`; the .md holds every cell's table.
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
CELL_NAMES = {"lstm": "LSTM", "gru": "GRU", "lnlstm": "LN-LSTM"}
# A cell's baseline where it is not nn.<its name>: the layer-normalized LSTM is compared with nn.LSTM.
BASELINES = {"lnlstm": "nn.LSTM"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLORS = {"nn.LSTM": "#4c72b0", "nn.GRU": "#4c72b0", "rnnfused": "#55a868", "rnnfused-reg": "#2a7a3b",
          "cell-loop-reg": "#c44e52", "compile-loop-reg": "#dd8452", "haste-reg": "#8172b3",
          "nn.LSTM-packed": "#8fa9d6", "nn.GRU-packed": "#8fa9d6", "rnnfused-packed": "#99d3a6",
          "rnnfused-reg-packed": "#6fbf80", "rnnfused-lengths": "#b5dfbd", "rnnfused-reg-lengths": "#a3d9a5"}
MODES = {"fwd": "forward", "fwdbwd": "forward+backward"}
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")  # 0.5, 2, 10 rather than 5×10⁻¹


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def cell_of(row: dict) -> str:
    return row.get("cell", "lstm")


def cells(data: dict) -> list[str]:
    """The cells a results file holds, the LSTM first."""
    found = {cell_of(r) for r in data["results"]} | {cell_of(k) for k in data.get("skipped", [])}
    return sorted(found, key=lambda c: (c != "lstm", c))


def baseline(cell: str) -> str:
    return BASELINES.get(cell, f"nn.{CELL_NAMES.get(cell, cell.upper())}")


def of_cell(rows: list[dict], cell: str) -> list[dict]:
    return [r for r in rows if cell_of(r) == cell]


def plot_path(stem: str, cell: str, data: dict) -> str:
    """The plot of `cell`'s results in `data` (results file <stem>.json): <stem>.png for the file's first
    cell (the LSTM when it has one, as before there were cells), <stem>-<cell>.png for the others."""
    return stem + ("" if cell == cells(data)[0] else f"-{cell}") + ".png"


def cfg_label(cfg: dict) -> str:
    return f"{cfg['T']}×{cfg['B']}×{cfg['I']}×{cfg['H']}"


def headline(run: dict) -> str:
    commit = (run.get("commit") or "unknown")[:12] + ("-dirty" if str(run.get("commit")).endswith("-dirty") else "")
    where = run["device"] + (f", CUDA {run['cuda']}" if run.get("cuda") else f", {run['threads']} threads")
    quick = ", --quick" if run.get("quick") else ""
    dtype = run.get("dtype", "float32")
    if run.get("tf32") and dtype == "float32":  # CUDA: TF32 set alike for cuDNN and torch's matmuls
        dtype += f" with TF32 {run['tf32']} for both"
    return f"{where}; torch {run['torch']}; {dtype}; commit {commit}; {run['date'][:10]}{quick}"


def _ms(stat: dict | None) -> str:
    if not stat:
        return "–"
    return f"{stat['median']:.2f} [{stat['p25']:.2f}–{stat['p75']:.2f}]"


def ratio(row: dict, mode: str) -> float | None:
    """The row's median over its cell's baseline median (field vs_nn_lstm / vs_nn_gru, named after
    the baseline: the LN-LSTM's rows carry vs_nn_lstm)."""
    key = "vs_" + baseline(cell_of(row)).replace(".", "_").lower()
    return row.get(key, {}).get(mode)


def _ratio(row: dict, mode: str) -> str:
    r = ratio(row, mode)
    return "–" if r is None else f"{r:.2f}×"


# ---- side-by-side run ----------------------------------------------------------------------------

def run_table(run: dict, cell: str = "lstm") -> str:
    """One row per config and variant of `cell`: median [p25–p75] ms and the ratio to its torch module."""
    base = baseline(cell)
    results = of_cell(run["results"], cell)
    # A variable-length run also says how much faster each packed form is than its padded variant.
    varlen = "packed_lengths" in run
    # CUDA: how long the host took to enqueue a fwd+bwd call (close to its GPU time: host-bound), and
    # the kernels it launched.
    host = any("fwdbwd_host_ms" in r for r in results)
    work = any("fwdbwd_gpu_work" in r for r in results)
    lines = [f"{headline(run)}",
             "",
             f"| T×B×I×H | variant | fwd ms, median [p25–p75] | fwd vs {base} | fwd+bwd ms | "
             f"fwd+bwd vs {base} |" + (" fwd+bwd speed-up over padded |" if varlen else "")
             + (" fwd+bwd host enqueue ms |" if host else "") + (" kernels per fwd+bwd |" if work else "")
             + " peak MiB |",
             "|---|---|---:|---:|---:|---:|" + ("---:|" if varlen else "") + ("---:|" if host else "")
             + ("---:|" if work else "") + "---:|"]
    last = None
    for row in results:
        label = cfg_label(row["config"])
        mem = row.get("peak_mem_mb")
        speedup = ""
        if varlen:
            ratio = row.get("vs_padded", {}).get("fwdbwd")
            speedup = f" {1 / ratio:.2f}x |" if ratio else " |"
        extra = ""
        if host:
            stat = row.get("fwdbwd_host_ms")
            extra += f" {stat['median']:.2f} |" if stat else " – |"
        if work:
            w = row.get("fwdbwd_gpu_work")
            extra += f" {w['kernels']} |" if w else " – |"
        lines.append(f"| {label if label != last else ''} | {row['variant']} | {_ms(row.get('fwd_ms'))} | "
                     f"{_ratio(row, 'fwd')} | {_ms(row.get('fwdbwd_ms'))} | {_ratio(row, 'fwdbwd')} |"
                     f"{speedup}{extra} {'–' if mem is None else f'{mem:.0f}'} |")
        last = label
    notes = []
    for row in results:
        if "compile_s" in row:
            notes.append(f"{row['variant']} on {cfg_label(row['config'])}: compiled in {row['compile_s']:.0f} s "
                         "(not included in the times).")
    skipped = {}
    for k in of_cell(run.get("skipped", []), cell):
        skipped.setdefault((k["variant"], k["reason"]), []).append(cfg_label(k["config"]))
    for (variant, reason), cfgs in skipped.items():
        notes.append(f"{variant} skipped on {', '.join(cfgs)}: {reason}.")
    if any(r["variant"].endswith("-lengths") for r in results):
        notes.append("'-lengths' rows: the same lengths, the padded batch given to rnnfused's forward with "
                     "lengths= (no PackedSequence, nothing packed or padded around the layer).")
    notes += run.get("notes", [])
    n = sorted({r[m]["n"] for r in results for m in ("fwd_ms", "fwdbwd_ms") if m in r})
    if n:
        rounds = str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"
        notes.append(f"Timed rounds per variant: {rounds}; "
                     f"{base} backend: {run.get(f'nn_{cell}_backend', '?')}; peak MiB only on CUDA.")
    notes.append(f"Command: `{run['command']}`")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def plot_run(run: dict, path: str, cell: str = "lstm") -> None:
    """`cell`'s variants. Top row: time per call (log scale, bars at the median, whiskers at the
    quartiles); bottom row: ratio to the cell's torch module. Left forward, right forward+backward."""
    results = of_cell(run["results"], cell)
    configs = []
    for row in results:
        if row["config"] not in configs:
            configs.append(row["config"])
    names = list(dict.fromkeys(row["variant"] for row in results))
    by = {(cfg_label(r["config"]), r["variant"]): r for r in results}
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    width = 0.8 / max(len(names), 1)
    for col, mode in enumerate(MODES):
        for i, name in enumerate(names):
            xs, med, lo, hi, ratios = [], [], [], [], []
            for k, cfg in enumerate(configs):
                row = by.get((cfg_label(cfg), name))
                if not row or f"{mode}_ms" not in row:
                    continue
                s = row[f"{mode}_ms"]
                xs.append(k + (i - (len(names) - 1) / 2) * width)
                med.append(s["median"])
                lo.append(s["median"] - s["p25"])
                hi.append(s["p75"] - s["median"])
                r = ratio(row, mode)
                ratios.append(float("nan") if r is None else r)
            color = COLORS.get(name)
            axes[0, col].bar(xs, med, width, yerr=[lo, hi], color=color, label=name, capsize=2)
            bars = axes[1, col].bar(xs, ratios, width, color=color)
            for bar, r in zip(bars, ratios):
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
        axes[1, col].set_ylabel(f"time / {baseline(cell)} time")
        axes[1, col].set_xticks(range(len(configs)), [cfg_label(c) for c in configs])
        axes[1, col].set_xlabel("T×B×I×H")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=len(names),
               bbox_to_anchor=(0.5, 0.96), fontsize=8, frameon=False)
    fig.suptitle(f"{CELL_NAMES.get(cell, cell)}: {headline(run)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- scaling study -------------------------------------------------------------------------------

def scaling_table(data: dict, cell: str = "lstm") -> str:
    """One table per sweep: `cell`'s fwd+bwd ms per time step, one column per variant."""
    results = of_cell(data["results"], cell)
    names = list(dict.fromkeys(r["variant"] for r in results))
    out = [headline(data), ""]
    for sweep in data["sweeps"]:
        rows = [r for r in results if r["sweep"] == sweep]
        values = list(dict.fromkeys(r["config"][sweep] for r in rows))
        by = {(r["config"][sweep], r["variant"]): r for r in rows}
        fixed = ", ".join(f"{k}={v}" for k, v in data["base"].items() if k not in (sweep, "I" if sweep == "H" else ""))
        out += [f"fwd+bwd ms per time step as {sweep} grows ({fixed}):", "",
                f"| {sweep} | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
        for v in values:
            row = [f"{by[(v, n)]['per_step_ms']:.3g}" if (v, n) in by else "–" for n in names]
            out.append(f"| {v} | " + " | ".join(row) + " |")
        out.append("")
    for k in of_cell(data.get("skipped", []), cell):
        out.append(f"- {k['variant']} skipped ({k['sweep']}={k['config'][k['sweep']]}): {k['reason']}")
    out.append(f"- Command: `{data['command']}`")
    return "\n".join(out) + "\n"


def plot_scaling(data: dict, path: str, cell: str = "lstm") -> None:
    """Three panels (T, B, H), log-log: `cell`'s fwd+bwd time per time step against the swept size."""
    results = of_cell(data["results"], cell)
    sweeps = list(data["sweeps"])
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5 * len(sweeps), 4.2))
    for ax, sweep in zip(axes, sweeps):
        rows = [r for r in results if r["sweep"] == sweep]
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
    fig.suptitle(f"{CELL_NAMES.get(cell, cell)}: {headline(data)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- files and README ----------------------------------------------------------------------------

def render(path: str) -> tuple[str, list[str]]:
    """Writes <stem>.md (every cell's table) and one plot per cell (`plot_path`) next to the results
    JSON; returns the .md's path and the plots'."""
    data = load(path)
    stem = os.path.splitext(path)[0]
    table, plot = (scaling_table, plot_scaling) if data["kind"] == "scaling" else (run_table, plot_run)
    found = cells(data)
    tables = [table(data, c) if len(found) == 1 else f"## {CELL_NAMES.get(c, c)}\n\n{table(data, c)}"
              for c in found]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(tables))
    plots = []
    for c in found:
        plots.append(plot_path(stem, c, data))
        plot(data, plots[-1], c)
    return stem + ".md", plots


def newest(paths: list[str]) -> list[tuple[str, str]]:
    """(file, cell): the newest file per (kind, device type, cell), preferring full runs over --quick ones;
    a variable-length run (run.py --packed) is its own kind, beside the padded one."""
    best = {}
    for p in paths:
        d = load(p)
        rank = (not d.get("quick"), d["date"])
        for cell in cells(d):
            # each dtype and TF32 setting of a device has its own table (SPEC §7 asks for all three)
            key = (d["kind"], "packed_lengths" in d, d["device_type"], cell, d.get("dtype", "float32"),
                   d.get("tf32"))
            if key not in best or rank > best[key][0]:
                best[key] = (rank, p)
    return [(p, key[3]) for key, (_, p) in best.items()]


def readme_section(entries: list[tuple[str, str]], readme_dir: str) -> str:
    """Kernel tables first (GPU, then CPU), then the scaling studies; the LSTM before the GRU, each
    table with its plot. `entries` are (results file, cell) pairs."""
    def order(entry):
        d = load(entry[0])
        return (d["kind"] != "kernels", "packed_lengths" in d, d["device_type"] != "cuda", entry[1] != "lstm",
                entry[1], d.get("dtype", "float32") != "float32", d.get("tf32") == "on")
    entries = sorted(entries, key=order)
    files = list(dict.fromkeys(p for p, _ in entries))
    parts = ["", "_Generated by `python3 benchmarks/report.py --readme README.md` from "
             + ", ".join(f"`{os.path.relpath(p, readme_dir)}`" for p in files) + "; do not edit by hand._", ""]
    for p, cell in entries:
        d = load(p)
        png = os.path.relpath(plot_path(os.path.splitext(p)[0], cell, d), readme_dir)
        where = f"{d['device_type'].upper()} {CELL_NAMES.get(cell, cell)}"
        if d["device_type"] == "cuda":
            where += f", {d.get('dtype', 'float32')}" + (f", TF32 {d['tf32']}" if d.get("tf32") and
                                                        d.get("dtype", "float32") == "float32" else "")
        alt = f"{d['device_type']} {cell}"
        if d["kind"] == "kernels":
            packed = (f", variable-length input ({d['packed_lengths']})" if "packed_lengths" in d else "")
            parts += [f"#### {where}: time per call, and ratio to {baseline(cell)}{packed}", "",
                      run_table(d, cell), f"![{alt} benchmark]({png})", ""]
        else:
            parts += [f"#### {where}: scaling with T, B and H", "",
                      scaling_table(d, cell), f"![{alt} scaling]({png})", ""]
    return "\n".join(parts)


def update_readme(readme: str, section: str) -> bool:
    """Replaces the text between the markers; False (nothing written) if file or markers are missing."""
    return replace_section(readme, BEGIN, END, section)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="results JSON files (default for --readme: the newest "
                   "of each kind, device and cell in benchmarks/results/)")
    p.add_argument("--readme", metavar="README.md", help="regenerate this README's performance section")
    args = p.parse_args(argv)
    files = args.files
    if not args.readme and not files:
        p.error("give results JSON files to render, or --readme")
    for path in files:
        md, plots = render(path)
        for out in [md, *plots]:
            print(f"wrote {out}", file=sys.stderr)
    if args.readme:
        if files:
            entries = [(p, cell) for p in files for cell in cells(load(p))]
        else:
            entries = newest(sorted(glob.glob(os.path.join(RESULTS, "*.json"))))
            if not entries:
                sys.exit(f"no results JSON in {RESULTS}")
            for path in dict.fromkeys(p for p, _ in entries):
                render(path)
        section = readme_section(entries, os.path.dirname(os.path.abspath(args.readme)))
        if update_readme(args.readme, section):
            print(f"updated the performance section of {args.readme}", file=sys.stderr)
        else:
            print(f"{args.readme} or its markers {BEGIN} … {END} not found; the section:\n", file=sys.stderr)
            print(section)


if __name__ == "__main__":
    main()
