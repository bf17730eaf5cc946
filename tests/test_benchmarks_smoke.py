"""The benchmark harness runs: benchmarks/run.py on one tiny config, for the LSTM and the GRU, into a
temporary directory writes a results JSON with the promised schema plus its tables and one plot per cell,
and report.py regenerates only the README text between the perf markers from it, one table per cell; the
layer-normalized LSTM (--cell lnlstm) the same, against nn.LSTM. Timings themselves are not checked. Also:
the cell loops the benchmarks time compute the torch modules' function when every rate is 0 (the LN-LSTM
loop: the reference's LN-LSTM), so they are the loops they claim to be.

Every results file says which processor it was measured on (model, family and model number, vector ISA,
cores, threads, torch's oneDNN and MKL) and which GEMM backend rnnfused chose for each product at each
config (rnnfused.cpu_gemm; --gemm-backend pins one), and is named so that an AVX2-only EPYC's file never
replaces an AVX-512 one's; the README shows each processor's tables apart, says on which processors the
claims hold, and still renders files written before these fields.

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
CHOICE_KEYS = {"product", "m", "n", "k", "dtype", "threads", "backend", "seconds"}


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
                "nn_lstm_backend", "nn_gru_backend", "cpu", "torch_cpu", "cpu_gemm", "gemm_choices"):
        assert key in result, key
    assert result["cuda"] is None and result["threads"] == 1 and result["device"] and result["complete"]
    # Named by its processor: the model's slug, family/model and widest vector ISA.
    assert json_name.startswith("cpu-" + report._processor.file_tag(result["cpu"]) + "-")
    # One GEMM record per config and cell, in the order timed.
    assert [(e["config"], e["cell"]) for e in result["gemm_choices"]] == [
        ({"T": 4, "B": 2, "I": 8, "H": 8}, "lstm"), ({"T": 4, "B": 2, "I": 8, "H": 8}, "gru")]
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
    on = f"on {report._processor.label(result)}, 1 thread"
    lstm = text.index(f"#### CPU LSTM {on}: time per call, and ratio to nn.LSTM")
    gru = text.index(f"#### CPU GRU {on}:")
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
    assert "#### CPU LN-LSTM on " in text and ": time per call, and ratio to nn.LSTM" in text
    assert "| fwd vs nn.LSTM |" in text
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
    assert "#### CUDA LSTM on GPU X, float32, TF32 off:" in text
    assert "#### CUDA LSTM on GPU X, float32, TF32 on:" in text
    assert "rnnfused GEMM backends" not in text and "GEMM backends: not recorded" not in text   # CPU only
    assert sorted(report.newest(files)) == sorted((p, "lstm") for p in files)


# ---- the processor and rnnfused's GEMM backends ------------------------------------------------------

def _cpuinfo(model_name, family, model, flags, cores=2):
    """/proc/cpuinfo's text for a machine of `cores` processors (one thread each)."""
    return "\n".join(f"processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
                     f"model name\t: {model_name}\nstepping\t: 1\nphysical id\t: 0\ncore id\t\t: {i}\n"
                     f"flags\t\t: fpu sse sse2 {flags}\n" for i in range(cores))


ZEN3 = _cpuinfo("AMD EPYC", 25, 1, "sse4_1 sse4_2 avx f16c fma avx2 vaes")
ZEN5 = _cpuinfo("AMD EPYC", 26, 2, "sse4_2 avx f16c fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni "
                "avx512_bf16", cores=4)


def test_processor_names_tell_an_avx2_epyc_from_an_avx512_one(bench):
    _, report, _ = bench
    proc = report._processor
    avx2, avx512 = proc.cpu_info(ZEN3), proc.cpu_info(ZEN5)
    assert avx2["model_name"] == avx512["model_name"] == "AMD EPYC"      # what /proc/cpuinfo calls both
    assert (avx2["vendor"], avx2["family"], avx2["model"], avx2["cores"]) == ("AMD", 25, 1, 2)
    assert avx2["isa"] == ["sse4_2", "avx", "f16c", "fma", "avx2"] and avx2["isa_tag"] == "avx2"
    assert "avx512_bf16" in avx512["isa"] and avx512["isa_tag"] == "avx512" and avx512["cores"] == 4
    assert proc.file_tag(avx2) == "amd-epyc-f25m1-avx2" and proc.file_tag(avx512) == "amd-epyc-f26m2-avx512"
    assert proc.label({"cpu": avx2}) == "AMD EPYC (family 25 model 1, AVX2)"
    assert proc.label({"cpu": avx512}) == "AMD EPYC (family 26 model 2, AVX-512 (VNNI, BF16))"
    assert proc.label({"cpu": avx2}, long=True) == "AMD EPYC (AMD family 25 model 1; AVX2, FMA; no AVX-512)"
    assert proc.isa_tag(["avx2", "avx512f", "amx_tile"]) == "avx512-amx"
    assert proc.label({"device": "AMD EPYC"}) == "AMD EPYC (ISA unknown)"        # a file older than the field
    assert proc.key({"device_type": "cpu", "cpu": avx2}) != proc.key({"device_type": "cpu", "cpu": avx512})
    # This machine: what run.py records.
    here = proc.cpu_info()
    assert here["model_name"] and here["logical_cpus"] >= 1
    if os.path.exists("/proc/cpuinfo") and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in here["isa"] and here["isa_tag"] in ("avx2", "avx512", "avx512-amx")
    libs = proc.torch_cpu()
    assert libs["mkldnn"] == torch.backends.mkldnn.is_available() and libs["mkl"] == torch.backends.mkl.is_available()


class FakeCpuGemm:
    """rnnfused.cpu_gemm's surface (available, force, forced, clear, choices), recording the calls, so that
    the harness's handling of it is tested whatever the C++ build has."""
    BACKENDS = ("onednn", "mkl", "small")

    def __init__(self):
        self.calls, self._forced = [], None

    def available(self):
        return ["onednn", "mkl", "small"]

    def force(self, name):
        self.calls.append(("force", name))
        self._forced = None if name in (None, "auto") else name

    def forced(self):
        return self._forced

    def clear(self):
        self.calls.append(("clear",))

    def choices(self):
        self.calls.append(("choices",))
        pinned = self._forced
        return [dict(product=p, m=4, n=32, k=8, dtype="float32", threads=1,
                     backend=pinned or b, seconds={} if pinned else {"onednn": 2e-6, "mkl": 3e-6, "small": 1e-6})
                for p, b in (("input", "onednn"), ("recurrent", "small"), ("grad_weight", "onednn"))]


QUICK = ["--device", "cpu", "--configs", "5,2,4,8", "--quick", "--no-compile", "--threads", "1"]


@pytest.mark.parametrize("pin", [None, "onednn"])
def test_run_records_the_gemm_backend_each_product_chose_per_config(tmp_path, bench, monkeypatch, pin):
    run, report, _ = bench
    fake = FakeCpuGemm()
    monkeypatch.setitem(sys.modules, "rnnfused.cpu_gemm", fake)
    run.main(QUICK + ["--configs", "5,2,4,8", "6,2,4,8", "--cell", "both", "--out", str(tmp_path)]
             + (["--gemm-backend", pin] if pin else []))
    [json_path] = tmp_path.glob("*.json")
    assert json_path.name.endswith("-quick" + (f"-gemm-{pin}" if pin else "") + ".json")
    result = json.loads(json_path.read_text())
    assert result["cpu_gemm"] == {"requested": pin, "forced": pin, "available": ["onednn", "mkl", "small"],
                                  "env": os.environ.get("RNNFUSED_CPU_GEMM")}
    # Pinned before anything is timed; the choices forgotten before, and read after, each config and cell.
    assert fake.calls == ([("force", pin)] if pin else []) + [("clear",), ("choices",)] * 4
    entries = result["gemm_choices"]
    assert [(e["config"]["T"], e["cell"]) for e in entries] == [(5, "lstm"), (5, "gru"), (6, "lstm"), (6, "gru")]
    for e in entries:
        assert e["choices"] == fake.choices() and all(set(c) == CHOICE_KEYS for c in e["choices"])
    table = report.run_table(result, "lstm")
    header = next(l for l in table.splitlines() if l.startswith("| T×B×I×H |"))
    assert header.endswith("| peak MiB | rnnfused GEMM backends |")
    want = f"{pin}: input, recurrent, grad_weight" if pin else "onednn: input, grad_weight; small: recurrent"
    rows = [l for l in table.splitlines() if l.startswith("| ") and "nn.LSTM" not in l and "variant" not in l]
    # on the first rnnfused row of each config, nowhere else
    assert [l for l in rows if l.endswith(f"| {want} |")] == [l for l in rows if l.split("|")[2].strip() == "rnnfused"]
    assert len([l for l in rows if l.endswith(f"| {want} |")]) == 2
    if pin:
        assert f"rnnfused's GEMMs pinned to {pin} (--gemm-backend {pin}" in table
        assert "GEMMs pinned to onednn" in report.where_label(result)
    else:
        assert "measured and chosen per product (auto" in table


def test_gemm_backend_pin_that_cannot_be_had_stops_before_measuring(tmp_path, bench, monkeypatch):
    run, _, _ = bench
    fake = FakeCpuGemm()
    fake.available = lambda: ["mkl"]
    monkeypatch.setitem(sys.modules, "rnnfused.cpu_gemm", fake)
    with pytest.raises(SystemExit, match="--gemm-backend small: not available"):
        run.main(QUICK + ["--cell", "lstm", "--gemm-backend", "small", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.json")) and fake.calls == []


def test_run_without_cpu_gemm_records_null(tmp_path, bench, monkeypatch):
    run, report, _ = bench
    monkeypatch.setitem(sys.modules, "rnnfused.cpu_gemm", None)          # import raises ImportError
    run.main(QUICK + ["--cell", "lstm", "--out", str(tmp_path)])
    [json_path] = tmp_path.glob("*.json")
    result = json.loads(json_path.read_text())
    assert result["cpu_gemm"] is None and "rnnfused.cpu_gemm" in result["cpu_gemm_unavailable"]
    assert [e["choices"] for e in result["gemm_choices"]] == [None]
    table = report.run_table(result, "lstm")
    assert "rnnfused GEMM backends |" not in table and "rnnfused's GEMM backends: not recorded (no usable" in table
    with pytest.raises(SystemExit, match="rnnfused.cpu_gemm cannot be used"):
        run.main(QUICK + ["--cell", "lstm", "--gemm-backend", "mkl", "--out", str(tmp_path / "pinned")])
    assert not (tmp_path / "pinned").exists()


def _real_cpu_gemm():
    try:
        import rnnfused.cpu_gemm as gemm
        gemm.available()
        return gemm
    except Exception as e:  # not built into this rnnfused yet
        pytest.skip(f"rnnfused.cpu_gemm not usable here: {type(e).__name__}: {e}")


def test_run_records_the_real_cpu_gemm_choices(tmp_path, bench):
    run, report, _ = bench
    gemm = _real_cpu_gemm()
    before = gemm.forced()
    try:
        run.main(QUICK + ["--cell", "lstm", "--variants", "nn.LSTM", "rnnfused-reg", "--gemm-backend", "auto",
                          "--out", str(tmp_path / "auto")])
        [auto] = (tmp_path / "auto").glob("*.json")
        result = json.loads(auto.read_text())
        assert result["cpu_gemm"]["requested"] == "auto" and result["cpu_gemm"]["forced"] is None
        available = result["cpu_gemm"]["available"]
        [entry] = result["gemm_choices"]
        assert entry["choices"], "rnnfused-reg ran but no GEMM choice was recorded"
        for c in entry["choices"]:
            assert set(c) >= CHOICE_KEYS and c["backend"] in available and c["threads"] == 1
        assert {"input", "recurrent"} <= {c["product"] for c in entry["choices"]}
        summary = report.gemm_summary(entry["choices"])
        assert summary in report.run_table(result, "lstm")
        # Pinned: every product runs on the pinned backend where it can (MKL can run them all).
        run.main(QUICK + ["--cell", "lstm", "--variants", "nn.LSTM", "rnnfused-reg", "--gemm-backend", "mkl",
                          "--out", str(tmp_path / "mkl")])
        [pinned] = (tmp_path / "mkl").glob("*-gemm-mkl.json")
        result = json.loads(pinned.read_text())
        assert result["cpu_gemm"]["forced"] == "mkl"
        assert {c["backend"] for c in result["gemm_choices"][0]["choices"]} == {"mkl"}
    finally:
        gemm.force(before)
        gemm.clear()  # the choices made while pinned are not the process's own


def test_gemm_summary_names_each_backend_with_its_products(bench):
    _, report, _ = bench
    c = lambda product, backend, m=4: dict(product=product, m=m, n=8, k=8, dtype="float32", threads=2,
                                           backend=backend, seconds={})
    assert report.gemm_summary(None) is None and report.gemm_summary([]) == "–"
    assert report.gemm_summary([c("input", "onednn"), c("recurrent", "small"), c("grad_input", "onednn")]) == \
        "onednn: input, grad_input; small: recurrent"
    # packed input: the recurrent product's batch shrinks, and its choice may change with it
    assert report.gemm_summary([c("input", "mkl"), c("recurrent", "small", 4), c("recurrent", "small", 3),
                                c("recurrent", "onednn", 8)]) == \
        "mkl: input; small: recurrent (2 shapes); onednn: recurrent (1 shape)"


def _stat(ms):
    return {"median": ms, "p25": ms * 0.9, "p75": ms * 1.1, "n": 5}


def _kernels_file(path, *, cpu, device, fwdbwd, date, gemm=True, legacy=False):
    """A CPU results file shaped as run.py writes it: nn.LSTM and rnnfused-reg on len(fwdbwd) configs,
    rnnfused-reg's fwd+bwd ratio to nn.LSTM at each config as given. `legacy`: as written before the
    cell, processor and GEMM fields."""
    rows, choices = [], []
    for i, r in enumerate(fwdbwd):
        cfg = {"T": 10 * (i + 1), "B": 2, "I": 8, "H": 8}
        for name, ratio in (("nn.LSTM", 1.0), ("rnnfused-reg", r)):
            row = {"config": cfg, "dtype": "float32", "variant": name, "fwd_ms": _stat(2.0 * ratio),
                   "fwdbwd_ms": _stat(5.0 * ratio), "peak_mem_mb": None, "vs_nn_lstm": {"fwd": ratio, "fwdbwd": ratio}}
            rows.append(row if legacy else dict(row, cell="lstm"))
        choices.append({"config": cfg, "cell": "lstm", "choices": [
            dict(product="input", m=20, n=32, k=8, dtype="float32", threads=2, backend="onednn", seconds={}),
            dict(product="recurrent", m=2, n=32, k=8, dtype="float32", threads=2, backend="small", seconds={})]})
    d = dict(kind="kernels", device=device, device_type="cpu", torch="2.13.0+cpu", cuda=None, cudnn=None,
             commit="0123456789abcdef", date=date, command="python3 benchmarks/run.py --device cpu", threads=2,
             python="3.11.7", dtype="float32", quick=False, results=rows, skipped=[], nn_lstm_backend="oneDNN",
             wall_s=1.0, complete=True)
    if not legacy:
        d.update(cells=["lstm"], rnnfused="0.1.0", cpu=cpu, torch_cpu={"mkldnn": True, "mkl": True},
                 cpu_gemm={"requested": None, "forced": None, "available": ["onednn", "mkl", "small"], "env": None},
                 gemm_choices=choices if gemm else [])
    path.write_text(json.dumps(d))
    return str(path)


def test_readme_shows_each_processor_apart_and_where_the_claims_hold(tmp_path, bench):
    _, report, _ = bench
    proc = report._processor
    avx2 = _kernels_file(tmp_path / "cpu-amd-epyc-f25m1-avx2-2026-12-05.json", cpu=proc.cpu_info(ZEN3),
                         device="AMD EPYC", fwdbwd=[0.87, 0.99], date="2026-12-05T00:00:00+00:00")
    avx512 = _kernels_file(tmp_path / "cpu-amd-epyc-f26m2-avx512-2026-12-06.json", cpu=proc.cpu_info(ZEN5),
                           device="AMD EPYC", fwdbwd=[0.95, 1.004], date="2026-12-06T00:00:00+00:00")
    old = _kernels_file(tmp_path / "cpu-intel-xeon-processor-2026-11-22.json", cpu=None,
                        device="Intel(R) Xeon(R) Processor", fwdbwd=[1.2], date="2026-11-22T00:00:00+00:00",
                        legacy=True)
    # Both EPYCs are kept: neither is newer than the other, they are different processors.
    assert sorted(report.newest([avx2, avx512, old])) == sorted((p, "lstm") for p in (avx2, avx512, old))
    readme = tmp_path / "README.md"
    readme.write_text("# t\n<!-- perf:begin -->\nold\n<!-- perf:end -->\ntail\n")
    report.main(["--readme", str(readme), avx2, avx512, old])
    text = readme.read_text()
    assert text.startswith("# t\n<!-- perf:begin -->\n") and text.endswith("<!-- perf:end -->\ntail\n")
    heads = [l for l in text.splitlines() if l.startswith("#### ")]
    assert heads == [
        "#### CPU LSTM on AMD EPYC (family 25 model 1, AVX2), 2 threads: time per call, and ratio to nn.LSTM",
        "#### CPU LSTM on AMD EPYC (family 26 model 2, AVX-512 (VNNI, BF16)), 2 threads: time per call, and ratio to "
        "nn.LSTM",
        "#### CPU LSTM on Intel(R) Xeon(R) Processor (ISA unknown), 2 threads: time per call, and ratio to nn.LSTM"]
    sections = text.split("#### ")
    # each table says its processor in full, its commit and date under the heading
    assert "AMD EPYC (AMD family 25 model 1; AVX2, FMA; no AVX-512), 2 threads of 2 cores; torch 2.13.0+cpu; " \
           "float32; commit 0123456789ab; 2026-12-05" in sections[1]
    assert "(AMD family 26 model 2; AVX-512 (VNNI, BF16)), 2 threads of 4 cores" in sections[2]
    assert "2026-12-06" in sections[2]
    assert "Intel(R) Xeon(R) Processor (ISA unknown: the file predates processor details), 2 threads; " in sections[3]
    # the GEMM backends per config in the new files; the old one says it has none
    assert sections[1].count("| onednn: input; small: recurrent |") == 2
    assert "rnnfused GEMM backends" not in sections[3]
    assert "rnnfused's GEMM backends: not recorded (the file predates the field)" in sections[3]
    # the sentence on where the claims hold, worded from the ratios (1.004 is above 1.00×)
    claims = sections[0]
    assert ("is no slower than unregularized nn.LSTM in forward+backward at every config timed on "
            "**AMD EPYC (family 25 model 1, AVX2), 2 threads**.") in claims
    assert ("It is slower than nn.LSTM at some configs on **AMD EPYC (family 26 model 2, AVX-512 (VNNI, BF16)), "
            "2 threads** (at 1 of 2 configs, up to 1.004×) and **Intel(R) Xeon(R) Processor (ISA unknown), "
            "2 threads** (at 1 of 1 configs, up to 1.20×).") in claims
    assert "- AMD EPYC (family 25 model 1, AVX2), 2 threads (2026-12-05, commit 0123456789ab): " \
           "forward+backward: LSTM at 2 of 2 (0.87–0.99× nn.LSTM)" in claims
    # idempotent: the same files give the same README
    report.main(["--readme", str(readme), avx2, avx512, old])
    assert readme.read_text() == text


def test_readme_file_without_processor_fields_yields_to_one_with_them(tmp_path, bench):
    """An old file's 'AMD EPYC' (ISA unknown) is left out of the README's default choice once a file with
    processor details exists for that model name; another model's old file stays, labeled ISA unknown."""
    _, report, _ = bench
    proc = report._processor
    new = _kernels_file(tmp_path / "new.json", cpu=proc.cpu_info(ZEN3), device="AMD EPYC", fwdbwd=[0.9],
                        date="2026-12-05T00:00:00+00:00")
    old_same = _kernels_file(tmp_path / "old-epyc.json", cpu=None, device="AMD EPYC", fwdbwd=[0.9],
                             date="2026-12-09T00:00:00+00:00", legacy=True)
    old_other = _kernels_file(tmp_path / "old-xeon.json", cpu=None, device="Intel(R) Xeon(R) Processor",
                              fwdbwd=[0.9], date="2026-11-22T00:00:00+00:00", legacy=True)
    assert sorted(report.newest([new, old_same, old_other])) == sorted([(new, "lstm"), (old_other, "lstm")])
    assert report.newest([old_same]) == [(old_same, "lstm")]
    # ... and the threads used keep runs apart on the same processor
    one = _kernels_file(tmp_path / "one.json", cpu=proc.cpu_info(ZEN3), device="AMD EPYC", fwdbwd=[0.9],
                        date="2026-12-06T00:00:00+00:00")
    d = json.loads(Path(one).read_text())
    Path(one).write_text(json.dumps(dict(d, threads=1)))
    assert sorted(report.newest([new, one])) == sorted([(new, "lstm"), (one, "lstm")])
