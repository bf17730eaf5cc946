#!/usr/bin/env bash
# Compiles every csrc/*.cu with nvcc for sm_80 and sm_90 on a machine without a GPU and with a CPU
# build of torch: CI cannot run the CUDA kernels, but it must not let them stop compiling.
#
# The headers come from a CUDA build of torch and NVIDIA's header packages, fetched once with
# `pip download --no-deps` into a cache ($RNNFUSED_CACHE, default .cache/cuda-headers, git-ignored);
# only their include/ trees are unpacked. The CUDA runtime headers and nvcc are the local toolkit's
# ($CUDA_HOME, default /usr/local/cuda; an `nvcc` on PATH may be a wrapper, so it is not used).
# The flags are those torch.utils.cpp_extension and setup.py pass to nvcc.
#
# Prints PASS/FAIL per file; exits non-zero when any file fails to compile. Set
# RNNFUSED_NVCC_WERROR=1 to fail on warnings in our own sources as well, RNNFUSED_NVCC_OBJDIR=dir
# to keep the objects and logs, RNNFUSED_NVCC_FLAGS to add flags.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
nvcc="$CUDA_HOME/bin/nvcc"
cache=${RNNFUSED_CACHE:-$repo/.cache/cuda-headers}
python=${PYTHON:-python3}

# A CUDA 13.0 build of torch and the header packages its CUDA headers include (cuBLAS, cuSPARSE,
# cuSOLVER, cuRAND), at the versions torch's cuda-toolkit==13.0.3 dependency pins.
TORCH_SPEC=${RNNFUSED_TORCH_CUDA_SPEC:-torch==2.14.1}
HEADER_PKGS=(nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66
             nvidia-curand==10.4.0.35)
stamp="$cache/include-root/.complete-$(echo "$TORCH_SPEC ${HEADER_PKGS[*]}" | md5sum | cut -c1-12)"

[ -x "$nvcc" ] || { echo "nvcc_check: FAIL: no nvcc at $nvcc (set CUDA_HOME)"; exit 1; }
start=$(date +%s)

if [ ! -f "$stamp" ]; then
  echo "nvcc_check: fetching headers of $TORCH_SPEC (CUDA build) and ${HEADER_PKGS[*]} into $cache"
  mkdir -p "$cache/wheels"
  # cp311 manylinux wheels whatever the local Python: only their headers are used.
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$cache/wheels" "$TORCH_SPEC" "${HEADER_PKGS[@]}" \
    >"$cache/pip.log" 2>&1 || { cat "$cache/pip.log"; echo "nvcc_check: FAIL: pip download"; exit 1; }
  rm -rf "$cache/include-root"
  "$python" - "$cache/wheels" "$cache/include-root" "$TORCH_SPEC" "${HEADER_PKGS[@]}" <<'PY'
import glob, os, re, sys, zipfile

wheels, dest, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
for spec in specs:
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    found = sorted(glob.glob(os.path.join(wheels, f"{stem}-{version}*.whl")))
    if not found:
        sys.exit(f"nvcc_check: no wheel for {spec} in {wheels}")
    with zipfile.ZipFile(found[-1]) as whl:
        if stem == "torch":
            version_py = whl.read("torch/version.py").decode()
            if not re.search(r"^cuda\s*(:.*)?=\s*'\d", version_py, re.M):
                sys.exit(f"nvcc_check: {found[-1]} is not a CUDA build of torch")
            wanted = re.compile(r"^torch/include/")
        else:
            wanted = re.compile(r"^nvidia/[^/]+/include/")
        members = [m for m in whl.namelist() if wanted.match(m) and not m.endswith("/")]
        whl.extractall(dest, members)
        print(f"  {os.path.basename(found[-1])}: {len(members)} headers")
        if stem == "torch":  # the libraries an extension links, for their exported symbols
            libs = [f"torch/lib/lib{n}.so" for n in ("c10", "c10_cuda", "torch_cpu", "torch_cuda")]
            whl.extractall(os.path.join(dest, "libs"), libs)
PY
  if command -v nm >/dev/null; then
    for lib in "$cache"/include-root/libs/torch/lib/*.so; do nm -D --defined-only "$lib"; done \
      | awk '{print $3}' | sort -u >"$cache/include-root/torch-exports.txt"
  fi
  rm -rf "$cache/include-root/libs"
  touch "$stamp"
  rm -rf "$cache/wheels"  # 1.3 GB of libraries; the headers are all that is kept
fi

root="$cache/include-root"
includes=(-I"$repo/csrc" -I"$root/torch/include" -I"$root/torch/include/torch/csrc/api/include")
for dir in "$root"/nvidia/*/include; do includes+=(-I"$dir"); done
includes+=(-I"$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")")

flags=(-std=c++20 -O3 --expt-relaxed-constexpr -lineinfo --threads 2 ${RNNFUSED_NVCC_FLAGS:-}
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -Xcompiler -fPIC -Xcompiler -Wall -Xcompiler -Wno-unknown-pragmas
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
       -DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1
       -DRNNFUSED_WITH_CUDA)

status=0
shopt -s nullglob
sources=(csrc/*.cu)
[ ${#sources[@]} -gt 0 ] || { echo "nvcc_check: no csrc/*.cu to compile"; exit 0; }
if [ -n "${RNNFUSED_NVCC_OBJDIR:-}" ]; then  # keep the objects (e.g. to inspect their symbols)
  obj=$RNNFUSED_NVCC_OBJDIR
  mkdir -p "$obj"
else
  obj=$(mktemp -d)
  trap 'rm -rf "$obj"' EXIT
fi
for src in "${sources[@]}"; do
  t0=$(date +%s)
  log="$obj/$(basename "$src").log"
  if "$nvcc" "${flags[@]}" "${includes[@]}" -c "$src" -o "$obj/$(basename "$src").o" >"$log" 2>&1; then
    # Every torch symbol the object needs must be exported by torch's libraries (at::cuda::blas,
    # for one, is not): otherwise the extension builds but fails to load.
    exports="$root/torch-exports.txt"
    if [ -s "$exports" ] && command -v nm >/dev/null; then
      missing=$(nm -u "$obj/$(basename "$src").o" | awk '{print $2}' | sort -u | comm -23 - "$exports" \
                | c++filt | grep -E "^(void |[a-zA-Z_:<>]+ )?(at|c10|torch|caffe2)::" || true)
      if [ -n "$missing" ]; then
        echo "$missing"
        echo "FAIL $src (uses torch symbols that libtorch does not export)"
        status=1
        continue
      fi
    fi
    # Warnings that point into our own sources (the torch headers' are not ours to fix).
    ours=$(grep -E "^(csrc/|$repo/csrc/)[^:]+\([0-9]+\)|^(csrc/|$repo/csrc/)[^:]+:[0-9]+" "$log" \
           | grep -ci warning || true)
    if [ "$ours" -gt 0 ]; then
      cat "$log"
      if [ "${RNNFUSED_NVCC_WERROR:-0}" = 1 ]; then
        echo "FAIL $src ($ours warnings in our sources)"; status=1; continue
      fi
      echo "PASS $src ($(( $(date +%s) - t0 )) s, $ours warnings in our sources)"
    else
      echo "PASS $src ($(( $(date +%s) - t0 )) s)"
    fi
  else
    cat "$log"
    echo "FAIL $src"
    status=1
  fi
done
echo "nvcc_check: $([ $status = 0 ] && echo PASS || echo FAIL) in $(( $(date +%s) - start )) s"
exit $status
