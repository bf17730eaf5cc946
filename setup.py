"""Builds rnnfused._C: the CPU sources always, the CUDA sources when torch is a CUDA build and a
CUDA toolkit is found (CUDA_HOME). The package's metadata is in pyproject.toml; its version is
rnnfused.__version__. Install with `pip install --no-build-isolation .` against an installed torch
(build isolation would pull a multi-GB CUDA torch into the build environment)."""
import glob
import os

from setuptools import setup


def _compiler_accepts(flag):
    import subprocess
    import tempfile

    cc = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("int main() { return 0; }\n")
        cmd = [cc, flag, "-c", src, "-o", os.path.join(tmp, "probe.o")]
        return subprocess.run(cmd, capture_output=True).returncode == 0


def extension():
    import torch
    from torch.utils import cpp_extension

    # -fno-trapping-math / -fno-math-errno (as torch itself builds) let the pointwise loops
    # vectorize without changing any IEEE result; RNNFUSED_CPU_ARCH picks the vector width
    # (default: this machine's, "native"; set it to "" for a portable build, e.g. x86-64-v2).
    # -g0: Python's CFLAGS carry -g, and debug info doubles the compile time for nothing a user needs.
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-Wall",
           "-Wno-unknown-pragmas"]
    arch = os.environ.get("RNNFUSED_CPU_ARCH", "native")
    if arch and _compiler_accepts(f"-march={arch}"):
        cxx.append(f"-march={arch}")
    sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not cuda_home and os.path.isdir("/usr/local/cuda"):
        cuda_home = "/usr/local/cuda"
    use_cuda = (
        torch.version.cuda is not None
        and cuda_sources
        and cuda_home is not None
        and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
        and os.environ.get("RNNFUSED_NO_CUDA") != "1"
    )
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        return cpp_extension.CUDAExtension(
            "rnnfused._C",
            sources + cuda_sources,
            define_macros=[("RNNFUSED_WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
            },
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "rnnfused._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
    )


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    try:  # ninja compiles the sources in parallel
        import ninja  # noqa: F401
        use_ninja = True
    except ImportError:
        use_ninja = False
    return BuildExtension.with_options(use_ninja=use_ninja)


def torch_requirement():
    """The torch a build needs at run time: the minor version it was compiled against, since a
    compiled extension is tied to torch's C++ ABI (2.13.x for a build against 2.13.0+cpu)."""
    import re

    import torch

    major, minor = (int(v) for v in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


# Name, version, description, packages and package data: pyproject.toml.
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": build_ext_class()},
    install_requires=[torch_requirement()],
)
