"""The composition root: one function turns a validated Config into every piece of a run.

`build_run(cfg)` reads the launcher's environment, picks the device and precision, opens
the dataset, resolves what the config leaves to the data (the vocabulary size), to a
pretrained snapshot (the model's shape, with --init_from=gpt2...) or to the machine (the
accumulation that reaches tokens_per_step, and each rank's share of it), builds the model
(loading pretrained weights), optimizer, strategy and loader, restores a checkpoint when the
run resumes, and opens the metrics (and the HellaSwag items an eval scores).
Every cross-field check that needs the data or the machine is made here, once; the
Trainer then only loops. Benchmarks and tests build through this same function.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

import kernels
from data.dataset import Dataset, open_dataset
from data.loader import BatchLoader, local_micro_batches
from gpt.atomic import write_text_atomic
from gpt.checkpoint import check_resumable, has_checkpoint
from gpt.config import Config, OptimConfig
from gpt.distributed import DistEnv, init_process_group, rank_device, read_env
from gpt.errors import GPTError
from gpt.heartbeat import Heartbeat
from gpt.hellaswag import HellaSwag
from gpt.metrics import MetricsLogger
from gpt.mfu import MFU
from gpt.model import GPT
from gpt.optim import build_optimizer, describe_optimizer
from gpt.pretrained import init_pretrained, is_pretrained, open_snapshot
from gpt.runtime import enable_fast_matmul, resolve_device, resolve_dtype, rng_state, seed_everything, set_rng_state
from gpt.strategy import build_strategy, choose_strategy
from gpt.strategy.base import Strategy


@dataclasses.dataclass
class Run:
    """Everything a training loop needs, built and checked."""

    cfg: Config
    denv: DistEnv
    device: torch.device
    dtype: torch.dtype
    dataset: Dataset
    model: GPT  # the bare model; the strategy holds its wrapped, possibly compiled, form
    strategy: Strategy
    loader: BatchLoader
    metrics: Optional[MetricsLogger]  # rank 0 only
    heartbeat: Heartbeat  # a rank that stops making progress ends the job, named (a no-op for one process)
    hellaswag: Optional[HellaSwag] = None  # scored at every eval when --hellaswag_data is set
    iter_num: int = 0  # where training starts: 0, or the resumed checkpoint's iteration
    best_val_loss: float = math.inf
    resumed: bool = False

    @property
    def tokens_per_iter(self) -> int:
        c = self.cfg
        return c.train.gradient_accumulation_steps * c.data.batch_size * c.model.block_size

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.out_dir)

    def print(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.denv.is_main:
            print(message, flush=True)

    def trainer_state(self, iter_num: int, best_val_loss: float) -> dict[str, Any]:
        """What a checkpoint needs besides model and optimizer to continue exactly. Collective (gathers RNGs)."""
        return {
            "model_config": dataclasses.asdict(self.cfg.model),
            "iter_num": iter_num,
            "best_val_loss": best_val_loss,
            "rng": self.strategy.gather(rng_state()),
            "loader": self.loader.state_dict(),
            "config": self.cfg.to_dict(),
            "tokenizer": self.dataset.meta["tokenizer"],
            "dataset": self.cfg.data.dataset,
            "wandb_id": self.metrics.wandb_id if self.metrics else None,
            "world_size": self.denv.world_size,
            "strategy": self.strategy.name,
        }


def build_run(cfg: Config, debug: bool = False, metrics: bool = True, verbose: bool = True) -> Run:
    """Build a run from a validated Config. Benchmarks pass `metrics=False` (no logger, nothing written to
    out_dir) and `verbose=False` (no description of the run)."""
    t = cfg.train
    denv = read_env()
    snapshot = open_snapshot(t.init_from) if is_pretrained(t.init_from) else None  # a missing one fails first
    device = rank_device(resolve_device(t.device), denv)
    dtype = resolve_dtype(t.dtype, device)
    enable_fast_matmul(device)
    dataset = open_dataset(cfg.data.data_dir, cfg.data.dataset, cfg.data.data_format)
    resuming = _should_resume(cfg, denv)
    weights = None
    if snapshot is not None:  # the snapshot sets the shape even when resuming, so the checkpoint's matches
        weights, lines = init_pretrained(cfg.model, snapshot, dataset.meta["tokenizer"], cfg.data.dataset,
                                         load=not resuming)
        if denv.is_main and verbose:
            print("\n".join(lines), flush=True)
    if cfg.model.vocab_size is None:
        cfg.model.vocab_size = dataset.vocab_size
    elif cfg.model.vocab_size < dataset.vocab_size:
        raise GPTError(f"--vocab_size={cfg.model.vocab_size} is smaller than dataset {cfg.data.dataset!r}'s "
                       f"vocabulary of {dataset.vocab_size}: leave it unset or make it larger.")
    if t.tokens_per_step:
        t.gradient_accumulation_steps = _accumulation_for(cfg, denv, verbose)
    local_accum = local_micro_batches(t.gradient_accumulation_steps, denv.world_size)
    hellaswag = (HellaSwag.from_file(t.hellaswag_data, dataset.tokenizer, cfg.model.block_size, t.hellaswag_limit)
                 if t.hellaswag_data else None)  # read and tokenized before anything starts: a bad file fails fast

    strategy_name = choose_strategy(cfg, denv)
    _check_muon_strategy(cfg.optim, strategy_name)
    init_process_group(denv, device, always=strategy_name == "ddp", dist_timeout_s=cfg.dist.dist_timeout)
    strategy = build_strategy(cfg, denv, device, dtype, local_accum, debug=debug)
    # every rank builds the same initial weights (sharded strategies keep only their shards of them);
    # dropout then draws from a per-rank stream
    seed_everything(t.seed)
    model = strategy.build_model(partial(GPT, cfg.model, dropout=t.dropout, kernels=cfg.kernels,
                                         activation_checkpointing=t.activation_checkpointing))
    if weights is not None:  # before the strategy wraps the model; every rank loads the same and keeps its part
        strategy.load_weights(model, weights, str(snapshot.folder))
        del weights
    optimizer = build_optimizer(model, cfg.optim, device.type, rank=denv.rank, world_size=denv.world_size)
    strategy.wrap(model, optimizer, compile=t.compile)
    seed_everything(t.seed + 1 + denv.rank)
    loader = BatchLoader(dataset, cfg.model.block_size, cfg.data.batch_size, t.gradient_accumulation_steps, t.seed,
                         denv.rank, denv.world_size, sampling=cfg.data.sampling)
    run = Run(cfg, denv, device, dtype, dataset, model, strategy, loader, metrics=None,
              heartbeat=Heartbeat.start(denv, cfg.dist.dist_timeout), hellaswag=hellaswag)
    wandb_id = _restore(run) if resuming else None
    if metrics and denv.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run.out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        run.metrics = MetricsLogger(
            run.out_dir, cfg.to_dict(), resumed_at=run.iter_num if resuming else None, wandb_log=cfg.log.wandb_log,
            wandb_project=cfg.log.wandb_project, wandb_run_name=cfg.log.wandb_run_name, wandb_id=wandb_id,
            max_iters=t.max_iters, tokens_per_iter=run.tokens_per_iter, device=device,
            mfu=MFU.for_run(cfg.model, device, dtype, denv.world_size))
    if verbose:
        _describe(run, optimizer)
    return run


def _accumulation_for(cfg: Config, denv: DistEnv, verbose: bool) -> int:
    """The global gradient_accumulation_steps whose tokens per step come nearest to tokens_per_step, in whole
    micro-batches on every rank; a GPTError when one micro-batch on every rank is already more."""
    t, batch, block, world = cfg.train, cfg.data.batch_size, cfg.model.block_size, denv.world_size
    round_tokens = batch * block * world  # one micro-batch on every rank
    if round_tokens > t.tokens_per_step:
        raise GPTError(f"--tokens_per_step={t.tokens_per_step:,} cannot be met: one micro-batch on each of the {world} "
                       f"rank(s) is already {round_tokens:,} tokens (batch_size {batch} x block_size {block} x {world}). "
                       f"Lower --batch_size to {max(1, t.tokens_per_step // (block * world))} or less, or raise "
                       "--tokens_per_step.")
    accum = round(t.tokens_per_step / round_tokens) * world
    tokens = accum * batch * block
    if denv.is_main and verbose:
        note = "" if tokens == t.tokens_per_step else f" (the nearest to {t.tokens_per_step:,} on {world} rank(s))"
        print(f"tokens_per_step={t.tokens_per_step:,}: gradient_accumulation_steps={accum} ({accum // world} per rank "
              f"x {world} rank(s) x batch {batch} x block {block} = {tokens:,} tokens per step{note})", flush=True)
    return accum


def _should_resume(cfg: Config, denv: DistEnv) -> bool:
    """resume: a checkpoint must exist; auto: use one if it exists; scratch (or pretrained weights): never, except
    when torchrun restarts a failed job (--max-restarts), which must pick up where it died."""
    t = cfg.train
    exists = has_checkpoint(t.out_dir)
    if t.init_from == "resume" and not exists:
        raise GPTError(f"no checkpoint at {Path(t.out_dir) / 'ckpt.pt'} to resume from. Train first, or use "
                       "--init_from=auto (resume when there is one) or --init_from=scratch.")
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if t.init_from not in ("resume", "auto") and restarted and exists:
        if denv.is_main:
            print(f"torchrun restarted this job: resuming from {t.out_dir}", flush=True)
        return True
    return t.init_from == "resume" or (t.init_from == "auto" and exists)


def _restore(run: Run) -> Optional[str]:
    """Load the checkpoint into the built run: weights, optimizer, data position, RNG streams. Returns the W&B id."""
    cfg = run.cfg
    check = partial(check_resumable, model=cfg.model, tokenizer=run.dataset.meta["tokenizer"], out_dir=run.out_dir,
                    dataset=cfg.data.dataset)
    state = run.strategy.load(run.out_dir, check=check)
    run.loader.load_state_dict(state["loader"])
    rngs = state["rng"]
    if len(rngs) == run.denv.world_size:
        set_rng_state(rngs[run.denv.rank])
    else:  # another world size: ranks' streams cannot carry over, so derive fresh ones from the step
        seed_everything(cfg.train.seed + 1 + run.denv.rank + 1_000_003 * int(state["iter_num"]))
    run.iter_num = int(state["iter_num"])
    run.best_val_loss = float(state["best_val_loss"])
    run.resumed = True
    run.print(f"resuming from {run.out_dir} at iter {run.iter_num} "
              f"(saved by {state.get('world_size', 1)} rank(s), now {run.denv.world_size})")
    return state.get("wandb_id")


def _check_muon_strategy(o: OptimConfig, strategy_name: str) -> None:
    """Refuse Muon under the sharded strategies, before any process group or model exists.

    Muon orthogonalises each whole hidden matrix; ZeRO hands a client optimizer flat shards of the
    weights and FSDP2 row shards (DTensors), so neither gives it a matrix to work on. Gathering every
    matrix on every step would undo what those strategies save, so this says so instead.
    """
    if o.optimizer != "muon" or strategy_name not in ("deepspeed", "fsdp"):
        return
    how = ("ZeRO hands a client optimizer flat shards of the weights (DeepSpeed's own Muon, "
           "`\"optimizer\": {\"type\": \"Muon\"}` in ds_config.json, is a different implementation this "
           "trainer does not wire in)") if strategy_name == "deepspeed" else "FSDP keeps only row shards of each weight"
    raise GPTError(f"--optimizer=muon does not run under --strategy={strategy_name}: {how}, and Muon must see each "
                   "whole matrix to orthogonalise it. Train with Muon under DDP (`torchrun --nproc_per_node=N "
                   f"launch/train.py --strategy=ddp`) or one process, or keep {strategy_name} with --optimizer=adamw.")


def _describe_schedule(o: OptimConfig) -> str:
    """The learning-rate schedule in words, for the run's first lines."""
    if not o.decay_lr:
        return f"constant learning rate {o.learning_rate:g}"
    cooldown = f", the last {o.cooldown_frac:.0%} of it a cooldown" if o.lr_schedule == "wsd" else ""
    muon = f" (Muon {o.muon_lr:g} to {o.muon_lr * o.min_lr / o.learning_rate:g})" if (
        o.optimizer == "muon" and o.learning_rate > 0) else ""
    return (f"lr {o.learning_rate:g} to {o.min_lr:g}{muon}: {o.warmup_iters} warmup steps, {o.lr_schedule} "
            f"schedule to step {o.lr_decay_iters}{cooldown}")


def _describe(run: Run, optimizer: torch.optim.Optimizer) -> None:
    """The run's first lines: the model, its size, how the run is laid out, which kernels compute."""
    cfg = run.cfg
    run.print(json.dumps(dataclasses.asdict(cfg.model), indent=1))
    with torch.device("meta"):  # counted on a plain build's shapes: ZeRO-3 holds empty placeholders
        shape = GPT(cfg.model)
    run.print(f"parameters: {sum(p.numel() for p in shape.parameters()):,} total, "
              f"{shape.num_params():,} without position embeddings")
    run.print(describe_optimizer(optimizer) + f"; {_describe_schedule(cfg.optim)}")
    run.print(f"strategy {run.strategy.name}, {run.denv.world_size} rank(s), device {run.device}, "
              f"dtype {str(run.dtype).removeprefix('torch.')}, {run.tokens_per_iter:,} tokens per iteration")
    run.print(kernels.describe())
    m, k = cfg.model, cfg.kernels
    loss = ("linear_cross_entropy", k.cross_entropy) if k.fused_linear_loss else ("cross_entropy", k.cross_entropy)
    head = m.n_embd // m.n_head
    # the model's norm is named like its op (layernorm | rmsnorm), and so is its KernelConfig key
    asked = {"attention": k.attention, m.norm: getattr(k, m.norm), loss[0]: loss[1]}
    sizes = {"attention": head, m.norm: m.n_embd, loss[0]: m.vocab_size}
    if m.qk_norm and m.norm != "rmsnorm":  # QK-norm is an RMSNorm over rows of one head
        asked["rmsnorm"], sizes["rmsnorm"] = k.rmsnorm, head
    if m.pos_emb == "rope":
        asked["rope"], sizes["rope"] = k.rope, head
    for line in kernels.describe_ops(run.device, run.dtype, asked, sizes):
        run.print(f"  {line}")
    if cfg.train.compile:
        run.print("compiling the model with torch.compile (the first eval and the first step are slow)...")
