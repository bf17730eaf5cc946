"""Render the examples' recorded results (examples/results/*.json, written by record.py) as the README's
"Results" section, between ``<!-- examples:begin -->`` and ``<!-- examples:end -->``.

    python3 examples/report.py --readme README.md

Each example is recorded over several seeds, one file per arm and seed (``<example>-<arm>-s<seed>.json``);
each table shows the mean ± standard deviation over the seeds, and the sentence under it compares the
arms seed by seed. The language model's runs also get one learning-curve plot of every seed,
``examples/results/demo-learning-curves.png``. Nothing in the section is typed by hand: every figure is a
field of a results file, and each table says which command, commit, machine and load it came from.

The demo's budget changed from the same epochs for both arms to the same seconds of training: a record
with ``time_budget_s`` (or ``args.time_budget``) above 0 had the clock, one without had epochs. The note
under the demo's table says which kind its records are (or that they mix the two) and words itself to
match: for the clock, the arms' epochs and the ratio of their throughputs (characters per second); for
epochs, the ratio of their training seconds. Time-budgeted records are plotted against seconds of
training, the others against the epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "examples" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))
from _readme import replace_section  # noqa: E402  (shared with benchmarks/report.py)

BEGIN, END = "<!-- examples:begin -->", "<!-- examples:end -->"
LSTM_NAMES = {"rnnfused": "rnnfused.LSTM", "torch": "torch.nn.LSTM"}
OUTSIDE = {"dropoute": "embedding", "dropouti": "input", "dropouth": "between layers", "dropout": "output"}
IN_RECURRENCE = {"zoneout_c": "zoneout c", "zoneout_h": "zoneout h", "wdrop": "weight drop",
                 "recurrent_dropout": "recurrent dropout", "candidate_dropout": "candidate dropout"}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def load_seeds(prefix: str, arm: str) -> list[dict]:
    """Every recorded seed of one arm: ``<prefix>-<arm>-s<seed>.json``, in seed order."""
    entries = []
    for path in RESULTS.glob(f"{prefix}-{arm}-s*.json"):
        seed = path.stem[len(f"{prefix}-{arm}-s"):]
        if seed.isdigit():
            entries.append((int(seed), json.loads(path.read_text())))
    return [e for _, e in sorted(entries, key=lambda p: p[0])]


def seed_of(entry: dict) -> str:
    return entry["result"].get("seed") or entry["name"].rsplit("-s", 1)[-1]


# Fields that older records lack, and the field that says the same there: a character-level run's tokens
# are its characters.
FALLBACK = {"chars_per_s": "train_tok_per_s", "train_chars": "train_tokens"}


def value(entry: dict, key: str) -> float | None:
    v = entry["result"].get(key)
    if v is None and key in FALLBACK and entry["result"].get("level") == "char":
        v = entry["result"].get(FALLBACK[key])
    if key == "wall_s" and v is None:
        v = entry.get("wall_s")
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def lstm_name(entry: dict) -> str:
    return LSTM_NAMES.get(entry["result"].get("lstm"), entry["result"].get("lstm", "?"))


def in_recurrence(entry: dict) -> str:
    """The regularizers the run applied inside the recurrence (none with torch.nn.LSTM: it cannot)."""
    args = entry.get("args") or {}
    if entry["result"].get("lstm") == "torch":
        return "none (cannot)"
    used = [f"{label} {args[key]:g}" for key, label in IN_RECURRENCE.items() if args.get(key)]
    return ", ".join(used) or "none"


def outside(entry: dict) -> str:
    """The dropouts outside the LSTM, which both language-model arms can have."""
    args = entry.get("args") or {}
    used = [f"{label} {args[key]:g}" for key, label in OUTSIDE.items() if args.get(key)]
    return ", ".join(used) or "none"


def provenance(entries: list[dict]) -> str:
    """One line per command (seeds folded together): where, when, from which commits, how loaded."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        seed = seed_of(e)
        command = e["command"].replace(f"--seed {seed}", "--seed S").replace(f"SEED={seed}", "SEED=S")
        groups.setdefault(command, []).append(e)
    lines = []
    for command, group in groups.items():
        first = group[0]
        commits = sorted({(e.get("commit") or "unknown")[:12] + ("-dirty" if (e.get("commit") or "").endswith("-dirty")
                                                                 else "") for e in group})
        dates = sorted({e["date"][:10] for e in group})
        seeds = ", ".join(dict.fromkeys(seed_of(e) for e in group))   # a demo's two arms share one command
        before = [e["load_avg_before"] for e in group]
        after = [e["load_avg_after"] for e in group]
        lines.append(f"- `{command}` (S = {seeds}): {first['machine']}, {first['cpus']} CPUs, torch "
                     f"{first.get('torch', '?')} with {first.get('threads', '?')} threads; commit "
                     f"{', '.join(commits)}; {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}; load average "
                     f"{min(before):.2f}-{max(before):.2f} before, {min(after):.2f}-{max(after):.2f} after.")
    return "\n".join(lines)


def table(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def summary_cell(entries: list[dict], key: str, fmt: str) -> str:
    vals = [v for v in (value(e, key) for e in entries) if v is not None]
    if not vals:
        return "–"
    mean, std = mean_std(vals)
    return f"{fmt.format(mean)} ± {fmt.format(std)}" if len(vals) > 1 else fmt.format(mean)


def paired_verdict(arms: dict[str, list[dict]], key: str, what: str, lower_is_better: bool, fmt: str) -> str:
    """A sentence comparing the two arms seed by seed on ``key``, worded from the recorded numbers."""
    ours = {seed_of(e): value(e, key) for e in arms.get("rnnfused", [])}
    theirs = {seed_of(e): value(e, key) for e in arms.get("torch", [])}
    seeds = [s for s in ours if s in theirs and ours[s] is not None and theirs[s] is not None]
    if not seeds:
        return ""
    diffs = [ours[s] - theirs[s] for s in seeds]
    better = sum(1 for d in diffs if (d < 0) == lower_is_better and d != 0)
    ties = sum(1 for d in diffs if d == 0)
    m_ours, _ = mean_std([ours[s] for s in seeds])
    m_theirs, _ = mean_std([theirs[s] for s in seeds])
    mean_diff, std_diff = mean_std(diffs)
    n = len(seeds)
    if better == n:
        lead = f"rnnfused.LSTM has the better {what} in every one of the {n} seeds"
    elif better == 0 and ties == 0:
        lead = f"torch.nn.LSTM has the better {what} in every one of the {n} seeds: the regularized arm does not win here"
    else:
        lead = (f"rnnfused.LSTM has the better {what} in {better} of {n} seeds"
                + (f" ({ties} tied)" if ties else "") + ("; it does not win here" if better * 2 <= n else ""))
    return (f"{lead} (mean {fmt.format(m_ours)} against {fmt.format(m_theirs)}; rnnfused minus torch, per "
            f"seed: {', '.join(('+' if d > 0 else '') + fmt.format(d) for d in diffs)}; mean "
            f"{fmt.format(mean_diff)} ± {fmt.format(std_diff)}). {n} seed{'s' if n > 1 else ''}, not a "
            f"significance test.")


def _mean_ratio(arms: dict[str, list[dict]], key: str) -> float | None:
    """The rnnfused arm's mean of a recorded field over the torch arm's, or None without both."""
    ours = [v for v in (value(e, key) for e in arms.get("rnnfused", [])) if v is not None]
    theirs = [v for v in (value(e, key) for e in arms.get("torch", [])) if v is not None]
    if not ours or not theirs or mean_std(theirs)[0] <= 0:
        return None
    return mean_std(ours)[0] / mean_std(theirs)[0]


def time_ratio(arms: dict[str, list[dict]]) -> str:
    """' (rnnfused's regularized arm: 1.01x torch.nn.LSTM's time, ...)', from the recorded training seconds."""
    ratio = _mean_ratio(arms, "train_s")
    if ratio is None:
        return ""
    return (f" (rnnfused's regularized arm: {ratio:.2f}x torch.nn.LSTM's unregularized time, the ratio of "
            f"the mean training seconds)")


def throughput_ratio(arms: dict[str, list[dict]]) -> str:
    """' (rnnfused's regularized arm: 0.98x torch.nn.LSTM's characters per second, ...)', from the records."""
    ratio = _mean_ratio(arms, "chars_per_s")
    if ratio is None:
        return ""
    return (f" (rnnfused's regularized arm: {ratio:.2f}x torch.nn.LSTM's unregularized training characters per "
            f"second, the ratio of the mean throughputs)")


def time_budget(entry: dict) -> float:
    """The seconds of training the run was given: the RESULT line's ``time_budget_s``, else its arguments'
    ``time_budget``; 0 when its budget was epochs (every record made before ``make demo`` had a clock)."""
    v = value(entry, "time_budget_s")
    if v is None:
        v = float((entry.get("args") or {}).get("time_budget") or 0.0)
    return v


def seeds_list(entries: list[dict]) -> str:
    return ", ".join(dict.fromkeys(seed_of(e) for e in entries))


def cores_each(entries: list[dict]) -> str:
    """'one core each' from the recorded machine's CPU count (demo.py gives each arm half the cores)."""
    cpus = sorted({e.get("cpus") for e in entries if e.get("cpus")})
    if len(cpus) != 1:
        return "half the machine's cores each"
    n = max(1, cpus[0] // 2)
    return "one core each" if n == 1 else f"{n} cores each"


def demo_budget_note(arms: dict[str, list[dict]]) -> str:
    """What the recorded demo runs' budget was, worded by the kind of record: the same epochs (the records
    made before the demo's budget was time), the same seconds, or a mix of the two."""
    entries = [e for es in arms.values() for e in es]
    by_epochs = [e for e in entries if not time_budget(e)]
    by_time = [e for e in entries if time_budget(e)]
    cores = cores_each(entries)
    if by_epochs and by_time:
        return (f"These records mix two budgets, and the means above mix them too: seeds {seeds_list(by_epochs)} "
                f"had the same epochs for both arms, seeds {seeds_list(by_time)} the same seconds of training "
                f"({', '.join(sorted({f'{time_budget(e):g} s' for e in by_time}))}); re-record all of them with "
                f"one budget (`make examples-results`) to compare like with like. The arms train side by side, "
                f"{cores}{throughput_ratio(arms)}.")
    if by_epochs:
        epochs = sorted({e["result"].get("epochs") for e in by_epochs}, key=lambda v: float(v or 0))
        return (f"The budget of these records is the same {', '.join(epochs)} epochs for both arms, not the same "
                f"seconds: they were recorded before `make demo` gave each arm the same seconds of training. The "
                f"arms train side by side, {cores}, and the training-seconds column says what each "
                f"took{time_ratio(arms)}.")
    budgets = sorted({time_budget(e) for e in by_time})
    return (f"The budget is time: {' / '.join(f'{b:g}' for b in budgets)} s of training for each arm (evaluation "
            f"not counted), side by side, {cores}. Each arm trains as many epochs as fit in its seconds (the "
            f"epochs column; the epoch the clock ends is cut short and still evaluated) with its learning "
            f"rate's cosine following its own clock, so a slower arm anneals fully in fewer epochs; the "
            f"characters-per-second column is each arm's training throughput{throughput_ratio(arms)}.")


def plot_learning_curves(arms: dict[str, list[dict]], path: Path) -> bool:
    """Train and validation bits per character per epoch of every recorded demo seed: one thin line per
    seed, the mean over seeds thick, one colour per arm."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no learning-curve plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Records with a time budget: x is the seconds of training at each evaluation (where the arms' budgets
    # end alike); records with an epoch budget: x is the epoch.
    by_time = all(time_budget(e) for es in arms.values() for e in es)
    for (arm, entries), color in zip(arms.items(), ("tab:blue", "tab:orange")):
        name = LSTM_NAMES[arm]
        for split, style in (("train", "--"), ("valid", "-")):
            curves = [[(h.get("train_seconds", h["epoch"]) if by_time else h["epoch"], h[f"{split}_bpc"])
                       for h in e.get("history") or []] for e in entries]
            curves = [c for c in curves if c]
            if not curves:
                continue
            for c in curves:
                ax.plot([x for x, _ in c], [y for _, y in c], style, color=color, alpha=0.25, linewidth=0.8)
            n = min(len(c) for c in curves)   # the mean over seeds of each epoch's point, as far as all have one
            mean = [[sum(c[i][j] for c in curves) / len(curves) for i in range(n)] for j in (0, 1)]
            label = "training (dropout on)" if split == "train" else "validation"
            ax.plot(mean[0], mean[1], style, color=color, linewidth=2,
                    label=f"{name}: {label}, mean of {len(curves)} seeds")
    ax.set_xlabel("seconds of training (evaluation not counted)" if by_time else "epoch")
    ax.set_ylabel("bits per character")
    ax.set_ylim(top=3.0)
    ax.set_title("WikiText-2 characters (char-demo): both arms of `make demo`, every recorded seed", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def demo_section(readme_dir: Path, draw: bool) -> list[str]:
    arms = {arm: load_seeds("demo", arm) for arm in ("rnnfused", "torch")}
    if not any(arms.values()):
        return ["#### Language model (`make demo`)", "", "_No recorded run yet._", ""]
    rows = []
    for arm, entries in arms.items():
        if not entries:
            continue
        e0 = entries[0]
        loop = summary_cell(entries, "cell_loop_train_s_est", "{:.0f}") if arm == "rnnfused" else "–"
        rows.append([LSTM_NAMES[arm], outside(e0), in_recurrence(e0), str(len(entries)),
                     summary_cell(entries, "valid_bpc", "{:.3f}"), summary_cell(entries, "test_bpc", "{:.3f}"),
                     summary_cell(entries, "train_s", "{:.0f}"), summary_cell(entries, "epochs", "{:.1f}"),
                     summary_cell(entries, "chars_per_s", "{:,.0f}"), loop])
    head = ["LSTM", "outside the LSTM", "inside the recurrence", "seeds", "valid bpc", "test bpc",
            "training, s", "epochs", "training chars/s", "as an nn.LSTMCell loop, s (estimate)"]
    commands = [e for entries in arms.values() for e in entries]
    whole = [e for e in commands if e["result"].get("lstm") == "rnnfused"]
    walls = [format(e["wall_s"], ".0f") + (" (from a fresh clone, the extension's build included)"
                                           if e.get("built_extension") else "") for e in whole]
    whole_note = (f"The whole `make demo` (both arms side by side, set-up and plot included) took "
                  f"{', '.join(walls)} s.") if whole else ""
    parts = ["#### Language model (`make demo`): WikiText-2 characters, `char-demo` preset", "",
             table(rows, head), "",
             "Mean ± standard deviation over the recorded seeds. Both arms share "
             "the data (the first 125,000 characters of WikiText-2's training text; validation the first 100,000 "
             "of its validation text; test all of its test text), the model outside the LSTM, the optimizer and "
             "schedule, the batches and the seed; the rates of both were chosen on validation with the same "
             "number of tuning runs (`examples/word_language_model/REGIME.md`). torch.nn.LSTM cannot apply the "
             f"in-recurrence regularizers. {demo_budget_note(arms)} The "
             "nn.LSTMCell-loop column is an estimate from a few timed batches of "
             "the same regularized training, extrapolated, not a run. " + whole_note, "",
             paired_verdict(arms, "test_bpc", "test bits per character", True, "{:.3f}"), "",
             provenance(commands), ""]
    plot = RESULTS / "demo-learning-curves.png"
    if (draw and plot_learning_curves(arms, plot)) or (not draw and plot.exists()):
        parts += [f"![learning curves]({os.path.relpath(plot, readme_dir)})", ""]
    return parts


def seeds_section(title: str, prefix: str, columns: list[tuple[str, str, str]], note: str, readme_dir: Path,
                  compare: tuple[str, str, bool, str]) -> list[str]:
    """An example recorded over several seeds: one row per arm with each column's mean ± std, the
    seed-by-seed verdict, provenance and the first seed's plot."""
    arms = {arm: load_seeds(prefix, arm) for arm in ("rnnfused", "torch")}
    if not any(arms.values()):
        return [f"#### {title}", "", "_No recorded run yet._", ""]
    rows = [[LSTM_NAMES[arm], str(len(entries))] + [summary_cell(entries, k, f) for _, k, f in columns]
            for arm, entries in arms.items() if entries]
    key, what, lower_is_better, fmt = compare
    parts = [f"#### {title}", "", table(rows, ["LSTM", "seeds"] + [h for h, _, _ in columns]), "", note, "",
             paired_verdict(arms, key, what, lower_is_better, fmt), "",
             provenance([e for entries in arms.values() for e in entries]), ""]
    plot = next((e.get("plot_file") for entries in arms.values() for e in entries if e.get("plot_file")), None)
    if plot:
        parts += [f"![{prefix}]({os.path.relpath(RESULTS / plot, readme_dir)})", ""]
    return parts


def readme_section(readme_dir: Path, draw: bool = True) -> str:
    """The section's Markdown; ``draw=False`` leaves the learning-curve PNG as it is (for tests)."""
    parts = ["", "_Generated by `python3 examples/report.py --readme README.md` from `examples/results/*.json` "
             "(written by `examples/record.py`); do not edit by hand._", ""]
    parts += demo_section(readme_dir, draw)
    parts += seeds_section(
        "Digits classifier: scikit-learn's 8x8 digits, read row by row", "digits",
        [("test accuracy", "test_acc", "{:.4f}"), ("validation accuracy", "val_acc", "{:.4f}"),
         ("epochs", "epochs", "{:.0f}"), ("wall, s", "wall_s", "{:.0f}")],
        "A 2-layer bidirectional LSTM; the rnnfused run adds zoneout, variational input/recurrent dropout and "
        "weight drop. Early stopping on validation accuracy; 360 test images. The seed also draws the "
        "train/validation/test split (the same for both arms at a seed).", readme_dir,
        ("test_acc", "test accuracy", False, "{:.4f}"))
    parts += seeds_section(
        "Forecasting: yearly sunspot numbers (statsmodels), one year ahead", "sunspots",
        [("LSTM MAE", "lstm_mae", "{:.2f}"), ("LSTM RMSE", "lstm_rmse", "{:.2f}"),
         ("persistence MAE", "persistence_mae", "{:.2f}"), ("seasonal naive (11 y) MAE", "seasonal_mae", "{:.2f}"),
         ("test years", "test_years", "{:.0f}"), ("wall, s", "wall_s", "{:.0f}")],
        "Errors on the last test years, in sunspot numbers; persistence predicts last year's value, the "
        "seasonal naive forecast the value of 11 years before (neither depends on the seed).", readme_dir,
        ("lstm_mae", "test MAE", True, "{:.2f}"))
    parts += seeds_section(
        "Sequence to sequence: sunspot numbers, 11 years ahead", "seq2seq",
        [("encoder-decoder MAE", "seq2seq_mae", "{:.2f}"), ("encoder-decoder RMSE", "seq2seq_rmse", "{:.2f}"),
         ("one-step model iterated MAE", "iterated_mae", "{:.2f}"),
         ("seasonal naive (11 y) MAE", "seasonal_mae", "{:.2f}"), ("wall, s", "wall_s", "{:.0f}")],
        "`examples/forecasting/seq2seq.py`: an encoder-decoder (both recurrent layers from the arm's library) "
        "forecasts the next 11 years from each origin in the test period; errors over every origin and step, "
        "in sunspot numbers, against the one-step model of the same library fed its own forecasts and the "
        "seasonal naive forecast.", readme_dir,
        ("seq2seq_mae", "encoder-decoder test MAE", True, "{:.2f}"))
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
