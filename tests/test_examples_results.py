"""The examples' results pipeline: record.py keeps a command's RESULT line with its provenance, and the
README's results section is exactly what report.py renders from the committed files (nothing typed)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    # Under a name of its own: benchmarks/ has a report.py too, and a bare ``import report`` would
    # leave whichever came first in sys.modules for the other test file.
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


record = _load("record")
report = _load("report")


def test_parse_result_takes_the_last_result_line():
    out = "epoch 1\nRESULT a=1 b=x\nnoise\nRESULT a=2 plot=runs/p.png\n"
    assert record.parse_result(out) == {"a": "2", "plot": "runs/p.png"}
    with pytest.raises(ValueError, match="no RESULT"):
        record.parse_result("epoch 1\n")


def test_record_keeps_the_fields_the_wall_time_and_the_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    plot = tmp_path / "p.png"
    plot.write_bytes(b"\x89PNG fake")
    code = f"print('hello'); print('RESULT example=x lstm=torch test_acc=0.5 plot={plot}')"
    entry = record.record("x-torch", [sys.executable, "-c", code], cwd=tmp_path)
    saved = json.loads((tmp_path / "results" / "x-torch.json").read_text())
    assert saved == entry
    assert saved["result"]["test_acc"] == "0.5" and saved["wall_s"] >= 0
    for key in ("commit", "date", "machine", "cpus", "load_avg_before", "load_avg_after", "torch", "threads"):
        assert key in saved, key
    assert (tmp_path / "results" / "x-torch.png").read_bytes() == b"\x89PNG fake"


def test_record_refuses_a_failed_command(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    with pytest.raises(SystemExit, match="exited with 3"):
        record.record("bad", [sys.executable, "-c", "print('RESULT a=1'); raise SystemExit(3)"], cwd=tmp_path)
    assert not (tmp_path / "results").exists()


def test_readme_results_section_is_generated_from_the_committed_files():
    text = (ROOT / "README.md").read_text()
    begin, end = text.index(report.BEGIN) + len(report.BEGIN), text.index(report.END)
    assert text[begin:end].strip("\n") == report.readme_section(ROOT, draw=False).strip("\n")


def test_report_says_when_nothing_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    section = report.readme_section(tmp_path, draw=False)
    assert section.count("_No recorded run yet._") == 3
