"""The benchmark harness runs: benchmarks/run.py on one tiny config into a temporary directory writes
a results JSON with the promised schema plus its table and plot, and report.py regenerates only the
README text between the perf markers from it. Timings themselves are not checked.

The scripts run in this process (their main(argv)), which saves a second torch import.
"""

import importlib
import json
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
