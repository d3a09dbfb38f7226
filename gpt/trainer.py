"""The training loop: micro-steps with gradient accumulation, clipping, eval, logging, checkpoints.

Iteration `it` counts optimizer steps taken. At every `eval_interval` (and at
the end) the loop evaluates train and val loss on fixed batches and may save a
checkpoint; then it takes step `it`. A checkpoint saved at `it` resumes at `it`
with the same weights, optimizer, RNG streams and data position, so a resumed run
continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from data.dataset import open_dataset
from data.loader import BatchLoader
from gpt.checkpoint import checkpoint_path, load_checkpoint, load_model_state, save_checkpoint
from gpt.config import Config
from gpt.errors import GPTError
from gpt.metrics import MetricsLogger
from gpt.model import GPT
from gpt.optim import build_optimizer, lr_at
from gpt.runtime import (autocast, enable_fast_matmul, resolve_device, resolve_dtype, rng_state, seed_everything,
                         set_rng_state)

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


@dataclasses.dataclass
class RunSummary:
    iters: int
    best_val_loss: float
    last_val_loss: float
    wall_s: float
    checkpoint: Optional[Path]


class Trainer:
    """Builds data, model and optimizer from a Config, then `run()` trains."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        t = cfg.train
        self.device = resolve_device(t.device)
        self.dtype = resolve_dtype(t.dtype, self.device)
        enable_fast_matmul(self.device)
        self.dataset = open_dataset(cfg.data.data_dir, cfg.data.dataset)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.dataset.vocab_size
        elif cfg.model.vocab_size < self.dataset.vocab_size:
            raise GPTError(f"--vocab_size={cfg.model.vocab_size} is smaller than dataset {cfg.data.dataset!r}'s "
                           f"vocabulary of {self.dataset.vocab_size}: leave it unset or make it larger.")
        self.out_dir = Path(t.out_dir)
        ckpt = self._checkpoint_to_resume()

        seed_everything(t.seed)
        self.raw_model = GPT(cfg.model).to(self.device)
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.loader = BatchLoader(self.dataset, cfg.model.block_size, cfg.data.batch_size,
                                  t.gradient_accumulation_steps, t.seed)
        self.iter_num = 0
        self.best_val_loss = math.inf
        self.wandb_id: Optional[str] = None
        if ckpt is not None:
            self._restore(ckpt)
        self.model = torch.compile(self.raw_model) if t.compile else self.raw_model

    def _checkpoint_to_resume(self) -> Optional[dict[str, Any]]:
        if self.cfg.train.init_from != "resume":
            return None
        ckpt = load_checkpoint(checkpoint_path(self.out_dir))
        saved = ckpt["model_config"]
        ours = dataclasses.asdict(self.cfg.model)
        diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {ours[k]!r}" for k in SHAPE_KEYS if saved.get(k) != ours[k]]
        if diff:
            raise GPTError(f"cannot resume from {checkpoint_path(self.out_dir)}: the model shape differs ({'; '.join(diff)}). "
                           "Resume with the config the run started with, or start fresh in another --out_dir.")
        if ckpt["tokenizer"] != self.dataset.meta["tokenizer"]:
            raise GPTError(f"cannot resume from {checkpoint_path(self.out_dir)}: it was trained on another vocabulary "
                           f"than dataset {self.cfg.data.dataset!r} has now. Use the dataset it was trained on.")
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        load_model_state(self.raw_model, ckpt["model"], str(checkpoint_path(self.out_dir)))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        self.iter_num = int(ckpt["iter_num"])
        self.best_val_loss = float(ckpt["best_val_loss"])
        self.wandb_id = ckpt.get("wandb_id")
        print(f"resuming from {checkpoint_path(self.out_dir)} at iter {self.iter_num}")

    def _state(self) -> dict[str, Any]:
        return {
            "model": self.raw_model.state_dict(),
            "model_config": dataclasses.asdict(self.cfg.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "rng": rng_state(),
            "loader": self.loader.state_dict(),
            "config": self.cfg.to_dict(),
            "tokenizer": self.dataset.meta["tokenizer"],
            "dataset": self.cfg.data.dataset,
            "wandb_id": self.metrics.wandb_id if hasattr(self, "metrics") else self.wandb_id,
        }

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters fixed batches of each split."""
        self.model.eval()
        out = {}
        for split in ("train", "val"):
            total = 0.0
            for k in range(self.cfg.train.eval_iters):
                x, y = self.loader.eval_batch(split, k)
                with autocast(self.device, self.dtype):
                    _, loss = self.model(self._to_device(x), self._to_device(y))
                total += loss.item()
            out[split] = total / self.cfg.train.eval_iters
        self.model.train()
        return out

    def train_step(self) -> torch.Tensor:
        """One optimizer step over gradient_accumulation_steps micro-batches; returns the mean loss (on device)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.iter_num, self.cfg.optim)
        accum = self.cfg.train.gradient_accumulation_steps
        total = torch.zeros((), device=self.device)
        for _ in range(accum):
            x, y = self.loader.next_batch()
            with autocast(self.device, self.dtype):
                _, loss = self.model(self._to_device(x), self._to_device(y))
                loss = loss / accum
            self.scaler.scale(loss).backward()
            total += loss.detach()
        if self.cfg.optim.grad_clip > 0.0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        return total

    def save(self) -> Path:
        return save_checkpoint(self._state(), self.out_dir)

    def describe(self) -> None:
        """Print the resolved model config and parameter counts."""
        print(json.dumps(dataclasses.asdict(self.cfg.model), indent=1))
        print(f"parameters: {self.raw_model.num_params(non_embedding=False):,} total, "
              f"{self.raw_model.num_params():,} without position embeddings")
        print(f"device {self.device}, dtype {str(self.dtype).removeprefix('torch.')}, "
              f"{self.tokens_per_iter:,} tokens per iteration")

    @property
    def tokens_per_iter(self) -> int:
        c = self.cfg
        return c.train.gradient_accumulation_steps * c.data.batch_size * c.model.block_size

    def run(self) -> RunSummary:
        t = self.cfg.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.describe()
        resumed_at = self.iter_num if t.init_from == "resume" else None
        self.metrics = MetricsLogger(self.out_dir, self.cfg.to_dict(), resume=resumed_at is not None,
                                     wandb_log=self.cfg.log.wandb_log, wandb_project=self.cfg.log.wandb_project,
                                     wandb_run_name=self.cfg.log.wandb_run_name, wandb_id=self.wandb_id)
        start = time.perf_counter()
        saved_at: Optional[int] = resumed_at
        last_val = math.nan
        tick = time.perf_counter()
        try:
            while True:
                it = self.iter_num
                if (it % t.eval_interval == 0 or it >= t.max_iters) and it != resumed_at:
                    losses = self.evaluate()
                    last_val = losses["val"]
                    self.metrics.eval(it, losses["train"], losses["val"])
                    improved = losses["val"] < self.best_val_loss
                    self.best_val_loss = min(self.best_val_loss, losses["val"])
                    if it > 0 and not t.eval_only and (improved or t.always_save_checkpoint):
                        print(f"saving checkpoint to {self.save()}")
                        saved_at = it
                    tick = time.perf_counter()  # dt_ms measures training iterations, not evals
                if it >= t.max_iters or t.eval_only:
                    break
                loss = self.train_step()
                now = time.perf_counter()
                dt, tick = now - tick, now
                if it % t.log_interval == 0:
                    self.metrics.train(it, loss.item(), self.optimizer.param_groups[0]["lr"], dt * 1000.0,
                                       self.tokens_per_iter / dt)
            if not t.eval_only and saved_at != self.iter_num:
                print(f"saving checkpoint to {self.save()}")
                saved_at = self.iter_num
        finally:
            self.metrics.close()
        wall = time.perf_counter() - start
        summary = RunSummary(self.iter_num, self.best_val_loss, last_val, wall,
                             checkpoint_path(self.out_dir) if saved_at is not None else None)
        print(f"done: {summary.iters} iters in {wall:.1f}s, best val loss {summary.best_val_loss:.4f}"
              + (f", checkpoint {summary.checkpoint}" if summary.checkpoint else ""))
        return summary
