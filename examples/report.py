"""Render the examples' recorded results (examples/results/*.json, written by record.py) as the README's
"Results" section, between ``<!-- examples:begin -->`` and ``<!-- examples:end -->``.

    python3 examples/report.py --readme README.md

The language model's two runs (rnnfused and torch.nn.LSTM) also get one learning-curve plot together,
``examples/results/demo-learning-curves.png``. Nothing in the section is typed by hand: every figure is a
field of a results file, and each table says which command, commit, machine and load it came from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "examples" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
from _readme import replace_section  # noqa: E402  (shared with benchmarks/report.py)

BEGIN, END = "<!-- examples:begin -->", "<!-- examples:end -->"
LSTM_NAMES = {"rnnfused": "rnnfused.LSTM", "torch": "torch.nn.LSTM"}
IN_RECURRENCE = {"zoneout_c": "zoneout c", "zoneout_h": "zoneout h", "wdrop": "weight drop",
                 "recurrent_dropout": "recurrent dropout", "candidate_dropout": "candidate dropout"}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def lstm_name(entry: dict) -> str:
    return LSTM_NAMES.get(entry["result"].get("lstm"), entry["result"].get("lstm", "?"))


def in_recurrence(entry: dict) -> str:
    """The regularizers the run applied inside the recurrence (none with torch.nn.LSTM: it cannot)."""
    args = entry.get("args") or {}
    if entry["result"].get("lstm") == "torch":
        return "none (cannot)"
    used = [f"{label} {args[key]:g}" for key, label in IN_RECURRENCE.items() if args.get(key)]
    return ", ".join(used) or "none"


def provenance(entries: list[dict]) -> str:
    """One line per run: where, when, from which commit, how loaded the machine was."""
    lines = []
    for e in entries:
        commit = (e.get("commit") or "unknown")
        commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
        lines.append(f"- `{e['command']}`: {e['machine']}, {e['cpus']} CPUs, torch {e.get('torch', '?')} "
                     f"with {e.get('threads', '?')} threads; commit {commit}; {e['date'][:10]}; load average "
                     f"{e['load_avg_before']:.2f} before, {e['load_avg_after']:.2f} after.")
    return "\n".join(lines)


def table(entries: list[dict], columns: list[tuple[str, Callable[[dict], str]]]) -> str:
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    rows = ["| " + " | ".join(f(e) for _, f in columns) + " |" for e in entries]
    return "\n".join([head, rule, *rows])


def field(key: str, fmt: str = "{}") -> Callable[[dict], str]:
    def get(entry: dict) -> str:
        value = entry["result"].get(key)
        if value is None:
            return "–"
        try:
            return fmt.format(float(value))
        except ValueError:
            return str(value)
    return get


def verdict(entries: list[dict], key: str, what: str, lower_is_better: bool) -> str:
    """One sentence comparing the rnnfused run with the torch.nn.LSTM run on ``key``, worded from the
    recorded numbers (so it cannot go stale when the runs are recorded again)."""
    runs = {e["result"].get("lstm"): e for e in entries}
    if "rnnfused" not in runs or "torch" not in runs:
        return ""
    ours, theirs = float(runs["rnnfused"]["result"][key]), float(runs["torch"]["result"][key])
    if ours == theirs:
        return f"In this recording the two runs have the same {what}."
    ours_better = (ours < theirs) == lower_is_better
    winner = "rnnfused.LSTM" if ours_better else "torch.nn.LSTM"
    return (f"In this recording {winner} has the better {what} (rnnfused.LSTM {ours:g}, torch.nn.LSTM "
            f"{theirs:g}): one run of one seed each, not a significance test.")


def plot_learning_curves(entries: list[dict], path: Path) -> bool:
    """Train and validation perplexity per epoch of every language-model run, on one log axis."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no learning-curve plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for entry, color in zip(entries, ("tab:blue", "tab:orange", "tab:green")):
        hist = entry.get("history") or []
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["train_ppl"] for h in hist], "--", color=color, label=f"{lstm_name(entry)}: train (with dropout)")
        ax.plot(epochs, [h["valid_ppl"] for h in hist], "o-", color=color, label=f"{lstm_name(entry)}: validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.set_title("WikiText-2, cpu-demo preset, 2 CPU cores", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def demo_section(readme_dir: Path, draw: bool) -> list[str]:
    entries = [e for e in (load("demo-rnnfused"), load("demo-torch")) if e]
    if not entries:
        return ["#### Language model (`make demo`)", "", "_No recorded run yet._", ""]
    columns = [("LSTM", lstm_name), ("inside the recurrence", in_recurrence), ("epochs", field("epochs", "{:.0f}")),
               ("train tokens/s", field("train_tok_per_s", "{:,.0f}")), ("valid ppl", field("valid_ppl", "{:.1f}")),
               ("test ppl", field("test_ppl", "{:.1f}")), ("training script, s", field("wall_s", "{:.0f}")),
               ("whole command, s", lambda e: f"{e['wall_s']:.0f}" + (" (with build)" if e.get("built_extension") else ""))]
    parts = ["#### Language model (`make demo`): WikiText-2, `cpu-demo` preset", "",
             table(entries, columns), "",
             "Both runs share everything outside the LSTM (embedding dropout, locked dropout between layers "
             "and on the output, AR/TAR, the adaptive softmax, the optimizer); torch.nn.LSTM cannot apply the "
             "in-recurrence regularizers, so they are off in its run. \"whole command\" is the wall time of "
             "the command below, its set-up included (and the extension's build, where marked).", "",
             verdict(entries, "test_ppl", "test perplexity", lower_is_better=True) + " The preset trains "
             "1.2 passes over the training set and leaves the model underfit, where regularization is not "
             "expected to pay; the in-recurrence regularizers are for runs long enough to overfit.", "",
             provenance(entries), ""]
    plot = RESULTS / "demo-learning-curves.png"
    if (draw and plot_learning_curves(entries, plot)) or (not draw and plot.exists()):
        parts += [f"![learning curves]({os.path.relpath(plot, readme_dir)})", ""]
    return parts


def pair_section(title: str, prefix: str, columns, note: str, readme_dir: Path,
                 compare: tuple[str, str, bool]) -> list[str]:
    entries = [e for e in (load(f"{prefix}-rnnfused"), load(f"{prefix}-torch")) if e]
    if not entries:
        return [f"#### {title}", "", "_No recorded run yet._", ""]
    key, what, lower_is_better = compare
    parts = [f"#### {title}", "", table(entries, columns), "", note, "",
             verdict(entries, key, what, lower_is_better), "", provenance(entries), ""]
    plot = entries[0].get("plot_file")
    if plot:
        parts += [f"![{prefix}]({os.path.relpath(RESULTS / plot, readme_dir)})", ""]
    return parts


def readme_section(readme_dir: Path, draw: bool = True) -> str:
    """The section's Markdown; ``draw=False`` leaves the learning-curve PNG as it is (for tests)."""
    parts = ["", "_Generated by `python3 examples/report.py --readme README.md` from `examples/results/*.json` "
             "(written by `examples/record.py`); do not edit by hand._", ""]
    parts += demo_section(readme_dir, draw)
    parts += pair_section(
        "Digits classifier: scikit-learn's 8x8 digits, read row by row", "digits",
        [("LSTM", lstm_name), ("test accuracy", field("test_acc", "{:.4f}")), ("test errors", field("test_errors")),
         ("validation accuracy", field("val_acc", "{:.4f}")), ("epochs", field("epochs", "{:.0f}")),
         ("wall, s", field("wall_s", "{:.0f}"))],
        "A 2-layer bidirectional LSTM; the rnnfused run adds zoneout, variational input/recurrent dropout and "
        "weight drop. Early stopping on validation accuracy; 360 test images.", readme_dir,
        ("test_acc", "test accuracy", False))
    parts += pair_section(
        "Forecasting: yearly sunspot numbers (statsmodels), one year ahead", "sunspots",
        [("LSTM", lstm_name), ("LSTM MAE", field("lstm_mae", "{:.2f}")), ("LSTM RMSE", field("lstm_rmse", "{:.2f}")),
         ("persistence MAE", field("persistence_mae", "{:.2f}")),
         ("seasonal naive (11 y) MAE", field("seasonal_mae", "{:.2f}")), ("test years", field("test_years", "{:.0f}")),
         ("wall, s", field("wall_s", "{:.0f}"))],
        "Errors on the last test years, in sunspot numbers; persistence predicts last year's value, the "
        "seasonal naive forecast the value of 11 years before.", readme_dir,
        ("lstm_mae", "test MAE", True))
    return "\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readme", metavar="README.md", help="rewrite this README's section; default: print it")
    args = p.parse_args(argv)
    if not args.readme:
        print(readme_section(REPO))
        return
    readme = Path(args.readme).resolve()
    if not replace_section(readme, BEGIN, END, readme_section(readme.parent)):
        sys.exit(f"{readme}: no {BEGIN} ... {END} markers")
    print(f"updated {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
