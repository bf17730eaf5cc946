#!/usr/bin/env bash
# Compiles every csrc/*.cu with nvcc on a machine without a GPU and with a CPU build of torch: CI
# cannot run the CUDA kernels, but it must not let them stop compiling. Against two CUDA builds of
# torch:
#   torch 2.14.1, for sm_80 and sm_90: a recent torch, the architectures we ship; the .cu files as
#     one unit (a generated file that includes them all: each file pays ~60 s of torch's headers,
#     and the driver is split per cell only so that a many-core build compiles the cells at once);
#   torch 2.11.0 (+cu130, the GPU machine's torch, issue 11), for sm_90 (its H100/H200) only, each
#     .cu file as setup.py compiles it; there the CPU sources (csrc/*.cpp) are also checked (g++
#     -fsyntax-only), as setup.py compiles them on that machine, so that the first device minute is
#     not lost to a build error.
# RNNFUSED_TORCH_CUDA_CHECKS replaces that list: "SPEC:ARCHS[:OPTIONS] ...", OPTIONS a comma list of
# cpp and unity, e.g. "torch==2.14.1:80,90:unity torch==2.11.0:90:cpp" (the default);
# RNNFUSED_TORCH_CUDA_SPEC=torch==X, the older single-version setting, means "torch==X:80,90".
#
# The headers come from torch's CUDA wheels on PyPI and NVIDIA's header packages, fetched once with
# `pip download --no-deps` into a cache shared by every checkout on the machine ($RNNFUSED_CACHE,
# default ~/.cache/rnnfused/cuda-headers, so that CI's fresh clone finds it warm); only their
# include/ trees are kept, plus the list of symbols libtorch exports (about 70 MB per torch). A cold
# cache downloads 0.55 GB per torch version and 0.75 GB of NVIDIA packages once (both torch
# versions share the NVIDIA headers: the packages pinned by 2.14.1's cuda-toolkit 13.0.3; 2.11.0
# pins 13.0.2, same CUDA 13.0 APIs). The CUDA runtime headers and nvcc are the local toolkit's
# ($CUDA_HOME, default /usr/local/cuda; an `nvcc` on PATH may be a wrapper, so it is not used). The
# flags are those torch.utils.cpp_extension and setup.py pass to nvcc. The compiles run in parallel
# ($RNNFUSED_NVCC_JOBS at a time, default 2).
#
# Prints PASS/FAIL per file and torch version; exits non-zero when any file fails to compile. Set
# RNNFUSED_NVCC_WERROR=1 to fail on warnings in our own sources as well, RNNFUSED_NVCC_OBJDIR=dir
# to keep the objects and logs, RNNFUSED_NVCC_FLAGS to add flags.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
nvcc="$CUDA_HOME/bin/nvcc"
cache=${RNNFUSED_CACHE:-${XDG_CACHE_HOME:-${HOME:-$repo}/.cache}/rnnfused/cuda-headers}
python=${PYTHON:-python3}
jobs=${RNNFUSED_NVCC_JOBS:-2}

if [ -n "${RNNFUSED_TORCH_CUDA_SPEC:-}" ]; then
  read -r -a checks <<<"$RNNFUSED_TORCH_CUDA_SPEC:80,90"
else
  read -r -a checks <<<"${RNNFUSED_TORCH_CUDA_CHECKS:-torch==2.14.1:80,90:unity torch==2.11.0:90:cpp}"
fi
# The NVIDIA header packages torch's CUDA headers include (cuBLAS, cuSPARSE, cuSOLVER, cuRAND), at
# the versions torch 2.14.1's cuda-toolkit==13.0.3 dependency pins.
HEADER_PKGS=(nvidia-cublas==13.1.1.3 nvidia-cusparse==12.6.3.3 nvidia-cusolver==12.0.4.66
             nvidia-curand==10.4.0.35)

[ -x "$nvcc" ] || { echo "nvcc_check: FAIL: no nvcc at $nvcc (set CUDA_HOME)"; exit 1; }
start=$(date +%s)

# --- the headers: one folder per torch version, one for the NVIDIA packages ----------------------
spec_dir() { echo "$cache/${1//==/-}"; }  # torch==2.11.0 -> $cache/torch-2.11.0
nvidia_dir="$cache/nvidia-$(echo "${HEADER_PKGS[*]}" | md5sum | cut -c1-12)"
fetch=()
for check in "${checks[@]}"; do
  spec=${check%%:*}
  [ -f "$(spec_dir "$spec")/.complete" ] || fetch+=("$spec")
done
[ -f "$nvidia_dir/.complete" ] || fetch+=("${HEADER_PKGS[@]}")

if [ ${#fetch[@]} -gt 0 ]; then
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9  # another checkout on this machine may be filling the same cache
  wheels=$(mktemp -d "$cache/wheels.XXXXXX")
  trap 'rm -rf "$wheels"' EXIT
  echo "nvcc_check: fetching ${fetch[*]} (CUDA builds) into $cache"
  t0=$(date +%s)
  # cp311 manylinux wheels whatever the local Python: only their headers are used. One pip call
  # per torch version (pip refuses two versions of a package in one call), one for the rest.
  groups=()
  for spec in "${fetch[@]}"; do [[ $spec == torch==* ]] && groups+=("$spec"); done
  others=$(printf '%s\n' "${fetch[@]}" | grep -v '^torch==' | tr '\n' ' ' || true)
  [ -n "$others" ] && groups+=("$others")
  for group in "${groups[@]}"; do
    # shellcheck disable=SC2086  # a group is a list of requirements
    "$python" -m pip download -q --no-cache-dir --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 -d "$wheels" $group \
      >"$wheels/pip.log" 2>&1 || { cat "$wheels/pip.log"; echo "nvcc_check: FAIL: pip download $group"; exit 1; }
  done
  echo "nvcc_check: downloaded $(du -sm "$wheels" | cut -f1) MB in $(( $(date +%s) - t0 )) s"
  for group in "${groups[@]}"; do  # a torch version, or the NVIDIA header packages
    case $group in
      torch==*) dest=$(spec_dir "$group") ;;
      *) dest=$nvidia_dir ;;
    esac
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    # shellcheck disable=SC2086  # a group is a list of requirements
    "$python" - "$wheels" "$dest.tmp" $group <<'PY'
import glob, os, re, sys, zipfile

wheels, dest, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
for spec in specs:
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    found = sorted(glob.glob(os.path.join(wheels, f"{stem}-{version}-*.whl")))
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
    os.remove(found[-1])  # up to 1 GB of libraries; the headers are all that is kept
PY
    if [ -d "$dest.tmp/libs" ]; then
      if command -v nm >/dev/null; then
        for lib in "$dest.tmp"/libs/torch/lib/*.so; do nm -D --defined-only "$lib"; done \
          | awk '{print $3}' | sort -u >"$dest.tmp/torch-exports.txt"
      fi
      rm -rf "$dest.tmp/libs"
    fi
    touch "$dest.tmp/.complete"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
  done
  rm -rf "$wheels"
  trap - EXIT
  flock -u 9
  echo "nvcc_check: headers ready in $(( $(date +%s) - t0 )) s"
fi

# --- the compiles ----------------------------------------------------------------------------------
py_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
nvidia_includes=()
for dir in "$nvidia_dir"/nvidia/*/include; do nvidia_includes+=(-I"$dir"); done
defines=(-DTORCH_API_INCLUDE_EXTENSION_H -DTORCH_EXTENSION_NAME=_C -D_GLIBCXX_USE_CXX11_ABI=1
         -DRNNFUSED_WITH_CUDA)
read -r -a extra_flags <<<"${RNNFUSED_NVCC_FLAGS:-}"
nvcc_flags=(-std=c++20 -O3 --expt-relaxed-constexpr -lineinfo --threads 2 "${extra_flags[@]}"
            -Xcompiler -fPIC -Xcompiler -Wall -Xcompiler -Wno-unknown-pragmas
            -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
            -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ "${defines[@]}")
# setup.py's C++ flags, less -march=native (a syntax check needs no code generation)
cxx_flags=(-fsyntax-only -std=c++20 -O3 -fopenmp -fno-trapping-math -fno-math-errno -fPIC -Wall
           -Wno-unknown-pragmas "${defines[@]}")

shopt -s nullglob
sources=(csrc/*.cu)
cpp_sources=(csrc/*.cpp)
[ ${#sources[@]} -gt 0 ] || { echo "nvcc_check: no csrc/*.cu to compile"; exit 0; }
if [ -n "${RNNFUSED_NVCC_OBJDIR:-}" ]; then  # keep the objects (e.g. to inspect their symbols)
  obj=$RNNFUSED_NVCC_OBJDIR
  mkdir -p "$obj"
else
  obj=$(mktemp -d)
  trap 'rm -rf "$obj"' EXIT
fi

# One compile: writes $out.log and $out.result ("PASS ..." or "FAIL ..."), never fails itself.
compile_one() {  # kind (cu|cpp) spec archs src out
  local kind=$1 spec=$2 archs=$3 src=$4 out=$5 root t0 gencode=() a ours missing exports
  root=$(spec_dir "$spec")
  local includes=(-I"$repo/csrc" -I"$root/torch/include" -I"$root/torch/include/torch/csrc/api/include"
                  "${nvidia_includes[@]}" -I"$py_include")
  t0=$(date +%s)
  if [ "$kind" = cpp ]; then
    if ! "${CXX:-c++}" "${cxx_flags[@]}" "${includes[@]}" -I"$CUDA_HOME/include" "$src" >"$out.log" 2>&1; then
      echo "FAIL" >"$out.result"; return 0
    fi
  else
    for a in ${archs//,/ }; do gencode+=(-gencode "arch=compute_$a,code=sm_$a"); done
    if ! "$nvcc" "${nvcc_flags[@]}" "${gencode[@]}" "${includes[@]}" -c "$src" -o "$out.o" >"$out.log" 2>&1; then
      echo "FAIL" >"$out.result"; return 0
    fi
    # Every torch symbol the object needs must be exported by torch's libraries (at::cuda::blas,
    # for one, is not): otherwise the extension builds but fails to load.
    exports="$root/torch-exports.txt"
    if [ -s "$exports" ] && command -v nm >/dev/null; then
      missing=$(nm -u "$out.o" | awk '{print $2}' | sort -u | comm -23 - "$exports" \
                | c++filt | grep -E "^(void |[a-zA-Z_:<>]+ )?(at|c10|torch|caffe2)::" || true)
      if [ -n "$missing" ]; then
        echo "$missing" >>"$out.log"
        echo "FAIL (uses torch symbols that libtorch does not export)" >"$out.result"; return 0
      fi
    fi
  fi
  # Warnings that point into our own sources (the torch headers' are not ours to fix).
  ours=$(grep -E "^(csrc/|$repo/csrc/)[^:]+\([0-9]+\)|^(csrc/|$repo/csrc/)[^:]+:[0-9]+" "$out.log" \
         | grep -ci warning || true)
  if [ "$ours" -gt 0 ] && [ "${RNNFUSED_NVCC_WERROR:-0}" = 1 ]; then
    echo "FAIL ($ours warnings in our sources)" >"$out.result"
  elif [ "$ours" -gt 0 ]; then
    echo "PASS ($(( $(date +%s) - t0 )) s, $ours warnings in our sources)" >"$out.result"
  else
    echo "PASS ($(( $(date +%s) - t0 )) s)" >"$out.result"
  fi
}

names=()  # "label|out" per compile, in the order they are reported
for check in "${checks[@]}"; do
  IFS=: read -r spec archs options <<<"$check"
  options=",${options:-},"
  tag=${spec//==/-}
  mkdir -p "$obj/$tag"
  files=("${sources[@]}")
  unit=""
  if [[ "$options" == *,unity,* ]]; then
    unit="$obj/$tag/all_cuda_sources.cu"
    printf '#include "%s"\n' "${sources[@]/#/$repo/}" >"$unit"
    files=("$unit")
  fi
  [[ "$options" == *,cpp,* ]] && files+=("${cpp_sources[@]}")
  for src in "${files[@]}"; do
    kind=cu; label="$src against $spec (sm_${archs//,/, sm_})"
    [ "$src" = "$unit" ] && label="${sources[*]} (one unit) against $spec (sm_${archs//,/, sm_})"
    case $src in *.cpp) kind=cpp; label="$src against $spec (g++ -fsyntax-only)" ;; esac
    out="$obj/$tag/$(basename "$src")"
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    compile_one "$kind" "$spec" "$archs" "$src" "$out" &
    names+=("$label|$out")
  done
done
wait

status=0
for entry in "${names[@]}"; do
  label=${entry%|*}; out=${entry##*|}
  result=$(cat "$out.result" 2>/dev/null || echo "FAIL (no result)")
  case $result in
    PASS*warnings*) cat "$out.log" ;;
    FAIL*) cat "$out.log"; status=1 ;;
  esac
  echo "${result%% *} $label${result#"${result%% *}"}"
done
times >"$obj/times.txt"  # in this shell: the CPU time of every process the check waited for
cpu=$(tail -1 "$obj/times.txt" | awk '{print $1 " user, " $2 " sys"}')
echo "nvcc_check: $([ $status = 0 ] && echo PASS || echo FAIL) in $(( $(date +%s) - start )) s (compilers' CPU time: $cpu)"
exit $status
