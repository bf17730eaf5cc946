"""One plot of two (or more) language-model runs' training and validation curves, and a sentence about them.

    python3 examples/word_language_model/compare.py runs/char-demo-rnnfused runs/char-demo-torch \\
        --out runs/char-demo-comparison.png

Each argument is a run's output folder (or its ``history.json``). The x axis is the seconds of training
each run had spent when it was evaluated (evaluation not counted), so runs given the same
``--time-budget`` end at the same place; the y axis is bits per character (character-level runs) or
perplexity. The sentence is worded from the numbers: each run's best validation figure, where it was
reached, how far validation rose after it, and the test figure of the best weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAMES = {"rnnfused": "rnnfused.LSTM", "torch": "torch.nn.LSTM"}


def load(path: str) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "history.json"
    run = json.loads(p.read_text())
    run["path"] = str(p)
    return run


def key(run: dict) -> str:
    return "bpc" if run["args"].get("char") else "ppl"


def label(run: dict) -> str:
    a = run["args"]
    rates = [f"{name} {a[k]:g}" for k, name in (("dropoute", "emb"), ("dropouti", "in"), ("dropouth", "between"),
                                                   ("dropout", "out"), ("wdrop", "wdrop"), ("zoneout_c", "zc"),
                                                   ("zoneout_h", "zh"), ("recurrent_dropout", "rec"),
                                                   ("candidate_dropout", "cand")) if a.get(k)]
    if a["lstm"] == "torch":
        rates = [r for r in rates if r.split()[0] in ("emb", "in", "between", "out")]
    return f"{NAMES.get(a['lstm'], a['lstm'])} ({', '.join(rates) or 'no dropout'})"


def summary(run: dict) -> dict:
    k = key(run)
    hist = run["history"]
    valid = [h[f"valid_{k}"] for h in hist]
    best = min(range(len(valid)), key=valid.__getitem__)
    return dict(best=valid[best], best_epoch=hist[best]["epoch"], best_s=hist[best].get("train_seconds"),
                last=valid[-1], epochs=len(hist), test=run[f"test_{k}"], train_s=run.get("train_seconds"),
                rise=valid[-1] - valid[best])


def sentence(runs: list[dict], verdict: bool = True) -> str:
    """Each run's best validation figure, where it was reached, and its test figure; then (``verdict``)
    which run has the lower test figure."""
    k = key(runs[0])
    unit = "bits per character" if k == "bpc" else "perplexity"
    fmt = (lambda v: f"{v:.3f}") if k == "bpc" else (lambda v: f"{v:.1f}")
    parts = []
    for run in runs:
        s = summary(run)
        where = f"epoch {s['best_epoch']}" + (f" ({s['best_s']:.0f} s)" if s["best_s"] is not None else "")
        after = (f" and had risen to {fmt(s['last'])} by the end ({s['epochs']} epochs)" if s["rise"] > 0
                 else f", its last of {s['epochs']} epochs" if s["epochs"] > 1 else ", its only epoch")
        parts.append(f"{NAMES.get(run['args']['lstm'], run['args']['lstm'])} reached its best validation "
                     f"{fmt(s['best'])} at {where}{after}; its best weights score {fmt(s['test'])} on test")
    if not verdict:
        return "; ".join(parts) + "."
    ranked = sorted(runs, key=lambda r: r[f"test_{k}"])
    lead = ranked[1][f"test_{k}"] - ranked[0][f"test_{k}"] if len(ranked) > 1 else 0.0
    first = NAMES.get(ranked[0]["args"]["lstm"], ranked[0]["args"]["lstm"])
    verdict = (f"Lower test {unit}: {first}, by {fmt(lead)}" if lead > 0 else f"The runs tie on test {unit}")
    return "; ".join(parts) + f". {verdict} (one run each, not a significance test)."


def table(runs: list[dict]) -> str:
    """A markdown table: each run's settings, curve (validation per epoch) and final numbers."""
    k = key(runs[0])
    fmt = (lambda v: f"{v:.3f}") if k == "bpc" else (lambda v: f"{v:.1f}")
    rows = [f"| run | settings | epochs | train s | validation {k} per epoch (best in bold) | best valid | test |",
            "|---|---|---:|---:|---|---:|---:|"]
    for run in runs:
        s = summary(run)
        curve = ", ".join(f"**{fmt(h[f'valid_{k}'])}**" if h["epoch"] == s["best_epoch"] else fmt(h[f"valid_{k}"])
                          for h in run["history"])
        rows.append(f"| {Path(run['path']).parent.name} | {label(run)} | {s['epochs']} | {s['train_s'] or 0:.0f} | "
                    f"{curve} | {fmt(s['best'])} | {fmt(s['test'])} |")
    return "\n".join(rows)


def plot(runs: list[dict], out: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    k = key(runs[0])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(runs):
        hist = run["history"]
        x = [h.get("train_seconds", h["epoch"]) for h in hist]
        color = f"C{i}"
        ax.plot(x, [h[f"train_{k}"] for h in hist], "o--", color=color, alpha=0.6, label=f"{label(run)}: train")
        ax.plot(x, [h[f"valid_{k}"] for h in hist], "s-", color=color, label=f"{label(run)}: validation")
    ax.set_xlabel("seconds of training" if "train_seconds" in runs[0]["history"][0] else "epoch")
    ax.set_ylabel("bits per character" if k == "bpc" else "perplexity")
    if k != "bpc":
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (or their history.json)")
    p.add_argument("--out", default="comparison.png")
    p.add_argument("--title", default=None)
    p.add_argument("--table", action="store_true", help="also print a markdown table of the runs")
    args = p.parse_args(argv)
    runs = [load(r) for r in args.runs]
    if len({key(r) for r in runs}) != 1:
        p.error("the runs must all be character-level or all word-level")
    text = sentence(runs)
    title = args.title or f"WikiText-2{' characters' if key(runs[0]) == 'bpc' else ''}, {runs[0]['args'].get('config', '')}"
    if plot(runs, Path(args.out), title):
        print(f"plot: {args.out}")
    if args.table:
        print(table(runs))
    print(text)
    return text


if __name__ == "__main__":
    main()
