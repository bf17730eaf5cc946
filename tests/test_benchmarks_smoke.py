"""The benchmark harness runs: benchmarks/run.py on one tiny config, for the LSTM and the GRU, into a
temporary directory writes a results JSON with the promised schema plus its tables and one plot per cell,
and report.py regenerates only the README text between the perf markers from it, one table per cell; the
layer-normalized LSTM (--cell lnlstm) the same, against nn.LSTM. Timings themselves are not checked. Also:
the cell loops the benchmarks time compute the torch modules' function when every rate is 0 (the LN-LSTM
loop: the reference's LN-LSTM), so they are the loops they claim to be.

The scripts run in this process (their main(argv)), which saves a second torch import.
"""

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import rnnfused

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
BASELINES = {"lstm": "nn.LSTM", "gru": "nn.GRU"}


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py, report.py and variants.py as modules (they import their siblings by plain name)."""
    sys.path.insert(0, str(BENCH))
    try:
        return tuple(importlib.import_module(name) for name in ("run", "report", "variants"))
    finally:
        sys.path.remove(str(BENCH))


def test_run_writes_results_json_tables_and_plots(tmp_path, bench):
    run, report, _ = bench
    run.main(["--device", "cpu", "--configs", "4,2,8,8", "--repeats", "2", "--warmup", "1",
              "--no-compile", "--threads", "1", "--out", str(tmp_path)])       # --cell both, the default
    files = sorted(p.name for p in tmp_path.iterdir())
    [json_name] = [f for f in files if f.endswith(".json")]
    assert json_name.startswith("cpu-")
    stem = json_name[:-len(".json")]
    assert {stem + ".md", stem + ".png", stem + "-gru.png"} <= set(files)       # one plot per cell

    result = json.loads((tmp_path / json_name).read_text())
    for key in ("device", "torch", "cuda", "commit", "date", "command", "threads", "results",
                "nn_lstm_backend", "nn_gru_backend"):
        assert key in result, key
    assert result["cuda"] is None and result["threads"] == 1 and result["device"] and result["complete"]
    assert result["cells"] == ["lstm", "gru"] and set(result["variants"]) == {"lstm", "gru"}
    for cell, base in BASELINES.items():
        rows = [r for r in result["results"] if r["cell"] == cell]
        timed = {r["variant"] for r in rows}
        skipped = {s["variant"] for s in result["skipped"] if s["cell"] == cell}
        assert {base, "cell-loop-reg"} <= timed and "compile-loop-reg" in skipped, (cell, timed, skipped)
        if hasattr(rnnfused, base[3:]):           # built: the fused variants must run, not fail
            assert {"rnnfused", "rnnfused-reg"} <= timed, [s for s in result["skipped"] if s["cell"] == cell]
        assert timed | skipped == set(result["variants"][cell]) and not timed & skipped  # each one accounted for
        for r in rows:
            assert r["config"] == {"T": 4, "B": 2, "I": 8, "H": 8}
            assert r["dtype"] == "float32"
            for mode in ("fwd_ms", "fwdbwd_ms"):
                stat = r[mode]
                assert stat["p25"] <= stat["median"] <= stat["p75"] and stat["median"] > 0
                assert stat["n"] == 2
            assert r["peak_mem_mb"] is None  # not measured on the CPU
            assert set(r[f"vs_nn_{cell}"]) == {"fwd", "fwdbwd"}
        baseline = next(r for r in rows if r["variant"] == base)
        assert baseline[f"vs_nn_{cell}"] == {"fwd": 1.0, "fwdbwd": 1.0}

    readme = tmp_path / "README.md"
    readme.write_text("# title\n<!-- perf:begin -->\nold text\n<!-- perf:end -->\ntail\n")
    report.main(["--readme", str(readme), str(tmp_path / json_name)])
    text = readme.read_text()
    assert text.startswith("# title\n<!-- perf:begin -->\n") and text.endswith("<!-- perf:end -->\ntail\n")
    assert "old text" not in text and f"{stem}.png" in text and f"{stem}-gru.png" in text
    lstm, gru = text.index("#### CPU LSTM: time per call, and ratio to nn.LSTM"), text.index("#### CPU GRU:")
    assert lstm < gru and "| nn.LSTM |" in text[lstm:gru] and "| nn.GRU |" in text[gru:]
    assert "nn.GRU" not in text[lstm:gru] and "nn.LSTM" not in text[gru:]
    assert "| fwd vs nn.GRU |" in text[gru:]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_loop_without_regularization_is_the_torch_module(bench, cell):
    """CellLoop with every rate 0 computes nn.LSTM's / nn.GRU's outputs, final state and gradients;
    with rates on it still runs forward and backward, and eval mode is deterministic."""
    _, _, variants = bench
    kind = variants.CELLS[cell]
    ref = variants.reference(kind, 5, 3, 4, 6, dtype=torch.float64, device="cpu")
    loop = variants.CellLoop(kind, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(loop.cell, name).copy_(getattr(ref, name + "_l0"))
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    out_ref, state_ref = ref(x)
    out, state = loop(x)
    torch.testing.assert_close(out, out_ref)
    for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (state, state_ref))):
        torch.testing.assert_close(a, b)
    g = torch.randn_like(out)
    grads_ref = torch.autograd.grad(out_ref, [x, ref.weight_hh_l0], g)
    grads = torch.autograd.grad(out, [x, loop.cell.weight_hh], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)

    reg = variants.build("cell-loop-reg", ref, kind)
    out, _ = reg(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    reg.eval()
    torch.testing.assert_close(reg(x)[0], reg(x)[0])


def test_run_of_the_layer_normalized_lstm_compares_it_with_nn_lstm(tmp_path, bench):
    run, report, variants = bench
    run.main(["--device", "cpu", "--cell", "lnlstm", "--configs", "4,2,8,8", "--repeats", "2", "--warmup", "1",
              "--no-compile", "--threads", "1", "--out", str(tmp_path)])
    [json_path] = tmp_path.glob("*.json")
    assert json_path.name.endswith("-lnlstm.json")
    stem = str(json_path)[:-len(".json")]
    assert os.path.exists(stem + ".md") and os.path.exists(stem + ".png")
    result = json.loads(json_path.read_text())
    assert result["cells"] == ["lnlstm"] and "nn_lnlstm_backend" in result
    assert "layer_norm=True" in result["variants"]["lnlstm"]["rnnfused-reg"]
    timed = {r["variant"] for r in result["results"]}
    skipped = {s["variant"]: s["reason"] for s in result["skipped"]}
    assert {"nn.LSTM", "cell-loop-reg"} <= timed and "compile-loop-reg" in skipped
    if hasattr(torch.ops.rnnfused, "ln_lstm_forward"):    # built with the LN-LSTM: its variants must run
        assert {"rnnfused", "rnnfused-reg"} <= timed, skipped
    assert timed | set(skipped) == set(result["variants"]["lnlstm"])
    for r in result["results"]:
        assert r["cell"] == "lnlstm" and set(r["vs_nn_lstm"]) == {"fwd", "fwdbwd"}
    assert next(r for r in result["results"] if r["variant"] == "nn.LSTM")["vs_nn_lstm"] == {"fwd": 1.0,
                                                                                            "fwdbwd": 1.0}
    readme = tmp_path / "README.md"
    readme.write_text("<!-- perf:begin -->\n<!-- perf:end -->\n")
    report.main(["--readme", str(readme), str(json_path)])
    text = readme.read_text()
    assert "#### CPU LN-LSTM: time per call, and ratio to nn.LSTM" in text and "| fwd vs nn.LSTM |" in text
    assert "| cell-loop-reg |" in text and "×" in text.split("| cell-loop-reg |")[1].splitlines()[0]
    assert run._harness.cells_of("all") == ["lstm", "gru", "lnlstm"]
    assert run._harness.cells_of("both") == ["lstm", "gru"]


def test_run_packed_times_padded_against_packed_for_the_baseline_and_rnnfused(tmp_path, bench):
    run, report, variants = bench
    run.main(["--device", "cpu", "--packed", "--configs", "8,3,8,8", "--repeats", "2", "--warmup", "1",
              "--no-compile", "--threads", "1", "--out", str(tmp_path)])
    [json_path] = tmp_path.glob("*.json")
    assert json_path.name.endswith("-packed.json")
    result = json.loads(json_path.read_text())
    assert "uniform in [T/4, T]" in result["packed_lengths"]
    for cell, base in BASELINES.items():
        rows = {r["variant"]: r for r in result["results"] if r["cell"] == cell}
        want = {base, base + "-packed", "rnnfused-reg", "rnnfused-reg-packed", "rnnfused-reg-lengths"}
        assert set(result["variants"][cell]) == want          # opt-in: nothing else unless --variants asks
        assert set(rows) == want, [s for s in result["skipped"] if s["cell"] == cell]
        for name in (base + "-packed", "rnnfused-reg-packed", "rnnfused-reg-lengths"):
            assert set(rows[name]["vs_padded"]) == {"fwd", "fwdbwd"} and rows[name]["vs_padded"]["fwd"] > 0
        assert "vs_padded" not in rows["rnnfused-reg"]
    # The table gives each variable-length variant's speed-up over its padded variant.
    md = report.run_table(result, "lstm")
    assert "| fwd+bwd speed-up over padded |" in md and "'-lengths' rows: the same lengths" in md
    line = next(l for l in md.splitlines() if "| rnnfused-reg-lengths |" in l)
    speedup = 1 / next(r for r in result["results"] if r["cell"] == "lstm"
                       and r["variant"] == "rnnfused-reg-lengths")["vs_padded"]["fwdbwd"]
    assert f"| {speedup:.2f}x |" in line
    assert run.DEMO_CONFIG in run.CONFIGS["cpu"]             # the main job's shape, padded and packed
    # The default run does not time the packed variants.
    assert not any(n.endswith("-packed") for n in variants.variants(variants.CELLS["lstm"]))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_packed_variants_compute_the_padded_batch_cut_at_its_lengths(bench, cell):
    """The '-packed' wrapper feeds the module a PackedSequence of packed_lengths(T, B) and pads the output back:
    nn.<Cell> and rnnfused (every rate 0) agree on it, and each length is honoured (zeros past it)."""
    _, _, variants = bench
    kind = variants.CELLS[cell]
    T, B = 9, 4
    ref = variants.reference(kind, T, B, 5, 6, dtype=torch.float64, device="cpu")
    lengths = variants.packed_lengths(T, B)
    assert lengths.min() >= T // 4 and lengths.max() <= T
    x = torch.randn(T, B, 5, dtype=torch.float64)
    want, _ = variants.build(kind.baseline + "-packed", ref, kind)(x)
    got, _ = variants.Packed(variants.build("rnnfused", ref, kind))(x)
    torch.testing.assert_close(got, want)
    # The '-lengths' form (padded batch, lengths to rnnfused's forward) computes the same.
    got, _ = variants.Packed(variants.build("rnnfused", ref, kind), form="lengths")(x)
    torch.testing.assert_close(got, want)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(want[n:, b] == 0) and torch.all(want[:n, b] != 0)


def test_layer_normalized_cell_loop_without_regularization_is_the_reference_ln_lstm(bench):
    """The LN-LSTM loop with every rate 0 computes SPEC §2c's LN-LSTM (rnnfused.reference with the loop's
    gains), outputs, final state and gradients; with rates on it runs forward and backward."""
    _, _, variants = bench
    kind = variants.CELLS["lnlstm"]
    assert kind.baseline == "nn.LSTM" and kind.ratio_key == "vs_nn_lstm"
    loop = variants.CellLoop(kind, 4, 6, dtype=torch.float64)
    with torch.no_grad():
        for p in loop.parameters():
            p.normal_()
    c = loop.cell
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    out, (h_n, c_n) = loop(x)
    zeros = x.new_zeros(3, 6)
    want = rnnfused.reference.lstm_layer(x, zeros, zeros, c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh,
                                         ln_weight_ih=c.ln_weight_ih, ln_weight_hh=c.ln_weight_hh,
                                         ln_weight_c=c.ln_weight_c, ln_bias_c=c.ln_bias_c)
    for a, b in zip((out, h_n[0], c_n[0]), want):
        torch.testing.assert_close(a, b)
    params = [x] + list(loop.parameters())
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(want[0], params, g)):
        torch.testing.assert_close(a, b)

    ref = variants.reference(kind, 5, 3, 4, 6, dtype=torch.float64, device="cpu")
    reg = variants.build("cell-loop-reg", ref, kind)
    assert torch.all(reg.cell.ln_weight_ih == 1) and torch.equal(reg.cell.weight_hh, ref.weight_hh_l0)
    out, _ = reg(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in reg.parameters())


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
    run, _, _ = bench
    assert run.variants.require_subject(["nn.LSTM", "cell-loop-reg"]) is None
    assert run.variants.require_subject(["nn.LSTM", "rnnfused-reg"]).startswith(run.variants.import_rnnfused().__version__)


def test_cuda_tables_say_the_tf32_setting_and_show_host_time_and_kernels(tmp_path, bench):
    # The GPU-only fields (host enqueue time, kernels per call, TF32), rendered from a results file
    # shaped as run.py writes it on CUDA; the values are placeholders for the table's layout only.
    _, report, _ = bench
    stat = {"median": 2.0, "p25": 1.5, "p75": 2.5, "n": 3}
    rows = [{"config": {"T": 4, "B": 2, "I": 8, "H": 8}, "dtype": "float32", "cell": "lstm", "variant": name,
             "fwd_ms": stat, "fwdbwd_ms": stat, "fwd_host_ms": stat, "fwdbwd_host_ms": dict(stat, median=1.25),
             "fwd_gpu_work": {"kernels": 7, "copies": 0}, "fwdbwd_gpu_work": {"kernels": 1234, "copies": 2},
             "peak_mem_mb": 3.0, "vs_nn_lstm": {"fwd": 1.0, "fwdbwd": 1.0}} for name in ("nn.LSTM", "rnnfused-reg")]
    header = dict(kind="kernels", device="GPU X", device_type="cuda", torch="2.11.0", cuda="13.0", cudnn=91000,
                  commit="abc", date="2026-12-03T00:00:00+00:00", command="python3 benchmarks/run.py", threads=1,
                  python="3.12", dtype="float32", quick=False, results=rows, skipped=[], wall_s=1.0)
    files = []
    for tf32 in ("off", "on"):
        path = tmp_path / f"cuda-gpu-x-2026-12-03-lstm{'-tf32' if tf32 == 'on' else ''}.json"
        path.write_text(json.dumps(dict(header, tf32=tf32)))
        files.append(str(path))
        table = report.run_table(json.loads(path.read_text()), "lstm")
        assert f"float32 with TF32 {tf32} for both" in table
        assert "| fwd+bwd host enqueue ms | kernels per fwd+bwd |" in table
        assert "| 1.25 | 1234 |" in table
    # The README keeps one table per TF32 setting, each headed by it.
    readme = tmp_path / "README.md"
    readme.write_text("<!-- perf:begin -->\n<!-- perf:end -->\n")
    report.main(["--readme", str(readme)] + files)
    text = readme.read_text()
    assert "#### CUDA LSTM, float32, TF32 off:" in text and "#### CUDA LSTM, float32, TF32 on:" in text
    assert sorted(report.newest(files)) == sorted((p, "lstm") for p in files)
