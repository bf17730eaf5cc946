#!/usr/bin/env bash
# Builds rnnfused._C's CPU sources with AddressSanitizer and UndefinedBehaviorSanitizer (CMake,
# -DRNNFUSED_SANITIZE=ON; this is also CI's check that the CMake build keeps working) and runs the
# tests that drive the kernels hardest at small sizes against that build: layer vs reference (every
# regularizer, direction, lengths, projection), the hypothesis property test and gradcheck. An
# out-of-bounds read or write, a use after free or undefined behaviour in the kernels stops the run
# with a report.
#
# The same build makes the CUDA simulator's test module (-DRNNFUSED_CUDA_SIM=ON, SPEC §8): the CUDA
# driver and kernels compiled by the host compiler, under the same sanitizers, and
# tests/test_cuda_sim.py runs them against the CPU op under the three thread orders (`make
# test-cuda-sim` runs that file alone: RNNFUSED_SANITIZE_TESTS=tests/test_cuda_sim.py).
#
# -O1 -g1: the usual optimization for ASan, and line tables only; it compiles in under half the time of
# -O2 -g. Python itself is not built with ASan, so the ASan runtime is preloaded (LD_PRELOAD) to come
# first; leak detection is off (the interpreter and torch keep memory until exit on purpose). Set
# RNNFUSED_SANITIZE_TESTS to run other tests (pytest arguments, relative to the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=$(command -v "${PYTHON:-python3}")
build=${RNNFUSED_SANITIZE_BUILD:-build/sanitize}
tests=${RNNFUSED_SANITIZE_TESTS:-tests/test_layer_vs_reference.py tests/test_properties.py tests/test_gradcheck.py tests/test_cuda_sim.py}
start=$(date +%s)

mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_FLAGS="-O1 -g1" -DRNNFUSED_SANITIZE=ON \
  -DRNNFUSED_CUDA_SIM=ON -DPython3_EXECUTABLE="$python" >"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
module=$(ls "$build"/rnnfused/_C*.so)
sim_module=$(ls "$build"/rnnfused_cuda_sim*.so)
for so in "$module" "$sim_module"; do
  imports=$(nm -D --undefined-only "$so")
  for runtime in __asan_init __ubsan_handle; do   # the build is instrumented, not just named so
    grep -q "$runtime" <<<"$imports" || { echo "sanitize_check: FAIL: $so does not call $runtime"; exit 1; }
  done
done
echo "sanitize_check: built $module and $sim_module in $(( $(date +%s) - start )) s"

# The package's Python files with the sanitized module, in a folder of their own: running from there,
# `import rnnfused` can only find this build.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r rnnfused "$stage/"
rm -f "$stage"/rnnfused/_C*.so
cp "$build"/rnnfused/_C*.so "$stage/rnnfused/"

libasan=$("${CXX:-c++}" -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "sanitize_check: FAIL: no libasan.so from ${CXX:-c++}"; exit 1; }
# libstdc++ with it: ASan's __cxa_throw interceptor finds the real one only if it is loaded at start
# (Python is not C++), and a C++ exception (a TORCH_CHECK, the simulator's errors) would abort.
libstdcxx=$("${CXX:-c++}" -print-file-name=libstdc++.so)
export LD_PRELOAD="$libasan $libstdcxx"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# tests/test_cuda_sim.py loads the simulated CUDA ops from here (and fails if it cannot).
export RNNFUSED_CUDA_SIM_MODULE=$(realpath "$sim_module")
cd "$stage"
"$python" -c "import rnnfused; print('sanitize_check: rnnfused._C from', rnnfused._ops._C.__file__)"
# --capture=sys, not fd: a sanitizer's report goes to file descriptor 2, and a run it aborts would
# otherwise lose it with pytest's captured output.
# shellcheck disable=SC2086
"$python" -m pytest -q -p no:cacheprovider --capture=sys $(for t in $tests; do echo "$repo/$t"; done)
echo "sanitize_check: PASS in $(( $(date +%s) - start )) s"
