"""Score a model on a downstream task, from a local data file.

    python launch/eval.py --task=hellaswag --data=hellaswag_val.jsonl --out_dir=out-gpt2-124m
    python launch/eval.py --task=hellaswag --data=hellaswag_val.jsonl --init_from=gpt2

The model is a run's latest checkpoint (`--out_dir`: any strategy's, a .pt file too) or a
Hugging Face GPT-2 snapshot (`--init_from=gpt2|gpt2-medium|gpt2-large|gpt2-xl|PATH`, found on
disk as in training). The task's text is tokenized with the model's own tokenizer. HellaSwag
reports acc and acc_norm as llm.c does (gpt/hellaswag.py); OpenAI's GPT-2 124M scores
acc_norm 0.2955 there, on all 10,042 items.
"""
from __future__ import annotations

import dataclasses
import json
import time

import torch

from data.tokenizer import tokenizer_from_meta
from gpt.checkpoint import load_checkpoint, model_from_checkpoint
from gpt.cli import run_main
from gpt.errors import GPTError
from gpt.flags import choice, opt, parse_args
from gpt.hellaswag import HellaSwag
from gpt.runtime import DTYPES, autocast, check_device_name, resolve_device, resolve_dtype

TASKS = ("hellaswag",)
USAGE = "usage: python launch/eval.py --task=hellaswag --data=PATH [--out_dir=RUN | --init_from=gpt2|PATH] [--key=value ...]"


@dataclasses.dataclass
class EvalConfig:
    task: str = opt("hellaswag", "the task: hellaswag")
    data: str = opt("", "the task's data file: HellaSwag's hellaswag_val.jsonl")
    out_dir: str = opt("out", "the run whose latest checkpoint is scored (or a .pt file)")
    init_from: str = opt("", "score a Hugging Face GPT-2 instead: gpt2 | gpt2-medium | gpt2-large | gpt2-xl | PATH")
    limit: int = opt(0, "score only the first N items; 0 = all")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps")
    dtype: str = opt("auto", "auto (bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU) | float32 | bfloat16 | float16")
    log_every: int = opt(1000, "a progress line every this many items; 0 = none")


def validate(cfg: EvalConfig) -> EvalConfig:
    choice("task", cfg.task, TASKS)
    if not cfg.data:
        raise GPTError("--data is required: the path of the task's file, e.g. --data=hellaswag_val.jsonl "
                       "(from https://github.com/rowanz/hellaswag, data/hellaswag_val.jsonl).")
    if cfg.limit < 0 or cfg.log_every < 0:
        raise GPTError("--limit and --log_every must be 0 or more.")
    check_device_name("device", cfg.device)
    choice("dtype", cfg.dtype, DTYPES)
    return cfg


def load_model(cfg: EvalConfig) -> tuple[torch.nn.Module, dict, str]:
    """The model to score, its tokenizer entry, and a name for it."""
    if cfg.init_from:
        from gpt.pretrained import pretrained_model
        model, tokenizer, notes = pretrained_model(cfg.init_from)
        for note in notes:
            print(note, flush=True)
        return model, tokenizer, f"--init_from={cfg.init_from}"
    ckpt = load_checkpoint(cfg.out_dir)
    return model_from_checkpoint(ckpt), ckpt["tokenizer"], f"{cfg.out_dir} (iter {ckpt['iter_num']})"


def main(argv: list[str]) -> None:
    cfg = validate(parse_args(EvalConfig, argv, USAGE))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer, name = load_model(cfg)
    model = model.to(device).eval()
    task = HellaSwag.from_file(cfg.data, tokenizer_from_meta(tokenizer), model.config.block_size, cfg.limit)
    print(f"{cfg.task}: scoring {len(task):,} items from {cfg.data} with {name} on {device}", flush=True)
    start = time.perf_counter()

    def logits_of(tokens: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return model(tokens.to(device))[0]

    def progress(done: int) -> None:
        if cfg.log_every and done % cfg.log_every == 0:
            print(f"  {done:,}/{len(task):,} items, {time.perf_counter() - start:.0f}s", flush=True)

    scores = task.score(logits_of, progress=progress)
    print(json.dumps({"task": cfg.task, "model": name, "items": len(task), "acc": round(scores["hellaswag_acc"], 4),
                      "acc_norm": round(scores["hellaswag_acc_norm"], 4)}), flush=True)


if __name__ == "__main__":
    run_main(main)
