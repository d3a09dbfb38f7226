"""Strategies: how the model and optimizer are spread over processes (single, DDP, FSDP, DeepSpeed)."""
from __future__ import annotations

import torch

from gpt.config import Config
from gpt.distributed import DistEnv
from gpt.errors import GPTError
from gpt.strategy.base import Strategy


def choose_strategy(cfg: Config, denv: DistEnv) -> str:
    """`auto`: deepspeed under its launcher or with --zero_stage, ddp when WORLD_SIZE > 1, single otherwise.
    FSDP is never chosen for you: it is asked for by name (--strategy=fsdp, or `strategy: fsdp` in the config)."""
    name = cfg.dist.strategy
    if name == "auto":
        if denv.launcher == "deepspeed" or cfg.dist.zero_stage is not None:
            return "deepspeed"
        return "ddp" if denv.world_size > 1 else "single"
    if name == "single" and denv.world_size > 1:
        raise GPTError(f"--strategy=single but the launcher started {denv.world_size} processes: use --strategy=ddp "
                       "(or auto), or start one process with `python launch/train.py`.")
    return name


def build_strategy(cfg: Config, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int,
                   debug: bool = False) -> Strategy:
    """The strategy `choose_strategy` names, for `local_accum` micro-batches per step on this rank."""
    name = choose_strategy(cfg, denv)
    args = (denv, device, dtype, local_accum, cfg.optim.grad_clip)
    if name == "deepspeed":
        from gpt.strategy.deepspeed import DeepSpeedStrategy
        return DeepSpeedStrategy(*args, ds_config=cfg.dist.ds_config, zero_stage=cfg.dist.zero_stage,
                                 micro_batch=cfg.data.batch_size, dist_timeout_s=cfg.dist.dist_timeout, debug=debug)
    if name == "fsdp":
        from gpt.strategy.fsdp import FSDPStrategy
        return FSDPStrategy(*args, accumulation=cfg.dist.fsdp_accumulation, dist_timeout_s=cfg.dist.dist_timeout)
    if name == "ddp":
        from gpt.strategy.ddp import DDPStrategy
        return DDPStrategy(*args)
    from gpt.strategy.single import SingleStrategy
    return SingleStrategy(*args)
