"""Which library runs each float32 matrix product of the CPU layers: oneDNN, MKL, or rnnfused's
small-batch kernel.

The fastest one depends on the processor (MKL runs AVX2 code on AMD processors that have AVX-512,
oneDNN runs AVX-512 there; at a batch of 8 the small kernel beats both on AVX2 machines), so by
default each product shape is timed once per process with every backend that can run it, and the
fastest is kept, as ``torch.backends.cudnn.benchmark`` does for convolutions. The first call of a
new shape pays for the timing (milliseconds for the loop's products, up to about a second for the
largest input and weight-gradient products); later calls reuse the choice.

    rnnfused.cpu_gemm.available()        # e.g. ['onednn', 'mkl', 'small']
    rnnfused.cpu_gemm.choices()          # what each product shape chose, with the timings
    with rnnfused.cpu_gemm.using("mkl"):  # pin one backend in a block (tests, benchmarks)
        ...

The environment variable ``RNNFUSED_CPU_GEMM`` (``auto``, ``onednn``, ``mkl`` or ``small``) pins one
backend for a whole process. A pinned backend that cannot run a product (``small`` for the weight
gradients, ``onednn`` on a torch without it) leaves that product to MKL. float64
products always run through MKL (torch's BLAS), and CUDA tensors never come here.

Reproducibility: the libraries sum in different orders, so a float32 result can differ in its last
bits between two processes whose timings chose differently (two backends within a few percent of
each other can swap under load). Pin one (``RNNFUSED_CPU_GEMM``) where runs must match bit for bit.
"""
from __future__ import annotations

import contextlib

from . import _C

BACKENDS = ("onednn", "mkl", "small")


def available() -> list[str]:
    """The backends this process can run, in the order of ``BACKENDS``."""
    return list(_C.cpu_gemm_available())


def force(name: str | None) -> None:
    """Pin ``name`` for every product it can run; ``None`` or ``"auto"`` measures and chooses."""
    name = "auto" if name is None else name
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"rnnfused.cpu_gemm.force: name must be one of auto, {', '.join(BACKENDS)} "
                         f"or None, got {name!r}")
    if name != "auto" and name not in available():
        raise ValueError(f"rnnfused.cpu_gemm.force: the {name!r} backend cannot run in this process "
                         f"(available: {', '.join(available())})")
    _C.cpu_gemm_force(name)


def forced() -> str | None:
    """The pinned backend, or None when each product is measured."""
    name = _C.cpu_gemm_forced()
    return None if name == "auto" else name


@contextlib.contextmanager
def using(name: str | None):
    """Pin ``name`` inside the block (``None``/``"auto"``: measure), then restore what was pinned."""
    before = forced()
    force(name)
    try:
        yield
    finally:
        force(before)


def choices() -> list[dict]:
    """One dict per product shape run since the last ``clear()``: ``product`` (input, recurrent,
    projection, recurrent_backward, projection_backward, grad_input, grad_weight), ``m``, ``n``,
    ``k`` (the products before and after the loop are keyed by the next power of two of the size
    that is T * B: the rows of input and grad_input, the depth ``k`` of grad_weight), ``dtype``, ``threads``, ``backend``, and ``seconds``: the measured seconds per call of
    each backend timed (empty when the backend was pinned)."""
    return [dict(c) for c in _C.cpu_gemm_choices()]


def clear() -> None:
    """Forget every measured choice: the next call of each shape is timed again."""
    _C.cpu_gemm_clear()
