"""One process on one device: plain autograd, GradScaler for fp16, a torch-file checkpoint."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt.checkpoint import checkpoint_path, load_checkpoint, load_model_state, save_checkpoint
from gpt.distributed import barrier
from gpt.model import GPT
from gpt.optim import set_lr
from gpt.strategy.base import Batch, MicroBatches, StepResult, Strategy


class SingleStrategy(Strategy):
    name = "single"

    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        self.raw_model = model
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.model = self._wrap_module(torch.compile(model) if compile else model)

    def _wrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def _sync_gradients(self, last: bool) -> contextlib.AbstractContextManager:
        """Around each micro-batch's backward; DDP skips its all-reduce unless `last`."""
        return contextlib.nullcontext()

    def _module(self) -> torch.nn.Module:
        return self.model

    def _local_weights(self) -> Iterator[torch.Tensor]:
        return (p.detach() for p in self.raw_model.parameters())

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.model(self.to_device(x), self.to_device(y))[1]

    def train_step(self, next_batch: Callable[[], Batch], lr: float) -> StepResult:
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        batches = MicroBatches(next_batch, self.local_accum, self.device)
        for last, x, y in batches:
            with self._sync_gradients(last):
                loss = self.loss(x, y)
                if last:  # DDP all-reduces during this backward: here the ranks start waiting for each other
                    batches.mark_local()
                self.scaler.scale(loss / self.local_accum).backward()
            total += loss.detach().float()
        norm, applied = self._apply()
        return StepResult(total / self.local_accum, norm, applied, batches.data_s, self.optimizer.param_groups[0]["lr"],
                          batches.local_s)

    def _apply(self) -> tuple[torch.Tensor, bool]:
        """Clip and step, unless the gradients hold a NaN or Inf: then drop them. Returns (norm, applied).

        Under DDP the gradients are already all-reduced here, so every rank makes the same
        call. With fp16 the GradScaler finds overflows itself: it skips the step and lowers
        its scale, which is how a skipped fp16 step shows.
        """
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        if self.grad_clip > 0.0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        applied = bool(torch.isfinite(norm))
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = applied and self.scaler.get_scale() >= scale
        elif applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach(), applied

    def _save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Rank 0 writes the file; the others wait so nobody runs ahead of a half-written checkpoint."""
        if self.denv.is_main:
            save_checkpoint({**trainer_state, "model": self.raw_model.state_dict(),
                             "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()},
                            out_dir, keep_last=keep_last, best=best)
        barrier()
        return checkpoint_path(out_dir)

    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        ckpt = load_checkpoint(checkpoint_path(out_dir), map_location="cpu")
        check(ckpt)
        load_model_state(self.raw_model, ckpt["model"], str(checkpoint_path(out_dir)))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        return ckpt
