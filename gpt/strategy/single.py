"""One process on one device: plain autograd, GradScaler for fp16, a single-file checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from gpt.checkpoint import checkpoint_path, load_checkpoint, load_model_state, save_checkpoint
from gpt.distributed import barrier
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.strategy.base import Strategy


class SingleStrategy(Strategy):
    name = "single"

    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        self.raw_model = model
        self.optimizer = optimizer
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.model = self._wrap_module(torch.compile(model) if compile else model)

    def _wrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.local_accum).backward()

    def step(self) -> bool:
        """Clip and step, unless the gradients hold a NaN or Inf: then drop them and report False.

        Under DDP the gradients are already all-reduced here, so every rank makes the same
        call. With fp16 the GradScaler owns overflow handling (it skips and lowers its scale).
        """
        self.scaler.unscale_(self.optimizer)
        params = self.raw_model.parameters()
        if self.grad_clip > 0.0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self.last_grad_norm = norm.detach()
        finite = self.scaler.is_enabled() or bool(torch.isfinite(norm))
        if finite:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Rank 0 writes ckpt.pt atomically; the others wait so nobody runs ahead of a half-written file."""
        path = checkpoint_path(out_dir)
        bad = [n for n, p in self.raw_model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # never let a checkpoint carry NaN/Inf: the previous good one stays the one to resume from
            raise GPTError(f"refusing to save a checkpoint: parameters {bad[:3]} hold NaN/Inf. "
                           f"The previous checkpoint in {out_dir} is intact; resume from it with a lower --learning_rate.")
        if self.denv.is_main:
            save_checkpoint({**trainer_state, "model": self.raw_model.state_dict(),
                             "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()},
                            out_dir, keep_last=keep_last, best=best)
        barrier()
        return path

    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        ckpt = load_checkpoint(checkpoint_path(out_dir), map_location="cpu")
        check(ckpt)
        load_model_state(self.raw_model, ckpt["model"], str(checkpoint_path(out_dir)))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        return ckpt

    def has_checkpoint(self, out_dir: Path) -> bool:
        return checkpoint_path(out_dir).is_file()
