"""ds_config.json: ZeRO settings from the file, everything the training config owns filled in from it.

Fields the training config owns may be "auto" (filled here) or absent; a
concrete value that disagrees with the training config is an error, so the two
can never silently differ.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import torch

from gpt.errors import GPTError


def load_ds_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise GPTError(f"DeepSpeed config {str(path)!r} does not exist: pass --ds_config=PATH "
                       "(the repository's ds_config.json is the default; run from the repository root).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise GPTError(f"{path} is not valid JSON: {err}.") from None
    if not isinstance(data, dict):
        raise GPTError(f"{path} must hold a JSON object of DeepSpeed settings.")
    return data


def _own(config: dict[str, Any], key: str, value: Any, source: str, flag: str) -> None:
    current = config.get(key, "auto")
    if current != "auto" and current != value:
        raise GPTError(f"{source} sets {key}={current!r} but the training config gives {value!r} ({flag}). "
                       f"Set it to \"auto\" in {source} so the training config decides.")
    config[key] = value


def resolve_ds_config(raw: dict[str, Any], source: str, *, micro_batch: int, local_accum: int, world_size: int,
                      grad_clip: float, dtype: torch.dtype, zero_stage: Optional[int]) -> dict[str, Any]:
    """A concrete DeepSpeed config for this run."""
    cfg = copy.deepcopy(raw)
    _own(cfg, "train_micro_batch_size_per_gpu", micro_batch, source, "--batch_size")
    _own(cfg, "gradient_accumulation_steps", local_accum, source, "--gradient_accumulation_steps / world size")
    _own(cfg, "train_batch_size", micro_batch * local_accum * world_size, source,
         "--batch_size x --gradient_accumulation_steps")
    _own(cfg, "gradient_clipping", grad_clip, source, "--grad_clip")
    for key, wanted in (("bf16", dtype == torch.bfloat16), ("fp16", dtype == torch.float16)):
        section = dict(cfg.get(key) or {})
        enabled = section.get("enabled", "auto")
        if enabled != "auto" and bool(enabled) != wanted:
            raise GPTError(f"{source} sets {key}.enabled={enabled} but the run's --dtype resolves to "
                           f"{str(dtype).removeprefix('torch.')}. Set {key}.enabled to \"auto\" (or change --dtype).")
        section["enabled"] = wanted
        cfg[key] = section
    zero = dict(cfg.get("zero_optimization") or {})
    if zero_stage is not None:
        zero["stage"] = zero_stage
    stage = zero.setdefault("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise GPTError(f"{source}: zero_optimization.stage={stage!r} is not a ZeRO stage (0, 1, 2 or 3).")
    cfg["zero_optimization"] = zero
    # our AdamW (torch's) is the client optimizer at every stage; DeepSpeed asks us to say we know
    cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 2**31 - 1)  # we log ourselves
    return cfg
