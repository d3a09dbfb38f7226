"""FSDP2: each rank holds 1/W of the weights, gradients and optimizer state; checkpoints reshard to any world size.

Layout: `fully_shard` on each transformer block, then on the root (embeddings, final
LayerNorm and the tied head form the root's group). Forward and backward all-gather one
block's weights at a time; backward reduce-scatters each block's gradients into the
shards. Gradients are the global batch's mean, as under DDP.

Mixed precision: with --dtype=bfloat16, MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32): weights are all-gathered and computed with in bf16, gradients
reduce-scattered (and accumulated) in fp32 into the fp32 sharded parameters, which are the
master weights AdamW updates. The run's autocast region stays on as for every other
strategy, so LayerNorm, softmax and the loss still run in fp32. fp16 is refused: it would
need a sharded GradScaler, and every GPU FSDP is worth running on has bf16.

Build (gpt/strategy/sharded_init.py): the model is constructed on the meta device, sharded,
and its shards allocated (`to_empty`); a second construction then runs every initialiser on
a whole-size scratch tensor, one parameter at a time, and each rank copies its rows into its
shards: exactly the weights a plain single-process build draws. No rank holds the whole
model (measured on 2 ranks: the build's peak is 0.55 of the model's size).

Gradient accumulation (`--fsdp_accumulation`): `unsharded` keeps the blocks' weights
gathered and gradients unreduced between micro-batches (set_reshard_after_forward /
set_reshard_after_backward / set_requires_gradient_sync off until the last one): one
all-gather and one reduce-scatter per step, DDP's traffic, at the cost of holding whole
weights and gradients during the step. `sharded` reshards and reduce-scatters after every
micro-batch: three collectives per micro-batch (all-gather in forward and in backward,
reduce-scatter), the least memory. `auto` holds them when whole
weights plus fp32 gradients take at most a quarter of the free memory of this rank's share of
the device.

Checkpoints: DCP folders (gpt/checkpoint.py), model and optimizer as sharded tensors keyed by
parameter name, so a run saved by W ranks resumes on any other number.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from gpt.checkpoint import (check_model_state, folder_client_state, load_sharded_checkpoint, require_form,
                            save_sharded_checkpoint)
from gpt.distributed import DEFAULT_DIST_TIMEOUT_S, DistEnv, init_process_group
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.optim import set_lr
from gpt.strategy.base import Batch, MicroBatches, StepResult, Strategy
from gpt.strategy.sharded_init import ShardFiller, copy_rows


class FSDPStrategy(Strategy):
    name = "fsdp"

    def __init__(self, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int, grad_clip: float,
                 *, accumulation: str = "auto", dist_timeout_s: float = DEFAULT_DIST_TIMEOUT_S):
        super().__init__(denv, device, dtype, local_accum, grad_clip)
        if dtype == torch.float16:
            raise GPTError("--strategy=fsdp trains in float32 or bfloat16, not float16 (which would need a sharded "
                           "loss scaler). Use --dtype=bfloat16, or --strategy=ddp / deepspeed for fp16.")
        if device.type not in ("cpu", "cuda"):
            raise GPTError(f"--strategy=fsdp runs on CUDA GPUs (nccl) or CPUs (gloo), not on {device.type}: "
                           "use --device=cuda or cpu, or --strategy=single.")
        self.accumulation = accumulation
        # FSDP needs a device mesh even for one process
        init_process_group(denv, device, always=True, dist_timeout_s=dist_timeout_s)
        self.mesh = init_device_mesh(device.type, (denv.world_size,))
        self.mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if dtype == torch.bfloat16 else MixedPrecisionPolicy()

    # -- set-up ----------------------------------------------------------------------------------------
    def build_model(self, make: Callable[[], GPT]) -> GPT:
        """Build on the meta device, shard each block then the root, allocate the shards, fill in our rows."""
        filler = ShardFiller(make, self.denv.rank, self.denv.world_size)
        model = filler.record()
        for block in model.transformer.h:
            fully_shard(block, mesh=self.mesh, mp_policy=self.mp_policy)
        fully_shard(model, mesh=self.mesh, mp_policy=self.mp_policy)
        model.to_empty(device=self.device)
        filler.fill(model)
        return model

    def load_weights(self, model: GPT, weights: dict[str, torch.Tensor], source: str) -> None:
        """Every rank holds the whole snapshot here and keeps its rows of each tensor."""
        check_model_state({k: v.shape for k, v in model.state_dict().items()}, weights, source)
        for name, p in model.named_parameters():
            copy_rows(p.to_local(), weights[name], self.denv.rank, self.denv.world_size)

    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        self.model = model
        self.optimizer = optimizer
        self.blocks: list[FSDPModule] = list(model.transformer.h)
        self.forward = torch.compile(model) if compile else model
        self.keep_unsharded = self.local_accum > 1 and self._unsharded_fits()

    def _unsharded_fits(self) -> bool:
        """Whether to keep weights and gradients whole between micro-batches (see the module docstring)."""
        numel = sum(p.numel() for p in self.model.parameters())
        need = numel * (torch.finfo(self.mp_policy.param_dtype or torch.float32).bits // 8 + 4)
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:  # the ranks on this machine share its memory
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError):  # not every system can say (macOS): assume it is short
                free = 0
            free //= int(os.environ.get("LOCAL_WORLD_SIZE", self.denv.world_size))
        fits = need <= free // 4 if self.accumulation == "auto" else self.accumulation == "unsharded"
        if self.denv.is_main:
            how = "kept whole between them" if fits else "resharded after each"
            why = (f"{need / 2**30:.2f} GiB whole, {free / 2**30:.1f} GiB free per rank" if self.accumulation == "auto"
                   else f"--fsdp_accumulation={self.accumulation}")
            print(f"FSDP: {self.local_accum} micro-batches per rank per step; weights and gradients {how} ({why})",
                  flush=True)
        return fits

    def _module(self) -> torch.nn.Module:
        return self.forward

    def _local_weights(self) -> Iterator[torch.Tensor]:
        return (p.to_local().detach() for p in self.model.parameters())

    # -- computing ---------------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.forward(self.to_device(x), self.to_device(y))[1]

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        with super().evaluating():
            try:
                yield
            finally:
                self.model.reshard()  # the root keeps its weights gathered after a forward that no backward follows

    def train_step(self, next_batch: Callable[[], Batch], lr: float) -> StepResult:
        set_lr(self.optimizer, lr)
        total = torch.zeros((), device=self.device)
        batches = MicroBatches(next_batch, self.local_accum, self.device)
        for block in self.blocks if self.keep_unsharded else ():
            block.set_reshard_after_forward(False)
        for micro, (last, x, y) in enumerate(batches):
            if micro == 0:  # this forward all-gathers: from here on every rank waits for the others
                batches.mark_local()
            if self.keep_unsharded:  # reduce-scatter and reshard once, after the last micro-batch's backward
                self.model.set_requires_gradient_sync(last)
                self.model.set_reshard_after_backward(last)
            loss = self.loss(x, y)
            (loss / self.local_accum).backward()
            total += loss.detach().float()
        for block in self.blocks if self.keep_unsharded else ():
            block.set_reshard_after_forward(True)  # evaluation keeps one block gathered at a time
        norm, applied = self._apply()
        return StepResult(total / self.local_accum, norm, applied, batches.data_s, self.optimizer.param_groups[0]["lr"],
                          batches.local_s)

    def _apply(self) -> tuple[torch.Tensor, bool]:
        """Clip and step unless the global gradient norm is NaN/Inf (then every rank drops its shards' gradients)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):  # each rank's partial sum of squares: all-reduce it into the global norm
            norm = norm.full_tensor()
        applied = bool(torch.isfinite(norm))
        if applied:
            if self.grad_clip > 0.0:
                torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach(), applied

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Model and optimizer as state dicts of DTensors keyed by parameter name: what DCP writes and reads."""
        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def _save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        return save_sharded_checkpoint(self._state(), trainer_state, out_dir, keep_last, best, self.denv.is_main)

    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        require_form(out_dir, "dcp", self.name)
        saved = folder_client_state(out_dir)
        check(saved)
        state = self._state()
        load_sharded_checkpoint(state, out_dir)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        return saved
