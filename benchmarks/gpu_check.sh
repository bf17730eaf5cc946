#!/usr/bin/env bash
# One pass over a GPU machine (issue 11), in the order that makes the first minutes count:
#
#   preflight  toolchain and Python packages: nvcc under $CUDA_HOME whose CUDA major version is
#              torch's, a CUDA build of torch that sees a GPU, a C++ compiler, ninja, setuptools,
#              pytest, matplotlib, compute-sanitizer. Anything missing stops the run at once with
#              one line that names all of it (exit 2).
#   build      python3 setup.py build_ext --inplace, for the visible GPU's architecture only
#              (TORCH_CUDA_ARCH_LIST, e.g. 9.0, unless set)
#   tests      the CUDA tests only: `pytest tests -k cuda` (tests/test_cuda*.py, and every test of
#              the other files whose name or parameters say cuda, e.g. the `device` fixture's)
#   memcheck   compute-sanitizer memcheck, caching allocator off, over benchmarks/sanitize_paths.py
#              (every path of the ops at tiny sizes)
#   racecheck  compute-sanitizer racecheck over one small call (sanitize_paths.py --one)
#   bench      benchmarks/run.py --device cuda --out OUTDIR, without the torch.compile loop
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Writes as it goes into OUTDIR (so a run cut short still leaves what it did): summary.txt (machine,
# versions, one line per stage with its status and seconds, appended when the stage ends),
# gpu_check.log (every stage's output, each section headed "##### gpu_check stage NAME"), and what
# run.py writes (JSON, Markdown tables, plots). Two files of its own, directly in OUTDIR, so that
# OUTDIR can be the device tool's $OUT (which returns at most 8 files) and run.py keeps 6.
#
# Stays under 9 minutes: every stage runs under `timeout`, at most its share and never more than
# what the budget ($RNNFUSED_GPU_CHECK_BUDGET seconds, default 510, which leaves a margin for the
# kill grace periods) leaves after a reserve for the stages after it. A stage that fails does not
# stop the next ones (once the build worked). Exits 0 when every stage that ran passed, 1 when one
# failed or timed out, 2 when the preflight failed.
#
# Environment: PYTHON (default python3), CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST,
# RNNFUSED_GPU_CHECK_STAGES (default "build tests memcheck racecheck bench": run a subset, e.g.
# "tests bench" on a machine where the build is already there), RNNFUSED_GPU_TESTS_ARGS (extra
# pytest arguments), RNNFUSED_BENCH_ARGS (replaces the benchmark arguments after --out, default
# "--no-compile --budget S" with S from the time left), RNNFUSED_SANITIZER (compute-sanitizer's
# path).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
budget=${RNNFUSED_GPU_CHECK_BUDGET:-510}
stages=" ${RNNFUSED_GPU_CHECK_STAGES:-build tests memcheck racecheck bench} "
start=$(date +%s)
summary="$out/summary.txt"
log="$out/gpu_check.log"
status=0
mark=1

left() { echo $(( budget - ($(date +%s) - start) )); }
since() { echo $(( $(date +%s) - $1 )); }
note() { echo "$*" | tee -a "$summary"; }
wants() { [[ "$stages" == *" $1 "* ]]; }
# Starts a stage's section of the log; part prints the section so far.
section() {
  echo "##### gpu_check stage $1 ($(date -u +%H:%M:%S)): $2" >>"$log"
  mark=$(( $(wc -l <"$log") + 1 ))
}
part() { tail -n +"$mark" "$log"; }

# A stage gets at most its share, and never more than what is left of the budget minus a reserve
# for the stages after it (but at least 10 s).
stage_limit() {
  local share=$1 reserve=$2 l
  l=$(( $(left) - reserve ))
  [ "$l" -lt "$share" ] && share=$l
  [ "$share" -lt 10 ] && share=10
  echo "$share"
}

# The verdict of a stage run under `timeout`: PASS, TIMEOUT or FAIL.
verdict() {
  case $1 in
    0) echo PASS ;;
    124|137) echo TIMEOUT ;;
    *) echo FAIL ;;
  esac
}

: >"$summary"
: >"$log"
note "== rnnfused gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ), stages:${stages% }"
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

# --- preflight -----------------------------------------------------------------------------------
# Collects every problem, then stops with one line naming them all: one device run shows
# everything that is missing, not just the first thing.
t0=$(date +%s)
missing=()
nvcc="$CUDA_HOME/bin/nvcc"
nvcc_release=""
if wants build; then
  if [ -x "$nvcc" ]; then
    nvcc_release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1)
    [ -n "$nvcc_release" ] || missing+=("$nvcc --version printed no 'release X.Y'")
  else
    missing+=("no nvcc at $nvcc (set CUDA_HOME)")
  fi
  command -v "${CXX:-c++}" >/dev/null || missing+=("no C++ compiler (${CXX:-c++})")
  # torch's BuildExtension runs the `ninja` program: the ninja package's, if it is not on PATH
  if ! command -v ninja >/dev/null && d=$("$python" -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null); then
    export PATH="$d:$PATH"
  fi
  command -v ninja >/dev/null || missing+=("no ninja program on PATH")
fi
sanitizer=""
if wants memcheck || wants racecheck; then
  for s in "${RNNFUSED_SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
           "$CUDA_HOME/bin/compute-sanitizer" "$CUDA_HOME/compute-sanitizer/compute-sanitizer"; do
    if [ -n "$s" ] && [ -x "$s" ]; then sanitizer=$s; break; fi
  done
  [ -n "$sanitizer" ] || missing+=("no compute-sanitizer (on PATH, under \$CUDA_HOME, or \$RNNFUSED_SANITIZER)")
fi
modules=(torch)
if wants build; then modules+=(setuptools ninja); fi
if wants tests; then modules+=(pytest); fi
if wants bench; then modules+=(matplotlib numpy); fi
# Prints "info: ..." lines and "missing: ..." lines; the last line is "arch: X.Y" when a GPU is seen.
preflight=$(timeout -k 5 120 "$python" - "$nvcc_release" "$(if wants build; then echo 1; else echo 0; fi)" "${modules[@]}" <<'PY' 2>&1
import importlib, sys
nvcc_release, building, modules = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as e:
        print(f"missing: Python package {name} not importable ({type(e).__name__}: {e})"[:200])
try:
    import torch
except Exception:
    sys.exit(0)
print(f"info: python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.version.cuda else None}")
if torch.version.cuda is None:
    print(f"missing: torch {torch.__version__} is a CPU build (a CUDA build is needed)")
else:
    if nvcc_release and nvcc_release.split(".")[0] != torch.version.cuda.split(".")[0]:
        print(f"missing: nvcc is CUDA {nvcc_release} but torch is built for CUDA {torch.version.cuda} "
              "(the major versions must match)")
    elif nvcc_release and nvcc_release != torch.version.cuda:
        print(f"info: nvcc {nvcc_release}, torch built for CUDA {torch.version.cuda} (same major version)")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        print("missing: no GPU visible to torch (torch.cuda.is_available() is False)")
    else:
        major, minor = torch.cuda.get_device_capability(0)
        print(f"info: GPU 0 {torch.cuda.get_device_name(0)}, sm_{major}{minor}, "
              f"{torch.cuda.device_count()} visible")
        if not building:
            try:
                import rnnfused
                if not rnnfused.has_cuda_kernels():
                    print("missing: rnnfused is built without its CUDA kernels (and the build stage is not run)")
            except Exception as e:
                print(f"missing: rnnfused does not import (and the build stage is not run): {type(e).__name__}: {e}"[:200])
        print(f"arch: {major}.{minor}")
PY
)
rc=$?
section preflight "toolchain and Python packages"
echo "$preflight" >>"$log"
[ $rc -eq 0 ] || missing+=("the Python check exited $rc: $(tail -1 <<<"$preflight")")
grep '^info: ' <<<"$preflight" | sed 's/^info: //' | tee -a "$summary"
while IFS= read -r line; do missing+=("${line#missing: }"); done < <(grep '^missing: ' <<<"$preflight")
[ -n "$nvcc_release" ] && note "nvcc: $nvcc_release ($nvcc)"
[ -n "$sanitizer" ] && note "compute-sanitizer: $("$sanitizer" --version 2>/dev/null | grep -i version | head -1) ($sanitizer)"
if [ ${#missing[@]} -gt 0 ]; then
  joined=$(printf '; %s' "${missing[@]}")
  note "preflight: FAIL ($(since "$t0") s): ${joined:2}"
  note "gpu_check: FAIL in $(since "$start") s"
  exit 2
fi
arch=$(sed -n 's/^arch: //p' <<<"$preflight" | tail -1)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
note "preflight: PASS ($(since "$t0") s); TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

# --- build -------------------------------------------------------------------------------------
built=1
if wants build; then
  t0=$(date +%s)
  limit=$(stage_limit 270 200)
  section build "$python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS (limit $limit s)"
  timeout -k 10 "$limit" "$python" setup.py build_ext --inplace >>"$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ] && "$python" -c "import rnnfused, sys; sys.exit(0 if rnnfused.has_cuda_kernels() else 1)" >>"$log" 2>&1; then
    note "build: PASS ($(since "$t0") s)"
  else
    built=0
    status=1
    case $(verdict $rc) in
      TIMEOUT) note "build: TIMEOUT after $limit s" ;;
      FAIL) note "build: FAIL (rc $rc, $(since "$t0") s)" ;;
      PASS) note "build: FAIL ($(since "$t0") s): built, but rnnfused has no CUDA kernels or does not import" ;;
    esac
    part | grep -E "error:" | head -10 | sed 's/^/build error: /' | tee -a "$summary"
  fi
  part | grep -E "warning" | grep -E "csrc/" | head -20 | sed 's/^/build warning: /' | tee -a "$summary"
else
  note "build: not run (not in RNNFUSED_GPU_CHECK_STAGES); using the rnnfused already built"
fi

# --- CUDA tests -----------------------------------------------------------------------------------
if wants tests && [ $built -eq 1 ]; then
  t0=$(date +%s)
  limit=$(stage_limit 150 150)
  section tests "pytest tests -k cuda ${RNNFUSED_GPU_TESTS_ARGS:-} (limit $limit s)"
  # -v: one line per test, so that a run cut short shows which test it was in
  # shellcheck disable=SC2086  # RNNFUSED_GPU_TESTS_ARGS is a list of arguments
  timeout -k 10 "$limit" "$python" -m pytest -v -rfEs -p no:cacheprovider --durations=15 \
    --continue-on-collection-errors tests -k cuda ${RNNFUSED_GPU_TESTS_ARGS:-} >>"$log" 2>&1
  rc=$?
  result=$(part | grep -E "(passed|failed|error|skipped|no tests ran)" | grep -E " in [0-9.]+s" | tail -1 \
           | sed -E 's/^=+ //; s/ =+$//')
  v=$(verdict $rc)
  if [ "$v" = PASS ] && ! grep -q "passed" <<<"$result"; then
    note "tests: FAIL ($(since "$t0") s): no CUDA test passed (all skipped: no GPU, or no CUDA kernels?): $result"
    status=1
  elif [ "$v" = PASS ]; then
    note "tests: PASS ($(since "$t0") s): $result"
  else
    status=1
    if [ "$v" = TIMEOUT ]; then
      done_=$(part | grep -cE " (PASSED|FAILED|SKIPPED|ERROR)")
      note "tests: TIMEOUT after $limit s ($done_ tests done; last: $(part | grep "::" | tail -1 | cut -c1-150))"
    elif [ $rc -eq 5 ]; then
      note "tests: FAIL: pytest selected no test (-k cuda)"
    else
      note "tests: FAIL (rc $rc, $(since "$t0") s): $result"
    fi
    part | grep -E "^(FAILED|ERROR)" | head -40 | tee -a "$summary"
  fi
elif wants tests; then
  note "tests: not run (no build)"
fi

# --- compute-sanitizer ------------------------------------------------------------------------------
# Pass/fail is the sanitizer's own error count (--error-exitcode) and sanitize_paths.py's exit
# code. API errors are not reported: torch's own probing calls would count as errors; ours raise
# through C10_CUDA_CHECK and fail the script instead. A machine where compute-sanitizer cannot run
# (it refuses the device under gVisor) gives UNAVAILABLE, and racecheck is then not tried.
sanitize() {  # tool share reserve args...
  local tool=$1 share=$2 reserve=$3 t0 limit rc found paths v this
  shift 3
  t0=$(date +%s)
  limit=$(stage_limit "$share" "$reserve")
  section "$tool" "$sanitizer --tool $tool ${san_opts[*]} $* (limit $limit s)"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$limit" "$sanitizer" --tool "$tool" "${san_opts[@]}" \
    "$@" >>"$log" 2>&1
  rc=$?
  this=$(part)
  # "ERROR SUMMARY: 0 errors" (memcheck), "RACECHECK SUMMARY: 0 hazards displayed (...)"
  found=$(grep -E "(ERROR|RACECHECK) SUMMARY: " <<<"$this" | tail -1 | sed -E 's/^=+ *//')
  paths=$(grep "^sanitize_paths: " <<<"$this" | tail -1)
  v=$(verdict $rc)
  if [ "$v" = PASS ]; then
    note "$tool: PASS ($(since "$t0") s): ${found:-no sanitizer summary}; $paths"
    return
  fi
  status=1
  if grep -qE "Internal Sanitizer Error|Device not supported" <<<"$this"; then
    note "$tool: UNAVAILABLE ($(since "$t0") s): compute-sanitizer cannot run on this machine: $(grep -m1 -E \
          "Internal Sanitizer Error|Device not supported" <<<"$this" | sed -E 's/^=+ *//' | cut -c1-150)"
    sanitizer_broken=1
    return
  elif [ "$v" = TIMEOUT ]; then
    note "$tool: TIMEOUT after $limit s ($(grep -cE "^(ok|FAIL|refused) " <<<"$this") paths done; $found)"
  elif [ $rc -eq 99 ]; then
    note "$tool: FAIL ($(since "$t0") s): $found; $paths"
  else
    note "$tool: FAIL (rc $rc, $(since "$t0") s): ${paths:-$(tail -1 <<<"$this" | cut -c1-200)}"
  fi
  grep -E "^FAIL |^========= +(Invalid|Race|Error|Warning|Program hit|.*out of bounds|.*hazard|at )" \
    <<<"$this" | grep -v "SUMMARY: " | head -25 | tee -a "$summary"
}
sanitizer_broken=0
# The options this compute-sanitizer has (an unknown one would end the stage at once).
san_opts=(--error-exitcode 99)
if [ -n "$sanitizer" ]; then
  san_help=$("$sanitizer" --help 2>&1)
  for opt in "--report-api-errors no" "--print-limit 50"; do
    if grep -q -- "${opt% *}" <<<"$san_help"; then read -r -a o <<<"$opt"; san_opts+=("${o[@]}"); fi
  done
fi
if [ $built -eq 1 ]; then
  if wants memcheck; then
    sanitize memcheck 160 110 "$python" benchmarks/sanitize_paths.py
  fi
  if wants racecheck && [ $sanitizer_broken -eq 1 ]; then
    note "racecheck: not run (compute-sanitizer cannot run on this machine)"
  elif wants racecheck; then
    # racecheck's default report (analysis) only counts hazards on shared memory
    sanitize racecheck 90 80 "$python" benchmarks/sanitize_paths.py --one
  fi
elif wants memcheck || wants racecheck; then
  note "memcheck/racecheck: not run (no build)"
fi

# --- benchmarks ----------------------------------------------------------------------------------
if wants bench && [ $built -eq 1 ] && [ -f benchmarks/run.py ]; then
  t0=$(date +%s)
  # The torch.compile loop does not compile in time: leave it out by whatever switch run.py has.
  help=$("$python" benchmarks/run.py --help 2>&1)
  if grep -q -- "--no-compile" <<<"$help"; then
    no_compile="--no-compile"
  else
    no_compile="--compile-budget 0"
  fi
  limit=$(stage_limit 600 5)
  # run.py writes its results only at the end, so it must finish inside the limit: share the time
  # among its four configurations (timing rounds stop after --budget once 3 are done).
  per_config=$(( (limit - 40) / 4 ))
  [ "$per_config" -lt 10 ] && per_config=10
  bench_args=${RNNFUSED_BENCH_ARGS:-$no_compile --budget $(( per_config * 6 / 10 ))}
  note "bench: $python benchmarks/run.py --device cuda --out OUTDIR $bench_args (limit $limit s)"
  section bench "$python benchmarks/run.py --device cuda --out $out $bench_args (limit $limit s)"
  # shellcheck disable=SC2086  # bench_args is a list of arguments
  timeout -k 10 "$limit" "$python" benchmarks/run.py --device cuda --out "$out" $bench_args >>"$log" 2>&1
  rc=$?
  v=$(verdict $rc)
  if [ "$v" = PASS ]; then
    note "bench: PASS ($(since "$t0") s): $(part | grep -E "^wrote " | sed 's/^wrote //' | xargs -r -n1 basename | head -1)"
  else
    status=1
    if [ "$v" = TIMEOUT ]; then
      note "bench: TIMEOUT after $limit s (run.py writes its results only at the end)"
    else
      note "bench: FAIL (rc $rc, $(since "$t0") s)"
    fi
    part | tail -5 | sed 's/^/bench: /' | tee -a "$summary"
  fi
elif wants bench && [ $built -eq 1 ]; then
  note "bench: not run (benchmarks/run.py does not exist)"
elif wants bench; then
  note "bench: not run (no build)"
fi

note "gpu_check: $([ $status -eq 0 ] && echo PASS || echo FAIL) in $(since "$start") s"
exit $status
