"""Renders benchmark results JSON into Markdown tables, PNG plots and the README's performance section.

    python3 benchmarks/report.py benchmarks/results/cpu-*.json     # .md and .png(s) next to each JSON
    python3 benchmarks/report.py --readme README.md                 # regenerate the perf section
    python3 benchmarks/report.py --readme README.md FILE.json ...   # ... from these files only

Every figure comes from the JSON files; nothing here is typed by hand. The README section is the text
between `<!-- perf:begin -->` and `<!-- perf:end -->`; without README.md or the markers it is printed.

Every table is labeled with the processor it was measured on (on the CPU: model, family and model
number, vector ISA, threads; `_processor.label`), its date and commit; CPU tables name the GEMM backend
rnnfused chose for each product at each config. The README section keeps each processor's newest run
apart, and opens with what the files say about where the claims hold (`claims`): per processor, at how
many configs the regularized layer is no slower than the torch module. Files written before the
processor fields render too, labeled with their device string and "ISA unknown".

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

import _processor  # noqa: E402
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



def _threads(run: dict) -> str:
    return f"{run['threads']} thread" + ("" if run["threads"] == 1 else "s")

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


def short_commit(run: dict) -> str:
    return (run.get("commit") or "unknown")[:12] + ("-dirty" if str(run.get("commit")).endswith("-dirty") else "")


def threads_label(run: dict) -> str:
    cores = (run.get("cpu") or {}).get("cores")
    return _threads(run) + (f" of {cores} cores" if cores else "")


def where_label(run: dict) -> str:
    """The device of a results file, short, for headings: on the CPU the processor, its vector ISA and
    the threads ('AMD EPYC (family 25 model 1, AVX2), 2 threads'), plus the GEMM backend when one was
    pinned; on CUDA the GPU's name."""
    if run["device_type"] != "cpu":
        return run["device"]
    pinned = (run.get("cpu_gemm") or {}).get("forced")
    return f"{_processor.label(run)}, {_threads(run)}" + (f", GEMMs pinned to {pinned}" if pinned else "")


def headline(run: dict) -> str:
    commit = short_commit(run)
    if run["device_type"] == "cpu":
        where = f"{_processor.label(run, long=True)}, {threads_label(run)}"
    else:
        where = run["device"] + (f", CUDA {run['cuda']}" if run.get("cuda") else f", {_threads(run)}")
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


# ---- rnnfused's GEMM backends (CPU) -------------------------------------------------------------

def gemm_summary(choices: list[dict] | None) -> str | None:
    """Short form of one config's rnnfused.cpu_gemm.choices(): 'onednn: input, grad; small: recurrent',
    each backend with the products that chose it, in the order first chosen. A product that chose
    differently at different shapes (packed input: the batch shrinks step by step) appears under each
    backend with its number of shapes. None when not recorded; '–' when no rnnfused GEMM ran."""
    if choices is None:
        return None
    if not choices:
        return "–"
    by_backend: dict[str, dict[str, int]] = {}
    backends_of: dict[str, set] = {}
    for c in choices:
        product, backend = str(c.get("product", "?")), str(c.get("backend", "?"))
        by_backend.setdefault(backend, {}).setdefault(product, 0)
        by_backend[backend][product] += 1
        backends_of.setdefault(product, set()).add(backend)
    return "; ".join(f"{backend}: " + ", ".join(
        p + (f" ({n} shape{'s' if n > 1 else ''})" if len(backends_of[p]) > 1 else "") for p, n in products.items())
        for backend, products in by_backend.items())


def gemm_by_config(run: dict, cell: str, sweep: str | None = None) -> dict[str, str | None]:
    """cfg_label -> gemm_summary of `cell`'s choices at that config (and sweep), from the file's
    gemm_choices."""
    return {cfg_label(e["config"]): gemm_summary(e.get("choices")) for e in run.get("gemm_choices") or []
            if cell_of(e) == cell and (sweep is None or e.get("sweep") == sweep)}


def gemm_column(run: dict, cell: str) -> bool:
    """Whether `cell`'s table has a GEMM backends column: a CPU file with choices recorded."""
    return any(e.get("choices") is not None for e in run.get("gemm_choices") or [] if cell_of(e) == cell)


def gemm_note(run: dict) -> str | None:
    """One line on how rnnfused's CPU GEMM backends were set for the run (CPU files only)."""
    if run["device_type"] != "cpu":
        return None
    if "cpu_gemm" not in run:
        return "rnnfused's GEMM backends: not recorded (the file predates the field)."
    state = run["cpu_gemm"]
    if state is None:
        return f"rnnfused's GEMM backends: not recorded ({run.get('cpu_gemm_unavailable') or 'no rnnfused.cpu_gemm'})."
    avail = ", ".join(state.get("available") or []) or "none"
    if state.get("forced"):
        how = (f"--gemm-backend {state['requested']}" if state.get("requested") not in (None, "auto")
               else f"RNNFUSED_CPU_GEMM={state.get('env')}")
        return f"rnnfused's GEMMs pinned to {state['forced']} ({how}; available: {avail})."
    return (f"rnnfused's GEMM backend measured and chosen per product (auto; available: {avail}); "
            "the GEMM backends column says which one each product chose.")


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
    # CPU: the GEMM backend rnnfused chose for each product at the config, on the config's first
    # rnnfused row (every rnnfused variant of the config and cell together: they share the shapes).
    gemm = gemm_by_config(run, cell) if gemm_column(run, cell) else None
    gemm_shown = set()
    lines = [f"{headline(run)}",
             "",
             f"| T×B×I×H | variant | fwd ms, median [p25–p75] | fwd vs {base} | fwd+bwd ms | "
             f"fwd+bwd vs {base} |" + (" fwd+bwd speed-up over padded |" if varlen else "")
             + (" fwd+bwd host enqueue ms |" if host else "") + (" kernels per fwd+bwd |" if work else "")
             + " peak MiB |" + (" rnnfused GEMM backends |" if gemm is not None else ""),
             "|---|---|---:|---:|---:|---:|" + ("---:|" if varlen else "") + ("---:|" if host else "")
             + ("---:|" if work else "") + "---:|" + ("---|" if gemm is not None else "")]
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
        if gemm is not None:
            backends = ""
            if row["variant"].startswith("rnnfused") and label not in gemm_shown:
                backends = gemm.get(label) or "not recorded"
                gemm_shown.add(label)
            extra_gemm = f" {backends} |"
        else:
            extra_gemm = ""
        lines.append(f"| {label if label != last else ''} | {row['variant']} | {_ms(row.get('fwd_ms'))} | "
                     f"{_ratio(row, 'fwd')} | {_ms(row.get('fwdbwd_ms'))} | {_ratio(row, 'fwdbwd')} |"
                     f"{speedup}{extra} {'–' if mem is None else f'{mem:.0f}'} |{extra_gemm}")
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
    if gemm_note(run):
        notes.append(gemm_note(run))
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
        gemm = ({e["config"][sweep]: gemm_summary(e.get("choices")) for e in data.get("gemm_choices") or []
                 if cell_of(e) == cell and e.get("sweep") == sweep} if gemm_column(data, cell) else None)
        out += [f"fwd+bwd ms per time step as {sweep} grows ({fixed}):", "",
                f"| {sweep} | " + " | ".join(names) + " |" + (" rnnfused GEMM backends |" if gemm is not None else ""),
                "|---:|" + "---:|" * len(names) + ("---|" if gemm is not None else "")]
        for v in values:
            row = [f"{by[(v, n)]['per_step_ms']:.3g}" if (v, n) in by else "–" for n in names]
            if gemm is not None:
                row.append(gemm.get(v) or "not recorded")
            out.append(f"| {v} | " + " | ".join(row) + " |")
        out.append("")
    for k in of_cell(data.get("skipped", []), cell):
        out.append(f"- {k['variant']} skipped ({k['sweep']}={k['config'][k['sweep']]}): {k['reason']}")
    if gemm_note(data):
        out.append(f"- {gemm_note(data)}")
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
    """(file, cell): the newest file per kind, device type, cell, dtype, TF32 setting and processor,
    preferring full runs over --quick ones; a variable-length run (run.py --packed) is its own kind,
    beside the padded one. Processors are told apart by `_processor.key` (on the CPU: model, family,
    model number, vector ISA), and on the CPU also by the threads used and a pinned GEMM backend, so an
    AVX2 EPYC's run never hides an AVX-512 EPYC's. A CPU file written before the processor fields (its
    ISA unknown) yields to a file with them for the same model name, cell and setting."""
    best, data = {}, {}
    for p in paths:
        d = data[p] = load(p)
        rank = (not d.get("quick"), d["date"])
        cpu = d["device_type"] == "cpu"
        for cell in cells(d):
            # each dtype and TF32 setting of a device has its own table (SPEC §7 asks for all three)
            key = (d["kind"], "packed_lengths" in d, d["device_type"], cell, d.get("dtype", "float32"),
                   d.get("tf32"), _processor.key(d), d.get("threads") if cpu else None,
                   (d.get("cpu_gemm") or {}).get("forced"))
            if key not in best or rank > best[key][0]:
                best[key] = (rank, p)
    detailed = {(key[:6], data[p]["cpu"].get("model_name")) for key, (_, p) in best.items()
                if data[p].get("cpu") and data[p]["device_type"] == "cpu"}
    return [(p, key[3]) for key, (_, p) in best.items()
            if data[p].get("cpu") or data[p]["device_type"] != "cpu" or (key[:6], data[p]["device"]) not in detailed]


def setting_label(d: dict) -> str:
    """What a claim is about: the processor (or GPU), threads, dtype and TF32, a pinned GEMM backend."""
    dtype = d.get("dtype", "float32")
    text = where_label(d)
    if d["device_type"] != "cpu" or dtype != "float32":
        text += f", {dtype}" + (f" with TF32 {d['tf32']}" if d.get("tf32") and dtype == "float32" else "")
    return text + (", --quick run" if d.get("quick") else "")


def _fmt_ratio(r: float) -> str:
    """Two decimals, three where two would show 1.00 for a ratio above 1 (1.004 is above 1.00x)."""
    text = f"{r:.2f}"
    return f"{r:.3f}" if r > 1.0 and text == "1.00" else text


REGULARIZED = "rnnfused-reg"


def claims(entries: list[tuple[str, str]]) -> str:
    """What the kernel files among `entries` say about where the claims hold: per processor (and GPU,
    dtype, TF32), at how many configs `rnnfused-reg` takes at most its torch module's time, forward+backward
    and forward alone, per cell; and, plainly, on which processors the regularized LSTM is no slower than
    nn.LSTM (forward+backward) at every config timed. Empty when no kernel file has rnnfused-reg rows."""
    groups: dict[tuple, dict] = {}
    for p, cell in entries:
        d = load(p)
        if d["kind"] != "kernels" or "packed_lengths" in d:
            continue
        rows = [r for r in of_cell(d["results"], cell)
                if r["variant"] == REGULARIZED and ratio(r, "fwdbwd") is not None]
        if not rows:
            continue
        key = (d["device_type"] != "cuda", not d.get("cpu") and d["device_type"] == "cpu", setting_label(d))
        g = groups.setdefault(key, {"label": setting_label(d), "runs": {}, "cells": {}})
        g["runs"][(d["date"][:10], short_commit(d))] = None
        g["cells"][cell] = rows
    if not groups:
        return ""

    def count(rows, mode):
        rs = [ratio(r, mode) for r in rows if ratio(r, mode) is not None]
        return sum(r <= 1.0 for r in rs), len(rs), min(rs), max(rs)

    def span(lo, hi):
        return f"{_fmt_ratio(lo)}×" if _fmt_ratio(lo) == _fmt_ratio(hi) else f"{_fmt_ratio(lo)}–{_fmt_ratio(hi)}×"

    holds, fails, bullets = [], [], []
    for k in sorted(groups):
        g = groups[k]
        cell_order = sorted(g["cells"], key=lambda c: (c != "lstm", c))
        if "lstm" in g["cells"]:
            ok, n, _, hi = count(g["cells"]["lstm"], "fwdbwd")
            if ok == n:
                holds.append(f"**{g['label']}**")
            else:
                fails.append(f"**{g['label']}** (at {n - ok} of {n} configs, up to {_fmt_ratio(hi)}×)")
        per_mode = []
        for mode, words in (("fwdbwd", "forward+backward"), ("fwd", "forward alone")):
            parts = []
            for c in cell_order:
                if any(ratio(r, mode) is not None for r in g["cells"][c]):
                    ok, n, lo, hi = count(g["cells"][c], mode)
                    parts.append(f"{CELL_NAMES.get(c, c)} at {ok} of {n} ({span(lo, hi)} {baseline(c)})")
            if parts:
                per_mode.append(f"{words}: " + ", ".join(parts))
        runs = "; ".join(f"{date}, commit {commit}" for date, commit in g["runs"])
        bullets.append(f"- {g['label']} ({runs}): " + "; ".join(per_mode) + ".")
    lead = ("**Where the claims hold.** Speed ratios to the torch modules differ between processors (MKL "
            "runs AVX2 code on AMD, oneDNN runs AVX-512 where the CPU has it, rnnfused chooses its GEMM "
            "backend per machine), so each processor has its own tables below, and what they show holds on "
            "those processors only; no other processor was measured.")
    reg = "the regularized LSTM (`rnnfused-reg`, every regularizer on)"
    if holds:
        lead += (f" {reg[0].upper() + reg[1:]} is no slower than unregularized nn.LSTM in forward+backward at "
                 f"every config timed on {_and(holds)}.")
        if fails:
            lead += f" It is slower than nn.LSTM at some configs on {_and(fails)}."
    elif fails:
        lead += (f" On no processor measured is {reg} no slower than unregularized nn.LSTM in forward+backward "
                 f"at every config timed: it is slower at some configs on {_and(fails)}.")
    return "\n".join([lead, "", "Per processor, the configs at which `rnnfused-reg` is no slower than its "
                      "torch module (ratio of medians ≤ 1.00) and the range of its ratios:", ""] + bullets) + "\n"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def readme_section(entries: list[tuple[str, str]], readme_dir: str) -> str:
    """Where the claims hold (`claims`), then the kernel tables (GPU, then CPU), then the scaling studies;
    the LSTM before the GRU, each cell's tables one per processor, each table with its plot. `entries`
    are (results file, cell) pairs."""
    def order(entry):
        d = load(entry[0])
        return (d["kind"] != "kernels", "packed_lengths" in d, d["device_type"] != "cuda", entry[1] != "lstm",
                entry[1], not d.get("cpu") and d["device_type"] == "cpu", where_label(d),
                d.get("dtype", "float32") != "float32", d.get("dtype", "float32"), d.get("tf32") == "on",
                d.get("quick", False))
    entries = sorted(entries, key=order)
    files = list(dict.fromkeys(p for p, _ in entries))
    parts = ["", "_Generated by `python3 benchmarks/report.py --readme README.md` from "
             + ", ".join(f"`{os.path.relpath(p, readme_dir)}`" for p in files) + "; do not edit by hand._", ""]
    summary = claims(entries)
    if summary:
        parts += [summary]
    for p, cell in entries:
        d = load(p)
        png = os.path.relpath(plot_path(os.path.splitext(p)[0], cell, d), readme_dir)
        where = f"{d['device_type'].upper()} {CELL_NAMES.get(cell, cell)} on {where_label(d)}"
        if d["device_type"] == "cuda":
            where += f", {d.get('dtype', 'float32')}" + (f", TF32 {d['tf32']}" if d.get("tf32") and
                                                        d.get("dtype", "float32") == "float32" else "")
        elif d.get("dtype", "float32") != "float32":
            where += f", {d['dtype']}"
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
