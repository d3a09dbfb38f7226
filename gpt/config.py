"""The training configuration: typed sections with nanoGPT's flat key names.

`python launch/train.py [CONFIG.yaml] [--key=value ...]`: defaults below, then
the YAML file (default configs/shakespeare_char.yaml), then the flags.
Everything is validated here, before any data or model is touched.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional, Sequence

from gpt.errors import GPTError
from gpt.flags import build_config, flatten, help_text, read_yaml, split_argv

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "shakespeare_char.yaml"

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "triton", "sdpa", "math")
OP_IMPLS = ("auto", "triton", "torch")  # layernorm, cross_entropy: see kernels/__init__.py
INIT_FROM = ("scratch", "resume", "auto")
STRATEGIES = ("auto", "single", "ddp", "deepspeed")


@dataclasses.dataclass
class ModelConfig:
    """The GPT's shape. vocab_size None = take it from the dataset's tokenizer."""

    block_size: int = 1024
    vocab_size: Optional[int] = None
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    attention: str = "auto"  # auto = our Triton kernel on CUDA, sdpa elsewhere; or triton | sdpa | math
    layernorm: str = "auto"  # auto = our Triton kernel on CUDA, torch elsewhere; or triton | torch
    cross_entropy: str = "auto"  # the loss, same choices as layernorm
    fused_linear_loss: bool = False  # lm_head + loss in token chunks: the logits never exist (forward returns None)


@dataclasses.dataclass
class DataConfig:
    dataset: str = "shakespeare_char"
    data_dir: str = "data"
    batch_size: int = 12
    sampling: str = "random"  # random windows (nanoGPT) | sequential: each epoch every window once, seeded order
    data_format: str = "auto"  # auto | shards (data/prepare.py) | llmc (llm.c, modded-nanogpt) | nanogpt (train.bin)


@dataclasses.dataclass
class OptimConfig:
    learning_rate: float = 6e-4
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000
    min_lr: float = 6e-5


@dataclasses.dataclass
class TrainConfig:
    out_dir: str = "out"
    max_iters: int = 600000
    eval_interval: int = 2000
    eval_iters: int = 200
    eval_only: bool = False
    log_interval: int = 1
    always_save_checkpoint: bool = True
    init_from: str = "scratch"  # scratch | resume | auto (resume when a checkpoint exists)
    keep_last: int = 1  # checkpoints kept besides the best (best.pt)
    time_limit: str = ""  # e.g. 2h, 90m, 1h30m, 3600 (seconds): save and exit 0 before it runs out
    max_bad_steps: int = 10  # consecutive non-finite steps tolerated (each one skipped) before stopping
    gradient_accumulation_steps: int = 1
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False


@dataclasses.dataclass
class DistConfig:
    """How the run is spread over processes; see gpt/strategy/."""

    strategy: str = "auto"
    zero_stage: Optional[int] = None
    ds_config: str = "ds_config.json"
    local_rank: Optional[int] = None  # passed by the deepspeed launcher; LOCAL_RANK from the environment wins


@dataclasses.dataclass
class LogConfig:
    wandb_log: bool = False
    wandb_project: str = "gpt"
    wandb_run_name: str = "run"


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    dist: DistConfig = dataclasses.field(default_factory=DistConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        """Flat key -> value, the form of config.yaml and of checkpoints."""
        return flatten(self)


USAGE = "usage: python launch/train.py [CONFIG.yaml] [--key=value ...] [--debug]"


def validate(cfg: Config) -> Config:
    """Reject impossible values with a message naming the key and the fix."""
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    positive = {
        "block_size": m.block_size, "n_layer": m.n_layer, "n_head": m.n_head, "n_embd": m.n_embd,
        "batch_size": d.batch_size, "eval_iters": t.eval_iters, "eval_interval": t.eval_interval,
        "log_interval": t.log_interval, "gradient_accumulation_steps": t.gradient_accumulation_steps,
    }
    for key, value in positive.items():
        if value < 1:
            raise GPTError(f"--{key}={value} is impossible: it must be at least 1.")
    if m.vocab_size is not None and m.vocab_size < 1:
        raise GPTError(f"--vocab_size={m.vocab_size} is impossible: leave it unset to take it from the dataset.")
    if m.n_embd % m.n_head:
        raise GPTError(f"n_embd={m.n_embd} is not divisible by n_head={m.n_head}: each head needs n_embd/n_head channels. "
                       f"Choose n_head among the divisors of {m.n_embd}.")
    if not 0.0 <= m.dropout < 1.0:
        raise GPTError(f"--dropout={m.dropout} must be in [0, 1).")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
        if getattr(o, key) < 0:
            raise GPTError(f"--{key}={getattr(o, key)} must not be negative (grad_clip=0 turns clipping off).")
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise GPTError(f"--{key}={getattr(o, key)} must be in [0, 1).")
    for key, value in (("max_iters", t.max_iters), ("warmup_iters", o.warmup_iters), ("lr_decay_iters", o.lr_decay_iters)):
        if value < 0:
            raise GPTError(f"--{key}={value} must not be negative.")
    if o.decay_lr and o.lr_decay_iters <= o.warmup_iters:
        raise GPTError(f"lr_decay_iters={o.lr_decay_iters} must be greater than warmup_iters={o.warmup_iters} "
                       "for the cosine schedule (or set --decay_lr=False).")
    if not DEVICE_PATTERN.match(t.device):
        raise GPTError(f"--device={t.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps.")
    _choice("dtype", t.dtype, DTYPES)
    _choice("attention", m.attention, ATTENTION)
    _choice("layernorm", m.layernorm, OP_IMPLS)
    _choice("cross_entropy", m.cross_entropy, OP_IMPLS)
    _choice("init_from", t.init_from, INIT_FROM)
    if t.keep_last < 1:
        raise GPTError(f"--keep_last={t.keep_last} must be at least 1 (the latest checkpoint is always kept).")
    if t.max_bad_steps < 1:
        raise GPTError(f"--max_bad_steps={t.max_bad_steps} must be at least 1.")
    parse_duration(t.time_limit)
    _choice("strategy", cfg.dist.strategy, STRATEGIES)
    if cfg.dist.zero_stage is not None:
        if cfg.dist.zero_stage not in (0, 1, 2, 3):
            raise GPTError(f"--zero_stage={cfg.dist.zero_stage} is not a ZeRO stage: use 0, 1, 2 or 3.")
        if cfg.dist.strategy not in ("auto", "deepspeed"):
            raise GPTError(f"--zero_stage is a DeepSpeed setting but --strategy={cfg.dist.strategy}: "
                           "drop --zero_stage or use --strategy=deepspeed.")
    if not d.dataset or "/" in d.dataset:
        raise GPTError(f"--dataset={d.dataset!r} must be a dataset name under --data_dir (e.g. shakespeare_char).")
    _choice("sampling", d.sampling, ("random", "sequential"))
    _choice("data_format", d.data_format, ("auto", "shards", "llmc", "nanogpt"))
    return cfg


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?$")


def parse_duration(text: str) -> float | None:
    """'2h', '90m', '1h30m', '45s' or plain seconds -> seconds; '' -> None (no limit)."""
    text = text.strip().lower()
    if not text:
        return None
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise GPTError(f"--time_limit={text!r} is not a duration: write e.g. 2h, 90m, 1h30m or 3600 (seconds).")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise GPTError(f"--time_limit={text!r} must be longer than zero.")
    return total


def _choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise GPTError(f"--{key}={value!r} is not one of {', '.join(allowed)}.")


def load_config(argv: Sequence[str]) -> Config:
    """Parse `[CONFIG.yaml] [--key=value ...]` into a validated Config."""
    if "--help" in argv or "-h" in argv:
        print(help_text(Config, USAGE))
        raise SystemExit(0)
    positional, overrides = split_argv(argv, allow_positional=True)
    if len(positional) > 1:
        raise GPTError(f"expected at most one config file, got {positional}. {USAGE}")
    path = Path(positional[0]) if positional else DEFAULT_CONFIG
    return validate(build_config(Config, read_yaml(path), overrides, source=str(path)))


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from its flat dict (as stored in checkpoints)."""
    return build_config(Config, values, {}, source="checkpoint config")
