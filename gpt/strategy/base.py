"""The one interface the trainer uses to compute, whatever runs it: one process, DDP or DeepSpeed.

A strategy owns the wrapped model and optimizer. Per optimizer step the trainer
calls `set_lr`, then for each of its `local_accum` micro-batches
`with micro_step(last): loss = forward(...); backward(loss)`, then `step()`.
`backward` takes the micro-batch's mean loss; each strategy scales it so the
gradient is the mean over the global batch.
"""
from __future__ import annotations

import abc
import contextlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional

import torch

from gpt.distributed import DistEnv, all_gather_objects, all_reduce_sum
from gpt.model import GPT
from gpt.runtime import autocast


class Strategy(abc.ABC):
    name = "base"

    def __init__(self, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int, grad_clip: float):
        self.denv = denv
        self.device = device
        self.dtype = dtype
        self.local_accum = local_accum
        self.grad_clip = grad_clip
        self.raw_model: Optional[GPT] = None
        self.model: Any = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.last_grad_norm: Optional[torch.Tensor | float] = None  # before clipping, of the last step

    # -- set-up -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        """Take ownership of the model and optimizer; `self.model` is what forward passes call."""

    # -- one optimizer step -------------------------------------------------------------------------
    def autocast(self) -> ContextManager:
        return autocast(self.device, self.dtype)

    def micro_step(self, last: bool) -> ContextManager:
        """Context for one micro-batch; gradient synchronisation may be skipped unless `last`."""
        return contextlib.nullcontext()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @abc.abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate one micro-batch's mean loss."""

    @abc.abstractmethod
    def step(self) -> bool:
        """Clip, update the weights, clear the gradients; False when the step was skipped as non-finite."""

    # -- checkpoints ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Write model + optimizer + `trainer_state` (collective: every rank calls it).

        Keeps the `keep_last` newest checkpoints, plus the best one when `best` marks it.
        """

    @abc.abstractmethod
    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Restore model + optimizer; return the trainer state saved with them (every rank calls it).

        `check(state)` sees the saved trainer state before any weight is loaded, to explain a mismatch.
        """

    @abc.abstractmethod
    def has_checkpoint(self, out_dir: Path) -> bool:
        """Whether `out_dir` holds a checkpoint this strategy can resume from."""

    # -- numbers across ranks -------------------------------------------------------------------------
    def reduce_mean(self, value: torch.Tensor | float) -> float:
        """The mean over ranks of a per-rank number (collective)."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(1).clone()
        return all_reduce_sum(t).item() / self.denv.world_size

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one (collective)."""
        if self.denv.world_size == 1:
            return flag
        return self.reduce_mean(1.0 if flag else 0.0) > 0.0

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order (collective)."""
        return all_gather_objects(obj)
