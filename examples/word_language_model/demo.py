"""``make demo``: what the in-recurrence regularizers buy, shown by training the same character-level
language model twice with the same budget of training seconds, side by side.

    python3 examples/word_language_model/demo.py                   # 250 s of training per arm, ~6 min on 2 cores
    python3 examples/word_language_model/demo.py --seed 2          # another seed
    python3 examples/word_language_model/demo.py --time-budget 60  # a quick look (not the tuned budget)
    python3 examples/word_language_model/demo.py --epochs 24       # the old budget: the same epochs, not seconds
    python3 examples/word_language_model/demo.py --smoke           # seconds, for CI

The two arms are ``main.py --preset char-demo`` (a named slice of WikiText-2 as characters, a model that
overfits it; REGIME.md says how the regime and every rate were chosen on validation):

- ``rnnfused.LSTM`` with weight drop and zoneout inside the recurrence, on top of
- ``torch.nn.LSTM``'s best regularization (embedding dropout and locked dropout on the LSTM's input and
  output; a one-layer model has no between-layer dropout), which both arms share.

They run at the same time, each in its own process with half the cores, with the same data, batches and
seed. The budget is time: each arm trains for the same seconds (the preset's 250 s, ``--time-budget S``
to change it; evaluation is not counted), as many epochs as fit, and its learning rate's cosine follows
its own clock, so an arm that is slower per step anneals fully in fewer epochs instead of being given
more seconds. 250 s is about what the 24 epochs the rates were tuned at took torch.nn.LSTM with one
core per arm (REGIME.md). The epoch the clock ends is cut short and still evaluated; each arm's test
figure is its best epoch's weights'. ``--epochs N`` alone is the old budget of N epochs each (then the
seconds differ); with ``--time-budget`` it is an upper bound on the epochs.

Each arm's log is ``<out-dir>/<lstm>.log`` and its run folder ``<out-dir>/<lstm>/``. The demo prints one
``RESULT`` line per arm (``main.py``'s: ``test_bpc``, ``train_s``, ``epochs``, ``train_chars``,
``chars_per_s``, ``time_budget_s``, ...), then the seconds each arm trained, its epochs, characters and
throughput (training characters per second) and the ratio of the throughputs, the time the same
regularized training would take as the ``nn.LSTMCell`` loop users write (a few timed batches,
extrapolated, labelled as such), writes one plot of both arms' training and validation curves against
seconds of training (``<out-dir>/comparison.png``) and ends with a sentence saying which arm has the
lower test bits per character at that budget, worded from the numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402
from main import EPOCHS_UNDER_A_TIME_BUDGET, PRESETS, SMOKE  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: without it each arm prints a line per epoch
    tqdm = None

ARMS = ("rnnfused", "torch")
NAMES = {"rnnfused": "rnnfused.LSTM", "torch": "torch.nn.LSTM"}
# --smoke: main.py's tiny CI model on a few thousand characters, one layer so the cell loop is timed too;
# whole epochs (no --max-batches) and a budget of one second (a few of those epochs, cut by the clock).
SMOKE_ARGS = ["--smoke", "--char", "--train-chars", "8000", "--valid-chars", "5000", "--test-chars", "5000",
              "--nlayers", "1", "--candidate-dropout", "0", "--time-cell-loop", "2", "--max-batches", "0"]
SMOKE_TIME_BUDGET = 1.0
EPOCH_LINE = re.compile(r"^epoch\s+(\d+) \| train (\w+)\s+([\d.]+) \| valid \w+\s+([\d.]+)")
SECONDS_SO_FAR = re.compile(r"\(([\d.]+)s in all\)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--seed", type=int, default=1, help="the seed of both arms (masks, initialisation, batches)")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help=f"seconds of training per arm, evaluation not counted (default the preset's "
                        f"{PRESETS['char-demo']['time_budget']:g}; {SMOKE_TIME_BUDGET:g} with --smoke); 0: no "
                        f"time budget, the epochs are the budget")
    p.add_argument("--epochs", type=int, default=None,
                   help="without --time-budget: the budget in epochs instead of seconds (the same epochs for "
                        "both arms); with it, the most epochs")
    p.add_argument("--out-dir", default=None, help="default runs/char-demo-s<seed>")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per arm; default half the cores (at least 1)")
    p.add_argument("--smoke", action="store_true", help="seconds, for CI: a tiny model on a few characters")
    p.add_argument("--no-progress", action="store_true", help="a line per epoch instead of progress bars")
    p.add_argument("--time-cell-loop", type=int, default=None,
                   help="batches to time the nn.LSTMCell loop on (0: skip); default the preset's")
    args = p.parse_args(argv)
    for name in ("epochs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.time_budget is not None and not args.time_budget >= 0:
        p.error(f"--time-budget must be at least 0 seconds, got {args.time_budget:g}")
    return args


def budget_of(args) -> tuple[float, int]:
    """(seconds of training per arm, 0 for none; the epochs: the budget without seconds, else the bound)."""
    preset = SMOKE if args.smoke else PRESETS["char-demo"]
    if args.time_budget is not None:
        seconds = args.time_budget
    elif args.epochs is not None:
        seconds = 0.0
    else:
        seconds = SMOKE_TIME_BUDGET if args.smoke else preset.get("time_budget", 0.0)
    epochs = args.epochs or (EPOCHS_UNDER_A_TIME_BUDGET if seconds else preset["epochs"])
    return seconds, epochs


def arm_command(lstm: str, args, run_dir: Path) -> list[str]:
    """The ``main.py`` command of one arm: the preset (or the smoke configuration), the LSTM, the seed and the
    budget. ``--epochs`` alone makes ``main.py`` drop the preset's seconds for a budget of epochs."""
    config = SMOKE_ARGS if args.smoke else ["--preset", "char-demo"]
    cmd = [sys.executable, str(HERE / "main.py"), *config, "--lstm", lstm, "--seed", str(args.seed),
           "--name", f"char-demo-{lstm}", "--out-dir", str(run_dir), "--no-progress"]
    if args.time_budget is not None or (args.smoke and args.epochs is None):
        cmd += ["--time-budget", str(budget_of(args)[0])]
    if args.epochs is not None:
        cmd += ["--epochs", str(args.epochs)]
    if args.time_cell_loop is not None:
        cmd += ["--time-cell-loop", str(args.time_cell_loop)]
    return cmd


class Arm:
    """One training process: its command, its log, and what it has printed so far."""

    def __init__(self, lstm: str, args, out_dir: Path, threads: int, position: int):
        self.lstm = lstm
        self.run_dir = out_dir / lstm
        self.log_path = out_dir / f"{lstm}.log"
        self.seconds, self.epochs_total = budget_of(args)
        self.cmd = cmd = arm_command(lstm, args, self.run_dir)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env=env)
        self.result: str | None = None
        self.bar = None
        self.position = position
        self.show = not args.no_progress and tqdm is not None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            if line.startswith("RESULT "):
                self.result = line.strip()
            m = EPOCH_LINE.match(line)
            if m:
                so_far = SECONDS_SO_FAR.search(line)
                self._epoch(int(m.group(1)), m.group(2), float(m.group(3)), float(m.group(4)),
                            float(so_far.group(1)) if so_far else None)
        self.log.close()

    def _epoch(self, epoch: int, unit: str, train: float, valid: float, seconds: float | None) -> None:
        clock = ("" if seconds is None else f"{seconds:.1f}" + (f" of {self.seconds:g}" if self.seconds else "")
                 + " s of training")
        if self.show:
            if self.bar is None:   # a time budget: a bar of seconds; an epoch budget: a bar of epochs
                total, unit_name = (self.seconds, "s") if self.seconds else (self.epochs_total, "epoch")
                self.bar = tqdm(total=total, desc=f"{NAMES[self.lstm]:>14}", unit=unit_name,
                                position=self.position, file=sys.stderr, dynamic_ncols=True, leave=True,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit}{postfix}")
            self.bar.set_postfix_str(f"epoch {epoch}, train {unit} {train:.3f}, valid {unit} {valid:.3f}",
                                     refresh=False)
            done = min(seconds or 0.0, self.seconds) if self.seconds else epoch
            self.bar.update(done - self.bar.n)
        else:
            print(f"{NAMES[self.lstm]:>14} epoch {epoch:3d}: train {unit} {train:.3f}, valid {unit} {valid:.3f}"
                  + (f" ({clock})" if clock else ""), flush=True)

    def wait(self) -> int:
        code = self.proc.wait()
        self.reader.join()
        if self.bar is not None:
            self.bar.close()
        return code


def _num(result: dict, *keys: str) -> float:
    """The first of ``keys`` that ``result`` (a RESULT line's fields) has, as a number; 0 if none."""
    for key in keys:
        if result.get(key) not in (None, ""):
            return float(result[key])
    return 0.0


def time_budget(results: dict) -> float:
    """The seconds of training each arm was given (0: the budget was epochs, as in the older records)."""
    return _num(results["rnnfused"], "time_budget_s")


def arm_line(result: dict) -> str:
    """One arm's training, from its RESULT fields: seconds, epochs, characters and characters per second."""
    seconds, epochs = _num(result, "train_s"), int(_num(result, "epochs"))
    chars, rate = int(_num(result, "train_chars", "train_tokens")), _num(result, "chars_per_s", "train_tok_per_s")
    cut = {"time_budget": " (the clock ended the last one)",
           "early_stopping": " (early stopping ended it)",
           "epochs": (f" (the bound of {result.get('max_epochs')} epochs ended it before the clock)"
                      if _num(result, "time_budget_s") else "")}.get(result.get("stopped_by"), "")
    speed = (f"{rate:,.0f} characters/s" if seconds > 0 and rate > 0
             else "characters/s not measured (its time rounds to 0 s)")   # printed to 0.1 s: a smoke run's can
    return (f"{NAMES.get(result.get('lstm'), result.get('lstm'))}: {seconds:.1f} s of training, {epochs} "
            f"epoch{'s' if epochs != 1 else ''}{cut}, {chars:,} training characters, {speed}")


def budget_lines(results: dict, threads: int | None = None) -> list[str]:
    """What the budget was and what each arm did with it, then the ratio of the throughputs, worded from the
    two RESULT lines (``results``: {"rnnfused": fields, "torch": fields})."""
    ours, theirs = results["rnnfused"], results["torch"]
    seconds = time_budget(results)
    where = "side by side" + (f", {threads} thread(s) each" if threads else "")
    if seconds:
        head = (f"Budget: {seconds:g} s of training for each arm (evaluation not counted), {where}; each trained "
                f"as many epochs as fit, its learning rate annealed over its own seconds.")
    else:
        head = (f"Budget: the same {int(_num(ours, 'epochs'))} epochs for each arm (not the same seconds), "
                f"{where}.")
    return [head, "  " + arm_line(ours), "  " + arm_line(theirs), throughput_sentence(results)]


def throughput_sentence(results: dict) -> str:
    """The ratio of the two arms' training characters per second (and, with an epoch budget, of their
    seconds), worded from the numbers."""
    ours, theirs = results["rnnfused"], results["torch"]
    rates = [_num(r, "chars_per_s", "train_tok_per_s") for r in (ours, theirs)]
    times = [_num(r, "train_s") for r in (ours, theirs)]
    if min(rates) <= 0 or min(times) <= 0:   # printed to 0.1 s: a smoke run's times can round to 0
        return "Throughput: too short to compare (a training time rounds to 0 s)."
    ratio = rates[0] / rates[1]
    if abs(ratio - 1) < 0.005:   # what a whole percent would print as 0%
        how = "the two got through the same characters per second, within half a percent"
    elif rates[0] > rates[1]:
        how = f"rnnfused.LSTM got through {ratio - 1:.0%} more characters per second"
    else:
        how = f"torch.nn.LSTM got through {1 / ratio - 1:.0%} more characters per second"
    text = (f"Throughput ratio, regularized rnnfused.LSTM to unregularized torch.nn.LSTM: {ratio:.2f} "
            f"(training characters per second; {how}")
    if not time_budget(results):
        longer = ("rnnfused.LSTM took " + f"{times[0] / times[1] - 1:.0%} longer" if times[0] > times[1] else
                  "torch.nn.LSTM took " + f"{times[1] / times[0] - 1:.0%} longer" if times[0] < times[1] else
                  "the two took the same time")
        text += f"; for the same epochs {longer}"
    return text + ")."


def winner_sentence(results: dict) -> str:
    """The closing sentence: which arm has the lower test bits per character at this budget."""
    ours, theirs = _num(results["rnnfused"], "test_bpc"), _num(results["torch"], "test_bpc")
    seconds = time_budget(results)
    at = (f"At {seconds:g} s of training each" if seconds
          else f"At the same {int(_num(results['rnnfused'], 'epochs'))} epochs each")
    caveat = "one seed, not a significance test"
    if ours < theirs:
        return (f"{at}, rnnfused.LSTM wins: test {ours:.4f} bits per character against torch.nn.LSTM's "
                f"{theirs:.4f}, {theirs - ours:.4f} lower ({caveat}).")
    if theirs < ours:
        return (f"{at}, torch.nn.LSTM wins: test {theirs:.4f} bits per character against rnnfused.LSTM's "
                f"{ours:.4f}, {ours - theirs:.4f} lower; the regularized rnnfused.LSTM does not win at this "
                f"budget ({caveat}).")
    return (f"{at}, the two tie: test {ours:.4f} bits per character each; neither wins at this budget "
            f"({caveat}).")


def cell_loop_sentence(result: dict) -> str | None:
    est, fused = result.get("cell_loop_train_s_est"), result.get("train_s")
    if not est or not fused:
        return None
    est, fused = float(est), float(fused)
    if est <= 0 or fused <= 0:   # printed to 0.1 s: a smoke run's times can round to 0
        return None
    s = lambda v: f"{v:.0f}" if v >= 10 else f"{v:.1f}"  # noqa: E731
    return (f"The same regularized training written as the nn.LSTMCell loop users write today would take about "
            f"{s(est)} s instead of rnnfused's {s(fused)} s ({est / fused:.1f}x; an estimate from a few timed "
            f"batches on the same data, extrapolated, not a full run).")


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir or f"runs/char-demo-s{args.seed}")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    seconds, epochs = budget_of(args)
    budget = (f"{seconds:g} s of training each (evaluation not counted)" if seconds
              else f"the same {epochs} epochs each")
    print(f"demo: training {NAMES['rnnfused']} (in-recurrence regularization) and {NAMES['torch']} (its best "
          f"regularization) side by side, {threads} thread(s) each, seed {args.seed}, {budget}; logs in "
          f"{out_dir}/", flush=True)
    started = time.time()
    arms = [Arm(lstm, args, out_dir, threads, i) for i, lstm in enumerate(ARMS)]
    codes = [arm.wait() for arm in arms]
    for arm, code in zip(arms, codes):
        if code != 0 or arm.result is None:
            tail = arm.log_path.read_text().splitlines()[-15:]
            print(f"demo: the {NAMES[arm.lstm]} arm failed (exit {code}); the end of {arm.log_path}:", file=sys.stderr)
            print("\n".join(tail), file=sys.stderr)
            return 1
    print(f"demo: both arms done in {time.time() - started:.0f} s", flush=True)
    for arm in arms:
        print(arm.result, flush=True)

    results = {arm.lstm: dict(f.split("=", 1) for f in arm.result.split()[1:] if "=" in f) for arm in arms}
    runs = [compare.load(str(arm.run_dir)) for arm in arms]
    plot = out_dir / "comparison.png"
    title = (f"WikiText-2 characters (char-demo), seed {args.seed}: training and validation, "
             f"{threads} thread(s) per arm, {budget}")
    if compare.plot(runs, plot, title):
        print(f"plot: {plot}")
    for line in budget_lines(results, threads):
        print(line)
    loop = cell_loop_sentence(results["rnnfused"])
    if loop:
        print(loop)
    print(compare.sentence(runs, verdict=False))
    print(winner_sentence(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
