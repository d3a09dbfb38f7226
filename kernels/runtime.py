"""What this process can run kernels on: triton importable, Triton's interpreter on, a CUDA GPU.

Read once, here, so every kernel module and the dispatch agree. TRITON_INTERPRET is read by
triton itself when a kernel is decorated, so it must be set before any kernel module is
imported (tests/conftest.py does it on machines without CUDA).
"""
from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=None)
def _device_limits(index: int) -> tuple[tuple[int, int], int]:
    props = torch.cuda.get_device_properties(index)
    # the opt-in maximum is what a Triton kernel may use (triton checks its launches against the same
    # figure); the plain shared_memory_per_block is the 48 KiB a kernel gets without opting in
    optin = getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block)
    return (props.major, props.minor), int(optin)


def _index(device: torch.device | str | int) -> int:
    if isinstance(device, int):
        return device
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def device_capability(device: torch.device | str | int) -> tuple[int, int]:
    """A CUDA device's compute capability (major, minor), read once per device."""
    return _device_limits(_index(device))[0]


def max_shared_memory(device: torch.device | str | int) -> int:
    """The bytes of shared memory one block may use on a CUDA device, read once per device."""
    return _device_limits(_index(device))[1]
