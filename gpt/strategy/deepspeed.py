"""DeepSpeed ZeRO 0/1/2/3: the engine owns gradients, precision, clipping and sharded checkpoints.

Our AdamW is the client optimizer and our LR schedule sets its learning rate, so the
schedule is one implementation for every strategy. The engine scales each micro-batch
loss by 1/gradient_accumulation_steps and steps only at the accumulation boundary, so
each micro-batch is engine.backward then engine.step.

Non-finite steps: the engine skips a step whose gradient norm is NaN/Inf under fp16 loss
scaling and, in DeepSpeed 0.19, under ZeRO-1/2 and bf16 too (`skipped_steps` counts them);
where it would apply one instead, the run stops before the engine sees the bad loss.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt.checkpoint import commit_folder_checkpoint, entry_name, folder_client_state
from gpt.distributed import DistEnv, barrier, ensure_single_process_env
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.optim import set_lr
from gpt.strategy.base import Batch, StepResult, Strategy
from gpt.strategy.deepspeed_config import load_ds_config, resolve_ds_config


def import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as err:
        raise GPTError(f"--strategy=deepspeed needs DeepSpeed, which cannot be imported ({err}). Install it with "
                       "`pip install deepspeed==0.19.8` (it is in requirements.txt), or train data-parallel without it: "
                       "`torchrun --nproc_per_node=N launch/train.py --strategy=ddp`.") from None
    return deepspeed


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int, grad_clip: float,
                 *, ds_config: str, zero_stage: int | None, micro_batch: int, debug: bool = False):
        super().__init__(denv, device, dtype, local_accum, grad_clip)
        self.deepspeed = import_deepspeed()
        if not debug:
            logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        ensure_single_process_env()
        if denv.is_main:
            print("starting DeepSpeed (the first run on a machine compiles its ops, which takes a minute)...", flush=True)
        self.config = resolve_ds_config(load_ds_config(ds_config), ds_config, micro_batch=micro_batch,
                                        local_accum=local_accum, world_size=denv.world_size, grad_clip=grad_clip,
                                        dtype=dtype, zero_stage=zero_stage)
        self.zero_stage = self.config["zero_optimization"]["stage"]
        self.deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: GPT, optimizer: torch.optim.Optimizer, compile: bool) -> None:
        self.client_optimizer = optimizer
        self.engine, _, _, _ = self.deepspeed.initialize(model=model, optimizer=optimizer, config=self.config)
        if compile:
            self.engine.compile()

    def _module(self) -> torch.nn.Module:
        return self.engine

    def _local_weights(self) -> Iterator[torch.Tensor]:
        # under ZeRO-3 a parameter is a placeholder and this rank's shard is its ds_tensor
        return (getattr(p, "ds_tensor", p).detach() for p in self.engine.module.parameters())

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine casts the model itself (bf16/fp16 sections)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.engine(self.to_device(x), self.to_device(y))[1]

    def train_step(self, next_batch: Callable[[], Batch], lr: float) -> StepResult:
        # ZeRO wrappers step the client optimizer's param groups: setting lr there reaches every stage
        set_lr(self.client_optimizer, lr)
        skipped = self.engine.skipped_steps
        total = torch.zeros((), device=self.device)
        data_s = 0.0
        for micro in range(self.local_accum):
            t0 = time.perf_counter()
            x, y = next_batch()
            data_s += time.perf_counter() - t0
            if self.engine.is_gradient_accumulation_boundary() != (micro == self.local_accum - 1):
                raise RuntimeError("DeepSpeed's accumulation counter and the strategy's micro-steps disagree")
            loss = self.loss(x, y)
            if not self.engine_skips_nonfinite() and self.any_rank(not bool(torch.isfinite(loss.detach()))):
                raise GPTError(f"the loss became NaN/Inf under DeepSpeed ZeRO-{self.zero_stage} in "
                               f"{str(self.dtype).removeprefix('torch.')}, where the engine would apply the step "
                               "instead of skipping it. The last checkpoint is intact: resume from it with a lower "
                               "--learning_rate or a stricter --grad_clip.")
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float()
        return StepResult(total / self.local_accum, self.engine.get_global_grad_norm(),
                          self.engine.skipped_steps == skipped, data_s, self.client_optimizer.param_groups[0]["lr"])

    def engine_skips_nonfinite(self) -> bool:
        """Whether the engine itself skips a step with NaN/Inf gradients (DeepSpeed 0.19): fp16 loss scaling
        at every stage; ZeRO-1/2 in any precision; bf16 under its overflow check (on by default)."""
        return self.dtype == torch.float16 or self.zero_stage in (1, 2) or (
            self.dtype == torch.bfloat16 and self.zero_stage == 0)

    def _save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Every rank writes its shard under <out_dir>/ckpt-NNNNNNN; `latest` moves only once all are written."""
        tag = entry_name(trainer_state["iter_num"])
        client = {**trainer_state, "zero_stage": self.zero_stage}
        try:
            self.engine.save_checkpoint(str(out_dir), tag=tag, client_state=client)
        except OSError as err:
            raise GPTError(f"could not write the DeepSpeed checkpoint {out_dir}/{tag}: {err.strerror or err}. "
                           "The previous checkpoint is untouched.") from None
        barrier()
        if self.denv.is_main:
            commit_folder_checkpoint(out_dir, tag, keep_last, best)
        barrier()
        return out_dir / tag

    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        saved = folder_client_state(out_dir)
        check(saved)
        saved_world = saved.get("world_size", self.denv.world_size)
        if saved_world != self.denv.world_size and self.zero_stage > 0:
            raise GPTError(f"{out_dir} was saved by {saved_world} ranks with ZeRO-{self.zero_stage}; its optimizer "
                           f"shards do not fit {self.denv.world_size} ranks. Resume with {saved_world} ranks.")
        path, client = self.engine.load_checkpoint(str(out_dir))
        if path is None or client is None:
            raise GPTError(f"no DeepSpeed checkpoint could be loaded from {out_dir} (its `latest` file names a tag "
                           "that is missing or incomplete).")
        return client
