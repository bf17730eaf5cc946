#!/usr/bin/env bash
# Builds rnnfused._C with CMake (find_package(Torch)) from the same sources as setup.py, so the
# CMake path cannot rot, then loads the module it built and runs one layer call.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RNNFUSED_CMAKE_BUILD:-build/cmake}
python=$(command -v "${PYTHON:-python3}")
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$python" >"$build.log" 2>&1 \
  || { cat "$build.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
stage=$(mktemp -d)
cp -r rnnfused "$stage/"
rm -f "$stage"/rnnfused/_C*.so
cp "$build"/rnnfused/_C*.so "$stage/rnnfused/"
(cd "$stage" && "$python" - <<'PY'
import torch, rnnfused
x = torch.randn(4, 2, 3)
model = rnnfused.LSTM(3, 5, zoneout=0.1, weight_drop=0.3)
out, (h, c) = model(x)
out.sum().backward()
assert out.shape == (4, 2, 5) and torch.isfinite(out).all()
print("cmake build: rnnfused._C from", rnnfused._ops._C.__file__, "runs")
PY
)
rm -rf "$stage"
