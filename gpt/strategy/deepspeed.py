"""DeepSpeed ZeRO 0/1/2/3: the engine owns gradients, precision, clipping and sharded checkpoints.

Our AdamW is the client optimizer and our LR schedule sets its learning rate, so the
schedule is one implementation for every strategy. The engine scales each micro-batch
loss by 1/gradient_accumulation_steps and steps only at the accumulation boundary, so
each micro-batch is engine.backward then engine.step.

Sharding across world sizes: ZeRO-3 builds the model under deepspeed.zero.Init, so each
parameter is partitioned as soon as its module exists (and GPT's re-initialisation of the
residual projections, which runs after, is replayed shard by shard with the plain build's
values: gpt/strategy/sharded_init.py). Checkpoints carry DeepSpeed's universal-checkpoint
marker; a ZeRO-1/2/3 checkpoint resumed on another number of ranks is first converted by
rank 0 into its universal form (`ckpt-NNNNNNN/universal/`, once) and loaded from there.

Non-finite steps: DeepSpeed 0.19.8 skips a step whose gradients hold a NaN/Inf, leaving the
weights and optimizer state as they were, everywhere but ZeRO-0 in fp32 (measured on 2 CPU
ranks with a NaN loss on one of them: ZeRO-0/1/2/3 in bf16 and ZeRO-1/2/3 in fp32 skip and count
it in `engine.skipped_steps`; ZeRO-0 in fp32 applies it and every weight becomes NaN; fp16, which
CPUs cannot train, skips through its loss scaler). A skipped step is reported like any other
(`applied=False`); where the engine would apply one, the run stops with the reason before the
step is taken.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from gpt.checkpoint import (check_model_state, commit_folder_checkpoint, entry_name, folder_client_state, latest_entry,
                            require_form)
from gpt.distributed import DistEnv, barrier, collective_timeout, ensure_single_process_env
from gpt.errors import GPTError
from gpt.model import GPT
from gpt.optim import set_lr
from gpt.strategy.base import Batch, MicroBatches, StepResult, Strategy
from gpt.strategy.deepspeed_config import load_ds_config, resolve_ds_config
from gpt.strategy.sharded_init import ShardedInit

# what DeepSpeed's universal-checkpoint converter requires in a checkpoint's client state
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as err:
        raise GPTError(f"--strategy=deepspeed needs DeepSpeed, which cannot be imported ({err}). Install it with "
                       "`pip install deepspeed==0.19.8` (it is in requirements.txt), or train data-parallel without it: "
                       "`torchrun --nproc_per_node=N launch/train.py --strategy=ddp`.") from None
    return deepspeed


def zero_stage_change_problem(saved_stage: int, stage: int) -> str | None:
    """Why a checkpoint of ZeRO-`saved_stage` cannot resume under ZeRO-`stage`, or None when it can.

    ZeRO-1 and ZeRO-2 keep the same partitioned optimizer state, and a ZeRO-2 checkpoint resumed
    under ZeRO-1 repeats the uninterrupted losses exactly (docs/benchmarks.md). ZeRO-3 partitions
    the weights as well, and ZeRO-0 partitions nothing: DeepSpeed cannot load either from another
    stage (a ZeRO-2 checkpoint under ZeRO-3 fails an assertion deep inside DeepSpeed).
    """
    if saved_stage == stage or {saved_stage, stage} == {1, 2}:
        return None
    return (f"it was written by DeepSpeed ZeRO-{saved_stage} and this run asks for ZeRO-{stage}; DeepSpeed "
            f"cannot load a checkpoint across that change (ZeRO-1 and ZeRO-2 resume each other, nothing else). "
            f"Resume with --zero_stage={saved_stage}, or start fresh in another --out_dir.")


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"

    def __init__(self, denv: DistEnv, device: torch.device, dtype: torch.dtype, local_accum: int, grad_clip: float,
                 *, ds_config: str, zero_stage: int | None, micro_batch: int, dist_timeout_s: float,
                 debug: bool = False):
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
        self.deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo",
                                        timeout=collective_timeout(dist_timeout_s))

    def build_model(self, make: Callable[[], GPT]) -> GPT:
        """ZeRO-3: partitioned while it is built (zero.Init); other stages: whole, as DeepSpeed expects."""
        if self.zero_stage != 3:
            return super().build_model(make)
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        def partitioned_shape(t: torch.Tensor) -> torch.Size | None:
            return t.ds_shape if getattr(t, "ds_status", None) == ZeroParamStatus.NOT_AVAILABLE else None

        def keep(p: torch.Tensor, full: torch.Tensor) -> None:
            # one parameter whole for a moment; every rank holds the same `full`, so rank 0's is everyone's
            with self.deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(full)

        with self.deepspeed.zero.Init(config_dict_or_path=self.config), ShardedInit(partitioned_shape, keep):
            return make()

    def load_weights(self, model: GPT, weights: dict[str, torch.Tensor], source: str) -> None:
        """ZeRO-3: each parameter gathered in turn and overwritten; other stages: into the whole model."""
        if self.zero_stage != 3:
            return super().load_weights(model, weights, source)
        check_model_state({name: p.ds_shape for name, p in model.named_parameters(remove_duplicate=False)},
                          weights, source)
        for name, p in model.named_parameters():
            with self.deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(weights[name])

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
        batches = MicroBatches(next_batch, self.local_accum, self.device)
        for last, x, y in batches:
            if self.engine.is_gradient_accumulation_boundary() != last:
                raise RuntimeError("DeepSpeed's accumulation counter and the strategy's micro-steps disagree")
            loss = self.loss(x, y)
            if last:  # the engine reduces gradients in this backward: the ranks start waiting for each other
                batches.mark_local()
            self.engine.backward(loss)
            if last and not self.engine_skips_nonfinite() and self.any_rank(not self._gradients_finite()):
                raise GPTError(f"the gradients became NaN/Inf (loss {float(loss):.4g}) under DeepSpeed "
                               f"ZeRO-{self.zero_stage} in {str(self.dtype).removeprefix('torch.')}, where the engine "
                               "would apply the step instead of skipping it, so the run stops before it. The last "
                               "checkpoint is intact: resume from it with a lower --learning_rate or a smaller "
                               "--grad_clip, or train with --zero_stage=1 or higher (or bf16), where DeepSpeed skips "
                               "such a step.")
            self.engine.step()
            total += loss.detach().float()
        return StepResult(total / self.local_accum, self.engine.get_global_grad_norm(),
                          self.engine.skipped_steps == skipped, batches.data_s,
                          self.client_optimizer.param_groups[0]["lr"], batches.local_s)

    def engine_skips_nonfinite(self) -> bool:
        """Whether the engine itself skips a step with NaN/Inf gradients: everywhere but ZeRO-0 in fp32, whose
        engine steps our AdamW directly (see the module docstring)."""
        return not (self.zero_stage == 0 and self.dtype == torch.float32)

    def _gradients_finite(self) -> bool:
        """At the accumulation boundary of ZeRO-0, after the engine all-reduced them into the parameters' .grad."""
        return all(bool(torch.isfinite(p.grad).all()) for p in self.engine.module.parameters() if p.grad is not None)

    def _save(self, trainer_state: dict[str, Any], out_dir: Path, keep_last: int, best: bool) -> Path:
        """Every rank writes its shard under <out_dir>/ckpt-NNNNNNN; `latest` moves only once all are written."""
        tag = entry_name(trainer_state["iter_num"])
        client = {**trainer_state, "zero_stage": self.zero_stage, **UNIVERSAL_INFO}
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
        require_form(out_dir, "deepspeed", self.name)
        saved = folder_client_state(out_dir)
        check(saved)
        saved_world, saved_stage = saved.get("world_size", self.denv.world_size), saved.get("zero_stage", 0)
        problem = zero_stage_change_problem(saved_stage, self.zero_stage)
        if problem:
            raise GPTError(f"cannot resume from {out_dir}: {problem}")
        if saved_world != self.denv.world_size and saved_stage > 0 and self.zero_stage > 0:
            universal = self._universal(latest_entry(out_dir), saved_world, saved_stage)
            # what "checkpoint": {"load_universal": true} in ds_config.json sets; DeepSpeed reads it only while
            # loading, and only now do we know the checkpoint needs it
            self.engine._config.load_universal_checkpoint = True
            groups = [{k: v for k, v in g.items() if k != "params"} for g in self.client_optimizer.param_groups]
            path, client = self.engine.load_checkpoint(str(universal.parent), tag=universal.name)
            self._repair_universal_zero3_load(groups)
        else:
            path, client = self.engine.load_checkpoint(str(out_dir))
        if path is None or client is None:
            raise GPTError(f"no DeepSpeed checkpoint could be loaded from {out_dir} (its `latest` file names a tag "
                           "that is missing or incomplete).")
        return client

    def _repair_universal_zero3_load(self, groups: list[dict[str, Any]]) -> None:
        """Undo two slips of DeepSpeed 0.19's ZeRO-3 universal loader (measured: a ZeRO-3 run resumed from its
        own universal form drifted 1.5e-5 from the uninterrupted losses within 2 steps, 1e-3 within 4 steps on
        2->1 ranks; with both repaired, no drift). It gives every param group the first group's hyperparameters
        (weight decay on LayerNorm gains): restore ours, `groups`. And it gives every group one shared `step`
        tensor, which AdamW then advances once per group per step: give each group its own."""
        for group, hyper in zip(self.client_optimizer.param_groups, groups):
            group.update(hyper)
        for state in self.client_optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()

    def _universal(self, entry: Path, saved_world: int, saved_stage: int) -> Path:
        """<entry>/universal: the checkpoint in DeepSpeed's universal form, converted by rank 0 the first time."""
        universal = entry / "universal"
        if self.denv.is_main and not universal.is_dir():
            print(f"{entry.name} was saved by {saved_world} rank(s) with ZeRO-{saved_stage}; converting it to a "
                  f"DeepSpeed universal checkpoint to resume on {self.denv.world_size} (once, in {universal})", flush=True)
            from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
            tmp = entry / ".universal.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            chatter = io.StringIO()  # the converter prints its progress bars; keep them for an error
            args = argparse.Namespace(input_folder=str(entry), output_folder=str(tmp), num_extract_workers=1,
                                      num_merge_workers=1, keep_temp_folder=False, strict=True,
                                      inject_missing_state=True)  # checkpoints saved before we added the marker
            try:
                with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                    ds_to_universal(args)
            except Exception as err:
                raise GPTError(f"could not convert {entry} into a DeepSpeed universal checkpoint to resume on "
                               f"{self.denv.world_size} rank(s) ({type(err).__name__}: {err}). Resume with "
                               f"{saved_world} ranks instead. The converter said:\n{chatter.getvalue()[-2000:]}") from None
            os.replace(tmp, universal)
        barrier()
        return universal
