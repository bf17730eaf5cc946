"""Which processor a result was measured on, in the words the results files and the README use.

The speed ratios against nn.LSTM differ a lot between x86-64 CPUs: MKL runs AVX2 code on AMD, oneDNN
runs AVX-512 where the CPU has it, and rnnfused chooses a GEMM backend per product on each machine. So
every results file records the processor (`cpu_info`: model, vendor, family and model number, vector
instruction sets, cores), torch's CPU libraries (`torch_cpu`), and its file name carries a tag that tells
an AVX2-only AMD EPYC from an AVX-512 one (`file_tag`: 'amd-epyc-f25m1-avx2'). `label` and `isa_summary`
word the same for report.py's tables, including for files written before these fields existed.

Torch is imported only inside the functions that ask torch something: report.py imports this module to
label tables and needs no torch for it.
"""
from __future__ import annotations

import functools
import os
import platform
import re

# The vector instruction sets worth recording, in this order (the names /proc/cpuinfo's flags use).
VECTOR_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx_vnni_int8", "avx512f", "avx512dq",
                "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
                "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_bitalg", "avx512_vpopcntdq",
                "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "HygonGenuine": "Hygon", "CentaurHauls": "Centaur"}
# Environment variables that change which code the CPU libraries run; recorded when set.
CPU_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE",
           "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "RNNFUSED_CPU_GEMM")


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Gold 6248' -> 'intel-xeon-gold-6248', for file names."""
    text = re.sub(r"\((R|TM|tm|r)\)|CPU|@.*$", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def parse_cpuinfo(text: str) -> dict:
    """The first processor's fields of /proc/cpuinfo's text, plus the physical cores: the distinct
    (physical id, core id) pairs over all processors (None when the file does not say)."""
    first: dict[str, str] = {}
    cores, block = set(), {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block:
                if not first:
                    first = dict(block)
                if "core id" in block:
                    cores.add((block.get("physical id", "0"), block["core id"]))
            block = {}
            continue
        key, _, value = line.partition(":")
        block[key.strip()] = value.strip()
    first["_cores"] = len(cores) if cores else None
    return first


def isa_tag(isa: list[str] | None) -> str | None:
    """The widest vector instruction set, for file names and keys: 'avx512-amx', 'avx512', 'avx2', 'avx',
    'sse'; None when unknown."""
    if isa is None:
        return None
    s = set(isa)
    if "avx512f" in s:
        return "avx512-amx" if "amx_tile" in s else "avx512"
    for tag in ("avx2", "avx"):
        if tag in s:
            return tag
    return "sse"


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _torch_capability() -> str | None:
    try:
        import torch
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old torch without the query
        return None


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The processor: {"model_name", "vendor", "vendor_id", "family", "model", "stepping", "isa" (the
    VECTOR_FLAGS the CPU has), "isa_tag", "source", "cores" (physical), "logical_cpus", "usable_cpus" (this
    process's affinity)}. From /proc/cpuinfo (or the text given); elsewhere platform.processor(), with the
    ISA tag from torch's CPU capability (then "isa" is None: the flags are unknown)."""
    if cpuinfo is None:
        return dict(_cpu_info_here())
    return _cpu_info(cpuinfo)


@functools.lru_cache(maxsize=1)
def _cpu_info_here() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = ""
    return _cpu_info(text)


def _cpu_info(text: str) -> dict:
    fields = parse_cpuinfo(text)
    flags = fields.get("flags", "").split()
    vendor_id = fields.get("vendor_id")
    info = {
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": VENDORS.get(vendor_id, vendor_id),
        "vendor_id": vendor_id,
        "family": _int(fields.get("cpu family")),
        "model": _int(fields.get("model")),
        "stepping": _int(fields.get("stepping")),
        "isa": [f for f in VECTOR_FLAGS if f in flags] if flags else None,
        "isa_tag": None,
        "isa_source": "/proc/cpuinfo flags" if flags else None,
        "source": "/proc/cpuinfo" if fields.get("model name") else "platform.processor()",
        "cores": fields.get("_cores"),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    info["isa_tag"] = isa_tag(info["isa"])
    if info["isa_tag"] is None:  # no flags to read: what torch dispatches to ('AVX2', 'AVX512', ...)
        cap = _torch_capability()
        if cap and cap != "DEFAULT":
            info["isa_tag"], info["isa_source"] = cap.lower(), "torch.backends.cpu.get_cpu_capability()"
    return info


def torch_cpu() -> dict:
    """torch's CPU libraries: {"mkldnn": torch.backends.mkldnn.is_available(), "mkl":
    torch.backends.mkl.is_available(), "capability": the ATen kernels' ISA ('AVX2', 'AVX512'),
    "onednn_version", "mkl_version" (from torch.__config__.show()), "env": the CPU_ENV variables set}."""
    import torch

    config = torch.__config__.show()
    onednn = re.search(r"MKL-DNN v([\w.]+)|oneDNN v([\w.]+)", config)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    return {
        "mkldnn": torch.backends.mkldnn.is_available(),
        "mkl": torch.backends.mkl.is_available(),
        "capability": _torch_capability(),
        "onednn_version": next((g for g in onednn.groups() if g), None) if onednn else None,
        "mkl_version": mkl.group(1) if mkl else None,
        "env": {k: os.environ[k] for k in CPU_ENV if k in os.environ},
    }


def file_tag(info: dict) -> str:
    """'amd-epyc-f25m1-avx2': the model name's slug, family and model number, widest vector ISA. Two
    EPYCs that /proc/cpuinfo both calls 'AMD EPYC' get different names when one has AVX-512."""
    tag = slug(info.get("model_name") or "unknown")
    if info.get("family") is not None:
        tag += f"-f{info['family']}" + (f"m{info['model']}" if info.get("model") is not None else "")
    return tag + (f"-{info['isa_tag']}" if info.get("isa_tag") else "")


# ---- words, for report.py ------------------------------------------------------------------------

AVX512_EXTRAS = (("avx512_vnni", "VNNI"), ("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"))
AMX_EXTRAS = (("amx_bf16", "BF16"), ("amx_int8", "INT8"), ("amx_fp16", "FP16"))


def isa_summary(info: dict | None) -> str:
    """'AVX2, FMA; no AVX-512', 'AVX-512 (VNNI, BF16)', 'AVX-512 (VNNI, BF16), AMX (BF16, INT8)', or
    'ISA unknown'."""
    if not info:
        return "ISA unknown"
    isa = info.get("isa")
    if isa is None:
        tag = info.get("isa_tag")
        return f"{tag.upper()} (torch's CPU capability)" if tag else "ISA unknown"
    s = set(isa)
    if "avx512f" in s:
        extras = [name for flag, name in AVX512_EXTRAS if flag in s]
        text = "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
        if "amx_tile" in s:
            amx = [name for flag, name in AMX_EXTRAS if flag in s]
            text += ", AMX" + (f" ({', '.join(amx)})" if amx else "")
        return text
    if "avx2" in s:
        return "AVX2" + (", FMA" if "fma" in s else "") + "; no AVX-512"
    if "avx" in s:
        return "AVX; no AVX2"
    return "SSE only"


def label(run: dict, long: bool = False) -> str:
    """The processor of a results file: 'AMD EPYC (family 25 model 1, AVX2)'; with `long`, the ISA in
    full ('AMD EPYC (AMD family 25 model 1; AVX2, FMA; no AVX-512)'). A file written before the "cpu"
    field has only its device string: 'AMD EPYC (ISA unknown)'."""
    info = run.get("cpu")
    name = (info or {}).get("model_name") or run.get("device") or "unknown CPU"
    if not info:
        return f"{name} (ISA unknown: the file predates processor details)" if long else f"{name} (ISA unknown)"
    where = []
    if info.get("family") is not None:
        fam = f"family {info['family']}" + (f" model {info['model']}" if info.get("model") is not None else "")
        where.append(f"{info['vendor']} {fam}" if long and info.get("vendor") else fam)
    if long:
        return f"{name} ({'; '.join(where + [isa_summary(info)])})"
    short = isa_summary(info).split(";")[0]
    short = short.replace(", FMA", "")
    return f"{name} ({', '.join(where + [short])})"


def key(run: dict) -> tuple:
    """What tells two processors apart in report.py's choice of the newest file: the GPU's name on CUDA;
    on the CPU the vendor, model name, family, model and ISA tag (for an older file: its device string)."""
    if run.get("device_type") != "cpu":
        return (run.get("device"),)
    info = run.get("cpu")
    if not info:
        return ("", run.get("device"), None, None, None)
    return (info.get("vendor") or "", info.get("model_name"), info.get("family"), info.get("model"),
            info.get("isa_tag"))
