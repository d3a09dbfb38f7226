"""The model's compute ops, chosen by name so the model never imports an implementation.

Today every op is a plain-torch implementation from `kernels.reference`; our Triton
kernels will register here beside them, with `impl="auto"` picking per device.
"""
from __future__ import annotations

from typing import Callable

import torch

from kernels.reference import attention_math, attention_sdpa

ATTENTION_IMPLS: dict[str, Callable[..., torch.Tensor]] = {"sdpa": attention_sdpa, "math": attention_math}


def attention_impl(name: str) -> Callable[..., torch.Tensor]:
    """The attention function for a config's `attention` key ("auto" = sdpa)."""
    return ATTENTION_IMPLS["sdpa" if name == "auto" else name]
