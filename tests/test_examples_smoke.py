"""The examples run: each one's --smoke mode end to end in a subprocess, into a temporary directory.

Each run must exit 0, print its ``RESULT key=value ...`` line (saying which cell and library it used) and
write its plot; the digits and forecasting examples also run with ``--cell gru``, with rnnfused.GRU and
with torch.nn.GRU, and the forecasting folder's encoder-decoder (``seq2seq.py``) with both LSTMs. Examples
whose optional dependency is missing (scikit-learn, statsmodels) are skipped with the reason. Also checks
the WikiText-2 copy that ships inside the package loads with the published token counts.
"""

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnfused

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LM = EXAMPLES / "word_language_model"


def example_env() -> dict:
    """The environment of an example's process: it imports the rnnfused these tests import (this checkout's,
    built in place, goes on PYTHONPATH; an installed one is found as it is)."""
    env = dict(os.environ)
    if Path(rnnfused.__file__).resolve().parents[1] == ROOT:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")        # tiny models: threads only add overhead
    env["MPLBACKEND"] = "Agg"
    return env


def run_example(script: Path, *args: str, cwd: Path, timeout: float = 240, launcher=()) -> dict:
    proc = subprocess.run([*(launcher or [sys.executable]), str(script), *args], cwd=cwd, env=example_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script.name} {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, f"expected one RESULT line, got:\n{proc.stdout}"
    fields = dict(kv.split("=", 1) for kv in results[0].split()[1:])
    fields["stdout"] = proc.stdout
    return fields


def needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None,
                              reason=f"this example needs {module} (pip install {module.replace('sklearn', 'scikit-learn')})")


def test_wikitext2_ships_inside_the_package_with_its_license():
    from rnnfused.data import WIKITEXT2_DIR, Corpus, batchify

    readme = (WIKITEXT2_DIR / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "Merity" in readme
    corpus = Corpus()
    assert len(corpus.dictionary) == 33278
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (2088628, 217646, 245569)
    assert corpus.train.dtype == torch.long
    eos = corpus.dictionary.word2idx["<eos>"]
    assert corpus.test[-1].item() == eos
    batched = batchify(corpus.valid, 10)
    assert batched.shape == (217646 // 10, 10)
    assert torch.equal(batched[:, 1], corpus.valid[217646 // 10: 2 * (217646 // 10)])   # columns are contiguous


def test_word_language_model_smoke_resume_and_generate(tmp_path):
    out = tmp_path / "lm"
    first = run_example(LM / "main.py", "--smoke", "--out-dir", str(out), "--no-progress", cwd=tmp_path)
    assert first["lstm"] == "rnnfused" and first["epochs"] == "2"
    assert math.isfinite(float(first["test_ppl"]))
    for name in ("checkpoint.pt", "model.pt", "learning_curve.png", "history.json"):
        assert (out / name).exists(), name

    resumed = run_example(LM / "main.py", "--smoke", "--out-dir", str(out), "--no-progress", "--resume",
                          "--epochs", "3", "--patience", "5", cwd=tmp_path)
    assert "resumed from" in resumed["stdout"] and resumed["epochs"] == "3"

    for lstm in ("rnnfused", "torch"):      # rnnfused-trained weights load into torch.nn.LSTM too
        proc = subprocess.run([sys.executable, str(LM / "generate.py"), "--checkpoint", str(out / "model.pt"),
                               "--words", "12", "--temperature", "0.8", "--lstm", lstm],
                              cwd=tmp_path, env=example_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert len(proc.stdout.split()) >= 6


def test_word_language_model_smoke_with_torch_lstm(tmp_path):
    result = run_example(LM / "main.py", "--smoke", "--lstm", "torch", "--out-dir", str(tmp_path / "lm"),
                         "--no-progress", cwd=tmp_path)
    assert result["lstm"] == "torch"
    assert "cannot apply" in result["stdout"]          # says which regularizers torch.nn.LSTM lacks


def test_word_language_model_smoke_with_layer_norm(tmp_path):
    out = tmp_path / "lm"
    result = run_example(LM / "main.py", "--smoke", "--layer-norm", "--epochs", "1", "--out-dir", str(out),
                         "--no-progress", cwd=tmp_path)
    assert (result["lstm"], result["layer_norm"]) == ("rnnfused", "1") and math.isfinite(float(result["test_ppl"]))
    assert "LN-LSTM (rnnfused)" in result["stdout"]
    assert any(k.startswith("rnns.0.ln_weight_ih_l0") for k in torch.load(out / "model.pt", weights_only=False)["model"])
    generate = [sys.executable, str(LM / "generate.py"), "--checkpoint", str(out / "model.pt"), "--words", "8"]
    proc = subprocess.run(generate, cwd=tmp_path, env=example_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.split()) >= 4, proc.stderr[-4000:]
    for refused in ([*generate, "--lstm", "torch"],                                     # torch has no layer norm
                    [sys.executable, str(LM / "main.py"), "--smoke", "--layer-norm", "--lstm", "torch"]):
        proc = subprocess.run(refused, cwd=tmp_path, env=example_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "layer norm" in proc.stderr, proc.stderr[-4000:]


def test_word_language_model_char_level_smoke_time_budget_and_generate(tmp_path):
    out = tmp_path / "lm"
    result = run_example(LM / "main.py", "--smoke", "--char", "--time-cell-loop", "2", "--candidate-dropout", "0",
                         "--out-dir", str(out), "--no-progress", cwd=tmp_path)   # the loop has no candidate dropout
    assert (result["lstm"], result["level"], result["epochs"]) == ("rnnfused", "char", "2")
    assert (result["time_budget_s"], result["max_epochs"], result["stopped_by"]) == ("0", "2", "epochs")
    assert result["train_chars"] == result["train_tokens"] and result["chars_per_s"] == result["train_tok_per_s"]
    assert 0.0 < float(result["test_bpc"]) < 10.0 and "test_ppl" not in result     # bits per character
    assert "character-level" in result["stdout"] and "valid bpc" in result["stdout"]
    assert "extrapolated from 2 timed batches" in result["stdout"] and float(result["cell_loop_train_s_est"]) >= 0
    history = json.loads((out / "history.json").read_text())
    assert all("valid_bpc" in h for h in history["history"]) and (out / "learning_curve.png").exists()
    proc = subprocess.run([sys.executable, str(LM / "generate.py"), "--checkpoint", str(out / "model.pt"),
                           "--words", "40", "--prompt", "The "], cwd=tmp_path, env=example_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("The ") and len(proc.stdout) >= 40, proc.stderr[-4000:]

    # --time-budget: training stops inside the first epoch, which is then evaluated; torch.nn.LSTM too.
    budget = run_example(LM / "main.py", "--smoke", "--char", "--lstm", "torch", "--time-budget", "0.001",
                         "--epochs", "5", "--max-batches", "0", "--no-variable-bptt", "--out-dir", str(tmp_path / "budget"),
                         "--no-progress", cwd=tmp_path)
    assert (budget["lstm"], budget["epochs"]) == ("torch", "1") and "time budget" in budget["stdout"]
    assert int(budget["train_tokens"]) == 4 * 30            # one batch: 4 columns x 30 characters
    assert math.isfinite(float(budget["test_bpc"]))
    assert (budget["time_budget_s"], budget["max_epochs"], budget["stopped_by"]) == ("0.001", "5", "time_budget")
    history = json.loads((tmp_path / "budget" / "history.json").read_text())
    [epoch] = history["history"]                             # the cut-short epoch, evaluated
    assert math.isfinite(epoch["valid_bpc"]) and epoch["train_seconds"] >= 0.001
    # The cosine follows the clock: the budget is used up, so the rate the epoch ended with is the floor,
    # though only 1 of the 5 epochs ran (keyed to epochs it would still be near the top).
    args = history["args"]
    assert epoch["lr"] == pytest.approx(args["lr"] * args["lr_min_ratio"])


def test_demo_trains_both_arms_side_by_side_for_the_same_seconds_and_says_who_won(tmp_path):
    """``make demo``'s script with --smoke's default budget of seconds: two RESULT lines (one per arm, bits per
    character, the same seed and budget, each ended by the clock), each arm's seconds, epochs, characters and
    characters per second, the throughput ratio, the nn.LSTMCell-loop estimate, one plot of both arms and a
    closing sentence saying which arm has the lower test figure at that budget."""
    demo = _lm_module("demo")
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(LM / "demo.py"), "--smoke", "--seed", "7", "--no-progress",
                           "--out-dir", str(out)], cwd=tmp_path, env=example_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    results = [line for line in lines if line.startswith("RESULT ")]
    fields = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in results]
    assert [f["lstm"] for f in fields] == ["rnnfused", "torch"]
    budget = f"{demo.SMOKE_TIME_BUDGET:g}"
    for f in fields:
        assert f["seed"] == "7" and f["level"] == "char" and math.isfinite(float(f["test_bpc"]))
        # The same seconds for both, ended by the clock (not by the epoch bound), at least the budget used.
        assert (f["time_budget_s"], f["stopped_by"]) == (budget, "time_budget")
        assert int(f["max_epochs"]) > int(f["epochs"]) >= 1
        assert float(f["train_s"]) >= demo.SMOKE_TIME_BUDGET and int(f["train_chars"]) > 0
    assert float(fields[0]["cell_loop_train_s_est"]) >= 0 and "cell_loop_train_s_est" not in fields[1]
    assert "nn.LSTMCell loop users write today would take about" in proc.stdout
    results_by_arm = {f["lstm"]: f for f in fields}

    assert f"Budget: {budget} s of training for each arm (evaluation not counted)" in proc.stdout
    for f in fields:                          # each arm's seconds, epochs, characters and throughput
        name = demo.NAMES[f["lstm"]]
        epochs = int(f["epochs"])
        assert (f"  {name}: {float(f['train_s']):.1f} s of training, {epochs} epoch{'s' if epochs > 1 else ''} "
                f"(the clock ended the last one), {int(f['train_chars']):,} training characters, "
                f"{float(f['chars_per_s']):,.0f} characters/s") in lines
        for epoch in range(1, epochs + 1):   # validation after every epoch, the cut-short one too
            assert f"{name:>14} epoch {epoch:3d}: train bpc" in proc.stdout
        history = json.loads((out / f["lstm"] / "history.json").read_text())
        assert len(history["history"]) == epochs and all(math.isfinite(h["valid_bpc"]) for h in history["history"])
        # The learning rate annealed fully within the seconds, whatever the epochs.
        assert history["history"][-1]["lr"] == pytest.approx(history["args"]["lr"] * history["args"]["lr_min_ratio"])
    ratio = float(fields[0]["chars_per_s"]) / float(fields[1]["chars_per_s"])
    assert f"Throughput ratio, regularized rnnfused.LSTM to unregularized torch.nn.LSTM: {ratio:.2f} " in proc.stdout
    assert (out / "comparison.png").stat().st_size > 0
    for arm in ("rnnfused", "torch"):
        assert (out / arm / "history.json").exists() and "RESULT" in (out / f"{arm}.log").read_text()

    ours, theirs = float(fields[0]["test_bpc"]), float(fields[1]["test_bpc"])
    last = lines[-1]
    assert last == demo.winner_sentence(results_by_arm) and last.startswith(f"At {budget} s of training each, ")
    if ours < theirs:
        assert "rnnfused.LSTM wins" in last
    elif theirs < ours:
        assert "torch.nn.LSTM wins" in last and "does not win at this budget" in last
    else:
        assert "the two tie" in last


def _lm_module(name: str):
    """examples/word_language_model/<name>.py, imported under a name of its own (its folder on sys.path, for
    the modules it imports: data, model, compare, ...)."""
    import importlib.util

    if str(LM) not in sys.path:
        sys.path.insert(0, str(LM))
    spec = importlib.util.spec_from_file_location(f"word_language_model_{name}", LM / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _arms(ours: dict, theirs: dict) -> dict:
    """Two RESULT lines' fields, as demo.py reads them (strings), with what a time-budgeted run prints."""
    base = dict(example="word_language_model", preset="char-demo", level="char", seed="1", epochs="24",
                train_s="250.1", time_budget_s="250", max_epochs="1000", stopped_by="time_budget")
    return {"rnnfused": {**base, "lstm": "rnnfused", **ours}, "torch": {**base, "lstm": "torch", **theirs}}


def test_demo_winner_sentence_names_the_lower_test_bpc_and_says_plainly_when_torch_wins():
    demo = _lm_module("demo")
    ours = demo.winner_sentence(_arms(dict(test_bpc="2.3050"), dict(test_bpc="2.3180")))
    assert ours == ("At 250 s of training each, rnnfused.LSTM wins: test 2.3050 bits per character against "
                    "torch.nn.LSTM's 2.3180, 0.0130 lower (one seed, not a significance test).")
    theirs = demo.winner_sentence(_arms(dict(test_bpc="2.3300"), dict(test_bpc="2.3180")))
    assert theirs.startswith("At 250 s of training each, torch.nn.LSTM wins: test 2.3180 bits per character "
                             "against rnnfused.LSTM's 2.3300, 0.0120 lower;")
    assert "the regularized rnnfused.LSTM does not win at this budget" in theirs and "rnnfused.LSTM wins" not in theirs
    tie = demo.winner_sentence(_arms(dict(test_bpc="2.3180"), dict(test_bpc="2.3180")))
    assert "the two tie: test 2.3180 bits per character each; neither wins" in tie and " wins:" not in tie
    # The budget in the sentence is the run's, worded from the numbers: seconds, or epochs.
    assert demo.winner_sentence(_arms(dict(test_bpc="2.3", time_budget_s="60"), dict(test_bpc="2.4"))).startswith(
        "At 60 s of training each,")
    epochs = _arms(dict(test_bpc="2.3", time_budget_s="0", epochs="12"), dict(test_bpc="2.4", time_budget_s="0"))
    assert demo.winner_sentence(epochs).startswith("At the same 12 epochs each, rnnfused.LSTM wins")


def test_demo_budget_lines_give_each_arms_seconds_epochs_characters_and_throughput_ratio():
    demo = _lm_module("demo")
    arms = _arms(dict(epochs="23", train_s="250.2", train_chars="2871000", chars_per_s="11475"),
                 dict(epochs="25", train_s="250.0", train_chars="3000000", chars_per_s="12000",
                      stopped_by="epochs"))
    head, ours, theirs, ratio = demo.budget_lines(arms, threads=1)
    assert head.startswith("Budget: 250 s of training for each arm (evaluation not counted), side by side, 1 "
                           "thread(s) each; each trained as many epochs as fit")
    assert ours == ("  rnnfused.LSTM: 250.2 s of training, 23 epochs (the clock ended the last one), 2,871,000 "
                    "training characters, 11,475 characters/s")
    assert theirs == ("  torch.nn.LSTM: 250.0 s of training, 25 epochs (the bound of 1000 epochs ended it before the "
                      "clock), 3,000,000 training characters, 12,000 characters/s")
    assert ratio == ("Throughput ratio, regularized rnnfused.LSTM to unregularized torch.nn.LSTM: 0.96 (training "
                     "characters per second; torch.nn.LSTM got through 5% more characters per second).")
    faster = demo.throughput_sentence(_arms(dict(chars_per_s="13200"), dict(chars_per_s="12000")))
    assert "1.10 (training characters per second; rnnfused.LSTM got through 10% more" in faster
    same = demo.throughput_sentence(_arms(dict(chars_per_s="12000"), dict(chars_per_s="12000")))
    assert ("1.00 (training characters per second; the two got through the same characters per second, within "
            "half a percent)") in same
    near = demo.throughput_sentence(_arms(dict(chars_per_s="12040"), dict(chars_per_s="12000")))
    assert "the same characters per second, within half a percent" in near   # not "0% more"
    # An epoch budget (--epochs without --time-budget): the same epochs, different seconds, said so.
    by_epochs = _arms(dict(time_budget_s="0", train_s="300.0", chars_per_s="10000"),
                      dict(time_budget_s="0", train_s="250.0", chars_per_s="12000", stopped_by="epochs",
                           train_chars="3000000"))
    lines = demo.budget_lines(by_epochs)
    assert lines[0] == "Budget: the same 24 epochs for each arm (not the same seconds), side by side."
    assert lines[2] == "  torch.nn.LSTM: 250.0 s of training, 24 epochs, 3,000,000 training characters, 12,000 characters/s"
    assert lines[-1].endswith("; for the same epochs rnnfused.LSTM took 20% longer).")
    # Older RESULT lines (before the clock) have no time_budget_s, chars_per_s or train_chars.
    old = {arm: {k: v for k, v in f.items() if k not in ("time_budget_s", "stopped_by")}
           for arm, f in _arms(dict(train_tokens="3000", train_tok_per_s="100"),
                               dict(train_tokens="3000", train_tok_per_s="125")).items()}
    assert demo.budget_lines(old)[0].startswith("Budget: the same 24 epochs")
    assert "3,000 training characters, 100 characters/s" in demo.budget_lines(old)[1]


def test_demo_sentences_of_a_smoke_run_whose_times_round_to_zero():
    demo = _lm_module("demo")
    arms = _arms(dict(train_s="0.0", epochs="1", train_chars="120", chars_per_s="0", time_budget_s="0.001",
                      test_bpc="5.1"),
                 dict(train_s="0.0", epochs="1", train_chars="120", chars_per_s="2400", time_budget_s="0.001",
                      test_bpc="5.2"))
    head, ours, theirs, ratio = demo.budget_lines(arms)
    assert head.startswith("Budget: 0.001 s of training for each arm")
    assert ours.endswith("1 epoch (the clock ended the last one), 120 training characters, characters/s not "
                         "measured (its time rounds to 0 s)")
    assert theirs.endswith("characters/s not measured (its time rounds to 0 s)")
    assert ratio == "Throughput: too short to compare (a training time rounds to 0 s)."
    assert demo.winner_sentence(arms).startswith("At 0.001 s of training each, rnnfused.LSTM wins: test 5.1000")
    assert demo.cell_loop_sentence(dict(train_s="0.0", cell_loop_train_s_est="0.3")) is None


def test_demo_command_is_a_time_budget_by_default_and_epochs_alone_are_the_old_budget(tmp_path):
    demo = _lm_module("demo")

    def command(*argv):
        cmd = demo.arm_command("torch", demo.parse_args(list(argv)), tmp_path)
        flags = {flag: cmd[cmd.index(flag) + 1] for flag in ("--time-budget", "--epochs") if flag in cmd}
        return flags, demo.budget_of(demo.parse_args(list(argv)))

    preset = demo.PRESETS["char-demo"]
    assert command() == ({}, (preset["time_budget"], demo.EPOCHS_UNDER_A_TIME_BUDGET))   # the preset's seconds
    assert command("--time-budget", "60") == ({"--time-budget": "60.0"}, (60.0, demo.EPOCHS_UNDER_A_TIME_BUDGET))
    assert command("--epochs", "24") == ({"--epochs": "24"}, (0.0, 24))               # the old epoch budget
    assert command("--time-budget", "60", "--epochs", "30") == ({"--time-budget": "60.0", "--epochs": "30"}, (60.0, 30))
    assert command("--time-budget", "0") == ({"--time-budget": "0.0"}, (0.0, preset["epochs"]))
    smoke = command("--smoke")
    assert smoke == ({"--time-budget": str(float(demo.SMOKE_TIME_BUDGET))},
                     (demo.SMOKE_TIME_BUDGET, demo.EPOCHS_UNDER_A_TIME_BUDGET))
    assert command("--smoke", "--epochs", "2") == ({"--epochs": "2"}, (0.0, 2))


def test_language_model_budget_flags_and_the_schedule_keyed_to_the_clock():
    """main.py: the char-demo preset's budget is seconds (as many epochs as fit), --epochs alone is a budget
    of epochs, and with a time budget the cosine's progress is the training seconds over the budget."""
    main = _lm_module("main")
    char = main.parse_args(["--preset", "char-demo"])
    assert (char.time_budget, char.epochs) == (main.PRESETS["char-demo"]["time_budget"], main.EPOCHS_UNDER_A_TIME_BUDGET)
    assert char.time_budget > 0 and char.schedule == "cosine"
    by_epochs = main.parse_args(["--preset", "char-demo", "--epochs", "24"])
    assert (by_epochs.time_budget, by_epochs.epochs) == (0.0, 24)
    both = main.parse_args(["--preset", "char-demo", "--epochs", "5", "--time-budget", "60"])
    assert (both.time_budget, both.epochs) == (60.0, 5)
    assert (main.parse_args(["--preset", "cpu-demo"]).time_budget, main.parse_args(["--smoke"]).time_budget) == (0.0, 0.0)

    lr, floor = char.lr, char.lr * char.lr_min_ratio
    # By the clock: half the seconds is half-way down the cosine whatever the epochs; the budget used up is
    # the floor even after one epoch.
    assert main.schedule_fraction(char, 3.0, 0.5 * char.time_budget) == pytest.approx(0.5)
    assert main.scheduled_lr(char, 1.0, 3.0, 0.5 * char.time_budget) == pytest.approx((lr + floor) / 2)
    assert main.scheduled_lr(char, 1.0, 20.0, 0.5 * char.time_budget) == pytest.approx((lr + floor) / 2)
    assert main.scheduled_lr(char, 1.0, 1.0, char.time_budget) == pytest.approx(floor)
    assert main.scheduled_lr(char, 1.0, 0.0, 0.0) == pytest.approx(lr)
    assert main.schedule_fraction(char, 0.0, 2 * char.time_budget) == 1.0            # past the end: the floor
    clock = [main.scheduled_lr(char, 1.0, 0.0, t) for t in torch.linspace(0, char.time_budget, 11).tolist()]
    assert all(a > b for a, b in zip(clock, clock[1:]))
    # Without a time budget the seconds do not matter: the epochs are the budget.
    assert main.scheduled_lr(by_epochs, 1.0, 12.0, 10_000.0) == pytest.approx((lr + floor) / 2)
    # Both limits: the rate reaches its floor at whichever ends the run first.
    assert main.schedule_fraction(both, 5.0, 1.0) == 1.0 and main.schedule_fraction(both, 1.0, 60.0) == 1.0
    assert main.schedule_fraction(both, 1.0, 30.0) == pytest.approx(0.5)


@pytest.mark.parametrize("flag, value, message", [("--threads", "0", "--threads must be at least 1"),
                                                  ("--epochs", "-1", "--epochs must be at least 1"),
                                                  ("--time-budget", "-1", "--time-budget must be at least 0")])
def test_demo_names_a_bad_argument(tmp_path, flag, value, message):
    proc = subprocess.run([sys.executable, str(LM / "demo.py"), flag, value], cwd=tmp_path, env=example_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


# The two small examples: directory, plot, and the RESULT fields that must be numbers in a range.
SMALL_EXAMPLES = [
    pytest.param("digits_classifier", "confusion_matrix.png", {"test_acc": (0.0, 1.0)},
                 marks=needs("sklearn"), id="digits"),
    pytest.param("forecasting", "forecast.png", {key: (0.0, math.inf) for key in
                 ("lstm_mae", "persistence_mae", "seasonal_mae", "lstm_rmse")},
                 marks=needs("statsmodels"), id="forecasting"),
]
CELLS = [(), ("--cell", "gru"), ("--cell", "gru", "--lstm", "torch")]   # () is the default: LSTM, rnnfused


@pytest.mark.parametrize("args", CELLS, ids=lambda a: " ".join(a) or "default")
@pytest.mark.parametrize("example, plot, ranges", SMALL_EXAMPLES)
def test_small_example_smoke(tmp_path, example, plot, ranges, args):
    result = run_example(EXAMPLES / example / "main.py", "--smoke", *args, "--out-dir", str(tmp_path), cwd=tmp_path)
    cell, lib = ("gru" if "gru" in args else "lstm"), ("torch" if "torch" in args else "rnnfused")
    assert (result["cell"], result["lstm"]) == (cell, lib)      # the RESULT line says which cell and library
    assert result["seed"] == "0"                                # and the seed, to group multi-seed records
    assert f"{lib} {cell.upper()}" in result["stdout"] or f"{cell.upper()} ({lib})" in result["stdout"]
    if lib == "torch":                                  # says which regularizers torch.nn.GRU lacks
        assert f"torch.nn.{cell.upper()} cannot apply" in result["stdout"]
    for key, (low, high) in ranges.items():
        assert low <= float(result[key]) <= high and math.isfinite(float(result[key])), (key, result[key])
    assert (tmp_path / plot).exists()


SEQ2SEQ_METHODS = ("seq2seq", "iterated", "seasonal", "persistence")


@needs("statsmodels")
@pytest.mark.parametrize("args", [(), ("--lstm", "torch")], ids=lambda a: " ".join(a) or "default")
def test_seq2seq_forecasting_smoke(tmp_path, args):
    result = run_example(EXAMPLES / "forecasting" / "seq2seq.py", "--smoke", *args, "--out-dir", str(tmp_path),
                         cwd=tmp_path)
    lib = "torch" if "torch" in args else "rnnfused"
    assert (result["example"], result["lstm"], result["seed"]) == ("seq2seq_forecasting", lib, "0")
    assert (result["horizon"], result["origins"]) == ("11", "30")     # 40 test years: origins 1969-1998
    assert f"{lib} LSTM encoder + decoder" in result["stdout"] and "MAE per horizon step" in result["stdout"]
    if lib == "torch":                                  # says which regularizers torch.nn.LSTM lacks
        assert "torch.nn.LSTM cannot apply" in result["stdout"]
    for method in SEQ2SEQ_METHODS:
        for metric in ("mae", "rmse"):
            value = float(result[f"{method}_{metric}"])
            assert 0.0 <= value < math.inf, (method, metric, value)
        assert float(result[f"{method}_mae"]) <= float(result[f"{method}_rmse"]) + 1e-6
    assert result["plot"] == str(tmp_path / "seq2seq.png") and (tmp_path / "seq2seq.png").exists()


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_word_language_model_runs_under_torchrun_with_two_processes(tmp_path, monkeypatch):
    # Everything stays on the loopback interface: the rendezvous and gloo's connections.
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    out = tmp_path / "lm"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_loopback_port()),
                "--local-addr", "127.0.0.1", "--max-restarts", "0"]
    result = run_example(LM / "main.py", "--smoke", "--out-dir", str(out), "--no-progress", "--epochs", "1",
                         cwd=tmp_path, launcher=torchrun)
    assert result["processes"] == "2" and result["epochs"] == "1"
    assert "data parallel: 2 processes (gloo), 2 of the 4 batch columns each" in result["stdout"]
    assert math.isfinite(float(result["test_ppl"]))
    assert (out / "checkpoint.pt").exists() and (out / "model.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    states = ckpt["torch_rng_per_rank"]
    assert len(states) == 2 and not torch.equal(states[0], states[1])   # each process its own masks
