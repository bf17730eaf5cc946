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
#              the other files whose name or parameters say cuda, e.g. the `device` fixture's), on
#              8 processes when pytest-xdist is there
#   memcheck   compute-sanitizer memcheck, caching allocator off, over benchmarks/sanitize_paths.py
#              (every path of the ops at tiny sizes), one sanitizer process per cell, side by side
#   racecheck  compute-sanitizer racecheck over one small call (sanitize_paths.py --one)
#   bench      benchmarks/run.py --device cuda --no-compile, in passes (SPEC §7 asks for all three
#              precisions; issue 11's two shapes first): float32 with TF32 off for both sides (every
#              cell), float32 with TF32 on for both, bfloat16, then the two larger shapes
#
#   benchmarks/gpu_check.sh OUTDIR
#
# Writes as it goes into OUTDIR (so a run cut short still leaves what it did): summary.txt (machine,
# versions, one line per stage with its status and seconds, appended when the stage ends),
# gpu_check.log (every stage's output, each section headed "##### gpu_check stage NAME"), and
# bench.tar.gz: every pass's run.py output (JSON, Markdown tables, plots) under bench/<pass>/,
# packed again after each pass (run.py rewrites its JSON after every configuration, so a pass cut
# short still leaves what it measured). Three files, so that OUTDIR can be the device tool's $OUT,
# which returns at most 8.
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
# pytest arguments), RNNFUSED_GPU_TEST_WORKERS (pytest-xdist processes, default 8; 0: none),
# RNNFUSED_BENCH_PASSES (which passes, default "fp32 tf32 bf16 large"), RNNFUSED_SANITIZER
# (compute-sanitizer's path).
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
  # The tests are small and many: several processes share the GPU (each its own CUDA context).
  workers=${RNNFUSED_GPU_TEST_WORKERS:-8}
  parallel=()
  if [ "$workers" -gt 0 ] && "$python" -c "import xdist" 2>/dev/null; then parallel=(-n "$workers"); fi
  section tests "pytest tests -k cuda ${parallel[*]} ${RNNFUSED_GPU_TESTS_ARGS:-} (limit $limit s)"
  # -v: one line per test, so that a run cut short shows which test it was in
  # shellcheck disable=SC2086  # RNNFUSED_GPU_TESTS_ARGS is a list of arguments
  timeout -k 10 "$limit" "$python" -m pytest -v -rfEs -p no:cacheprovider --durations=15 \
    --continue-on-collection-errors ${parallel[@]+"${parallel[@]}"} tests -k cuda ${RNNFUSED_GPU_TESTS_ARGS:-} >>"$log" 2>&1
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
sanitize() {  # tool share reserve shards args...
  # shards: "|"-separated argument sets appended to args, one sanitizer process each, side by side
  # (they share the GPU; each writes its own log, appended to gpu_check.log when all have ended);
  # "" for one process.
  local tool=$1 share=$2 reserve=$3 shards=$4 t0 limit rc found paths v this k
  shift 4
  t0=$(date +%s)
  limit=$(stage_limit "$share" "$reserve")
  section "$tool" "$sanitizer --tool $tool ${san_opts[*]} $* [${shards:-one process}] (limit $limit s)"
  local -a pids=() shard_args=()
  IFS='|' read -r -a shard_args <<<"$shards"
  [ ${#shard_args[@]} -gt 0 ] || shard_args=("")
  for k in "${!shard_args[@]}"; do
    # shellcheck disable=SC2086  # a shard is a list of arguments
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout -k 10 "$limit" "$sanitizer" --tool "$tool" "${san_opts[@]}" \
      "$@" ${shard_args[$k]} >"$log.$tool.$k" 2>&1 &
    pids+=($!)
  done
  rc=0
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}"
    v=$?
    # the worst outcome wins: a timeout over a failure over a pass
    if [ $v -eq 124 ] || [ $v -eq 137 ] || { [ $rc -ne 124 ] && [ $rc -ne 137 ] && [ $v -ne 0 ]; }; then rc=$v; fi
  done
  for k in "${!shard_args[@]}"; do
    echo "### shard ${shard_args[$k]:-(all)}" >>"$log"
    cat "$log.$tool.$k" >>"$log"
    rm -f "$log.$tool.$k"
  done
  this=$(part)
  # "ERROR SUMMARY: 0 errors" (memcheck), "RACECHECK SUMMARY: 0 hazards displayed (...)", per shard
  found=$(grep -E "(ERROR|RACECHECK) SUMMARY: " <<<"$this" | sed -E 's/^=+ *//' | paste -sd ';' -)
  paths=$(grep "^sanitize_paths: " <<<"$this" | paste -sd ';' -)
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
    sanitize memcheck 160 110 "--cell lstm|--cell gru|--cell lnlstm" "$python" benchmarks/sanitize_paths.py
  fi
  if wants racecheck && [ $sanitizer_broken -eq 1 ]; then
    note "racecheck: not run (compute-sanitizer cannot run on this machine)"
  elif wants racecheck; then
    # racecheck's default report (analysis) only counts hazards on shared memory
    sanitize racecheck 90 80 "" "$python" benchmarks/sanitize_paths.py --one
  fi
elif wants memcheck || wants racecheck; then
  note "memcheck/racecheck: not run (no build)"
fi

# --- benchmarks ----------------------------------------------------------------------------------
# Passes of run.py, without the torch.compile loop (it does not compile in time), each into its own
# folder under a staging directory, packed into OUTDIR/bench.tar.gz after every pass whatever its
# verdict. A pass gets its weight's share of the time the stage had when it began (never more than
# what is left less a reserve for the passes after it); run.py's per-configuration timing budget is
# cut to fit. name|weight|arguments:
bench_passes=(
  "fp32|30|--cell all --tf32 off --configs 100,64,512,512 100,8,512,512"
  "tf32|18|--cell lstm --tf32 on --configs 100,64,512,512 100,8,512,512"
  "bf16|18|--cell lstm --dtype bfloat16 --configs 100,64,512,512 100,8,512,512"
  "large|34|--cell lstm --tf32 off --configs 50,64,1024,1024 1024,16,768,768"
)
wanted_passes=" ${RNNFUSED_BENCH_PASSES:-fp32 tf32 bf16 large} "
if wants bench && [ $built -eq 1 ]; then
  stage_t0=$(date +%s)
  stage_left=$(( $(left) - 5 ))
  staging=$(mktemp -d)
  mkdir -p "$staging/bench"
  weight_left=0
  for spec in "${bench_passes[@]}"; do
    IFS='|' read -r name weight _ <<<"$spec"
    [[ "$wanted_passes" == *" $name "* ]] && weight_left=$(( weight_left + weight ))
  done
  for spec in "${bench_passes[@]}"; do
    IFS='|' read -r name weight pass_args <<<"$spec"
    [[ "$wanted_passes" == *" $name "* ]] || continue
    t0=$(date +%s)
    share=$(( stage_left * weight / 100 ))
    weight_left=$(( weight_left - weight ))
    limit=$(stage_limit "$share" $(( stage_left * weight_left / 100 )))
    if [ "$(left)" -lt 30 ]; then
      note "bench $name: not run (no time left)"
      continue
    fi
    # configurations x cells in this pass, and seconds of timing each: what is left after ~25 s of
    # start-up and ~40% for warm-up, the checked first calls, profiling and memory
    n=$(( $(grep -o -- "--configs.*" <<<"$pass_args" | wc -w) - 1 ))
    [[ "$pass_args" == *"--cell all"* ]] && n=$(( n * 3 ))
    per=$(( (limit - 25) * 6 / 10 / (n > 0 ? n : 1) ))
    [ "$per" -lt 3 ] && per=3
    mkdir -p "$staging/bench/$name"
    section "bench $name" "$python benchmarks/run.py --device cuda --no-compile --budget $per $pass_args (limit $limit s)"
    # shellcheck disable=SC2086  # pass_args is a list of arguments
    timeout -k 10 "$limit" "$python" benchmarks/run.py --device cuda --no-compile --budget "$per" \
      --out "$staging/bench/$name" $pass_args >>"$log" 2>&1
    rc=$?
    v=$(verdict $rc)
    tar -czf "$out/bench.tar.gz.tmp" -C "$staging" bench && mv "$out/bench.tar.gz.tmp" "$out/bench.tar.gz"
    if [ "$v" = PASS ]; then
      note "bench $name: PASS ($(since "$t0") s): $(ls "$staging/bench/$name" | grep -E '[.]json$' | head -1)"
    else
      status=1
      if [ "$v" = TIMEOUT ]; then
        note "bench $name: TIMEOUT after $limit s (the JSON holds the configurations it finished)"
      else
        note "bench $name: FAIL (rc $rc, $(since "$t0") s)"
      fi
      part | tail -5 | sed "s/^/bench $name: /" | tee -a "$summary"
    fi
  done
  rm -rf "$staging"
  note "bench: $(since "$stage_t0") s; results in bench.tar.gz"
elif wants bench; then
  note "bench: not run (no build)"
fi

note "gpu_check: $([ $status -eq 0 ] && echo PASS || echo FAIL) in $(since "$start") s"
exit $status
