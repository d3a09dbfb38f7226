"""What this process can run kernels on: triton importable, Triton's interpreter on, a CUDA GPU.

Read once, here, so every kernel module and the dispatch agree. TRITON_INTERPRET is read by
triton itself when a kernel is decorated, so it must be set before any kernel module is
imported (tests/conftest.py does it on machines without CUDA).
"""
from __future__ import annotations

import os

import torch


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # not installed (e.g. macOS) or a broken install: the references still work
        return False
    return True


TRITON = _triton_importable()
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") == "1"
# how each op may be computed: auto = our kernel where it is known to fit, else torch's op;
# torch = torch's fused op; math = the formula written out (the test oracle)
IMPLS = ("auto", "triton", "torch", "math")
LOG2E = 1.4426950408889634  # exponentials in base 2: exp(x) = 2 ** (x * LOG2E)


def available() -> dict[str, bool]:
    """{'triton': importable, 'cuda': a GPU is visible, 'interpreter': TRITON_INTERPRET=1}."""
    return {"triton": TRITON, "cuda": torch.cuda.is_available(), "interpreter": INTERPRETER}
