"""The benchmark harness runs: benchmarks/run.py on one tiny config into a temporary directory writes
a results JSON with the promised schema plus its table and plot, and report.py regenerates only the
README text between the perf markers from it. Timings themselves are not checked.

The scripts run in this process (their main(argv)), which saves a second torch import.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py and report.py as modules (they import their siblings by plain name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("run"), importlib.import_module("report")
    finally:
        sys.path.remove(str(BENCH))


def test_run_writes_results_json_table_and_plot(tmp_path, bench):
    run, report = bench
    run.main(["--device", "cpu", "--configs", "4,2,8,8", "--repeats", "2", "--warmup", "1",
              "--no-compile", "--threads", "1", "--out", str(tmp_path)])
    files = sorted(p.name for p in tmp_path.iterdir())
    [json_name] = [f for f in files if f.endswith(".json")]
    assert json_name.startswith("cpu-")
    stem = json_name[:-len(".json")]
    assert stem + ".md" in files and stem + ".png" in files

    result = json.loads((tmp_path / json_name).read_text())
    for key in ("device", "torch", "cuda", "commit", "date", "command", "threads", "results"):
        assert key in result, key
    assert result["cuda"] is None and result["threads"] == 1 and result["device"]
    timed = {r["variant"] for r in result["results"]}
    skipped = {s["variant"] for s in result["skipped"]}
    assert {"nn.LSTM", "cell-loop-reg"} <= timed and "compile-loop-reg" in skipped
    assert timed | skipped == set(result["variants"]) and not timed & skipped  # each one accounted for
    for r in result["results"]:
        assert r["config"] == {"T": 4, "B": 2, "I": 8, "H": 8}
        assert r["dtype"] == "float32"
        for mode in ("fwd_ms", "fwdbwd_ms"):
            stat = r[mode]
            assert stat["p25"] <= stat["median"] <= stat["p75"] and stat["median"] > 0
            assert stat["n"] == 2
        assert r["peak_mem_mb"] is None  # not measured on the CPU
    baseline = next(r for r in result["results"] if r["variant"] == "nn.LSTM")
    assert baseline["vs_nn_lstm"] == {"fwd": 1.0, "fwdbwd": 1.0}

    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- perf:begin -->\nold text\n<!-- perf:end -->\ntail\n")
    report.main(["--readme", str(readme), str(tmp_path / json_name)])
    text = readme.read_text()
    assert text.startswith("# title\n<!-- perf:begin -->\n") and text.endswith("<!-- perf:end -->\ntail\n")
    assert "old text" not in text and "| nn.LSTM |" in text and f"{stem}.png" in text


def test_run_without_an_importable_rnnfused_stops_and_writes_nothing(tmp_path):
    # An unbuilt copy of the package first on the path, as a fresh checkout would be.
    import shutil
    import subprocess

    import rnnfused

    unbuilt = tmp_path / "src" / "rnnfused"
    shutil.copytree(Path(rnnfused.__file__).parent, unbuilt,
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__", "data"))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--device", "cpu", "--configs", "4,2,8,8",
                           "--repeats", "1", "--warmup", "0", "--no-compile", "--out", str(out)],
                          env=dict(os.environ, PYTHONPATH=str(unbuilt.parent)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "cannot import rnnfused" in proc.stderr and "make build" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_only_the_rnnfused_variants_need_rnnfused(bench):
    run, _ = bench
    assert run.variants.require_subject(["nn.LSTM", "cell-loop-reg"]) is None
    assert run.variants.require_subject(["nn.LSTM", "rnnfused-reg"]).startswith(run.variants.import_rnnfused().__version__)
