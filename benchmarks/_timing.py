"""Timing and provenance helpers shared by the benchmark scripts (SPEC §7).

`round_robin` times several callables interleaved, so that drift in the machine (clock, other load)
hits every variant alike; `quartiles` summarizes the samples; `provenance` is the JSON header that
says where and from what a result came.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

import _processor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once_ms(fn: Callable[[], object], device: torch.device) -> tuple[float, float | None]:
    """One call: (wall ms, host ms). Wall time: CUDA events on the GPU, perf_counter on the CPU. Host ms
    (CUDA only, else None): how long the call took to return, i.e. to enqueue its work; when it is close
    to the wall time the call is bound by the host (launches, dispatch), not by the GPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        t0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - t0) * 1e3
        end.record()
        end.synchronize()
        return start.elapsed_time(end), host
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3, None


def round_robin(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int,
                repeats: int, budget_s: float | None = None, min_repeats: int = 3,
                log: Callable[[str], None] | None = None,
                host_samples: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Times every callable `repeats` times, one call of each per round, the order rotated each round.

    Stops early (after at least `min_repeats` rounds) once `budget_s` seconds have passed, so a slow
    variant cannot stall a run; the number of samples is reported with every summary. On CUDA the host
    (enqueue) times go to `host_samples` when given.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in names}
    t0 = time.perf_counter()
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            wall, host = time_once_ms(fns[name], device)
            samples[name].append(wall)
            if host is not None and host_samples is not None:
                host_samples.setdefault(name, []).append(host)
        elapsed = time.perf_counter() - t0
        if log:
            log(f"  round {r + 1}/{repeats} ({elapsed:.0f} s)")
        if budget_s is not None and r + 1 >= min_repeats and elapsed > budget_s:
            break
    return samples


def quartiles(samples: list[float]) -> dict:
    """Median and quartiles in ms (inclusive method, so 2 samples still give sensible quartiles)."""
    if len(samples) == 1:
        q = [samples[0]] * 3
    else:
        q = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median": round(q[1], 4), "p25": round(q[0], 4), "p75": round(q[2], 4), "n": len(samples)}


def peak_mem_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory allocated by torch during one call, in MiB above what was allocated before it.

    CUDA only: the CPU allocator keeps no such counter, so CPU results say null rather than guess.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 2)


def gpu_work_per_call(fn: Callable[[], object], device: torch.device) -> dict | None:
    """What one call puts on the GPU, read by torch.profiler: {"kernels": n, "copies": m} (memcpy and
    memset operations counted apart). CUDA only (None elsewhere): a loop that launches hundreds of
    small kernels per call is bound by the host, whatever each kernel costs."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    kernels = copies = 0
    for event in prof.events():
        if event.device_type != DeviceType.CUDA:
            continue
        if event.name.startswith(("Memcpy", "Memset")):
            copies += 1
        else:
            kernels += 1
    return {"kernels": kernels, "copies": copies}


class TimeLimitExceeded(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raises TimeLimitExceeded in the main thread after `seconds` (used to bound torch.compile)."""
    def on_alarm(signum, frame):
        raise TimeLimitExceeded(f"exceeded {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- provenance ---------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


slug = _processor.slug  # 'Intel(R) Xeon(R) Gold 6248' -> 'intel-xeon-gold-6248', for file names


def git_commit() -> str | None:
    """HEAD's hash, plus '-dirty' when tracked or untracked files differ (the results folders excepted)."""
    def git(*args):
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = git("status", "--porcelain")
    except (OSError, subprocess.TimeoutExpired):
        return None
    changed = [line for line in status.stdout.splitlines()
               if not line[3:].startswith(("benchmarks/results", "examples/results"))]
    return head.stdout.strip() + ("-dirty" if changed else "")


def provenance(device: torch.device, kind: str) -> dict:
    """The header of every results file: where (device, and on every run the processor and torch's CPU
    libraries: _processor.cpu_info, torch_cpu), from what and when. Call it after torch.set_num_threads."""
    return {
        "kind": kind,
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python3"] + [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu": _processor.cpu_info(),
        "torch_cpu": _processor.torch_cpu(),
    }


def results_stem(device: torch.device, suffix: str = "") -> str:
    """'cpu-amd-epyc-f25m1-avx2-2026-12-04' (the processor's _processor.file_tag: model, family and model
    number, widest vector ISA) / 'cuda-nvidia-h100-80gb-hbm3-2026-05-09'."""
    day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    name = _processor.file_tag(_processor.cpu_info()) if device.type == "cpu" else slug(device_name(device))
    return f"{device.type}-{name}-{day}{suffix}"
