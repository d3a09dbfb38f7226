"""The training loop: micro-steps with gradient accumulation, eval, logging and checkpoint cadence.

Iteration `it` counts optimizer steps taken. At every `eval_interval` (and at
the end) the loop evaluates train and val loss on fixed batches and may save a
checkpoint; then it takes step `it`. A checkpoint saved at `it` resumes at `it`
with the same weights, optimizer, RNG streams and data position, so a resumed run
continues exactly as the uninterrupted one would have. All computation goes
through a Strategy (single process, DDP or DeepSpeed); the loop itself is the
same for all of them, and so are the tokens each step sees.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from data.dataset import open_dataset
from data.loader import BatchLoader
from gpt.config import Config, parse_duration
from gpt.distributed import init_process_group, rank_device, read_env, shutdown
from gpt.errors import GPTError
from gpt.metrics import MetricsLogger
from gpt.mfu import MFU
from gpt.resume import rewind_metrics
from gpt.model import GPT
from gpt.optim import build_optimizer, lr_at
from gpt.runtime import enable_fast_matmul, resolve_device, resolve_dtype, rng_state, seed_everything, set_rng_state
from gpt.stop import StopRequest
from gpt.strategy import build_strategy, choose_strategy

SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")


@dataclasses.dataclass
class RunSummary:
    iters: int
    best_val_loss: float
    last_val_loss: float
    wall_s: float
    checkpoint: Optional[Path]


class Trainer:
    """Builds data, model, optimizer and strategy from a Config, then `run()` trains."""

    def __init__(self, cfg: Config, debug: bool = False):
        self.cfg = cfg
        t = cfg.train
        self.denv = read_env()
        if t.gradient_accumulation_steps % self.denv.world_size:
            raise GPTError(f"gradient_accumulation_steps={t.gradient_accumulation_steps} is the global number of "
                           f"micro-batches per step and must be divisible by the world size {self.denv.world_size}: "
                           f"use a multiple of {self.denv.world_size}.")
        self.device = rank_device(resolve_device(t.device), self.denv)
        self.dtype = resolve_dtype(t.dtype, self.device)
        enable_fast_matmul(self.device)
        self.dataset = open_dataset(cfg.data.data_dir, cfg.data.dataset, cfg.data.data_format)
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = self.dataset.vocab_size
        elif cfg.model.vocab_size < self.dataset.vocab_size:
            raise GPTError(f"--vocab_size={cfg.model.vocab_size} is smaller than dataset {cfg.data.dataset!r}'s "
                           f"vocabulary of {self.dataset.vocab_size}: leave it unset or make it larger.")
        self.out_dir = Path(t.out_dir)
        self.is_main = self.denv.is_main

        init_process_group(self.denv, self.device, always=choose_strategy(cfg, self.denv) == "ddp")
        self.strategy = build_strategy(cfg, self.denv, self.device, self.dtype, debug=debug)
        self.resuming = self._should_resume()
        # every rank builds the same initial weights; dropout then draws from a per-rank stream
        seed_everything(t.seed)
        model = GPT(cfg.model).to(self.device)
        optimizer = build_optimizer(model, cfg.optim, self.device.type)
        self.strategy.wrap(model, optimizer, compile=t.compile)
        seed_everything(t.seed + 1 + self.denv.rank)
        self.loader = BatchLoader(self.dataset, cfg.model.block_size, cfg.data.batch_size,
                                  t.gradient_accumulation_steps, t.seed, self.denv.rank, self.denv.world_size,
                                  sampling=cfg.data.sampling)
        self.iter_num = 0
        self.best_val_loss = math.inf
        self.wandb_id: Optional[str] = None
        self.metrics: Optional[MetricsLogger] = None
        if self.resuming:
            self._restore()

    def _should_resume(self) -> bool:
        """resume: a checkpoint must exist; auto: use one if it exists; scratch: never — except when
        torchrun restarts a failed job (--max-restarts), which must pick up where it died."""
        t = self.cfg.train
        exists = self.strategy.has_checkpoint(self.out_dir)
        if t.init_from == "resume" and not exists:
            raise GPTError(f"no checkpoint at {self.out_dir / 'ckpt.pt'} to resume from. Train first, or use "
                           "--init_from=auto (resume when there is one) or --init_from=scratch.")
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
        if t.init_from == "scratch" and restarted and exists:
            self._print(f"torchrun restarted this job: resuming from {self.out_dir}")
            return True
        return t.init_from == "resume" or (t.init_from == "auto" and exists)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _check_resumable(self, saved: dict[str, Any]) -> None:
        ours = dataclasses.asdict(self.cfg.model)
        diff = [f"{k}: checkpoint {saved['model_config'].get(k)!r}, this run {ours[k]!r}"
                for k in SHAPE_KEYS if saved["model_config"].get(k) != ours[k]]
        if diff:
            raise GPTError(f"cannot resume from {self.out_dir}: the model shape differs ({'; '.join(diff)}). "
                           "Resume with the config the run started with, or start fresh in another --out_dir.")
        if saved["tokenizer"] != self.dataset.meta["tokenizer"]:
            raise GPTError(f"cannot resume from {self.out_dir}: it was trained on another vocabulary than dataset "
                           f"{self.cfg.data.dataset!r} has now. Use the dataset it was trained on.")

    def _restore(self) -> None:
        state = self.strategy.load(self.out_dir, check=self._check_resumable)
        self.loader.load_state_dict(state["loader"])
        rngs = state["rng"]
        if len(rngs) == self.denv.world_size:
            set_rng_state(rngs[self.denv.rank])
        else:  # another world size: ranks' streams cannot carry over, so derive fresh ones from the step
            seed_everything(self.cfg.train.seed + 1 + self.denv.rank + 1_000_003 * int(state["iter_num"]))
        self.iter_num = int(state["iter_num"])
        self.best_val_loss = float(state["best_val_loss"])
        if self.is_main:  # lines a killed run wrote after this checkpoint are about to be written again
            rewind_metrics(self.out_dir / "metrics.jsonl", self.iter_num)
        self.wandb_id = state.get("wandb_id")
        self._print(f"resuming from {self.out_dir} at iter {self.iter_num} "
                    f"(saved by {state.get('world_size', 1)} rank(s), now {self.denv.world_size})")

    def _trainer_state(self) -> dict[str, Any]:
        """What the loop needs to continue; the strategy adds model and optimizer. Collective (gathers RNGs)."""
        return {
            "model_config": dataclasses.asdict(self.cfg.model),
            "iter_num": self.iter_num,
            "best_val_loss": self.best_val_loss,
            "rng": self.strategy.gather(rng_state()),
            "loader": self.loader.state_dict(),
            "config": self.cfg.to_dict(),
            "tokenizer": self.dataset.meta["tokenizer"],
            "dataset": self.cfg.data.dataset,
            "wandb_id": self.metrics.wandb_id if self.metrics else self.wandb_id,
            "world_size": self.denv.world_size,
            "strategy": self.strategy.name,
        }

    def save(self, best: bool = False) -> Path:
        path = self.strategy.save(self._trainer_state(), self.out_dir, keep_last=self.cfg.train.keep_last, best=best)
        self._print(f"saving checkpoint to {path}")
        return path

    # -- compute -------------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.strategy.autocast():
            _, loss = self.strategy.model(self._to_device(x), self._to_device(y))
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the eval_iters fixed batches of each split, shared out across ranks.

        Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively),
        padding with weight-0 batches when eval_iters does not divide evenly.
        """
        n, world, rank = self.cfg.train.eval_iters, self.denv.world_size, self.denv.rank
        self.strategy.model.eval()
        out = {}
        for split in ("train", "val"):
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for j in range(-(-n // world)):
                k = rank + world * j
                loss = self._loss(*self.loader.eval_batch(split, k % n))
                if k < n:
                    total += loss.double()
            out[split] = self.strategy.reduce_mean(total) * world / n
        self.strategy.model.train()
        return out

    def train_step(self) -> torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns this rank's mean loss (on device)."""
        self.strategy.set_lr(lr_at(self.iter_num, self.cfg.optim))
        local = self.strategy.local_accum
        total = torch.zeros((), device=self.device)
        self.data_s = 0.0
        for micro in range(local):
            t0 = time.perf_counter()
            x, y = self.loader.next_batch()
            self.data_s += time.perf_counter() - t0
            with self.strategy.micro_step(last=micro == local - 1):
                loss = self._loss(x, y)
                self.strategy.backward(loss)
            total += loss.detach().float()
        self.last_step_ok = self.strategy.step()
        self.iter_num += 1
        return total / local

    # -- the loop -------------------------------------------------------------------------------------
    def _print(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    @property
    def tokens_per_iter(self) -> int:
        c = self.cfg
        return c.train.gradient_accumulation_steps * c.data.batch_size * c.model.block_size

    def describe(self) -> None:
        """Print the resolved model config, parameter counts and how the run is laid out."""
        model = self.strategy.raw_model
        self._print(json.dumps(dataclasses.asdict(self.cfg.model), indent=1))
        self._print(f"parameters: {sum(p.numel() for p in model.parameters()):,} total, "
                    f"{model.num_params():,} without position embeddings")
        self._print(f"strategy {self.strategy.name}, {self.denv.world_size} rank(s), device {self.device}, "
                    f"dtype {str(self.dtype).removeprefix('torch.')}, {self.tokens_per_iter:,} tokens per iteration")

    def run(self) -> RunSummary:
        try:
            return self._run()
        finally:
            self.loader.close()  # its prefetch thread must not outlive the run
            if self.metrics:
                self.metrics.close()
            shutdown()

    def _run(self) -> RunSummary:
        t = self.cfg.train
        resumed_at = self.iter_num if self.resuming else None
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            self.metrics = MetricsLogger(self.out_dir, self.cfg.to_dict(), resumed_at=resumed_at,
                                         wandb_log=self.cfg.log.wandb_log, wandb_project=self.cfg.log.wandb_project,
                                         wandb_run_name=self.cfg.log.wandb_run_name, wandb_id=self.wandb_id,
                                         max_iters=t.max_iters, tokens_per_iter=self.tokens_per_iter, device=self.device,
                                         mfu=MFU.for_run(self.cfg.model, self.device, self.dtype, self.denv.world_size))
        self.describe()
        if t.compile:
            self._print("compiling the model with torch.compile (the first eval and the first step are slow)...")
        with StopRequest(parse_duration(t.time_limit)) as stop:
            return self._loop(t, stop, resumed_at)

    def _loop(self, t: Any, stop: StopRequest, resumed_at: Optional[int]) -> RunSummary:
        """Eval/save cadence and steps until max_iters, a stop request or the time limit."""
        start = tick = time.perf_counter()
        saved_at: Optional[int] = resumed_at
        saved_path: Optional[Path] = self.out_dir if resumed_at is not None else None
        last_val = math.nan
        bad_steps, save_s = 0, 0.0
        while True:
            it = self.iter_num
            if (it % t.eval_interval == 0 or it >= t.max_iters) and it != resumed_at:
                losses = self.evaluate()
                last_val = losses["val"]
                if self.metrics:
                    self.metrics.eval(it, losses["train"], losses["val"])
                improved = losses["val"] < self.best_val_loss
                self.best_val_loss = min(self.best_val_loss, losses["val"])
                if it > 0 and not t.eval_only and (improved or t.always_save_checkpoint):
                    t0 = time.perf_counter()
                    saved_path, saved_at = self.save(best=improved), it
                    save_s = time.perf_counter() - t0
                tick = time.perf_counter()  # dt_ms measures training iterations, not evals
            if it >= t.max_iters or t.eval_only:
                break
            loss = self.train_step()
            now = time.perf_counter()
            dt, tick = now - tick, now
            if not self.last_step_ok:
                bad_steps += 1
                self._print(f"iter {it}: non-finite gradients (loss {self.strategy.reduce_mean(loss):.4g}), "
                            f"step skipped ({bad_steps} in a row, at most {t.max_bad_steps})")
                if bad_steps >= t.max_bad_steps:
                    raise GPTError(f"{bad_steps} steps in a row had NaN/Inf gradients; stopping. The last checkpoint "
                                   f"in {self.out_dir} holds finite weights: resume from it with a lower "
                                   "--learning_rate, a smaller --grad_clip, or check the data.")
            else:
                bad_steps = 0
            if it % t.log_interval == 0:
                mean_loss = self.strategy.reduce_mean(loss)  # the global batch's loss, not just this rank's
                norm = self.strategy.last_grad_norm
                if self.metrics:
                    self.metrics.train(it, mean_loss, lr_at(it, self.cfg.optim), dt * 1000.0, self.tokens_per_iter / dt,
                                       grad_norm=None if norm is None else float(norm), data_ms=self.data_s * 1000.0)
            if self.strategy.any_rank(stop.reason is not None or stop.out_of_time(dt, save_s)):
                self._print(f"stopping at iter {self.iter_num} ({stop.reason or 'another rank was told to stop'})")
                break
        if not t.eval_only and saved_at != self.iter_num:
            saved_path, saved_at = self.save(), self.iter_num
        wall = time.perf_counter() - start
        summary = RunSummary(self.iter_num, self.best_val_loss, last_val, wall, saved_path)
        if summary.iters < t.max_iters and not t.eval_only:
            self._print("stopped early: continue with the same command plus --init_from=resume (or auto)")
        if self.metrics:
            self.metrics.finish(summary.iters, wall, saved_path)
        return summary
