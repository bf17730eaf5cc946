"""How the package presents itself: one version, written once; an unbuilt checkout that says what to run;
scripts that refuse to run without the rnnfused they are about."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rnnfused

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = Path(rnnfused.__file__).resolve().parents[1] != ROOT


@pytest.fixture
def unbuilt(tmp_path):
    """A folder holding a copy of the package without its compiled extension, as a fresh checkout has it."""
    shutil.copytree(Path(rnnfused.__file__).parent, tmp_path / "rnnfused",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__", "data"))
    return tmp_path


def run_python(*args, pythonpath, cwd):
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_version_is_written_once_in_the_package():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", rnnfused.__version__)
    for name in ("setup.py", "pyproject.toml"):
        assert rnnfused.__version__ not in (ROOT / name).read_text(), f"{name} repeats the version"


@pytest.mark.skipif(not INSTALLED, reason="rnnfused is imported from the checkout, not installed")
def test_installed_metadata_has_the_package_version():
    assert importlib.metadata.version("rnnfused") == rnnfused.__version__


def test_importing_an_unbuilt_checkout_says_what_to_run(unbuilt):
    proc = run_python("-c", "import rnnfused", pythonpath=unbuilt, cwd=unbuilt)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: rnnfused: rnnfused._C is not built in "), last
    assert "make build" in last and "pip install --no-build-isolation ." in last
    assert "circular import" not in last


@pytest.mark.parametrize("script", ["word_language_model/main.py", "digits_classifier/main.py",
                                    "forecasting/main.py"])
def test_an_example_without_an_importable_rnnfused_exits_with_the_reason(unbuilt, tmp_path, script):
    out = tmp_path / "out"
    proc = run_python(str(ROOT / "examples" / script), "--smoke", "--out-dir", str(out),
                      pythonpath=unbuilt, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(f"{Path(script).name}: cannot import rnnfused: ")
    assert "make build" in proc.stderr and not out.exists()
