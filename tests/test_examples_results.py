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


def _fake_demo(results: Path, seed: int, lstm: str, time_budget: float | None, **fields):
    """A recorded demo arm: with ``time_budget`` (seconds) as ``make demo`` records it now; with None as the
    records made before the budget was time (no time_budget_s, chars_per_s or train_chars fields)."""
    result = {**dict(example="word_language_model", preset="char-demo", lstm=lstm, level="char", seed=str(seed),
                     test_bpc="2.31", valid_bpc="2.27", train_tokens="3000000", train_tok_per_s="12000",
                     epochs="24", train_s="250.0"), **{k: str(v) for k, v in fields.items()}}
    if time_budget is not None:
        result.update(time_budget_s=f"{time_budget:g}", stopped_by="time_budget", max_epochs="1000",
                      train_chars=result["train_tokens"], chars_per_s=result["train_tok_per_s"])
    entry = dict(name=f"demo-{lstm}-s{seed}", command=f"make demo SEED={seed}", wall_s=380.0, built_extension=False,
                 commit="abc", date="2026-12-03T10:00:00+00:00", machine="CPU", cpus=2, load_avg_before=0.5,
                 load_avg_after=1.0, python="3.11", torch="2.13.0", threads=2, result=result,
                 args=dict(time_budget=time_budget or 0.0, dropouti=0.1, wdrop=0.2 if lstm == "rnnfused" else 0.0),
                 history=[dict(epoch=e, train_seconds=10.0 * e, train_bpc=2.5 - 0.01 * e, valid_bpc=2.6 - 0.01 * e)
                          for e in range(1, 4)])
    (results / f"demo-{lstm}-s{seed}.json").write_text(json.dumps(entry))


def _demo_note(section: str) -> str:
    return next(line for line in section.splitlines() if line.startswith("Mean ± standard deviation"))


def test_report_words_the_demo_budget_as_seconds_for_time_budgeted_records(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for seed, (ours, theirs) in enumerate([(("23", "11500"), ("24", "12000")), (("24", "11700"), ("25", "12500"))], 1):
        _fake_demo(tmp_path, seed, "rnnfused", 250, epochs=ours[0], train_tok_per_s=ours[1], test_bpc="2.30")
        _fake_demo(tmp_path, seed, "torch", 250, epochs=theirs[0], train_tok_per_s=theirs[1], test_bpc="2.32")
    section = report.readme_section(tmp_path, draw=False)
    note = _demo_note(section)
    assert "The budget is time: 250 s of training for each arm (evaluation not counted), side by side, one core each" in note
    assert "as many epochs as fit" in note and "recorded before" not in note and "mix two budgets" not in note
    # rnnfused 11500, 11700 -> 11600; torch 12000, 12500 -> 12250: 0.95x
    assert "rnnfused's regularized arm: 0.95x torch.nn.LSTM's unregularized training characters per second" in note
    assert "| 2 | 2.270 ± 0.000 | 2.300 ± 0.000 | 250 ± 0 | 23.5 ± 0.7 | 11,600 ± 141 |" in section   # epochs, chars/s
    assert "rnnfused.LSTM has the better test bits per character in every one of the 2 seeds" in section


def test_report_words_the_demo_budget_as_epochs_for_the_older_records(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for seed in (1, 2):
        _fake_demo(tmp_path, seed, "rnnfused", None, train_s="300.0", test_bpc="2.35")
        _fake_demo(tmp_path, seed, "torch", None, train_s="250.0", test_bpc="2.32")
    section = report.readme_section(tmp_path, draw=False)
    note = _demo_note(section)
    assert "The budget of these records is the same 24 epochs for both arms, not the same seconds" in note
    assert "recorded before `make demo` gave each arm the same seconds of training" in note
    assert "rnnfused's regularized arm: 1.20x torch.nn.LSTM's unregularized time" in note
    assert "The budget is time" not in note
    assert "| 250 ± 0 | 24.0 ± 0.0 | 12,000 ± 0 |" in section       # chars/s from train_tok_per_s
    assert "torch.nn.LSTM has the better test bits per character in every one of the 2 seeds" in section


def test_report_says_when_the_demo_records_mix_the_two_budgets(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for lstm in ("rnnfused", "torch"):
        _fake_demo(tmp_path, 1, lstm, None)
        _fake_demo(tmp_path, 2, lstm, 250)
    note = _demo_note(report.readme_section(tmp_path, draw=False))
    assert "These records mix two budgets" in note and "seeds 1 had the same epochs" in note
    assert "seeds 2 the same seconds of training (250 s)" in note


def test_report_plots_time_budgeted_demo_records_against_seconds(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    for lstm in ("rnnfused", "torch"):
        _fake_demo(tmp_path, 1, lstm, 250)
    arms = {arm: report.load_seeds("demo", arm) for arm in ("rnnfused", "torch")}
    assert report.plot_learning_curves(arms, tmp_path / "curves.png") and (tmp_path / "curves.png").stat().st_size > 0


def test_committed_demo_records_are_described_with_their_own_budget():
    """Whichever kind the committed demo records are (the same epochs, or the same seconds), the README's
    note says that kind."""
    arms = {arm: report.load_seeds("demo", arm) for arm in ("rnnfused", "torch")}
    entries = [e for es in arms.values() for e in es]
    if not entries:
        pytest.skip("no demo records committed")
    note = report.demo_budget_note(arms)
    kinds = {bool(report.time_budget(e)) for e in entries}
    if kinds == {False}:
        assert "not the same seconds" in note
    elif kinds == {True}:
        assert note.startswith("The budget is time:")
    else:
        assert "mix two budgets" in note
    assert note in (ROOT / "README.md").read_text()
