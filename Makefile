# The README's commands. `make test` and `make demo` do their own set-up on a fresh machine.
#
# Where packages go: inside a virtual environment or a conda env (the $(PYTHON) below runs in it),
# into that env, as it is. Anywhere else, into the project's own virtual environment $(VENV), made on
# first use: an "externally managed" Python (PEP 668: Debian 12, Ubuntu 24.04) refuses `pip install`,
# and a shared interpreter is no place for a project's packages anyway.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
SEED ?= 1
# The seeds `make examples-results` records: the demo's (minutes each) and the small examples' (seconds).
DEMO_SEEDS ?= 1 2 3
SEEDS ?= 1 2 3 4 5
# The fresh environment `make test-wheel` installs the wheel into.
WHEEL_VENV ?= build/wheel-venv

BUILD_DEPS := setuptools wheel ninja build
TEST_DEPS := numpy pytest hypothesis matplotlib scikit-learn statsmodels tqdm

IN_ENV := $(shell $(PYTHON) -c 'import os, sys; envs = [os.environ.get(v) for v in ("VIRTUAL_ENV", "CONDA_PREFIX")]; print(int(sys.prefix != sys.base_prefix or any(e and os.path.realpath(e) == os.path.realpath(sys.prefix) for e in envs)))' 2>/dev/null)
ifeq ($(IN_ENV),1)
PY := $(PYTHON)
SHOWN_PY := $(PYTHON)
else
PY := $(abspath $(VENV))/bin/python
SHOWN_PY := python3
# As `source $(VENV)/bin/activate` would: tools the recipes start (ninja for the parallel build,
# python3 in the scripts) come from the environment too.
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)
endif

.PHONY: venv deps build-deps test-deps build test test-cuda-sim demo wheel test-wheel print-python \
	examples-results bench-cpu perf-readme clean

venv:
ifneq ($(IN_ENV),1)
	@[ -x "$(PY)" ] && "$(PY)" -c "" 2>/dev/null || { \
		echo "== creating the project's virtual environment $(VENV) with $(PYTHON) (not inside one)" >&2; \
		rm -rf "$(VENV)"; \
		$(PYTHON) -m venv "$(VENV)" || { echo "could not create $(VENV): $(PYTHON) -m venv failed" \
			"(on Debian/Ubuntu: apt install python3-venv), or run from inside an environment of" \
			"your own"; exit 1; }; }
endif

# torch first and pinned: an unpinned `pip install torch` may pull a multi-GB CUDA build. An installed
# torch is kept, whatever its version.
build-deps: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	@$(PY) -c "import setuptools, wheel, ninja, build" 2>/dev/null || $(PY) -m pip install -q $(BUILD_DEPS)

test-deps: venv
	@$(PY) -c "import numpy, pytest, hypothesis, matplotlib, sklearn, statsmodels, tqdm" 2>/dev/null || \
		$(PY) -m pip install -q $(TEST_DEPS)

deps: build-deps test-deps

# Builds rnnfused._C in place; the lock keeps concurrent builds in one tree from clobbering each other.
# Rebuilds everything when setup.py changed (flags are not tracked by build_ext).
build: build-deps
	@force=""; for so in rnnfused/_C*.so; do [ -e "$$so" ] && [ setup.py -nt "$$so" ] && force=--force; done; \
	flock /tmp/rnnfused-build.lock $(PY) setup.py -q build_ext --inplace $$force

# `make test INSTALLED=1` (what CI runs) tests the wheel installed into a fresh virtual environment
# instead of the in-place build: the same suite, against the package as users install it.
ifeq ($(INSTALLED),1)
test: test-wheel
else
test: deps build
	$(PY) -m pytest -q tests
endif

# The CUDA kernels run on the CPU in the simulated CUDA execution model (SPEC §8): CMake builds the
# test-only module rnnfused_cuda_sim (and rnnfused._C) with ASan/UBSan into build/sanitize, and
# tests/test_cuda_sim.py checks the simulated ops against the CPU op under the three thread orders.
# No GPU needed; CI runs it (in .ci/sanitize_check.sh); a user's install never builds it.
test-cuda-sim: deps
	RNNFUSED_SANITIZE_TESTS=tests/test_cuda_sim.py PYTHON=$(PY) bash .ci/sanitize_check.sh

# Trains the character-level language model twice side by side, rnnfused.LSTM with in-recurrence
# regularization and torch.nn.LSTM with its best, one core each; `make demo SEED=2` for another seed.
demo: deps build
	$(PY) examples/word_language_model/demo.py --seed $(SEED)

# dist/rnnfused-<version>-<python>-<platform>.whl, built against the environment's torch.
wheel: build-deps
	rm -rf dist
	$(PY) -m build --wheel --no-isolation --outdir dist .

# The test suite against the installed wheel, not the source tree: a fresh virtual environment gets
# the torch the wheel was built with, then the wheel with its test and examples extras, and pytest runs
# from an empty folder, so that `import rnnfused` can only find the installed package.
test-wheel: wheel
	rm -rf $(WHEEL_VENV)
	$(PY) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --no-compile \
		"torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')"
	$(WHEEL_VENV)/bin/python -m pip install -q --no-compile "$$(ls dist/rnnfused-*.whl)[test,examples]"
	$(WHEEL_VENV)/bin/python -m pip check
	cd "$$(mktemp -d)" && $(abspath $(WHEEL_VENV))/bin/python -c \
		"import rnnfused, sys; assert rnnfused.__file__.startswith(sys.prefix), rnnfused.__file__; \
		print('testing rnnfused', rnnfused.__version__, 'installed at', rnnfused.__file__)" && \
		$(abspath $(WHEEL_VENV))/bin/python -m pytest -q -p no:cacheprovider $(CURDIR)/tests

# The interpreter the recipes use, as an absolute path (for scripts such as .ci/run).
print-python: venv
	@$(PY) -c "import sys; print(sys.executable)"

# Runs the demo (both arms) over $(DEMO_SEEDS) and the other examples with both LSTMs over $(SEEDS),
# keeping each run's RESULT line with its provenance in examples/results/<example>-<arm>-s<seed>.json
# (the first seed's plot too), then regenerates the README's results section from those files.
# Run it on a quiet machine, from a clean clone, so the first demo's time includes the build.
# (SHOWN_PY: the commands are recorded as typed; in $(VENV), python3 is the environment's.)
# Only the venv first: the first `make demo` installs torch and the rest itself, so its time is a fresh
# machine's.
examples-results: venv
	@set -e; for s in $(DEMO_SEEDS); do \
		$(PY) examples/record.py --no-plot "demo-{lstm}-s$$s" -- $(MAKE) --no-print-directory demo SEED=$$s; done
	@set -e; for s in $(SEEDS); do plot=$$([ "$$s" = "$(firstword $(SEEDS))" ] || echo --no-plot); \
		$(PY) examples/record.py $$plot digits-rnnfused-s$$s -- $(SHOWN_PY) examples/digits_classifier/main.py --seed $$s; \
		$(PY) examples/record.py --no-plot digits-torch-s$$s -- $(SHOWN_PY) examples/digits_classifier/main.py --seed $$s --lstm torch; \
		$(PY) examples/record.py $$plot sunspots-rnnfused-s$$s -- $(SHOWN_PY) examples/forecasting/main.py --seed $$s; \
		$(PY) examples/record.py --no-plot sunspots-torch-s$$s -- $(SHOWN_PY) examples/forecasting/main.py --seed $$s --lstm torch; \
		$(PY) examples/record.py $$plot seq2seq-rnnfused-s$$s -- $(SHOWN_PY) examples/forecasting/seq2seq.py --seed $$s; \
		$(PY) examples/record.py --no-plot seq2seq-torch-s$$s -- $(SHOWN_PY) examples/forecasting/seq2seq.py --seed $$s --lstm torch; \
	done
	$(PY) examples/report.py --readme README.md

bench-cpu: deps build
	$(PY) benchmarks/run.py --device cpu
	$(PY) benchmarks/scaling.py --device cpu --quick

perf-readme: deps
	$(PY) benchmarks/report.py --readme README.md

clean:
	rm -rf build dist rnnfused/_C*.so *.egg-info
