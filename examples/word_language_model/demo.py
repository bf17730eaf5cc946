"""``make demo``: what the in-recurrence regularizers buy, shown by training the same character-level
language model twice at the same budget, side by side.

    python3 examples/word_language_model/demo.py              # ~8 minutes on 2 CPU cores
    python3 examples/word_language_model/demo.py --seed 2     # another seed
    python3 examples/word_language_model/demo.py --epochs 2   # a quick look (not the tuned budget)
    python3 examples/word_language_model/demo.py --smoke      # seconds, for CI

The two arms are ``main.py --preset char-demo`` (a named slice of WikiText-2 as characters, a model that
overfits it; REGIME.md says how the regime and every rate were chosen on validation):

- ``rnnfused.LSTM`` with weight drop and zoneout inside the recurrence, on top of
- ``torch.nn.LSTM``'s best regularization (embedding dropout and locked dropout on the LSTM's input and
  output; a one-layer model has no between-layer dropout), which both arms share.

They run at the same time, each in its own process with half the cores, for the same epochs, batches and
seed. The budget is the epochs; the training seconds of both are printed, and they are not equal: at the
demo's batch of 16 rnnfused.LSTM's regularized step is slower on one core than oneDNN's unregularized one
(about 17% in the recorded runs; REGIME.md). Each arm's log is ``<out-dir>/<lstm>.log`` and its run folder
``<out-dir>/<lstm>/``. The demo prints one ``RESULT`` line per arm (``main.py``'s, with ``test_bpc``),
the time the same regularized training would take as the ``nn.LSTMCell`` loop users write (a few timed
batches, extrapolated, labelled as such), writes one plot of both arms' training and validation curves
(``<out-dir>/comparison.png``) and ends with a sentence worded from the numbers.
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
from main import PRESETS, SMOKE  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # tqdm is optional: without it each arm prints a line per epoch
    tqdm = None

ARMS = ("rnnfused", "torch")
NAMES = {"rnnfused": "rnnfused.LSTM", "torch": "torch.nn.LSTM"}
# --smoke: main.py's tiny CI model on a few thousand characters, one layer so the cell loop is timed too.
SMOKE_ARGS = ["--smoke", "--char", "--train-chars", "20000", "--valid-chars", "5000", "--test-chars", "5000",
              "--nlayers", "1", "--candidate-dropout", "0", "--time-cell-loop", "2"]
EPOCH_LINE = re.compile(r"^epoch\s+(\d+) \| train (\w+)\s+([\d.]+) \| valid \w+\s+([\d.]+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--seed", type=int, default=1, help="the seed of both arms (masks, initialisation, batches)")
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's (the tuned budget)")
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
    return args


class Arm:
    """One training process: its command, its log, and what it has printed so far."""

    def __init__(self, lstm: str, args, out_dir: Path, threads: int, position: int):
        self.lstm = lstm
        self.run_dir = out_dir / lstm
        self.log_path = out_dir / f"{lstm}.log"
        config = SMOKE_ARGS if args.smoke else ["--preset", "char-demo"]
        cmd = [sys.executable, str(HERE / "main.py"), *config, "--lstm", lstm, "--seed", str(args.seed),
               "--name", f"char-demo-{lstm}", "--out-dir", str(self.run_dir), "--no-progress"]
        if args.epochs is not None:
            cmd += ["--epochs", str(args.epochs)]
        if args.time_cell_loop is not None:
            cmd += ["--time-cell-loop", str(args.time_cell_loop)]
        self.cmd = cmd
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                     env=env)
        self.result: str | None = None
        self.epochs_total = args.epochs or (SMOKE["epochs"] if args.smoke else PRESETS["char-demo"]["epochs"])
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
                self._epoch(int(m.group(1)), m.group(2), float(m.group(3)), float(m.group(4)))
        self.log.close()

    def _epoch(self, epoch: int, unit: str, train: float, valid: float) -> None:
        if self.show:
            if self.bar is None:
                self.bar = tqdm(total=self.epochs_total, desc=f"{NAMES[self.lstm]:>14}", unit="epoch",
                                position=self.position, file=sys.stderr, dynamic_ncols=True, leave=True)
            self.bar.set_postfix_str(f"train {unit} {train:.3f}, valid {unit} {valid:.3f}", refresh=False)
            self.bar.update(epoch - self.bar.n)
        else:
            print(f"{NAMES[self.lstm]:>14} epoch {epoch:3d}: train {unit} {train:.3f}, valid {unit} {valid:.3f}",
                  flush=True)

    def wait(self) -> int:
        code = self.proc.wait()
        self.reader.join()
        if self.bar is not None:
            self.bar.close()
        return code


def budget_sentence(results: dict) -> str:
    """How the equal-epoch budget came out in seconds, worded from the two runs' training times."""
    ours, theirs = float(results["rnnfused"]["train_s"]), float(results["torch"]["train_s"])
    epochs = results["rnnfused"]["epochs"]
    if min(ours, theirs) <= 0:   # printed to 0.1 s: a smoke run's times can round to 0
        how = "too short to compare"
    elif ours > theirs:
        how = f"rnnfused.LSTM took {ours / theirs - 1:.0%} longer"
    elif ours < theirs:
        how = f"torch.nn.LSTM took {theirs / ours - 1:.0%} longer"
    else:
        how = "the two took the same time"
    return (f"Training time for the same {epochs} epochs: rnnfused.LSTM {ours:.0f} s, torch.nn.LSTM {theirs:.0f} s "
            f"({how}; side by side on one core each, evaluation not counted).")


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
    print(f"demo: training {NAMES['rnnfused']} (in-recurrence regularization) and {NAMES['torch']} (its best "
          f"regularization) side by side, {threads} thread(s) each, seed {args.seed}; logs in {out_dir}/",
          flush=True)
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
             f"{threads} thread(s) per arm")
    if compare.plot(runs, plot, title):
        print(f"plot: {plot}")
    print(budget_sentence(results))
    loop = cell_loop_sentence(results["rnnfused"])
    if loop:
        print(loop)
    print(compare.sentence(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
