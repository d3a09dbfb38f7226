"""The optimizer (AdamW, or Muon for the hidden matrices with AdamW for the rest) and the LR schedules."""
from __future__ import annotations

import math

import torch

from gpt.config import OptimConfig
from gpt.muon import Muon


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str, rank: int = 0,
                    world_size: int = 1) -> torch.optim.Optimizer:
    """AdamW where matrices (dim >= 2: linears, embeddings) decay and biases/norm gains do not; or, with
    `cfg.optimizer == "muon"`, Muon (gpt/muon.py) for the model's hidden matrices and that AdamW for the rest.

    `cfg.adamw_impl`: "auto" is torch's fused AdamW (one kernel over all parameters) on CUDA and on
    CPU, and foreach elsewhere. On CPU fused measured 1.1 ms per step for the Shakespeare CPU model
    against 4.2 ms foreach and 5.0 ms one parameter at a time, with the same losses
    (docs/benchmarks.md, "Training speed (CPU)"). "fused", "foreach" or "loop" force one, which is
    how the training benchmark (benchmarks/train.py) compares them.

    Every group carries `lr_scale`, its peak learning rate over `learning_rate`, so one schedule drives
    both halves (`set_lr`); group 0 is always AdamW's decayed group, whose lr is the one logged.
    `rank` and `world_size` let Muon share its orthogonalisation across DDP ranks.
    """
    impl = cfg.adamw_impl
    if impl == "auto":
        impl = "fused" if device_type in ("cuda", "cpu") else "foreach"
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    hidden = model.hidden_matrices() if cfg.optimizer == "muon" else {}
    rest = [p for name, p in params.items() if name not in hidden]
    # a ZeRO-3 parameter built under zero.Init is an empty placeholder; ds_shape is its real shape
    dims = {id(p): len(getattr(p, "ds_shape", p.shape)) for p in rest}
    groups = [
        {"params": [p for p in rest if dims[id(p)] >= 2], "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": [p for p in rest if dims[id(p)] < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                                 fused=impl == "fused", foreach=impl == "foreach")
    scale = cfg.muon_lr / cfg.learning_rate if cfg.learning_rate > 0 else 0.0
    for group in groups:
        group.update(lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), use_muon=False)
    for stacked in sorted(set(hidden.values())):
        groups.append({"params": [params[n] for n, s in hidden.items() if s == stacked and n in params],
                       "use_muon": True, "stacked": stacked, "lr": cfg.muon_lr, "lr_scale": scale,
                       "momentum": cfg.muon_momentum, "ns_steps": cfg.muon_ns_steps,
                       "weight_decay": cfg.muon_weight_decay})
    return Muon(groups, adamw_impl=impl, rank=rank, world_size=world_size)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set this step's learning rate: `lr` (the schedule's, see lr_at) times each group's `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """One line for the start of a run: which optimizer steps which parameters."""
    if isinstance(optimizer, Muon):
        return optimizer.describe()
    kind = "fused" if optimizer.defaults.get("fused") else "foreach" if optimizer.defaults.get("foreach") else "loop"
    # a ZeRO-3 placeholder holds no elements; ds_numel is its real size
    n = sum(getattr(p, "ds_numel", p.numel()) for g in optimizer.param_groups for p in g["params"])
    return f"optimizer: AdamW ({kind}) on all {n:,} weights"


def lr_at(it: int, cfg: OptimConfig) -> float:
    """The learning rate of step `it`: linear warmup for warmup_iters, then lr_schedule's decay to min_lr at
    lr_decay_iters, then min_lr.

    cosine: half a cosine from learning_rate down to min_lr (nanoGPT).
    wsd:    warmup-stable-decay, the trapezoid: learning_rate until the last cooldown_frac of lr_decay_iters,
            then a straight line down to min_lr (modded-nanogpt's schedule; no need to know the run's length
            at the peak, and most of the loss drop comes in the cooldown).
    linear: a straight line from learning_rate down to min_lr.
    """
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    if cfg.lr_schedule == "wsd":
        decay_start = max(cfg.warmup_iters, cfg.lr_decay_iters - cfg.cooldown_frac * cfg.lr_decay_iters)
        if it < decay_start:
            return cfg.learning_rate
        coeff = (cfg.lr_decay_iters - it) / max(cfg.lr_decay_iters - decay_start, 1e-9)
    else:
        ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
        coeff = 1.0 - ratio if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)
