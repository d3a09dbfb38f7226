"""AdamW with decay/no-decay groups, and the learning-rate schedule."""
from __future__ import annotations

import math

import torch

from gpt.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW where matrices (dim >= 2: linears, embeddings) decay and biases/LayerNorm gains do not.

    `cfg.adamw_impl`: "auto" is torch's fused AdamW (one kernel over all parameters) on CUDA and on
    CPU, and foreach elsewhere. On CPU fused measured 1.1 ms per step for the Shakespeare CPU model
    against 4.2 ms foreach and 5.0 ms one parameter at a time, with the same losses
    (docs/benchmarks.md, "Training speed (CPU)"). "fused", "foreach" or "loop" force one, which is
    how the training benchmark (benchmarks/train.py) compares them.
    """
    impl = cfg.adamw_impl
    params = [p for p in model.parameters() if p.requires_grad]
    # a ZeRO-3 parameter built under zero.Init is an empty placeholder; ds_shape is its real shape
    dims = {id(p): len(getattr(p, "ds_shape", p.shape)) for p in params}
    groups = [
        {"params": [p for p in params if dims[id(p)] >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if dims[id(p)] < 2], "weight_decay": 0.0},
    ]
    if impl == "auto":
        impl = "fused" if device_type in ("cuda", "cpu") else "foreach"
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=impl == "fused", foreach=impl == "foreach")


def lr_at(it: int, cfg: OptimConfig) -> float:
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)
