#!/usr/bin/env bash
# One pass over a GPU machine: build the CUDA extension in place, run the CUDA tests (and the
# layer-vs-reference suite against the freshly built module), then the GPU benchmarks.
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Needs a CUDA build of torch, nvcc under $CUDA_HOME (default /usr/local/cuda) and pytest; no
# network. Writes into OUTDIR: summary.txt (machine, versions, what passed, how long each stage
# took), build.log, tests.log, bench.log, and what `benchmarks/run.py --out OUTDIR` writes (its
# JSON, Markdown table and plot): at most 7 files, all directly in OUTDIR.
# Exits non-zero when the build or the tests fail; the benchmarks still run whenever the build
# worked. Each stage has a time limit so that the whole run stays under ~9 minutes
# ($RNNFUSED_GPU_CHECK_BUDGET seconds, default 540).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
budget=${RNNFUSED_GPU_CHECK_BUDGET:-540}
start=$(date +%s)
summary="$out/summary.txt"
status=0

left() { echo $(( budget - ($(date +%s) - start) )); }
note() { echo "$*" | tee -a "$summary"; }

# A stage gets at most its share, and never more than what is left of the budget (minus a margin
# for the stages after it).
stage_limit() {
  local share=$1 reserve=$2 l
  l=$(( $(left) - reserve ))
  [ "$l" -lt "$share" ] && share=$l
  [ "$share" -lt 10 ] && share=10
  echo "$share"
}

: >"$summary"
note "== rnnfused gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if commit=$(git rev-parse --short HEAD 2>/dev/null); then
  git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
else
  commit=unknown
fi
note "commit: $commit"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /' | tee -a "$summary"
else
  note "gpu: nvidia-smi not found"
fi
"$python" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version())" 2>&1 | tee -a "$summary"
"$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -1 | sed 's/^/nvcc: /' | tee -a "$summary"

# --- build -------------------------------------------------------------------------------------
t0=$(date +%s)
limit=$(stage_limit 300 200)
timeout "$limit" "$python" setup.py build_ext --inplace >"$out/build.log" 2>&1
rc=$?
built=0
if [ $rc -eq 0 ] && "$python" -c "import rnnfused, sys; sys.exit(0 if rnnfused.has_cuda_kernels() else 1)" >>"$out/build.log" 2>&1; then
  built=1
  note "build: PASS ($(( $(date +%s) - t0 )) s)"
else
  [ $rc -eq 124 ] && note "build: TIMEOUT after ${limit} s" || note "build: FAIL (rc $rc, or built without the CUDA kernels; see build.log)"
  tail -30 "$out/build.log"
  status=1
fi
grep -E "warning" "$out/build.log" | grep -E "csrc/" | head -20 | sed 's/^/build warning: /' | tee -a "$summary"

# --- tests -------------------------------------------------------------------------------------
if [ $built -eq 1 ]; then
  t0=$(date +%s)
  limit=$(stage_limit 200 60)
  timeout "$limit" "$python" -m pytest -q -rfEs -p no:cacheprovider tests/test_cuda.py \
    tests/test_layer_vs_reference.py >"$out/tests.log" 2>&1
  rc=$?
  result=$(tail -1 "$out/tests.log")
  if [ $rc -eq 0 ]; then
    note "tests: PASS ($(( $(date +%s) - t0 )) s): $result"
  else
    [ $rc -eq 124 ] && note "tests: TIMEOUT after ${limit} s" || note "tests: FAIL (rc $rc, $(( $(date +%s) - t0 )) s): $result"
    grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -40 | tee -a "$summary"
    status=1
  fi
  if grep -q "skipped" <<<"$result" && ! grep -q "passed" <<<"$result"; then
    note "tests: everything skipped: no GPU visible to torch?"
    status=1
  fi
else
  note "tests: not run (no build)"
fi

# --- benchmarks ----------------------------------------------------------------------------------
if [ $built -eq 1 ] && [ -f benchmarks/run.py ]; then
  t0=$(date +%s)
  limit=$(stage_limit 600 5)
  # run.py writes its results only at the end, so it must finish inside the limit: share the time
  # left among its four configurations (timing rounds, and the torch.compile baseline, which is
  # skipped and recorded as such when it does not compile in time). RNNFUSED_BENCH_ARGS overrides.
  per_config=$(( (limit - 30) / 4 ))
  [ "$per_config" -lt 10 ] && per_config=10
  bench_args=${RNNFUSED_BENCH_ARGS:---budget $(( per_config * 5 / 10 )) --compile-budget $(( per_config * 3 / 10 ))}
  note "benchmarks: python3 benchmarks/run.py --device cuda --out OUTDIR $bench_args (limit ${limit} s)"
  # shellcheck disable=SC2086
  timeout "$limit" "$python" benchmarks/run.py --device cuda --out "$out" $bench_args >"$out/bench.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    note "benchmarks: PASS ($(( $(date +%s) - t0 )) s)"
  else
    [ $rc -eq 124 ] && note "benchmarks: TIMEOUT after ${limit} s" || note "benchmarks: FAIL (rc $rc)"
    tail -20 "$out/bench.log"
  fi
elif [ $built -eq 1 ]; then
  note "benchmarks: not run (benchmarks/run.py does not exist)"
fi

note "gpu_check: $([ $status -eq 0 ] && echo PASS || echo FAIL) in $(( $(date +%s) - start )) s"
exit $status
