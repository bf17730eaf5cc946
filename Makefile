# The README's commands. `make test` and `make demo` do their own set-up on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
LSTM ?= rnnfused

.PHONY: deps build test demo examples-results bench-cpu perf-readme clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	@$(PYTHON) -c "import numpy, pytest, matplotlib, sklearn, statsmodels, tqdm, ninja" 2>/dev/null || \
		$(PYTHON) -m pip install -q numpy pytest matplotlib scikit-learn statsmodels tqdm ninja

# Builds rnnfused._C in place; the lock keeps concurrent builds in one tree from clobbering each other.
# Rebuilds everything when setup.py changed (flags are not tracked by build_ext).
build: deps
	@force=""; for so in rnnfused/_C*.so; do [ -e "$$so" ] && [ setup.py -nt "$$so" ] && force=--force; done; \
	flock /tmp/rnnfused-build.lock $(PYTHON) setup.py -q build_ext --inplace $$force

test: build
	$(PYTHON) -m pytest -q tests

# `make demo LSTM=torch` runs the same preset with torch.nn.LSTM, for comparison.
demo: build
	$(PYTHON) examples/word_language_model/main.py --preset cpu-demo --lstm $(LSTM)

# Runs the demo with both LSTMs and the two other examples, keeping each run's RESULT line with its
# provenance in examples/results/, then regenerates the README's results section from those files.
# Run it on a quiet machine, from a clean clone, so the first line's time includes the build.
examples-results:
	$(PYTHON) examples/record.py demo-rnnfused -- $(MAKE) --no-print-directory demo
	$(PYTHON) examples/record.py demo-torch -- $(MAKE) --no-print-directory demo LSTM=torch
	$(PYTHON) examples/record.py digits-rnnfused -- $(PYTHON) examples/digits_classifier/main.py
	$(PYTHON) examples/record.py digits-torch -- $(PYTHON) examples/digits_classifier/main.py --lstm torch
	$(PYTHON) examples/record.py sunspots-rnnfused -- $(PYTHON) examples/forecasting/main.py
	$(PYTHON) examples/record.py sunspots-torch -- $(PYTHON) examples/forecasting/main.py --lstm torch
	$(PYTHON) examples/report.py --readme README.md

bench-cpu: build
	$(PYTHON) benchmarks/run.py --device cpu
	$(PYTHON) benchmarks/scaling.py --device cpu --quick

perf-readme:
	$(PYTHON) benchmarks/report.py --readme README.md

clean:
	rm -rf build rnnfused/_C*.so *.egg-info
