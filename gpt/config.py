"""The training configuration: typed sections with nanoGPT's flat key names.

`python launch/train.py [CONFIG.yaml] [--key=value ...]`: defaults below, then
the YAML file (default configs/shakespeare_char.yaml), then the flags.
`validate` makes every check that needs only the config; the checks that need
the machine or the data (world size, vocabulary) are made once, in gpt/build.py.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from data.formats import FORMATS
from data.sampling import SAMPLING
from gpt.distributed import DEFAULT_DIST_TIMEOUT_S
from gpt.errors import GPTError
from gpt.flags import build_config, choice, flatten, opt, parse_args
from gpt.hf_snapshot import GPT2_MODELS
from gpt.runtime import DTYPES, check_device_name
from kernels.runtime import IMPLS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "shakespeare_char.yaml"

INIT_FROM = ("scratch", "resume", "auto")
ADAMW_IMPLS = ("auto", "fused", "foreach", "loop")
STRATEGIES = ("auto", "single", "ddp", "fsdp", "deepspeed")
FSDP_ACCUMULATION = ("auto", "unsharded", "sharded")
POS_EMBS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")
OPTIMIZERS = ("adamw", "muon")
LR_SCHEDULES = ("cosine", "wsd", "linear")


@dataclasses.dataclass
class ModelConfig:
    """What defines the GPT's weights, and nothing else: checkpoints store it, resuming compares it."""

    block_size: int = opt(1024, "context length in tokens (position embeddings)")
    vocab_size: Optional[int] = opt(None, "vocabulary size; None = the dataset's tokenizer's")
    n_layer: int = opt(12, "transformer blocks")
    n_head: int = opt(12, "attention heads per block")
    n_embd: int = opt(768, "embedding width (n_head divides it)")
    bias: bool = opt(False, "biases in the linear layers and LayerNorms (GPT-2 has them; RMSNorm never has one)")
    # the architecture: the defaults are nanoGPT's GPT-2, so older configs and checkpoints mean what they meant
    pos_emb: str = opt("learned", "positions: learned (a block_size x n_embd table, GPT-2) | rope (rotary, no weights)")
    rope_base: float = opt(10000.0, "rotary embeddings' base: pair i turns by position * base^(-2i/head_dim)")
    norm: str = opt("layernorm", "layernorm (GPT-2) | rmsnorm (scale only: no mean, no bias)")
    qk_norm: bool = opt(False, "RMSNorm every query and key head before attention (one gain per channel, shared)")
    mlp: str = opt("gelu", "gelu (4x wide, GPT-2) | relu2 (4x wide, ReLU squared) | swiglu (gated, 8/3x wide)")
    tie_embeddings: bool = opt(True, "the output head shares the token embedding's weights (GPT-2); False = its own")
    zero_init: bool = opt(False, "attention and MLP output projections (and an untied head) start at zero")
    logit_softcap: float = opt(0.0, "logits = cap * tanh(logits / cap) when > 0; 0 = off")

    @property
    def mlp_hidden(self) -> int:
        """The MLP's inner width: 4 x n_embd, or for SwiGLU's three matrices 8/3 x n_embd (the same
        parameters), rounded up to a multiple of 32."""
        if self.mlp == "swiglu":
            return 32 * -(-8 * self.n_embd // (3 * 32))
        return 4 * self.n_embd


@dataclasses.dataclass
class KernelConfig:
    """Which implementation computes each op: a choice of this run, not of the weights, so any
    checkpoint runs on any device. auto = our Triton kernel where it is known to fit (CUDA), else torch."""

    attention: str = opt("auto", "auto | triton (ours) | torch (scaled_dot_product_attention) | math (written out)")
    layernorm: str = opt("auto", "auto | triton | torch (F.layer_norm) | math")
    rmsnorm: str = opt("auto", "auto | triton (ours, fused forward and backward) | torch (F.rms_norm) | math")
    rope: str = opt("auto", "rotary embeddings of q and k: auto | triton (ours) | torch (rotate-half) | math (complex)")
    cross_entropy: str = opt("auto", "the loss: auto | triton | torch (F.cross_entropy) | math")
    fused_linear_loss: bool = opt(False, "lm_head + loss in token chunks: the full logits never exist")


@dataclasses.dataclass
class DataConfig:
    dataset: str = opt("shakespeare_char", "a dataset name under --data_dir (data/prepare.py makes one)")
    data_dir: str = opt("data", "the folder that holds datasets")
    batch_size: int = opt(12, "sequences per micro-batch (per rank)")
    sampling: str = opt("random", "random windows (nanoGPT) | sequential: each epoch every window once, seeded order")
    data_format: str = opt("auto", "auto | shards (data/prepare.py) | llmc (llm.c, modded-nanogpt) | nanogpt (train.bin)")


@dataclasses.dataclass
class OptimConfig:
    learning_rate: float = opt(6e-4, "peak learning rate (after warmup)")
    weight_decay: float = opt(1e-1, "AdamW weight decay, on matrices and embeddings only")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.95, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 = no clipping")
    decay_lr: bool = opt(True, "warmup then lr_schedule's decay; False = constant learning_rate")
    lr_schedule: str = opt("cosine", "after warmup: cosine (to min_lr at lr_decay_iters) | wsd (constant, then a "
                                     "linear cooldown over the last cooldown_frac) | linear (straight down to min_lr)")
    warmup_iters: int = opt(2000, "linear warmup steps")
    lr_decay_iters: int = opt(600000, "the schedule reaches min_lr at this step")
    cooldown_frac: float = opt(0.2, "wsd: the share of lr_decay_iters spent decaying, at the end")
    min_lr: float = opt(6e-5, "learning rate at and after lr_decay_iters")
    adamw_impl: str = opt("auto", "auto (fused on CUDA and CPU, else foreach) | fused | foreach | loop")
    optimizer: str = opt("adamw", "adamw | muon (hidden matrices by Muon, embeddings, head, norms and biases by AdamW)")
    muon_lr: float = opt(0.02, "Muon's peak learning rate; follows lr_schedule as learning_rate does")
    muon_momentum: float = opt(0.95, "Muon's Nesterov momentum")
    muon_ns_steps: int = opt(5, "Newton-Schulz iterations that orthogonalise each Muon update")
    muon_weight_decay: float = opt(0.0, "Muon's decoupled weight decay (the matrix shrinks by lr * this a step)")


@dataclasses.dataclass
class TrainConfig:
    out_dir: str = opt("out", "where checkpoints, metrics.jsonl, loss.png and summary.json go")
    max_iters: int = opt(600000, "optimizer steps to train for")
    eval_interval: int = opt(2000, "evaluate (and maybe save) every this many steps")
    eval_iters: int = opt(200, "batches per split in each evaluation")
    eval_only: bool = opt(False, "evaluate once and exit")
    log_interval: int = opt(1, "a progress line every this many steps")
    always_save_checkpoint: bool = opt(True, "save at every eval; False = only when val loss improves")
    init_from: str = opt("scratch", "scratch | resume (from out_dir) | auto (resume when a checkpoint exists) | "
                                    "gpt2 | gpt2-medium | gpt2-large | gpt2-xl | PATH: OpenAI's or any Hugging "
                                    "Face GPT-2 weights, from a local snapshot")
    keep_last: int = opt(1, "checkpoints kept besides the best one")
    time_limit: str = opt("", "e.g. 2h, 90m, 1h30m, 3600 (seconds): save and exit 0 before it runs out")
    max_bad_steps: int = opt(10, "consecutive non-finite steps tolerated (each one skipped) before stopping")
    gradient_accumulation_steps: int = opt(1, "micro-batches per step, over all ranks (a multiple of the world size)")
    tokens_per_step: int = opt(0, "tokens per optimizer step, over all ranks: sets gradient_accumulation_steps to "
                                  "the nearest that batch_size x block_size x ranks reaches; 0 = off")
    dropout: float = opt(0.0, "dropout rate while training (0 for pretraining, 0.1+ for finetuning)")
    seed: int = opt(1337, "seeds weights, data order and dropout")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto (bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU) | float32 | bfloat16 | float16")
    compile: bool = opt(False, "torch.compile the model")
    activation_checkpointing: bool = opt(False, "keep only each block's input and recompute the block in the "
                                                "backward: activation memory for one more forward")
    hellaswag_data: str = opt("", "a hellaswag_val.jsonl: score HellaSwag at every eval too ('' = off)")
    hellaswag_limit: int = opt(0, "score only the first N HellaSwag items at each eval; 0 = all")


@dataclasses.dataclass
class DistConfig:
    """How the run is spread over processes; see gpt/strategy/."""

    strategy: str = opt("auto", "auto (deepspeed under its launcher or with zero_stage, ddp with >1 process, else single) "
                                "| single | ddp | fsdp (FSDP2: weights, gradients and optimizer sharded; only by name) "
                                "| deepspeed")
    fsdp_accumulation: str = opt("auto", "FSDP between micro-batches: unsharded (weights and gradients kept whole: "
                                         "fewer collectives) | sharded (least memory) | auto (unsharded when they fit "
                                         "in a quarter of free memory)")
    zero_stage: Optional[int] = opt(None, "DeepSpeed ZeRO stage 0-3; None = ds_config.json's")
    ds_config: str = opt("ds_config.json", "DeepSpeed settings; fields the training config owns are \"auto\"")
    local_rank: Optional[int] = opt(None, "passed by the deepspeed launcher and ignored: LOCAL_RANK is read from the environment")
    dist_timeout: float = opt(DEFAULT_DIST_TIMEOUT_S, "seconds a rank may make no progress before the job ends naming it "
                                                      "(collectives time out at twice this)")


@dataclasses.dataclass
class LogConfig:
    wandb_log: bool = opt(False, "log to Weights & Biases (offline without an account)")
    wandb_project: str = opt("gpt", "W&B project")
    wandb_run_name: str = opt("run", "W&B run name")


@dataclasses.dataclass
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    kernels: KernelConfig = dataclasses.field(default_factory=KernelConfig)
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
    if not 0.0 <= t.dropout < 1.0:
        raise GPTError(f"--dropout={t.dropout} must be in [0, 1).")
    for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_lr", "muon_weight_decay"):
        if getattr(o, key) < 0:
            raise GPTError(f"--{key}={getattr(o, key)} must not be negative (grad_clip=0 turns clipping off).")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise GPTError(f"--{key}={getattr(o, key)} must be in [0, 1).")
    for key, value in (("max_iters", t.max_iters), ("warmup_iters", o.warmup_iters), ("lr_decay_iters", o.lr_decay_iters)):
        if value < 0:
            raise GPTError(f"--{key}={value} must not be negative.")
    choice("lr_schedule", o.lr_schedule, LR_SCHEDULES)
    if o.decay_lr and o.lr_decay_iters <= o.warmup_iters:
        raise GPTError(f"lr_decay_iters={o.lr_decay_iters} must be greater than warmup_iters={o.warmup_iters} "
                       f"for the {o.lr_schedule} schedule (or set --decay_lr=False).")
    if not 0.0 < o.cooldown_frac <= 1.0:
        raise GPTError(f"--cooldown_frac={o.cooldown_frac} must be in (0, 1]: the share of lr_decay_iters the wsd "
                       "schedule spends decaying.")
    check_device_name("device", t.device)
    choice("dtype", t.dtype, DTYPES)
    for key in ("attention", "layernorm", "rmsnorm", "rope", "cross_entropy"):
        choice(key, getattr(cfg.kernels, key), IMPLS)
    choice("adamw_impl", o.adamw_impl, ADAMW_IMPLS)
    choice("optimizer", o.optimizer, OPTIMIZERS)
    if o.muon_ns_steps < 1:
        raise GPTError(f"--muon_ns_steps={o.muon_ns_steps} must be at least 1 (5 orthogonalises well).")
    validate_model(m)
    if m.logit_softcap > 0 and cfg.kernels.fused_linear_loss:
        raise GPTError(f"--logit_softcap={m.logit_softcap} and --fused_linear_loss=True do not go together: the fused "
                       "loss never builds the logits the cap bends. Turn one of them off.")
    if t.init_from not in INIT_FROM and t.init_from not in GPT2_MODELS and not Path(t.init_from).expanduser().is_dir():
        raise GPTError(f"--init_from={t.init_from!r} is not one of {', '.join(INIT_FROM + tuple(GPT2_MODELS))}, nor a "
                       "folder: pass one of those, or a folder with a Hugging Face GPT-2's config.json and weights.")
    if t.tokens_per_step < 0:
        raise GPTError(f"--tokens_per_step={t.tokens_per_step} must be 0 (off) or a number of tokens.")
    if 0 < t.tokens_per_step < d.batch_size * m.block_size:
        raise GPTError(f"--tokens_per_step={t.tokens_per_step} is less than one micro-batch (batch_size "
                       f"{d.batch_size} x block_size {m.block_size} = {d.batch_size * m.block_size} tokens): "
                       "lower --batch_size or raise --tokens_per_step.")
    if t.hellaswag_limit < 0:
        raise GPTError(f"--hellaswag_limit={t.hellaswag_limit} must be 0 (all items) or more.")
    if t.keep_last < 1:
        raise GPTError(f"--keep_last={t.keep_last} must be at least 1 (the latest checkpoint is always kept).")
    if t.max_bad_steps < 1:
        raise GPTError(f"--max_bad_steps={t.max_bad_steps} must be at least 1.")
    parse_duration(t.time_limit)
    choice("strategy", cfg.dist.strategy, STRATEGIES)
    if cfg.dist.zero_stage is not None:
        if cfg.dist.zero_stage not in (0, 1, 2, 3):
            raise GPTError(f"--zero_stage={cfg.dist.zero_stage} is not a ZeRO stage: use 0, 1, 2 or 3.")
        if cfg.dist.strategy not in ("auto", "deepspeed"):
            raise GPTError(f"--zero_stage is a DeepSpeed setting but --strategy={cfg.dist.strategy}: "
                           "drop --zero_stage or use --strategy=deepspeed.")
    choice("fsdp_accumulation", cfg.dist.fsdp_accumulation, FSDP_ACCUMULATION)
    if cfg.dist.fsdp_accumulation != "auto" and cfg.dist.strategy != "fsdp":
        raise GPTError(f"--fsdp_accumulation is an FSDP setting but --strategy={cfg.dist.strategy}: "
                       "drop --fsdp_accumulation or use --strategy=fsdp.")
    if not cfg.dist.dist_timeout > 0:
        raise GPTError(f"--dist_timeout={cfg.dist.dist_timeout} must be a positive number of seconds, e.g. 300.")
    if not d.dataset or "/" in d.dataset:
        raise GPTError(f"--dataset={d.dataset!r} must be a dataset name under --data_dir (e.g. shakespeare_char).")
    choice("sampling", d.sampling, SAMPLING)
    choice("data_format", d.data_format, FORMATS)
    return cfg


def validate_model(m: ModelConfig) -> None:
    """The architecture's own checks, also made for a checkpoint's ModelConfig."""
    choice("pos_emb", m.pos_emb, POS_EMBS)
    choice("norm", m.norm, NORMS)
    choice("mlp", m.mlp, MLPS)
    if m.pos_emb == "rope" and (m.n_embd // m.n_head) % 2:
        raise GPTError(f"--pos_emb=rope turns channel pairs, but the head size n_embd/n_head = {m.n_embd // m.n_head} "
                       "is odd: choose n_embd and n_head so that it is even.")
    if m.rope_base <= 1.0:
        raise GPTError(f"--rope_base={m.rope_base} must be greater than 1 (10000 is the usual choice).")
    if m.logit_softcap < 0:
        raise GPTError(f"--logit_softcap={m.logit_softcap} must not be negative (0 turns the cap off).")


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


def load_config(argv: Sequence[str]) -> Config:
    """Parse `[CONFIG.yaml] [--key=value ...]` into a validated Config (`--help` lists every key and exits)."""
    return validate(parse_args(Config, argv, USAGE, config_file=DEFAULT_CONFIG))


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from its flat dict (as stored in checkpoints and config.yaml)."""
    return build_config(Config, values, {}, source="checkpoint config")


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """A checkpoint's ModelConfig. Keys that are not weights (the kernel choices and dropout that
    checkpoints before the restructuring stored here) are left out, and keys added since take
    their defaults, so every older checkpoint still loads."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in values.items() if k in known})
