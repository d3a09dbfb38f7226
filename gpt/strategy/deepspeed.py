"""DeepSpeed ZeRO 0/1/2/3: the engine owns gradients, precision, clipping and sharded checkpoints.

Our AdamW is the client optimizer and our LR schedule sets its learning rate, so
the schedule is one implementation for every strategy. The engine scales each
micro-batch loss by 1/gradient_accumulation_steps and steps only at the
accumulation boundary, so `backward` calls engine.backward then engine.step.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from gpt.distributed import DistEnv, barrier, ensure_single_process_env
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.strategy.base import Strategy
from gpt.strategy.deepspeed_config import load_ds_config, resolve_ds_config
from gpt.strategy.deepspeed_export import saved_client_state

TAG_PREFIX = "iter_"


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
        self.raw_model = model
        self.client_optimizer = optimizer
        self.engine, self.optimizer, _, _ = self.deepspeed.initialize(model=model, optimizer=optimizer,
                                                                      config=self.config)
        if compile:
            self.engine.compile()
        self.model = self.engine

    def autocast(self) -> ContextManager:
        return contextlib.nullcontext()  # the engine casts the model itself (bf16/fp16 sections)

    def set_lr(self, lr: float) -> None:
        # ZeRO wrappers step the client optimizer's param groups: setting lr there reaches every stage
        for group in self.client_optimizer.param_groups:
            group["lr"] = lr

    def micro_step(self, last: bool) -> ContextManager:
        self._last = last
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if self.engine.is_gradient_accumulation_boundary() != self._last:
            raise RuntimeError("DeepSpeed's accumulation counter and the trainer's micro-steps disagree")
        if self.dtype != torch.float16 and not bool(torch.isfinite(loss.detach())):
            # the engine would apply it (only its fp16 loss scaler skips overflowing steps): stop first
            raise GPTError("the loss became NaN/Inf under DeepSpeed, which cannot skip a step outside fp16 loss "
                           "scaling. The last checkpoint is intact: resume from it with a lower --learning_rate "
                           "or a stricter --grad_clip.")
        self.engine.backward(loss)
        self.engine.step()

    def step(self) -> bool:
        """Nothing left to do: the engine stepped (with clipping) inside the last micro-step's backward."""
        self.last_grad_norm = self.engine.get_global_grad_norm()
        return True

    def save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Every rank writes its shard under <out_dir>/iter_NNNNNNN; `latest` moves only once all are written."""
        tag = f"{TAG_PREFIX}{trainer_state['iter_num']:07d}"
        client = {**trainer_state, "zero_stage": self.zero_stage}
        try:
            self.engine.save_checkpoint(str(out_dir), tag=tag, client_state=client)
        except OSError as err:
            raise GPTError(f"could not write the DeepSpeed checkpoint {out_dir}/{tag}: {err.strerror or err}. "
                           "The previous checkpoint is untouched.") from None
        barrier()
        if self.denv.is_main:  # older tags beyond keep_last are superseded now that `latest` names the new one
            best_file = Path(out_dir) / "best"
            if best:
                best_file.write_text(tag)
            keep = best_file.read_text().strip() if best_file.is_file() else None
            tags = sorted(p for p in Path(out_dir).glob(f"{TAG_PREFIX}*") if p.is_dir())
            for old in tags[:-keep_last]:
                if old.name != keep:
                    shutil.rmtree(old, ignore_errors=True)
        return Path(out_dir) / tag

    def load(self, out_dir: Path, check: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        check(saved_client_state(out_dir))
        path, client = self.engine.load_checkpoint(str(out_dir))
        if path is None or client is None:
            raise GPTError(f"no DeepSpeed checkpoint could be loaded from {out_dir} (its `latest` file names a tag "
                           "that is missing or incomplete).")
        saved_world = client.get("world_size", self.denv.world_size)
        if saved_world != self.denv.world_size and self.zero_stage > 0:
            raise GPTError(f"{out_dir} was saved by {saved_world} ranks with ZeRO-{self.zero_stage}; its optimizer "
                           f"shards do not fit {self.denv.world_size} ranks. Resume with {saved_world} ranks.")
        return client

    def has_checkpoint(self, out_dir: Path) -> bool:
        return (Path(out_dir) / "latest").is_file()
