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
    [entry] = record.record("x-torch", [sys.executable, "-c", code], cwd=tmp_path)
    saved = json.loads((tmp_path / "results" / "x-torch.json").read_text())
    assert saved == entry
    assert saved["result"]["test_acc"] == "0.5" and saved["wall_s"] >= 0
    for key in ("commit", "date", "machine", "cpus", "load_avg_before", "load_avg_after", "torch", "threads"):
        assert key in saved, key
    assert (tmp_path / "results" / "x-torch.png").read_bytes() == b"\x89PNG fake"


def test_record_splits_several_result_lines_by_a_field(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "RESULTS", tmp_path / "results")
    code = "print('RESULT lstm=rnnfused test_bpc=2.1'); print('between'); print('RESULT lstm=torch test_bpc=2.2')"
    entries = record.record("demo-{lstm}-s3", [sys.executable, "-c", code], cwd=tmp_path, keep_plot=False)
    assert [e["name"] for e in entries] == ["demo-rnnfused-s3", "demo-torch-s3"]
    for arm, bpc in (("rnnfused", "2.1"), ("torch", "2.2")):
        saved = json.loads((tmp_path / "results" / f"demo-{arm}-s3.json").read_text())
        assert saved["result"] == {"lstm": arm, "test_bpc": bpc}
    with pytest.raises(SystemExit, match="no field 'seed'"):
        record.record("demo-{seed}", [sys.executable, "-c", code], cwd=tmp_path)
    with pytest.raises(SystemExit, match="same file"):
        record.record("demo-{test_bpc}x{lstm}", [sys.executable, "-c", code.replace("2.2", "2.1").replace("torch", "rnnfused")],
                      cwd=tmp_path)


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
    assert section.count("_No recorded run yet._") == 4


def _fake(results: Path, name: str, seed: int, **fields):
    arm = "" if fields["lstm"] == "rnnfused" else " --lstm torch"
    entry = dict(name=name, command=f"python3 x.py --seed {seed}{arm}", wall_s=10.0 + seed, built_extension=False,
                 commit="abc", date="2026-12-03T10:00:00+00:00", machine="CPU", cpus=2, load_avg_before=0.5,
                 load_avg_after=1.0, python="3.11", torch="2.13.0", threads=1,
                 result={"seed": str(seed), **{k: str(v) for k, v in fields.items()}})
    (results / f"{name}.json").write_text(json.dumps(entry))


def test_report_takes_mean_and_std_over_seeds_and_compares_seed_by_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for seed, ours, theirs in ((1, 13.0, 12.0), (2, 11.0, 12.5), (3, 12.0, 14.0)):
        _fake(tmp_path, f"sunspots-rnnfused-s{seed}", seed, lstm="rnnfused", lstm_mae=ours)
        _fake(tmp_path, f"sunspots-torch-s{seed}", seed, lstm="torch", lstm_mae=theirs)
    _fake(tmp_path, "sunspots-torch-sx", 9, lstm="torch", lstm_mae=99.0)   # not a seed file: ignored
    section = report.readme_section(tmp_path, draw=False)
    # rnnfused: 13, 11, 12 -> 12.00 ± 1.00; torch: 12, 12.5, 14 -> 12.83 ± 1.04
    assert "| rnnfused.LSTM | 3 | 12.00 ± 1.00 |" in section
    assert "| torch.nn.LSTM | 3 | 12.83 ± 1.04 |" in section
    assert "better test MAE in 2 of 3 seeds" in section
    assert "+1.00, -1.50, -2.00" in section
    assert "`python3 x.py --seed S` (S = 1, 2, 3)" in section


def test_report_says_plainly_when_the_regularized_arm_loses_every_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for seed in (1, 2):
        _fake(tmp_path, f"digits-rnnfused-s{seed}", seed, lstm="rnnfused", test_acc=0.95)
        _fake(tmp_path, f"digits-torch-s{seed}", seed, lstm="torch", test_acc=0.97)
    section = report.readme_section(tmp_path, draw=False)
    assert "torch.nn.LSTM has the better test accuracy in every one of the 2 seeds: the regularized arm does not win" in section
