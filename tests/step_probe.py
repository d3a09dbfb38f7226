"""Probes on a Trainer's steps, for tests in this process and in the worker the distributed tests launch.

`StepProbe` records what each optimizer step really applied: the learning rate in the optimizer's
param groups and the norm of the gradients it stepped with (read inside optimizer.step, so after
any clipping), whether the step was applied, and whether this rank's weights changed.
`poison_loss` makes the training loss NaN at given iterations, as a numerical blow-up would.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from gpt.trainer import Trainer


def poison_loss(trainer: Trainer, iters: set[int]) -> None:
    """The training loss becomes NaN (so do the gradients) at the iterations in `iters`."""
    model = trainer.built.model
    clean = model.forward

    def forward(*args, **kwargs):
        logits, loss = clean(*args, **kwargs)
        if model.training and trainer.iter_num in iters:
            loss = loss * math.nan
        return logits, loss

    model.forward = forward


def weights_digest(trainer: Trainer) -> str:
    """A digest of the weights this rank holds (its shards under ZeRO)."""
    digest = hashlib.sha256()
    for t in trainer.strategy._local_weights():
        digest.update(t.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class StepProbe:
    """Wraps `trainer.step`; `steps[it]` says what optimizer step `it` did on this rank.

    Keys: `lr` (each param group's, None if the optimizer never stepped), `grad_sq` (the sum of
    squared gradients the optimizer stepped with: this rank's shard under ZeRO-1/2/3), `applied`,
    `changed` (this rank's weights differ after the step).
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.steps: dict[int, dict[str, Any]] = {}
        self._seen: list[dict[str, Any]] = []
        self._hook = register_optimizer_step_pre_hook(self._on_optimizer_step)
        self._step = trainer.step
        trainer.step = self._recorded_step

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not isinstance(optimizer, torch.optim.AdamW):  # DeepSpeed's wrappers step our AdamW inside
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._seen.append({"lr": [g["lr"] for g in optimizer.param_groups],
                           "grad_sq": sum(float(g.double().pow(2).sum()) for g in grads)})

    def _recorded_step(self):
        it = self.trainer.iter_num
        before = weights_digest(self.trainer)
        self._seen.clear()
        result = self._step()
        seen = self._seen[-1] if self._seen else {"lr": None, "grad_sq": None}
        self.steps[it] = {**seen, "applied": result.applied, "changed": weights_digest(self.trainer) != before}
        return result

    def close(self) -> None:
        self._hook.remove()
        self.trainer.step = self._step
