"""Where and how a process computes: device, precision, autocast, seeds."""
from __future__ import annotations

import contextlib
import random
import re
from typing import ContextManager

import numpy as np
import torch

from gpt.errors import GPTError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPES = ("auto", *_DTYPES)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device_name(key: str, name: str) -> None:
    """The one check of a --device value, before anything asks the machine for it."""
    if not _DEVICE.match(name):
        raise GPTError(f"--{key}={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps.")


def resolve_device(name: str) -> torch.device:
    """`auto` = the first CUDA GPU, else Apple MPS, else CPU; explicit names are checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GPTError(f"--device={name} asks for CUDA, but no CUDA GPU is visible. Use --device=cpu (or auto).")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise GPTError(f"--device={name}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GPTError(f"--device={name} asks for Apple MPS, which this machine does not have. Use --device=cpu (or auto).")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU and MPS."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = _DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise GPTError("--dtype=float16 is not supported for training on CPU: use float32 or bfloat16.")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GPTError("--dtype=bfloat16: this GPU does not support bf16. Use --dtype=float16 (with loss scaling) or auto.")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed-precision context for forward passes; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG stream a training step can draw from, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def enable_fast_matmul(device: torch.device) -> None:
    """TF32 on Ampere+ GPUs: fp32 matmuls at tensor-core speed, as nanoGPT does."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
