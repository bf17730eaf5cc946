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


def test_demo_trains_both_arms_side_by_side_and_compares_them(tmp_path):
    """``make demo``'s script: two RESULT lines (one per arm, bits per character, the same seed), the
    nn.LSTMCell-loop estimate, one plot of both arms and a sentence naming the lower test figure."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, str(LM / "demo.py"), "--smoke", "--seed", "7", "--no-progress",
                           "--out-dir", str(out)], cwd=tmp_path, env=example_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    fields = [dict(kv.split("=", 1) for kv in line.split()[1:]) for line in lines]
    assert [f["lstm"] for f in fields] == ["rnnfused", "torch"]
    assert all(f["seed"] == "7" and f["level"] == "char" and math.isfinite(float(f["test_bpc"])) for f in fields)
    assert float(fields[0]["cell_loop_train_s_est"]) >= 0 and "cell_loop_train_s_est" not in fields[1]
    if float(fields[0]["train_s"]) > 0:               # printed to 0.1 s: a smoke run's can round to 0
        assert "nn.LSTMCell loop users write today would take about" in proc.stdout
    assert "Training time for the same 2 epochs: rnnfused.LSTM" in proc.stdout
    assert "rnnfused.LSTM epoch   1:" in proc.stdout and "torch.nn.LSTM epoch   2:" in proc.stdout
    assert (out / "comparison.png").stat().st_size > 0
    for arm in ("rnnfused", "torch"):
        assert (out / arm / "history.json").exists() and "RESULT" in (out / f"{arm}.log").read_text()
    last = proc.stdout.strip().splitlines()[-1]
    assert "Lower test bits per character" in last or "tie on test bits per character" in last


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--epochs", "-1")])
def test_demo_names_a_bad_argument(tmp_path, flag, value):
    proc = subprocess.run([sys.executable, str(LM / "demo.py"), flag, value], cwd=tmp_path, env=example_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{flag} must be at least 1" in proc.stderr


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
