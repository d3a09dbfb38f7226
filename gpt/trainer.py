"""The training loop: eval and checkpoint cadence, one optimizer step at a time, logging, stopping.

    run = build_run(cfg)      # gpt/build.py: data, model, optimizer, strategy, metrics, resume
    Trainer(run).run()

Iteration `iter_num` counts optimizer steps taken. At every `eval_interval` (and at
the end) the loop evaluates train and val loss on fixed batches and may save a
checkpoint; then it takes a step. A checkpoint saved at `iter_num` resumes there with
the same weights, optimizer, RNG streams and data position, so a resumed run continues
exactly as the uninterrupted one would have. All computation goes through the run's
strategy (single process, DDP or DeepSpeed): the loop is the same for all of them.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import torch

from gpt.build import Run
from gpt.config import parse_duration
from gpt.distributed import shutdown
from gpt.errors import GPTError
from gpt.optim import lr_at
from gpt.stop import StopRequest
from gpt.straggler import straggler_note
from gpt.strategy.base import Batch, StepResult


@dataclasses.dataclass
class RunSummary:
    iters: int
    best_val_loss: float
    last_val_loss: float
    wall_s: float
    checkpoint: Optional[Path]


class Trainer:
    """Runs the loop over a built Run; `step()` is the project's one training step."""

    def __init__(self, run: Run):
        self.built = run
        self.cfg = run.cfg
        self.strategy = run.strategy
        self.loader = run.loader
        self.metrics = run.metrics
        self.heartbeat = run.heartbeat
        self.iter_num = run.iter_num
        self.best_val_loss = run.best_val_loss

    def step(self) -> StepResult:
        """One optimizer step at this iteration's learning rate."""
        result = self.strategy.train_step(self._next_batch, lr_at(self.iter_num, self.cfg.optim))
        self.heartbeat.beat(self.iter_num)
        self.iter_num += 1
        return result

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.strategy.logits(x)
        self.heartbeat.beat()  # a long HellaSwag eval is progress too
        return logits

    def _next_batch(self) -> Batch:
        batch = self.loader.next_batch()
        self.heartbeat.beat()  # every rank beats at the same points: a stuck read shows as the rank behind
        return batch

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over the eval_iters fixed batches of each split, shared out across ranks (and HellaSwag
        accuracies, when the run scores it).

        Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively),
        padding with weight-0 batches when eval_iters does not divide evenly.
        """
        n, world, rank = self.cfg.train.eval_iters, self.built.denv.world_size, self.built.denv.rank
        out = {}
        with self.strategy.evaluating():
            for split in ("train", "val"):
                total = torch.zeros((), dtype=torch.float64, device=self.built.device)
                for j in range(-(-n // world)):
                    k = rank + world * j
                    loss = self.strategy.loss(*self.loader.eval_batch(split, k % n))
                    self.heartbeat.beat()
                    if k < n:
                        total += loss.double()
                out[split] = self.strategy.reduce_mean(total) * world / n
            if self.built.hellaswag is not None:
                out.update(self.built.hellaswag.score(self._logits, rank, world, self.strategy.reduce_mean))
        return out

    def save(self, best: bool = False) -> Path:
        t = self.cfg.train
        self.heartbeat.beat()
        path = self.strategy.save(self.built.trainer_state(self.iter_num, self.best_val_loss), Path(t.out_dir),
                                  keep_last=t.keep_last, best=best)
        self.heartbeat.beat()
        self.built.print(f"saving checkpoint to {path}")
        return path

    def run(self) -> RunSummary:
        try:
            with StopRequest(parse_duration(self.cfg.train.time_limit)) as stop:
                return self._loop(stop)
        finally:
            self.heartbeat.stop()
            self.loader.close()  # its prefetch thread must not outlive the run
            if self.metrics:
                self.metrics.close()
            shutdown()

    def _loop(self, stop: StopRequest) -> RunSummary:
        """Eval/save cadence and steps until max_iters, a stop request or the time limit."""
        t = self.cfg.train
        resumed_at = self.iter_num if self.built.resumed else None
        start = tick = time.perf_counter()
        saved_at, saved_path = resumed_at, Path(t.out_dir) if resumed_at is not None else None
        last_val, bad_steps, save_s = math.nan, 0, 0.0
        while True:
            it = self.iter_num
            if (it % t.eval_interval == 0 or it >= t.max_iters) and it != resumed_at:
                losses = self.evaluate()
                last_val = losses["val"]
                if self.metrics:
                    self.metrics.eval(it, losses["train"], losses["val"],
                                      **{k: v for k, v in losses.items() if k not in ("train", "val")})
                self.heartbeat.beat()  # after rank 0 redrew loss.png, on every rank
                improved = losses["val"] < self.best_val_loss
                self.best_val_loss = min(self.best_val_loss, losses["val"])
                if it > 0 and not t.eval_only and (improved or t.always_save_checkpoint):
                    t0 = time.perf_counter()
                    saved_path, saved_at = self.save(best=improved), it
                    save_s = time.perf_counter() - t0
                tick = time.perf_counter()  # dt_ms measures training iterations, not evals
            if it >= t.max_iters or t.eval_only:
                break
            result = self.step()
            now = time.perf_counter()
            dt, tick = now - tick, now
            bad_steps = 0 if result.applied else bad_steps + 1
            if not result.applied:
                self._skipped(it, result, bad_steps)
            if it % t.log_interval == 0:
                mean_loss = self.strategy.reduce_mean(result.loss)  # the global batch's loss, not just this rank's
                note = straggler_note(self.strategy.gather(result.local_s)) if self.built.denv.world_size > 1 else None
                if self.metrics:
                    norm = None if result.grad_norm is None else float(result.grad_norm)
                    self.metrics.train(it, mean_loss, result.lr, dt * 1000.0, self.built.tokens_per_iter / dt,
                                       grad_norm=norm, data_ms=result.data_s * 1000.0, note=note)
            if self.strategy.any_rank(stop.reason is not None or stop.out_of_time(dt, save_s)):
                self.built.print(f"stopping at iter {self.iter_num} ({stop.reason or 'another rank was told to stop'})")
                break
        if not t.eval_only and saved_at != self.iter_num:
            saved_path, saved_at = self.save(), self.iter_num
        wall = time.perf_counter() - start
        summary = RunSummary(self.iter_num, self.best_val_loss, last_val, wall, saved_path)
        if summary.iters < t.max_iters and not t.eval_only:
            self.built.print("stopped early: continue with the same command plus --init_from=resume (or auto)")
        if self.metrics:
            self.metrics.finish(summary.iters, wall, saved_path)
        return summary

    def _skipped(self, it: int, result: StepResult, bad_steps: int) -> None:
        """Report a skipped step; too many in a row stop the run with its last good checkpoint intact."""
        t = self.cfg.train
        self.built.print(f"iter {it}: non-finite gradients or an fp16 overflow (loss "
                        f"{self.strategy.reduce_mean(result.loss):.4g}), step skipped "
                        f"({bad_steps} in a row, at most {t.max_bad_steps})")
        if bad_steps >= t.max_bad_steps:
            raise GPTError(f"{bad_steps} steps in a row had NaN/Inf gradients; stopping. The last checkpoint "
                           f"in {t.out_dir} holds finite weights: resume from it with a lower "
                           "--learning_rate, a smaller --grad_clip, or check the data.")
